//! What a Wedge process keeps on disk, kept to itself: one process per state, and no one else
//! reading it.
//!
//! **The lock.** Every Wedge store takes it before it opens its SQLite file, and cloudcore on
//! its hub's directory.
//! Two processes on one database each keep their own view of it in memory (the API server its
//! resourceVersion counter and objects, the edge its pods), so the second's writes collide with
//! the first's (`UNIQUE constraint failed: events.rv`) and both run the same pods. A store
//! therefore holds an exclusive `flock` on `<database>.lock` for as long as it is open, as etcd
//! locks its data directory; cloudcore, whose hub keeps no database, locks the hub's directory
//! the same way. The kernel lets the lock go when the process ends, even by
//! `kill -9`, so a crash leaves nothing to clean up. The holder writes its pid into the file so
//! that the refused process can name it.
//!
//! **The permissions.** The databases hold every Secret and the bootstrap tokens' secrets, the
//! `pki` directories the keys: [`private_dir`] makes a state directory `0700` (tightening one
//! made before), [`private_file`] a database `0600` (SQLite gives its `-wal` and `-shm` files the
//! database's mode). A directory this process does not own, or a sticky one such as `/tmp`, is
//! left as it is: a root given on the command line may be shared.
//!
//! This is the one module of the crate that touches files: every store needs the same lock and
//! the same permissions.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// Creates `dir` (and its parents) if needed and makes it `0700`, unless this process does not
/// own it or it is sticky (a shared directory such as `/tmp`).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    let ours = meta.uid() == own_uid();
    let sticky = meta.mode() & 0o1000 != 0;
    if ours && !sticky && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes the database at `path` (and its `-wal` and `-shm` files, when there) `0600`, creating
/// it empty if it is not there yet, so that SQLite gives the files it makes the same mode.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// This process's user id: the owner of its `/proc` entry (std has no `getuid`; `u32::MAX`, owning
/// nothing, if `/proc` is not there).
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
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
        let dir = std::env::temp_dir().join(format!("wedge-state-lock-{}", std::process::id()));
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
    fn state_is_made_private_and_what_was_open_is_tightened() {
        let base = std::env::temp_dir().join(format!("wedge-private-{}", std::process::id()));
        let dir = base.join("state");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = dir.join("wedge.db");
        std::fs::write(dir.join("wedge.db-wal"), b"").expect("wal");
        std::fs::set_permissions(
            dir.join("wedge.db-wal"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        private_dir(&dir).expect("private dir");
        private_file(&db).expect("private file");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("wedge.db-wal")), 0o600);
        // A sticky shared directory is left alone.
        let shared = base.join("shared");
        std::fs::create_dir_all(&shared).expect("dir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        private_dir(&shared).expect("shared");
        assert_eq!(mode(&shared), 0o777);
        std::fs::remove_dir_all(&base).expect("clean up");
    }

    #[test]
    fn a_holder_without_a_pid_is_still_named() {
        assert_eq!(holder(""), "another process");
        assert_eq!(holder("x"), "another process");
    }
}
