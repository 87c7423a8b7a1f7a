//! Binding the daemon's own listeners: the Unix socket (folder, lock, stale-file
//! handling, owner and mode) and the optional TCP listener.
//!
//! Binding the Unix socket first takes an exclusive `flock` on `<socket>.lock` (Cloud
//! Hypervisor's pattern), so two daemons never race for one path; only then is a stale
//! socket there replaced. Anything at the path that is not a socket (a config file named
//! by mistake, a folder, a symlink) is refused, never removed. The returned
//! [`SocketClaim`] holds the lock and remembers the socket's device, inode and change
//! time; dropping it removes the socket only if the path still names that very socket,
//! so a daemon that stops never removes a newer daemon's socket. Sockets passed by
//! systemd are not bound here (see `activation`). [`Listener`] is what the server
//! accepts on, whoever bound it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::file_kind::describe;

/// A listening socket the server accepts on.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    pub(crate) fn is_unix(&self) -> bool {
        matches!(self, Listener::Unix(_))
    }

    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another daemon is serving on {}", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket ({kind}); refusing to replace it (check --socket)", path.display())]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("another daemon holds {} (the lock of socket {})", lock.display(), path.display())]
    LockHeld { path: PathBuf, lock: PathBuf },
    #[error("cannot lock {}: {source}", lock.display())]
    Lock { lock: PathBuf, source: io::Error },
    #[error("cannot create socket folder {}: {source}", path.display())]
    Folder { path: PathBuf, source: io::Error },
    #[error("cannot remove stale socket {}: {source}", path.display())]
    Stale { path: PathBuf, source: io::Error },
    #[error("cannot bind {}: {source}", path.display())]
    BindUnix { path: PathBuf, source: io::Error },
    #[error("cannot set owner or mode of {}: {source}", path.display())]
    Permissions { path: PathBuf, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    BindTcp { addr: String, source: io::Error },
}

/// Binds the Unix socket at `path` under the lock `<path>.lock`. A live socket there
/// (something accepts a connection) is an error; a stale socket is replaced; anything
/// else is refused. The socket is `root:plexd 0660` when the group `plexd` exists,
/// otherwise `0666` with a warning. Keep the claim as long as the socket serves.
pub fn bind_unix(path: &Path) -> Result<(UnixListener, SocketClaim), ListenError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| ListenError::Folder {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
    }
    let lock = lock_socket(path)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(|source| ListenError::Stale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(meta) => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
                kind: describe(meta.file_type()),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ListenError::Stale {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ListenError::BindUnix {
        path: path.to_path_buf(),
        source,
    })?;
    // From here on the file is ours: a failure below removes it again (`Drop`).
    let id = fs::symlink_metadata(path)
        .map(|m| FileId::of(&m))
        .map_err(|source| ListenError::BindUnix {
            path: path.to_path_buf(),
            source,
        })?;
    let mut claim = SocketClaim {
        path: path.to_path_buf(),
        id,
        _lock: lock,
    };
    let access = set_access(path);
    // The mode and owner just changed the socket's ctime: remember it as it is now.
    claim.refresh();
    access?;
    Ok((listener, claim))
}

/// The Unix socket this process bound: its lock, and the identity (device, inode,
/// change time) of the file it created. Dropping it removes the socket if the path still names that
/// file, then releases the lock.
#[derive(Debug)]
pub struct SocketClaim {
    path: PathBuf,
    id: FileId,
    _lock: Flock<File>,
}

/// Which file a path names: device and inode, and the inode's change time, since a
/// file created after ours was removed may get the same inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl SocketClaim {
    /// Takes the socket's change time again, if the path still names the same inode.
    fn refresh(&mut self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            let now = FileId::of(&m);
            if (now.dev, now.ino) == (self.id.dev, self.id.ino) {
                self.id = now;
            }
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketClaim {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if FileId::of(&m) == self.id => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!(socket:% = self.path.display(), error:% = e; "cannot remove the socket");
                }
            }
            Ok(_) => {
                log::info!(socket:% = self.path.display(); "the socket path now names another file; leaving it in place");
            }
            Err(_) => {}
        }
    }
}

