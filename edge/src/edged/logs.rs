//! `kubectl logs` at the edge: what the kubelet's `/containerLogs/{ns}/{pod}/{container}` serves,
//! read from the CRI log files every runtime writes in the kubelet's layout
//! (`<pod dir>/<container>/<restartCount>.log`), whatever the runtime.
//!
//! Start at [`PodWorkers::open_logs`]: it picks the instance the request means from the
//! container's status, as the kubelet does, and returns a [`LogReader`] that streams the rendered
//! log in chunks. Rendering is [`wedge_core::crilog`]'s, pure; this module only does the I/O: it
//! reads the file asynchronously, and to follow it reads again when told the container's
//! directory changed ([`super::notices`]: one inotify watcher for the edge, a watch per directory
//! followed), until the instance stops. A follow waiting at the end of its file does no I/O: it
//! wakes on a notice, on a change of the container's status, and every [`STATE_CHECK_INTERVAL`]
//! to check that the instance still runs; where there are no notices, it reads again every
//! [`FALLBACK_POLL_INTERVAL`]. A follow ends once the instance has stopped, or the next instance's
//! log exists, and its file is read to the end.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use wedge_core::crilog::{self, LogOptions, LogRenderer};
use wedge_core::status::{ContainerState, ContainerStatus, reason};

pub use super::notices::FALLBACK_POLL_INTERVAL;
use super::notices::Notices;
use super::pod_workers::PodWorkers;

/// How often a follow waiting for more checks that the instance still runs, besides at every
/// change of its status: a stop ends the follow at the latest this long after.
pub const STATE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The most a read takes from the file at once, so a chunk of output stays about this size.
const CHUNK_BYTES: usize = 32 * 1024;

/// The end of the file read first to find where `--tail` starts; doubled until it reaches back
/// far enough.
const TAIL_WINDOW: u64 = 64 * 1024;

/// Why a log cannot be read, worded as the kubelet words it (kubectl shows the message as is).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No pod of this name runs on this edge.
    #[error("pod {pod:?} does not exist")]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// The pod asked for.
        pod: String,
    },
    /// The pod has no container of this name.
    #[error("container {container:?} in pod {pod:?} is not available")]
    ContainerNotAvailable {
        /// The pod.
        pod: String,
        /// The container asked for.
        container: String,
    },
    /// `previous` asked of a container that has not ended before.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious {
        /// The pod.
        pod: String,
        /// The container.
        container: String,
    },
    /// The container has not run yet.
    #[error("container {container:?} in pod {pod:?} is waiting to start: {why}")]
    Waiting {
        /// The pod.
        pod: String,
        /// The container.
        container: String,
        /// The waiting reason, or what the kubelet says instead for image pulls.
        why: String,
    },
    /// The log file cannot be opened.
    #[error("failed to open log file {path:?}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log file cannot be read.
    #[error("failed to read log file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl LogError {
    /// The HTTP status the kubelet answers with: 404 for a pod it does not have, 400 for
    /// everything else (its `GetKubeletContainerLogs` errors are all Bad Requests).
    pub fn status_code(&self) -> u16 {
        match self {
            Self::PodNotFound { .. } => 404,
            Self::ContainerNotAvailable { .. }
            | Self::NoPrevious { .. }
            | Self::Waiting { .. }
            | Self::Open { .. }
            | Self::Read { .. } => 400,
        }
    }
}

/// Why no instance's log answers a request.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    /// No instance has ended.
    Previous,
    /// None has run; the waiting reason.
    Waiting(String),
}

/// Which instance's log a request means, by its restart count, from the container's status: the
/// kubelet's `validateContainerLogStatus` on the file layout.
///
/// A running or terminated container's current instance is its restart count, the previous one
/// the count before. Between instances (waiting to be restarted) the kubelet reads the instance
/// that ended last, whether `previous` was asked or not: the count still names it, since the
/// count moves on only once the next instance runs.
fn instance(status: &ContainerStatus, previous: bool) -> Result<u32, Missing> {
    let count = status.restart_count;
    let ended_before = status.last_state.is_some();
    match &status.state {
        ContainerState::Running { .. } | ContainerState::Terminated { .. } if previous => count
            .checked_sub(1)
            .filter(|_| ended_before)
            .ok_or(Missing::Previous),
        ContainerState::Running { .. } | ContainerState::Terminated { .. } => Ok(count),
        ContainerState::Waiting { .. } if ended_before => Ok(count),
        ContainerState::Waiting { .. } if previous => Err(Missing::Previous),
        ContainerState::Waiting { reason: why, .. } => Err(Missing::Waiting(match why.as_str() {
            reason::ERR_IMAGE_PULL => "image can't be pulled".to_owned(),
            reason::IMAGE_PULL_BACK_OFF => "trying and failing to pull image".to_owned(),
            "" => reason::CONTAINER_CREATING.to_owned(),
            other => other.to_owned(),
        })),
    }
}

