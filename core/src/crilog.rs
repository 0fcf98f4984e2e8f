//! The CRI container log format that kubelets write and `kubectl logs` reads back:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>`.
//!
//! `F` marks the end of a line and `P` a piece of a longer one, split so that no record grows past
//! [`MAX_LINE_BYTES`]. [`LineSplitter`] turns a stream of writes into records; [`parse_record`]
//! reads one back; [`LogRenderer`] turns a file, chunk by chunk as it is read or followed, into
//! what `kubectl logs` shows, and [`tail_start`] finds where `--tail` starts reading. All are pure
//! so the runtimes and the log readers agree by construction, and so that Edged's reader
//! (`edged::logs`) only does the I/O.

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

/// What `kubectl logs` may ask of a container's log: the kubelet's `/containerLogs` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous instance's log, after a restart (`previous`, `--previous`).
    pub previous: bool,
    /// Keep reading what the container writes until it stops (`follow`, `-f`).
    pub follow: bool,
    /// Prefix each line with its timestamp (`timestamps`, `--timestamps`).
    pub timestamps: bool,
    /// Only the last N lines of what is there when reading starts (`tailLines`, `--tail`): lines
    /// as shown, a long line's pieces joined.
    pub tail_lines: Option<usize>,
    /// Records written before this are skipped (`sinceSeconds` or `sinceTime`, turned into an
    /// instant by the caller).
    pub since: Option<Timestamp>,
    /// The output stops after this many bytes, even mid-line (`limitBytes`).
    pub limit_bytes: Option<u64>,
}

/// Renders a CRI log file as `kubectl logs` shows it, from chunks of the file as they are read:
/// the content of each record, partial records joined into their line, optionally behind the
/// line's timestamp, records before `since` skipped, output cut at `limit_bytes`.
///
/// It follows the kubelet's reader (`kuberuntime/logs`) record by record: `since` is checked
/// per record and a line's timestamp is the one of its first record, so a line that straddles
/// `since` shows from its first record at or after it, without a timestamp. Pieces of a line
/// are shown as they come rather than held back until the line ends, so a follower sees them
/// at once and a line of any length costs no memory. Records that do not parse are skipped.
#[derive(Debug)]
pub struct LogRenderer {
    timestamps: bool,
    since: Option<Timestamp>,
    /// Bytes that may still be output; `None` without a limit.
    remaining: Option<u64>,
    /// The start of a record whose newline has not been read yet.
    pending: Vec<u8>,
    /// The next record starts a line (the last one was `F`).
    new_line: bool,
}

impl LogRenderer {
    /// A renderer for a read that starts at a line's start ([`tail_start`] gives such a place).
    /// `previous`, `follow` and `tail_lines` are the reader's business and are ignored here.
    pub fn new(options: &LogOptions) -> Self {
        Self {
            timestamps: options.timestamps,
            since: options.since,
            remaining: options.limit_bytes,
            pending: Vec::new(),
            new_line: true,
        }
    }

    /// Whether the byte limit has been reached: nothing more will be output.
    pub fn is_done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Takes the next `bytes` of the file, which may end anywhere (inside a record too), and
    /// appends what they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut rest = bytes;
        while !self.is_done() {
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                self.pending.extend_from_slice(rest);
                return;
            };
            if self.pending.is_empty() {
                self.record(&rest[..nl], out);
            } else {
                self.pending.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.pending);
                self.record(&line, out);
                // Keep the allocation for the next split record.
                self.pending = line;
                self.pending.clear();
            }
            rest = &rest[nl + 1..];
        }
    }

    /// Renders a last record that has no newline, as the kubelet does at the end of a file it
    /// does not follow (a writer cut short, or one writing right now).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.pending);
        if !line.is_empty() && !self.is_done() {
            self.record(&line, out);
        }
    }

    fn record(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let Ok(record) = parse_record(raw) else {
            return;
        };
        let starts_line = std::mem::replace(&mut self.new_line, record.tag == Tag::Full);
        if self.since.is_some_and(|since| record.time < since) {
            return;
        }
        if self.timestamps && starts_line {
            self.write(format!("{} ", record.time).as_bytes(), out);
        }
        self.write(record.content, out);
        if record.tag == Tag::Full {
            self.write(b"\n", out);
        }
    }

    /// Appends what the limit lets through of `bytes`.
    fn write(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let n = match &mut self.remaining {
            None => bytes.len(),
            Some(remaining) => {
                let n = usize::try_from(*remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                *remaining -= n as u64;
                n
            }
        };
        out.extend_from_slice(&bytes[..n]);
    }
}

