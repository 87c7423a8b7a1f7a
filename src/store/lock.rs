//! One daemon per state folder: an exclusive `flock` on `state/nodeapi.lock`, taken
//! before anything in the folder is written and held for the daemon's whole life.
//!
//! The folder itself is locked as well (a descriptor of the folder, `flock`ed): that
//! works where the lock file cannot be created (a full disk, a read-only file system),
//! and the file works where folders cannot be locked (NFS). A second daemon that finds
//! either lock held stops with a message naming the folder. The lock file is never
//! removed (removing a lock file races with the next daemon taking it). This module
//! reads and writes nothing else.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::files::{ensure_dir, is_unwritable};

/// The lock file's name in the state folder.
pub const LOCK_FILE: &str = "nodeapi.lock";

/// Why the state folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another plexd-nodeapi is using the state folder {} (it holds {}); one daemon per --data-dir", folder.display(), lock.display())]
    Held { folder: PathBuf, lock: PathBuf },
    #[error("cannot use the state folder {}: {source}", folder.display())]
    Folder { folder: PathBuf, source: io::Error },
}

/// The held locks of a state folder; dropping it releases them.
#[derive(Debug)]
pub struct StateLock {
    _folder: Option<Flock<File>>,
    _file: Option<Flock<File>>,
}

impl StateLock {
    /// Creates `state_dir` if needed (0700) and locks it, without waiting.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let folder_err = |source| LockError::Folder {
            folder: state_dir.to_path_buf(),
            source,
        };
        let lock_path = state_dir.join(LOCK_FILE);
        let held = || LockError::Held {
            folder: state_dir.to_path_buf(),
            lock: lock_path.clone(),
        };
        ensure_dir(state_dir).map_err(folder_err)?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(state_dir)
            .map_err(folder_err)?;
        let folder = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Some(l),
            Err((_, Errno::EWOULDBLOCK)) => return Err(held()),
            // Some file systems cannot lock folders (NFS); the file below still can.
            Err((_, e)) => {
                log::debug!(error:% = e; "cannot lock the state folder itself");
                None
            }
        };
        let file = match open_lock_file(&lock_path) {
            Ok(Some(f)) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => Some(l),
                Err((_, Errno::EWOULDBLOCK)) => return Err(held()),
                Err((_, e)) => return Err(folder_err(io::Error::from(e))),
            },
            Ok(None) => {
                log::warn!(lock:% = lock_path.display(); "cannot create the lock file (the disk is full or read-only); relying on the folder lock");
                None
            }
            Err(e) => return Err(folder_err(e)),
        };
        if folder.is_none() && file.is_none() {
            return Err(folder_err(io::Error::other(
                "neither the folder nor a lock file in it can be locked",
            )));
        }
        Ok(StateLock {
            _folder: folder,
            _file: file,
        })
    }
}

/// Opens (creating, 0600) the lock file; an existing one read-only when the disk takes
/// no writes; `None` when it does not exist and cannot be created.
fn open_lock_file(path: &Path) -> io::Result<Option<File>> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if is_unwritable(&e) => {
            match OpenOptions::new().read(true).custom_flags(flags).open(path) {
                Ok(f) => Ok(Some(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("deep/state");
        let first = StateLock::acquire(&state).unwrap();
        assert!(state.join(LOCK_FILE).is_file());
        let err = StateLock::acquire(&state).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&state.display().to_string()), "{msg}");
        drop(first);
        let _again = StateLock::acquire(&state).unwrap();
    }
}
