//! Readiness notification for systemd (`Type=notify`): `READY=1` once the daemon
//! serves, `STOPPING=1` when it begins to stop.
//!
//! No libsystemd: one datagram to `$NOTIFY_SOCKET`. Socket activation, the other
//! systemd protocol, hands out listeners and lives with them (`http::activation`).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET`; a no-op when it is unset.
/// An address starting with `@` is in the abstract namespace.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Notification reads the environment, which tests must not change inside the
    //! multi-threaded test harness: each test re-runs this test binary as a child with
    //! the environment (and descriptors) set up, and the child does the checking.

    use super::*;
    use std::time::Duration;

    use crate::test_child::{is_child, run_child};

    #[test]
    fn notify_sends_datagram_to_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        run_child("cli::sd_notify::tests::child_notify", |c| {
            c.env("NOTIFY_SOCKET", &path);
        });
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn notify_sends_datagram_to_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("plexd-test-notify-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        run_child("cli::sd_notify::tests::child_notify", |c| {
            c.env("NOTIFY_SOCKET", format!("@{name}"));
        });
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn child_notify() {
        if is_child() {
            notify("READY=1").unwrap();
        }
    }
}