/// Where an instance of a container writes its output, the kubelet's layout: `dir` is the
/// container's directory in its pod's (`<pod dir>/<container>`), the file its restart count.
/// The one place that says so: the workers give it to the runtimes, the log manager rotates it,
/// `kubectl logs` reads it.
pub(crate) fn log_path(dir: &Path, restart_count: u32) -> PathBuf {
    dir.join(format!("{restart_count}.log"))
}

impl PodWorkers {
    /// Opens a container's log as `kubectl logs` asks for it: the pod by namespace and name, the
    /// container among its init and app containers, the instance from `options.previous` and the
    /// container's status. Reading is [`LogReader::next`]'s.
    pub async fn open_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        options: LogOptions,
    ) -> Result<LogReader, LogError> {
        let state = self
            .find_pod(namespace, pod)
            .ok_or_else(|| LogError::PodNotFound {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
            })?;
        let slot = state
            .init
            .iter()
            .chain(&state.containers)
            .find(|s| s.plan.name == container)
            .cloned()
            .ok_or_else(|| LogError::ContainerNotAvailable {
                pod: pod.to_owned(),
                container: container.to_owned(),
            })?;
        let dir = state.plan.dir.join(&slot.plan.name);
        let status = slot.status();
        let attempt = instance(&status, options.previous).map_err(|missing| {
            let (pod, container) = (pod.to_owned(), container.to_owned());
            match missing {
                Missing::Previous => LogError::NoPrevious { pod, container },
                Missing::Waiting(why) => LogError::Waiting {
                    pod,
                    container,
                    why,
                },
            }
        })?;
        tracing::debug!(pod = %state.plan.display_name, container, attempt, ?options, "reading a container log");
        let follow = if options.follow {
            // Subscribed before the file is first read to its end: nothing written after that
            // read goes unnoticed.
            let notices = self.log_notices().subscribe(&dir).await;
            let status = Some(slot.changes());
            Some(Follow {
                newer: log_path(&dir, attempt.saturating_add(1)),
                // Asked again whenever the follow waits: the instance read is running while
                // the status says so and has not moved on to a later one.
                still_running: Box::new(move || {
                    let s = slot.status();
                    s.state.is_running() && s.restart_count == attempt
                }),
                notices,
                status,
            })
        } else {
            None
        };
        LogReader::open(log_path(&dir, attempt), &options, follow).await
    }
}

/// Whether the instance whose log is followed may still write to it; asked whenever the follow
/// reaches the end of the file and when it wakes.
type StillRunning = Box<dyn Fn() -> bool + Send + Sync>;

/// What a follow watches to know when to read again, and when to end.
struct Follow {
    /// The instance is still running.
    still_running: StillRunning,
    /// The next instance's log file: once it exists, the instance read has ended.
    newer: PathBuf,
    /// Notices of changes in the file's directory: there may be more to read.
    notices: Notices,
    /// Changes of the container's status, if known: one may be the instance stopping.
    status: Option<watch::Receiver<()>>,
}

impl Follow {
    /// Waits at the end of the file until there may be more to read (`false`: a notice came,
    /// or without notices the poll interval passed) or the instance has stopped (`true`).
    /// Cancel-safe.
    async fn wait(&mut self) -> bool {
        let polled = self.notices.polled();
        let period = if polled {
            FALLBACK_POLL_INTERVAL
        } else {
            STATE_CHECK_INTERVAL
        };
        loop {
            tokio::select! {
                () = self.notices.changed() => return false,
                () = status_changed(&mut self.status) => {}
                () = tokio::time::sleep(period) => if polled {
                    return false;
                },
            }
            if !(self.still_running)() {
                return true;
            }
        }
    }
}

/// The next change of a status; never, without one to watch.
async fn status_changed(status: &mut Option<watch::Receiver<()>>) {
    let Some(receiver) = status else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        // The container is gone: the check after this answers.
        *status = None;
    }
}

/// A container's log being read: rendered output in chunks, from [`PodWorkers::open_logs`].
pub struct LogReader {
    path: PathBuf,
    file: File,
    renderer: LogRenderer,
    buf: Vec<u8>,
    follow: Option<Follow>,
    /// The follow saw the instance stop: the rest of the file is the last to read.
    stopping: bool,
    /// The file at `path` is a new one (the log was rotated): read the rest of the open one,
    /// then move to it.
    rotated: bool,
    ended: bool,
}

