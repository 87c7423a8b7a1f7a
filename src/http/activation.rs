//! Socket activation: the listening sockets systemd passes (`LISTEN_FDS`), handed out
//! as `http::Listener`s.
//!
//! No libsystemd: a few lines of environment parsing. This module does not decide which
//! passed socket replaces which flag (the daemon's start sequence does), and readiness
//! notification (`NOTIFY_SOCKET`) is the command line's business (`cli::sd_notify`).

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

use super::Listener;

/// First descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// Takes the sockets systemd passed (if `LISTEN_PID` is this process), classified by
/// address family, and removes the `LISTEN_*` variables so children do not inherit them.
pub fn listen_fds() -> Vec<Listener> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count) {
        // SAFETY: systemd hands these descriptors to us; we only flag and inspect them.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        match family(fd) {
            // SAFETY: systemd passed ownership of `fd`; it is taken exactly once.
            Some(libc::AF_UNIX) => {
                out.push(Listener::Unix(unsafe { UnixListener::from_raw_fd(fd) }))
            }
            Some(libc::AF_INET | libc::AF_INET6) => {
                // SAFETY: as above.
                out.push(Listener::Tcp(unsafe { TcpListener::from_raw_fd(fd) }))
            }
            other => log::warn!(fd:% = fd, family:? = other; "ignoring passed descriptor"),
        }
    }
    out
}

fn family(fd: RawFd) -> Option<libc::c_int> {
    // SAFETY: zeroed sockaddr_storage is valid; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(libc::c_int::from(addr.ss_family))
}

#[cfg(test)]
mod tests {
    //! Socket activation reads the environment, which tests must not change inside the
    //! multi-threaded test harness: each test re-runs this test binary as a child with
    //! the environment (and descriptors) set up, and the child does the checking.

    use super::*;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    use crate::test_child::{is_child, run_child};

    #[test]
    fn listen_fds_takes_passed_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let unix = UnixListener::bind(dir.path().join("a.sock")).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let (ufd, tfd) = (unix.as_raw_fd(), tcp.as_raw_fd());
        let out = run_child("http::activation::tests::child_listen_fds", |c| {
            c.env("LISTEN_FDS", "2");
            // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    // Move both above the target range first, so dup2 cannot clobber.
                    let u = libc::fcntl(ufd, libc::F_DUPFD, 100);
                    let t = libc::fcntl(tfd, libc::F_DUPFD, 100);
                    if u < 0 || t < 0 || libc::dup2(u, 3) < 0 || libc::dup2(t, 4) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        });
        assert!(out.contains("CHILD-OK unix=1 tcp=1"), "{out}");
        let out = run_child("http::activation::tests::child_listen_fds_other_pid", |c| {
            c.env("LISTEN_FDS", "2").env("LISTEN_PID", "1");
        });
        assert!(out.contains("CHILD-OK none"), "{out}");
    }

    #[test]
    fn child_listen_fds() {
        if !is_child() {
            return;
        }
        // The parent cannot know our pid before the fork; systemd sets it the same way.
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        let got = listen_fds();
        let unix = got
            .iter()
            .filter(|l| matches!(l, Listener::Unix(_)))
            .count();
        let tcp = got.iter().filter(|l| matches!(l, Listener::Tcp(_))).count();
        assert!(std::env::var_os("LISTEN_FDS").is_none());
        assert!(std::env::var_os("LISTEN_PID").is_none());
        // SAFETY: querying descriptor flags.
        let cloexec = unsafe { libc::fcntl(3, libc::F_GETFD) } & libc::FD_CLOEXEC;
        assert_eq!(cloexec, libc::FD_CLOEXEC);
        println!("CHILD-OK unix={unix} tcp={tcp}");
    }

    #[test]
    fn child_listen_fds_other_pid() {
        if !is_child() {
            return;
        }
        assert!(listen_fds().is_empty());
        assert!(std::env::var_os("LISTEN_FDS").is_none());
        println!("CHILD-OK none");
    }
}
