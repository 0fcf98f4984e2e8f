//! One process per state: the lock every Wedge store takes before it opens its SQLite file, and
//! cloudcore on its hub's directory.
//!
//! Two processes on one database each keep their own view of it in memory (the API server its
//! resourceVersion counter and objects, the edge its pods), so the second's writes collide with
//! the first's (`UNIQUE constraint failed: events.rv`) and both run the same pods. A store
//! therefore holds an exclusive `flock` on `<database>.lock` for as long as it is open, as etcd
//! locks its data directory; cloudcore, whose hub keeps no database, locks the hub's directory
//! the same way. The kernel lets the lock go when the process ends, even by
//! `kill -9`, so a crash leaves nothing to clean up. The holder writes its pid into the file so
//! that the refused process can name it.
//!
//! This is the one module of the crate that touches files: both stores need the same lock and
//! the same words when it is taken.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a database could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process has the state open.
    #[error(
        "{state} is in use by {holder}: stop that process first, or give this one another state directory"
    )]
    Held {
        /// The database or directory.
        state: PathBuf,
        /// Who holds it, as well as can be told (`process 42 (wedge up --root /var/lib/wedge)`).
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a database or directory, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Locks `state` (a database or a directory, through `<state>.lock` beside it, created
    /// `0600` if needed) for this process, or says who holds it.
    pub fn acquire(state: &Path) -> Result<Self, LockError> {
        let mut name = state.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                // Unreadable or not yet written: the holder is still named, without a pid.
                let _ = file.read_to_string(&mut pid);
                return Err(LockError::Held {
                    state: state.to_owned(),
                    holder: holder(pid.trim()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// `process 42 (wedge up --root /x)` from the pid a holder wrote, with its command line when
/// this process may read it.
fn holder(pid: &str) -> String {
    let Ok(pid) = pid.parse::<u32>() else {
        return "another process".to_owned();
    };
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    match command {
        Some(command) => format!("process {pid} ({command})"),
        None => format!("process {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("wedge-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let database = dir.join("wedge.db");
        let first = StateLock::acquire(&database).expect("first lock");
        let err = StateLock::acquire(&database).expect_err("second lock");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "{} is in use by process {} (",
                database.display(),
                std::process::id()
            )),
            "{message}"
        );
        drop(first);
        let again = StateLock::acquire(&database);
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_holder_without_a_pid_is_still_named() {
        assert_eq!(holder(""), "another process");
        assert_eq!(holder("x"), "another process");
    }
}