impl LogReader {
    /// Opens `path` and, for `tail_lines`, finds where the lines asked for start.
    async fn open(
        path: PathBuf,
        options: &LogOptions,
        follow: Option<Follow>,
    ) -> Result<Self, LogError> {
        let mut file = match File::open(&path).await {
            Ok(file) => file,
            Err(source) => return Err(LogError::Open { path, source }),
        };
        if let Some(lines) = options.tail_lines {
            let found = async {
                let start = tail_start(&mut file, lines).await?;
                file.seek(SeekFrom::Start(start)).await
            };
            if let Err(source) = found.await {
                return Err(LogError::Read { path, source });
            }
        }
        Ok(Self {
            path,
            file,
            renderer: LogRenderer::new(options),
            buf: vec![0; CHUNK_BYTES],
            follow,
            stopping: false,
            rotated: false,
            ended: false,
        })
    }

    /// The next chunk of output (never empty); `None` at the end: the end of the file without
    /// `follow`, with it once the instance has stopped and its file is read to the end, and once
    /// `limit_bytes` is reached either way. After an error, `None`.
    ///
    /// Cancel-safe, so it can race the client going away in a `select!`: a call dropped while
    /// it waits loses nothing (a read in flight is kept by tokio's `File` for the next call).
    pub async fn next(&mut self) -> Option<Result<Bytes, LogError>> {
        let mut out = Vec::new();
        while !self.ended {
            if let Err(source) = self.step(&mut out).await {
                self.ended = true;
                return Some(Err(LogError::Read {
                    path: self.path.clone(),
                    source,
                }));
            }
            if !out.is_empty() {
                return Some(Ok(out.into()));
            }
        }
        None
    }

    /// Reads once and renders what came into `out`; at the end of the file, ends or waits for
    /// more.
    async fn step(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        if self.renderer.is_done() {
            self.ended = true;
            return Ok(());
        }
        let n = self.file.read(&mut self.buf).await?;
        if n > 0 {
            self.renderer.push(&self.buf[..n], out);
            return Ok(());
        }
        if std::mem::take(&mut self.rotated) {
            // The rotated file is read to its end (nothing is written to it once renamed).
            self.file = File::open(&self.path).await?;
            return Ok(());
        }
        if self.follow.is_some() && !self.stopping && self.was_rotated().await {
            // One more read of the old file first: its writer may have added to it between
            // the read above and the rename.
            self.rotated = true;
            return Ok(());
        }
        match &mut self.follow {
            Some(follow) if !self.stopping => {
                let ended = !(follow.still_running)()
                    || tokio::fs::try_exists(&follow.newer).await.unwrap_or(false)
                    || follow.wait().await;
                if ended {
                    // What it wrote before it stopped may have come after the last read: one
                    // more read to the end takes it.
                    self.stopping = true;
                }
            }
            _ => {
                self.renderer.finish(out);
                self.ended = true;
            }
        }
        Ok(())
    }
}

impl LogReader {
    /// Whether the file at the log's path is no longer the one open and the writer has moved
    /// to it: the log was rotated (renamed and a new one started, as the kubelet rotates logs).
    /// A path missing for a moment, between the rename and the new file, is not yet a rotation,
    /// nor is a new file still empty: a runtime asked to reopen (containerd) may finish a write
    /// to the old file after creating the new one, but not after writing to the new one, so
    /// the old file is read to its end only once the new one has data.
    async fn was_rotated(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(open), Ok(named)) = (
            self.file.metadata().await,
            tokio::fs::metadata(&self.path).await,
        ) else {
            return false;
        };
        (open.dev(), open.ino()) != (named.dev(), named.ino()) && named.len() > 0
    }
}