/// Takes the exclusive lock `<path>.lock` (created 0600), without waiting.
fn lock_socket(path: &Path) -> Result<Flock<File>, ListenError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&lock)
        .map_err(|source| ListenError::Lock {
            lock: lock.clone(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(held),
        Err((_, Errno::EWOULDBLOCK)) => Err(ListenError::LockHeld {
            path: path.to_path_buf(),
            lock,
        }),
        Err((_, e)) => Err(ListenError::Lock {
            lock,
            source: io::Error::from(e),
        }),
    }
}

/// `root:plexd 0660` when the group `plexd` exists, otherwise `0666` with a warning.
fn set_access(path: &Path) -> Result<(), ListenError> {
    let perm_err = |source| ListenError::Permissions {
        path: path.to_path_buf(),
        source,
    };
    match nix::unistd::Group::from_name("plexd") {
        Ok(Some(group)) => {
            nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), Some(group.gid))
                .map_err(|e| perm_err(io::Error::from(e)))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(perm_err)?;
        }
        _ => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(perm_err)?;
            log::warn!(socket:% = path.display(), mode = "0666"; "group plexd not found; socket is world-accessible");
        }
    }
    Ok(())
}

/// Binds a TCP listener on `addr` (`host:port`).
pub fn bind_tcp(addr: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).map_err(|source| ListenError::BindTcp {
        addr: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_folder_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/api.sock");
        let (_l, _claim) = bind_unix(&path).unwrap();
        let folder = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o755);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        if nix::unistd::Group::from_name("plexd")
            .ok()
            .flatten()
            .is_none()
        {
            assert_eq!(mode, 0o666);
        } else {
            assert_eq!(mode, 0o660);
        }
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        // Another test's fork may hold the fd until its exec: wait until it is stale.
        let t = std::time::Instant::now();
        while UnixStream::connect(&path).is_ok() {
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (l, claim) = bind_unix(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(l);
        drop(claim);
        assert!(
            !path.exists(),
            "our own socket is removed when the claim goes"
        );
    }

    #[test]
    fn live_socket_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let err = bind_unix(&path).unwrap_err();
        assert!(err.to_string().contains("another daemon is serving on"));
        assert!(path.exists());
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn anything_but_a_socket_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodeapi.json");
        fs::write(&file, b"{\"keep\":true}").unwrap();
        let err = bind_unix(&file).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{msg}");
        assert!(
            msg.contains(&file.display().to_string()) && msg.contains("regular file"),
            "{msg}"
        );
        assert_eq!(fs::read(&file).unwrap(), b"{\"keep\":true}");
        let folder = dir.path().join("folder");
        fs::create_dir(&folder).unwrap();
        assert!(bind_unix(&folder)
            .unwrap_err()
            .to_string()
            .contains("a folder"));
        assert!(folder.is_dir());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind_unix(&link)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&file).unwrap(), b"{\"keep\":true}");
    }

    #[test]
    fn the_socket_lock_keeps_a_second_binder_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (_l, claim) = bind_unix(&path).unwrap();
        assert!(dir.path().join("api.sock.lock").exists());
        let err = bind_unix(&path).unwrap_err();
        assert!(matches!(err, ListenError::LockHeld { .. }), "{err}");
        assert!(err.to_string().contains("api.sock.lock"), "{err}");
        UnixStream::connect(&path).unwrap();
        drop(claim);
        assert!(!path.exists());
    }

    #[test]
    fn a_replaced_socket_is_left_to_its_new_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (old, claim) = bind_unix(&path).unwrap();
        // Someone removes our socket and its lock, and a newer daemon binds the path.
        fs::remove_file(&path).unwrap();
        fs::remove_file(dir.path().join("api.sock.lock")).unwrap();
        drop(old);
        // The new socket may get the old one's inode number; its change time then tells
        // them apart (timestamps tick at the kernel's coarse clock: wait a few ticks).
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (_new, new_claim) = bind_unix(&path).unwrap();
        drop(claim);
        assert!(path.exists(), "the older claim removed the newer socket");
        UnixStream::connect(&path).unwrap();
        drop(new_claim);
        assert!(!path.exists());
    }

    #[test]
    fn tcp_error_names_address() {
        let l = bind_tcp("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let err = bind_tcp(&addr).unwrap_err();
        assert!(err.to_string().contains(&addr));
    }
}
