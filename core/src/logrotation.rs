//! How container logs are rotated, the kubelet's way: its `containerLogMaxSize` and
//! `containerLogMaxFiles`, the name a rotated file gets and which old ones go. Pure, so that the
//! Wasm runtime (which rotates as it writes) and Edged (which rotates the other runtimes' logs
//! and has them reopened) name and keep files alike, and `kubectl logs -f` follows either.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

/// How large a log grows and how many files it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The size past which a log is rotated (the kubelet's `containerLogMaxSize`, 10 MiB).
    pub max_bytes: u64,
    /// How many files a log keeps, the one being written included (the kubelet's
    /// `containerLogMaxFiles`, 5; at least 2).
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Where the log at `path` goes when rotated at `now`: `<name>.<UTC time>`, as the kubelet names
/// rotated logs. The stamps sort as the times do.
pub fn rotated_path(path: &Path, now: Timestamp) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = now.strftime("%Y%m%d-%H%M%S%.6f");
    path.with_file_name(format!("{name}.{stamp}"))
}

/// Of the files in the log's directory (`siblings`), the rotated ones of the log at `path` that
/// go so that it keeps `max_files` files with the one being written: the oldest.
pub fn excess_rotated(path: &Path, siblings: &[PathBuf], max_files: usize) -> Vec<PathBuf> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut rotated: Vec<&PathBuf> = siblings
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    rotated.sort();
    let excess = rotated.len().saturating_sub(max_files.saturating_sub(1));
    rotated[..excess].iter().map(|p| (*p).clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_are_named_by_time_and_the_oldest_go() {
        let log = Path::new("/pods/p/main/0.log");
        let t = |s: &str| s.parse::<Timestamp>().expect("time");
        let a = rotated_path(log, t("2026-12-06T01:02:03.000004Z"));
        assert_eq!(a, Path::new("/pods/p/main/0.log.20261206-010203.000004"));
        let b = rotated_path(log, t("2026-12-06T01:02:04Z"));
        let c = rotated_path(log, t("2026-12-06T01:03:00Z"));
        let siblings = vec![
            c.clone(),
            log.to_path_buf(),
            a.clone(),
            PathBuf::from("/pods/p/main/1.log"),
            PathBuf::from("/pods/p/main/1.log.20200101-000000.000000"),
            b.clone(),
        ];
        // Three files in all: the current one and the two newest rotated.
        assert_eq!(excess_rotated(log, &siblings, 3), std::slice::from_ref(&a));
        assert_eq!(excess_rotated(log, &siblings, 2), [a, b]);
        assert!(excess_rotated(log, &siblings, 5).is_empty());
    }
}
