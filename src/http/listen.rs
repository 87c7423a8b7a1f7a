//! Binding the daemon's own listeners: the Unix socket (folder, stale-file handling,
//! owner and mode) and the optional TCP listener.
//!
//! Sockets passed by systemd are not bound here (see `activation`), and nothing here
//! removes a socket file at shutdown: that is the caller's decision.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another daemon is serving on {}", .0.display())]
    InUse(PathBuf),
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

/// Binds the Unix socket at `path`. A live socket there (something accepts a
/// connection) is an error; a stale file is replaced. The socket is `root:plexd 0660`
/// when the group `plexd` exists, otherwise `0666` with a warning.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
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
    if fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(|source| ListenError::Stale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| ListenError::BindUnix {
        path: path.to_path_buf(),
        source,
    })?;
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
    Ok(listener)
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
        let _l = bind_unix(&path).unwrap();
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
        let l = bind_unix(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(l);
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
    fn tcp_error_names_address() {
        let l = bind_tcp("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let err = bind_tcp(&addr).unwrap_err();
        assert!(err.to_string().contains(&addr));
    }
}
