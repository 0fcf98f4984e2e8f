//! The CRI container log format that kubelets write and `kubectl logs` reads back:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>`.
//!
//! `F` marks the end of a line and `P` a piece of a longer one, split so that no record grows past
//! [`MAX_LINE_BYTES`]. [`LineSplitter`] turns a stream of writes into records; [`parse_record`]
//! reads one back. Both are pure so the runtime and the log readers agree by construction.

use std::fmt::Write as _;

use jiff::Timestamp;

/// The longest content a record holds before it is split (kubelet's default is 16 KiB).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    /// The stream's name in the log format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Whether a record ends its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The record ends a line (`F`, full).
    Full,
    /// The line continues in the next record (`P`, partial).
    Partial,
}

/// One record of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the runtime received the output.
    pub time: Timestamp,
    /// Which stream.
    pub stream: Stream,
    /// Full or partial.
    pub tag: Tag,
    /// The bytes written, without the newline.
    pub content: &'a [u8],
}

/// Appends one formatted record (with its newline) to `out`.
pub fn format_record(out: &mut Vec<u8>, time: Timestamp, stream: Stream, tag: Tag, content: &[u8]) {
    let mut head = String::with_capacity(48);
    let tag = match tag {
        Tag::Full => 'F',
        Tag::Partial => 'P',
    };
    let _ = write!(head, "{time} {} {tag} ", stream.as_str());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// A log line that is not in the CRI format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a CRI log record: {0}")]
pub struct MalformedRecord(&'static str);

/// Parses one line of a log file (without its newline).
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, MalformedRecord> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next().ok_or(MalformedRecord("empty"))?;
    let time: Timestamp = std::str::from_utf8(time)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(MalformedRecord("bad timestamp"))?;
    let stream = match parts.next() {
        Some(b"stdout") => Stream::Stdout,
        Some(b"stderr") => Stream::Stderr,
        _ => return Err(MalformedRecord("bad stream")),
    };
    let tag = match parts.next() {
        Some(b"F") => Tag::Full,
        Some(b"P") => Tag::Partial,
        _ => return Err(MalformedRecord("bad tag")),
    };
    Ok(Record {
        time,
        stream,
        tag,
        content: parts.next().unwrap_or_default(),
    })
}

/// Cuts a stream of writes into log records: whole lines as `F` records, and lines longer than
/// [`MAX_LINE_BYTES`] as `P` pieces followed by an `F` one.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for one stream.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Takes `bytes` as written by the guest and appends the records they complete to `out`.
    pub fn push(&mut self, time: Timestamp, bytes: &[u8], out: &mut Vec<u8>) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&rest[..nl]);
            self.emit_long_prefix(time, out);
            format_record(out, time, self.stream, Tag::Full, &self.pending);
            self.pending.clear();
            rest = &rest[nl + 1..];
        }
        self.pending.extend_from_slice(rest);
        self.emit_long_prefix(time, out);
    }

    /// Writes out what is left of an unterminated line, as when the container exits.
    pub fn finish(&mut self, time: Timestamp, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            format_record(out, time, self.stream, Tag::Full, &self.pending);
            self.pending.clear();
        }
    }

    fn emit_long_prefix(&mut self, time: Timestamp, out: &mut Vec<u8>) {
        while self.pending.len() > MAX_LINE_BYTES {
            format_record(
                out,
                time,
                self.stream,
                Tag::Partial,
                &self.pending[..MAX_LINE_BYTES],
            );
            self.pending.drain(..MAX_LINE_BYTES);
        }
    }
}

/// What `kubectl logs` may ask of a container's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous instance's log, after a restart (`--previous`).
    pub previous: bool,
    /// Only the last N lines (`--tail`).
    pub tail_lines: Option<usize>,
    /// Prefix each line with its timestamp (`--timestamps`).
    pub timestamps: bool,
}

/// Renders a CRI log file as `kubectl logs` shows it: the content of each line (partial records
/// joined), optionally with timestamps, optionally only the last lines. Records that do not
/// parse are skipped.
pub fn render(file: &[u8], options: &LogOptions) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    for raw in file.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(record) = parse_record(raw) else {
            continue;
        };
        let line = partial.get_or_insert_with(|| {
            if options.timestamps {
                format!("{} ", record.time).into_bytes()
            } else {
                Vec::new()
            }
        });
        line.extend_from_slice(record.content);
        if record.tag == Tag::Full {
            lines.extend(partial.take());
        }
    }
    lines.extend(partial);
    let skip = options
        .tail_lines
        .map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = Vec::new();
    for l in &lines[skip..] {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<Record<'_>> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_record(l).expect("parses"))
            .collect()
    }

    #[test]
    fn writes_split_into_full_lines() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        let t = Timestamp::from_second(1_700_000_000).expect("valid");
        s.push(t, b"hello ", &mut out);
        assert!(out.is_empty(), "no record before the newline");
        s.push(t, b"world\nsecond\nthi", &mut out);
        s.finish(t, &mut out);
        let recs = lines(&out);
        let contents: Vec<&[u8]> = recs.iter().map(|r| r.content).collect();
        assert_eq!(contents, [&b"hello world"[..], b"second", b"thi"]);
        assert!(
            recs.iter()
                .all(|r| r.tag == Tag::Full && r.stream == Stream::Stdout)
        );
        assert!(out.starts_with(b"2023-11-14T22:13:20Z stdout F hello world\n"));
    }

    #[test]
    fn long_lines_become_partial_records() {
        let mut s = LineSplitter::new(Stream::Stderr);
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        s.push(Timestamp::UNIX_EPOCH, &long, &mut out);
        s.push(Timestamp::UNIX_EPOCH, b"\n", &mut out);
        let tags: Vec<Tag> = lines(&out).iter().map(|r| r.tag).collect();
        assert_eq!(tags, [Tag::Partial, Tag::Partial, Tag::Full]);
        assert_eq!(lines(&out)[2].content.len(), 5);
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(parse_record(b"yesterday stdout F hi").is_err());
        assert!(parse_record(b"2023-11-14T22:13:20Z stdin F hi").is_err());
        assert!(parse_record(b"2023-11-14T22:13:20Z stdout X hi").is_err());
        let r = parse_record(b"2023-11-14T22:13:20.5Z stdout F a b c").expect("valid");
        assert_eq!(r.content, b"a b c");
    }
}