/// Where the last `lines` lines of a log start (after the line before them ends, with an `F`
/// record), as an offset into `tail`: the last bytes of the file, or all of it when `whole`.
/// `None` when `tail` does not reach back far enough to tell: read more of the file and ask
/// again. A file with fewer lines starts at 0.
///
/// Lines are what [`LogRenderer`] shows, partial records joined, so `--tail` counts what the
/// user sees (the kubelet counts records, and a long line's pieces with them); a last line still
/// being written counts as one. Malformed records are not lines. `lines == 0` is the end of
/// the last whole record: only what is written afterwards is shown.
pub fn tail_start(tail: &[u8], lines: usize, whole: bool) -> Option<usize> {
    // Bytes past the last newline are a record still being written.
    let end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    // Unless this is the whole file, the first bytes may be the end of a record cut in two.
    let first = if whole {
        0
    } else {
        tail.iter().position(|b| *b == b'\n')? + 1
    };
    if lines == 0 {
        return Some(end);
    }
    let mut seen = 0;
    // Whether a line with records follows the place reached.
    let mut open = false;
    let mut pos = end;
    while pos > first {
        let start = tail[first..pos - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(first, |i| first + i + 1);
        if let Ok(record) = parse_record(&tail[start..pos - 1]) {
            if record.tag == Tag::Full && open {
                seen += 1;
                if seen == lines {
                    return Some(pos);
                }
            }
            open = true;
        }
        pos = start;
    }
    whole.then_some(0)
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

    /// A file rendered at once, as a reader that does not follow it does.
    fn render(file: &[u8], options: &LogOptions) -> Vec<u8> {
        let start = options
            .tail_lines
            .map_or(0, |n| tail_start(file, n, true).expect("whole file"));
        let mut r = LogRenderer::new(options);
        let mut out = Vec::new();
        r.push(&file[start..], &mut out);
        r.finish(&mut out);
        out
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).expect("utf-8")
    }

    /// `(second, stream, tag, content)` records as a file.
    fn file(records: &[(i64, Stream, Tag, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (s, stream, tag, content) in records {
            let t = Timestamp::from_second(1_700_000_000 + s).expect("valid");
            format_record(&mut out, t, *stream, *tag, content.as_bytes());
        }
        out
    }

    fn sample() -> Vec<u8> {
        use Stream::{Stderr, Stdout};
        use Tag::{Full, Partial};
        let mut f = file(&[
            (0, Stdout, Full, "one"),
            (1, Stdout, Partial, "tw"),
            (2, Stdout, Full, "o"),
        ]);
        f.extend_from_slice(b"garbage\n\n2023-11-14T22:13:23Z stdin F nope\n");
        f.extend(file(&[(3, Stderr, Full, "oops"), (4, Stdout, Full, "")]));
        f
    }

    #[test]
    fn partial_records_are_joined_and_malformed_ones_skipped() {
        assert_eq!(
            text(&render(&sample(), &LogOptions::default())),
            "one\ntwo\noops\n\n"
        );
    }

    #[test]
    fn chunks_may_split_records_anywhere() {
        let f = sample();
        let options = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        let whole = render(&f, &options);
        for size in 1..f.len() {
            let mut r = LogRenderer::new(&options);
            let mut out = Vec::new();
            for chunk in f.chunks(size) {
                r.push(chunk, &mut out);
            }
            assert_eq!(text(&out), text(&whole), "chunks of {size}");
        }
    }

    #[test]
    fn timestamps_prefix_each_line_once() {
        let options = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            text(&render(&sample(), &options)),
            "2023-11-14T22:13:20Z one\n2023-11-14T22:13:21Z two\n\
             2023-11-14T22:13:23Z oops\n2023-11-14T22:13:24Z \n"
        );
    }

    #[test]
    fn since_skips_earlier_records() {
        let at = |s: i64| Some(Timestamp::from_second(1_700_000_000 + s).expect("valid"));
        let since = |s| LogOptions {
            since: at(s),
            ..Default::default()
        };
        assert_eq!(text(&render(&sample(), &since(3))), "oops\n\n");
        assert_eq!(text(&render(&sample(), &since(0))), "one\ntwo\noops\n\n");
        // As the kubelet does, per record: a line's pieces from `since` on.
        assert_eq!(text(&render(&sample(), &since(2))), "o\noops\n\n");
        assert_eq!(text(&render(&sample(), &since(9))), "");
    }

    #[test]
    fn the_limit_cuts_mid_line_and_ends_the_output() {
        let limit = |n, timestamps| LogOptions {
            limit_bytes: Some(n),
            timestamps,
            ..Default::default()
        };
        assert_eq!(text(&render(&sample(), &limit(6, false))), "one\ntw");
        // The limit counts the timestamps too.
        assert_eq!(
            text(&render(&sample(), &limit(23, true))),
            "2023-11-14T22:13:20Z on"
        );
        let mut r = LogRenderer::new(&limit(4, false));
        let mut out = Vec::new();
        r.push(&sample()[..10], &mut out);
        assert!(!r.is_done());
        r.push(&sample()[10..], &mut out);
        assert!(r.is_done());
        r.push(&sample(), &mut out);
        r.finish(&mut out);
        assert_eq!(text(&out), "one\n");
        assert!(LogRenderer::new(&limit(0, false)).is_done());
    }

    #[test]
    fn an_unterminated_last_record_shows_on_finish() {
        let mut f = file(&[(0, Stream::Stdout, Tag::Full, "one")]);
        f.extend_from_slice(b"2023-11-14T22:13:21Z stdout F tw");
        let mut r = LogRenderer::new(&LogOptions::default());
        let mut out = Vec::new();
        r.push(&f, &mut out);
        assert_eq!(text(&out), "one\n");
        r.finish(&mut out);
        assert_eq!(text(&out), "one\ntw\n");
    }

    #[test]
    fn tail_counts_joined_lines() {
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        let f = sample();
        assert_eq!(text(&render(&f, &tail(1))), "\n");
        assert_eq!(text(&render(&f, &tail(2))), "oops\n\n");
        // The partial record goes with its line, and malformed lines are no lines.
        assert_eq!(text(&render(&f, &tail(3))), "two\noops\n\n");
        assert_eq!(text(&render(&f, &tail(9))), "one\ntwo\noops\n\n");
        assert_eq!(text(&render(&f, &tail(0))), "");
        assert_eq!(tail_start(&f, 0, true), Some(f.len()));
        // A last line still being written counts as one.
        let mut growing = file(&[(0, Stream::Stdout, Tag::Full, "one")]);
        growing.extend(file(&[(1, Stream::Stdout, Tag::Partial, "tw")]));
        assert_eq!(text(&render(&growing, &tail(1))), "tw");
        assert_eq!(tail_start(b"", 3, true), Some(0));
    }

    #[test]
    fn tail_asks_for_more_until_it_can_tell() {
        let f = sample();
        for n in 0..6 {
            let whole = tail_start(&f, n, true).expect("whole file");
            for from in 1..f.len() {
                let found = tail_start(&f[from..], n, false);
                if let Some(offset) = found {
                    assert_eq!(from + offset, whole, "{n} lines from {from}");
                }
                // Records are shorter than 64 bytes: from there on, the line before is in view.
                if from + 64 <= whole || (n == 0 && from < f.len() - 1) {
                    assert!(found.is_some(), "{n} lines from {from}");
                }
            }
        }
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