/// Where the last `lines` lines of the file start: its end read backwards in growing windows
/// until [`crilog::tail_start`] can tell, so the memory taken is about what the lines take.
async fn tail_start(file: &mut File, lines: usize) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    let mut window = TAIL_WINDOW;
    loop {
        let from = len.saturating_sub(window);
        file.seek(SeekFrom::Start(from)).await?;
        let mut buf = vec![0; usize::try_from(len - from).map_err(std::io::Error::other)?];
        file.read_exact(&mut buf).await?;
        if let Some(offset) = crilog::tail_start(&buf, lines, from == 0) {
            return Ok(from + offset as u64);
        }
        window = window.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::Pod;
    use tokio::time::Instant;
    use wedge_core::crilog::{Stream, Tag};
    use wedge_core::status::PodStatusReport;

    use super::super::fake::{Fake, RUN_FOR};
    use super::super::plan::plan_pod;
    use super::super::pod_workers::WorkerConfig;
    use super::super::runtimes::{RuntimeHandle, Runtimes};
    use super::*;

    /// `F` records of `lines`, the i-th written at second i.
    fn records(first: i64, lines: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, line) in (first..).zip(lines) {
            let t = Timestamp::from_second(1_700_000_000 + i).expect("valid");
            crilog::format_record(&mut out, t, Stream::Stdout, Tag::Full, line.as_bytes());
        }
        out
    }

    fn numbered(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("line {i}")).collect()
    }

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .expect("append");
    }

    async fn read_all(reader: &mut LogReader) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = reader.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8(out).expect("utf-8")
    }

    async fn next_text(reader: &mut LogReader) -> Option<String> {
        let chunk = reader.next().await?.expect("chunk");
        Some(String::from_utf8(chunk.to_vec()).expect("utf-8"))
    }

    /// A follow of a log in `dir` while `running` holds, told of changes by the sender returned
    /// (nothing else tells it: only the periodic check of `running` runs besides).
    fn follow(dir: &Path, running: &Arc<AtomicBool>) -> (Option<Follow>, watch::Sender<()>) {
        let running = running.clone();
        let (notices, receiver) = watch::channel(());
        let follow = Follow {
            still_running: Box::new(move || running.load(Ordering::SeqCst)),
            newer: dir.join("1.log"),
            notices: Notices::from_receiver(receiver),
            status: None,
        };
        (Some(follow), notices)
    }

    /// A follow of `<dir>/0.log`, which holds the line "one", while its instance runs.
    struct Followed {
        path: PathBuf,
        running: Arc<AtomicBool>,
        notices: watch::Sender<()>,
        reader: LogReader,
    }

    async fn followed(dir: &Path) -> Followed {
        let path = dir.join("0.log");
        append(&path, &records(0, &["one".into()]));
        let running = Arc::new(AtomicBool::new(true));
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let (follow, notices) = follow(dir, &running);
        let reader = LogReader::open(path.clone(), &options, follow)
            .await
            .expect("open");
        Followed {
            path,
            running,
            notices,
            reader,
        }
    }

    #[tokio::test]
    async fn a_file_is_read_in_bounded_chunks_to_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let lines = numbered(5000);
        append(&path, &records(0, &lines));
        let mut reader = LogReader::open(path, &LogOptions::default(), None)
            .await
            .expect("open");
        let mut out = String::new();
        let mut chunks = 0;
        while let Some(chunk) = next_text(&mut reader).await {
            assert!(chunk.len() <= CHUNK_BYTES, "{}", chunk.len());
            out.push_str(&chunk);
            chunks += 1;
        }
        assert!(chunks > 1);
        assert_eq!(out, lines.join("\n") + "\n");
        assert!(reader.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_sees_appended_lines_and_ends_when_the_instance_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Followed {
            path,
            running,
            notices,
            mut reader,
        } = followed(dir.path()).await;
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("one\n"));
        // Nothing new: it waits.
        let waited = tokio::time::timeout(Duration::from_secs(5), reader.next()).await;
        assert!(waited.is_err(), "{waited:?}");
        // A line written in two goes out as it comes, and whole.
        let two = records(1, &["two".into()]);
        append(&path, &two[..10]);
        notices.send_replace(());
        let waited = tokio::time::timeout(STATE_CHECK_INTERVAL * 3, reader.next()).await;
        assert!(waited.is_err(), "half a line: {waited:?}");
        append(&path, &two[10..]);
        notices.send_replace(());
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("two\n"));
        // What it wrote last is read before the follow ends.
        append(&path, &records(2, &["three".into()]));
        running.store(false, Ordering::SeqCst);
        assert_eq!(read_all(&mut reader).await, "three\n");
        assert!(reader.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_moves_to_the_new_file_when_the_log_is_rotated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Followed {
            path,
            running,
            notices,
            mut reader,
        } = followed(dir.path()).await;
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("one\n"));
        // The writer adds a last line, renames the file and starts a new one, as rotation does.
        append(&path, &records(1, &["two".into()]));
        std::fs::rename(&path, dir.path().join("0.log.20261206-000000.000000")).expect("rename");
        append(&path, &records(2, &["three".into()]));
        notices.send_replace(());
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("two\n"));
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("three\n"));
        append(&path, &records(3, &["four".into()]));
        notices.send_replace(());
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("four\n"));
        running.store(false, Ordering::SeqCst);
        assert_eq!(read_all(&mut reader).await, "");
        assert!(reader.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_to_the_old_file_after_the_new_one_appears_is_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Followed {
            path,
            running,
            notices,
            mut reader,
        } = followed(dir.path()).await;
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("one\n"));
        // As containerd reopens: the new file exists (empty) while a write to the renamed one
        // is still landing.
        let old = dir.path().join("0.log.20261206-000000.000000");
        std::fs::rename(&path, &old).expect("rename");
        std::fs::File::create(&path).expect("new file");
        notices.send_replace(());
        // The follow looks (and waits) while the new file is still empty.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), reader.next())
                .await
                .is_err()
        );
        append(&old, &records(1, &["late".into()]));
        notices.send_replace(());
        let late = tokio::time::timeout(Duration::from_secs(60), next_text(&mut reader)).await;
        assert_eq!(
            late.expect("the late write is read").as_deref(),
            Some("late\n")
        );
        append(&path, &records(2, &["new".into()]));
        notices.send_replace(());
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("new\n"));
        running.store(false, Ordering::SeqCst);
        assert_eq!(read_all(&mut reader).await, "");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_ends_when_the_next_instance_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Followed {
            path,
            running: _,
            notices,
            mut reader,
        } = followed(dir.path()).await;
        let start = Instant::now();
        let newer = dir.path().join("1.log");
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            append(&path, &records(1, &["last".into()]));
            append(&newer, &records(2, &["next instance".into()]));
            notices.send_replace(());
        });
        assert_eq!(read_all(&mut reader).await, "one\nlast\n");
        assert!(start.elapsed() >= Duration::from_secs(2));
        later.await.expect("writer");
    }

    /// A notice brings an appended line at once: no poll interval is waited out (the clock is
    /// paused, so any sleep would show in `elapsed`).
    #[tokio::test(start_paused = true)]
    async fn a_notice_brings_an_appended_line_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Followed {
            path,
            running: _,
            notices,
            mut reader,
        } = followed(dir.path()).await;
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("one\n"));
        for (i, line) in ["two", "three", "four"].into_iter().enumerate() {
            // Waiting at the end of the file, long past any poll interval.
            let waited = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
            assert!(waited.is_err(), "{waited:?}");
            let start = Instant::now();
            append(&path, &records(1 + i as i64, &[line.into()]));
            notices.send_replace(());
            assert_eq!(next_text(&mut reader).await, Some(format!("{line}\n")));
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
        // A line written while the follow waits, without a notice, is not read however long it
        // waits: the follow does no polling.
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                append(&path, &records(9, &["unnoticed".into()]));
            })
        };
        let waited = tokio::time::timeout(Duration::from_secs(60), reader.next()).await;
        assert!(waited.is_err(), "{waited:?}");
        writer.await.expect("writer");
        // (A new call reads before it waits.)
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("unnoticed\n"));
    }

    /// A follow ends at once when the container's status changes to stopped, and within
    /// [`STATE_CHECK_INTERVAL`] when nothing tells it.
    #[tokio::test(start_paused = true)]
    async fn a_follow_ends_when_its_instance_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        append(&path, &records(0, &["one".into()]));
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        for told in [true, false] {
            let running = Arc::new(AtomicBool::new(true));
            let (status, changes) = watch::channel(());
            let (mut follow, _notices) = follow(dir.path(), &running);
            if let Some(follow) = &mut follow {
                follow.status = told.then_some(changes);
            }
            let mut reader = LogReader::open(path.clone(), &options, follow)
                .await
                .expect("open");
            assert_eq!(next_text(&mut reader).await.as_deref(), Some("one\n"));
            let stopper = {
                let running = running.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    running.store(false, Ordering::SeqCst);
                    status.send_replace(());
                })
            };
            let start = Instant::now();
            assert!(reader.next().await.is_none());
            let took = start.elapsed();
            if told {
                assert_eq!(took, Duration::from_millis(2500));
            } else {
                assert!(
                    took <= Duration::from_millis(2500) + STATE_CHECK_INTERVAL,
                    "{took:?}"
                );
            }
            stopper.await.expect("stopper");
        }
    }

    /// Where notices cannot be had the follow reads again every [`FALLBACK_POLL_INTERVAL`].
    #[tokio::test(start_paused = true)]
    async fn without_notices_a_follow_polls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        append(&path, &records(0, &["one".into()]));
        let notices = super::super::notices::DirNotices::unavailable();
        let running = Arc::new(AtomicBool::new(true));
        let (mut follow, _unused) = follow(dir.path(), &running);
        if let Some(follow) = &mut follow {
            follow.notices = notices.subscribe(dir.path()).await;
        }
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut reader = LogReader::open(path.clone(), &options, follow)
            .await
            .expect("open");
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("one\n"));
        let start = Instant::now();
        append(&path, &records(1, &["two".into()]));
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("two\n"));
        assert!(
            start.elapsed() <= FALLBACK_POLL_INTERVAL,
            "{:?}",
            start.elapsed()
        );
        running.store(false, Ordering::SeqCst);
        assert!(reader.next().await.is_none());
    }

    /// Through the edge's watcher (real files, real inotify, the clock running): a follow of a
    /// running container gets each line appended without any poll (it has none), and several
    /// follows of one log share the directory's one watch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_get_appended_lines_through_inotify() {
        let h = Harness::new();
        h.fake.script("main", &[None]);
        h.start("run", spec("Always", false));
        h.wait_for("run", |s| main_of(s).state.is_running()).await;
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut readers = Vec::new();
        for _ in 0..3 {
            let mut reader = h
                .workers
                .open_logs("default", "pod-run", "main", options.clone())
                .await
                .expect("open");
            assert_eq!(
                next_text(&mut reader).await.as_deref(),
                Some("main#0 started\n")
            );
            readers.push(reader);
        }
        assert_eq!(h.workers.log_notices().watched(), 1);
        let path = h
            .workers
            .find_pod("default", "pod-run")
            .expect("pod")
            .plan
            .dir
            .join("main/0.log");
        let wait = Duration::from_secs(5);
        for i in 0..3 {
            let line = format!("line {i}");
            append(&path, &records(i, std::slice::from_ref(&line)));
            for reader in &mut readers {
                let got = tokio::time::timeout(wait, next_text(reader)).await;
                assert_eq!(got.expect("in time"), Some(format!("{line}\n")));
            }
        }
        drop(readers);
        let deadline = Instant::now() + wait;
        while h.workers.log_notices().watched() > 0 {
            assert!(Instant::now() < deadline, "the watch outlives its follows");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tail_since_and_limit_apply_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        // Longer than the first window the tail reads back.
        let lines = numbered(5000);
        append(&path, &records(0, &lines));
        let read = |options: LogOptions| {
            let path = path.clone();
            async move {
                let mut reader = LogReader::open(path, &options, None).await.expect("open");
                read_all(&mut reader).await
            }
        };
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        assert_eq!(read(tail(2)).await, "line 4998\nline 4999\n");
        assert_eq!(read(tail(0)).await, "");
        let many = read(tail(4000)).await;
        assert_eq!(many.lines().count(), 4000);
        assert!(many.starts_with("line 1000\n"), "{}", &many[..20]);
        assert_eq!(read(tail(9000)).await.lines().count(), 5000);

        let since = LogOptions {
            since: Some(Timestamp::from_second(1_700_004_998).expect("valid")),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            read(since).await,
            "2023-11-14T23:36:38Z line 4998\n2023-11-14T23:36:39Z line 4999\n"
        );
        let limit = LogOptions {
            limit_bytes: Some(10),
            ..Default::default()
        };
        assert_eq!(read(limit).await, "line 0\nlin");

        // The limit ends a follow too, however long the container runs.
        let running = Arc::new(AtomicBool::new(true));
        let options = LogOptions {
            follow: true,
            tail_lines: Some(1),
            limit_bytes: Some(14),
            ..Default::default()
        };
        let (follow, notices) = follow(dir.path(), &running);
        let mut reader = LogReader::open(path.clone(), &options, follow)
            .await
            .expect("open");
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("line 4999\n"));
        append(&path, &records(5000, &["appended".into()]));
        notices.send_replace(());
        assert_eq!(read_all(&mut reader).await, "appe");
    }

    #[test]
    fn the_instance_read_is_the_kubelets() {
        let status = |state: ContainerState, count: u32, ended: bool| ContainerStatus {
            name: "main".into(),
            image: "app".into(),
            image_id: None,
            container_id: None,
            state,
            last_state: ended.then(|| ContainerState::waiting("", None)),
            restart_count: count,
            ready: false,
            started: false,
        };
        let running = ContainerState::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        let back_off = ContainerState::waiting(reason::CRASH_LOOP_BACK_OFF, None);
        let pulling = ContainerState::waiting(reason::IMAGE_PULL_BACK_OFF, None);
        let first = status(running.clone(), 0, false);
        assert_eq!(instance(&first, false), Ok(0));
        assert_eq!(instance(&first, true), Err(Missing::Previous));
        let second = status(running, 1, true);
        assert_eq!(instance(&second, false), Ok(1));
        assert_eq!(instance(&second, true), Ok(0));
        // Backing off after instance 1 ended, until instance 2 runs.
        let between = status(back_off, 1, true);
        assert_eq!(instance(&between, false), Ok(1));
        assert_eq!(instance(&between, true), Ok(1));
        let never_ran = status(pulling, 0, false);
        assert_eq!(
            instance(&never_ran, false),
            Err(Missing::Waiting("trying and failing to pull image".into()))
        );
        assert_eq!(instance(&never_ran, true), Err(Missing::Previous));
    }

    struct Harness {
        fake: Fake,
        workers: PodWorkers,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        fn new() -> Self {
            let fake = Fake::default();
            let dir = tempfile::tempdir().expect("tempdir");
            let workers = PodWorkers::new(
                Runtimes::new().with(RuntimeHandle::new(Arc::new(fake.clone()))),
                WorkerConfig::new(dir.path().join("pods")),
            );
            Self {
                fake,
                workers,
                _dir: dir,
            }
        }

        /// Starts `default/pod-<uid>`.
        fn start(&self, uid: &str, spec: serde_json::Value) {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("pod-{uid}"), "namespace": "default", "uid": uid},
                "spec": spec,
            }))
            .expect("pod");
            let plan = plan_pod(&pod, &self.workers.config().pods_root).expect("plan");
            self.workers
                .start(plan, Default::default(), Default::default())
                .expect("started");
        }

        async fn wait_for(&self, uid: &str, pred: impl Fn(&PodStatusReport) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !self.workers.status(uid).is_some_and(|s| pred(&s)) {
                assert!(Instant::now() < deadline, "{:#?}", self.workers.status(uid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        async fn logs(&self, pod: &str, options: LogOptions) -> Result<String, LogError> {
            let mut reader = self
                .workers
                .open_logs("default", pod, "main", options)
                .await?;
            Ok(read_all(&mut reader).await)
        }
    }

    fn spec(policy: &str, init: bool) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "restartPolicy": policy,
            "containers": [{"name": "main", "image": "r/app:1"}],
        });
        if init {
            spec["initContainers"] = serde_json::json!([{"name": "setup", "image": "r/app:1"}]);
        }
        spec
    }

    fn main_of(s: &PodStatusReport) -> &ContainerStatus {
        &s.containers[0]
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_worded_as_the_kubelets() {
        let h = Harness::new();
        let e = h
            .logs("pod-x", LogOptions::default())
            .await
            .expect_err("no pod");
        assert_eq!(
            (e.status_code(), e.to_string()),
            (404, r#"pod "pod-x" does not exist"#.to_owned())
        );

        // An init container that runs on: the app container waits.
        h.fake.script("setup", &[None]);
        h.start("x", spec("Always", true));
        h.wait_for("x", |s| s.init_containers[0].state.is_running())
            .await;
        let e = h
            .logs("pod-x", LogOptions::default())
            .await
            .expect_err("waits");
        assert_eq!(
            (e.status_code(), e.to_string()),
            (
                400,
                r#"container "main" in pod "pod-x" is waiting to start: PodInitializing"#
                    .to_owned()
            )
        );
        let e = h
            .logs(
                "pod-x",
                LogOptions {
                    previous: true,
                    ..Default::default()
                },
            )
            .await
            .expect_err("never ran");
        assert_eq!(
            e.to_string(),
            r#"previous terminated container "main" in pod "pod-x" not found"#
        );
        let e = h
            .workers
            .open_logs("default", "pod-x", "nope", LogOptions::default())
            .await
            .err()
            .expect("no such container");
        assert_eq!(
            (e.status_code(), e.to_string()),
            (
                400,
                r#"container "nope" in pod "pod-x" is not available"#.to_owned()
            )
        );
        // Init containers are containers too; the namespace is part of the name.
        let mut setup = h
            .workers
            .open_logs("default", "pod-x", "setup", LogOptions::default())
            .await
            .expect("the init container's log");
        assert_eq!(read_all(&mut setup).await, "setup#0 started\n");
        assert!(
            h.workers
                .open_logs("other", "pod-x", "setup", LogOptions::default())
                .await
                .is_err()
        );

        h.fake.fail_pulls("r/app:2", 100);
        h.start(
            "pull",
            serde_json::json!({"containers": [{"name": "main", "image": "r/app:2"}]}),
        );
        h.wait_for("pull", |s| {
            main_of(s).state.reason() == Some(reason::IMAGE_PULL_BACK_OFF)
        })
        .await;
        let e = h
            .logs("pod-pull", LogOptions::default())
            .await
            .expect_err("waits");
        assert!(
            e.to_string()
                .ends_with("is waiting to start: trying and failing to pull image"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn previous_is_the_instance_that_ended() {
        let h = Harness::new();
        h.fake.script("main", &[Some(1), None]);
        h.start("crash", spec("Always", false));
        let previous = LogOptions {
            previous: true,
            ..Default::default()
        };
        // Backing off, both mean the instance that crashed, as under the kubelet.
        h.wait_for("crash", |s| {
            main_of(s).state.reason() == Some(reason::CRASH_LOOP_BACK_OFF)
        })
        .await;
        let current = h.logs("pod-crash", LogOptions::default()).await;
        assert_eq!(current.expect("current"), "main#0 started\n");
        assert_eq!(
            h.logs("pod-crash", previous.clone())
                .await
                .expect("previous"),
            "main#0 started\n"
        );
        h.wait_for("crash", |s| {
            main_of(s).restart_count == 1 && main_of(s).state.is_running()
        })
        .await;
        let current = h.logs("pod-crash", LogOptions::default()).await;
        assert_eq!(current.expect("current"), "main#1 started\n");
        assert_eq!(
            h.logs("pod-crash", previous).await.expect("previous"),
            "main#0 started\n"
        );
    }

    /// The race CI met: the next instance's log file exists, empty, before that instance runs;
    /// the log of the instance that ended is still the one read.
    #[tokio::test(start_paused = true)]
    async fn while_the_next_instance_starts_the_ended_ones_log_is_read() {
        let h = Harness::new();
        h.fake.script("main", &[Some(1), None]);
        h.fake.slow_start("main", Duration::from_secs(30));
        h.start("crash", spec("Always", false));
        h.wait_for("crash", |s| main_of(s).state.is_running()).await;
        h.wait_for("crash", |s| {
            main_of(s).state.reason() == Some(reason::CRASH_LOOP_BACK_OFF)
        })
        .await;
        // Instance 1 is created and is being started: its file is there, empty.
        let deadline = Instant::now() + Duration::from_secs(600);
        while !h.fake.calls().iter().any(|c| c == "create main#1") {
            assert!(Instant::now() < deadline, "{:?}", h.fake.calls());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = h.workers.status("crash").expect("status");
        assert!(!main_of(&status).state.is_running());
        assert_eq!(main_of(&status).restart_count, 0);
        let previous = LogOptions {
            previous: true,
            ..Default::default()
        };
        for options in [LogOptions::default(), previous.clone()] {
            assert_eq!(
                h.logs("pod-crash", options).await.expect("log"),
                "main#0 started\n"
            );
        }
        h.wait_for("crash", |s| {
            main_of(s).restart_count == 1 && main_of(s).state.is_running()
        })
        .await;
        assert_eq!(
            h.logs("pod-crash", previous).await.expect("previous"),
            "main#0 started\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_ends_when_the_container_stops() {
        let h = Harness::new();
        h.fake.script("main", &[Some(1), None]);
        h.start("crash", spec("Always", false));
        h.wait_for("crash", |s| main_of(s).state.is_running()).await;
        let start = Instant::now();
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut reader = h
            .workers
            .open_logs("default", "pod-crash", "main", options.clone())
            .await
            .expect("open");
        assert_eq!(
            next_text(&mut reader).await.as_deref(),
            Some("main#0 started\n")
        );
        let path = h
            .workers
            .find_pod("default", "pod-crash")
            .expect("pod")
            .plan
            .dir
            .join("main/0.log");
        append(&path, &records(0, &["working".into()]));
        assert_eq!(next_text(&mut reader).await.as_deref(), Some("working\n"));
        // The instance exits after a second: the follow ends with it.
        assert!(reader.next().await.is_none());
        assert!(start.elapsed() >= RUN_FOR - Duration::from_millis(200));

        // Following the instance after it, until the pod is stopped.
        h.wait_for("crash", |s| main_of(s).state.is_running()).await;
        let mut reader = h
            .workers
            .open_logs("default", "pod-crash", "main", options)
            .await
            .expect("open");
        let workers = h.workers.clone();
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            workers.stop("crash", Duration::from_secs(30)).await;
        });
        assert_eq!(read_all(&mut reader).await, "main#1 started\n");
        assert!(start.elapsed() >= Duration::from_secs(60));
        stop.await.expect("stopped");
    }
}
