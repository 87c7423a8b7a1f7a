//! Access control with real peers: `--secret-auth` decided from the kernel's record of
//! non-root clients (children that drop to another uid/gid/groups before connecting),
//! and the socket's own mode and liveness rules.

use crate::common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::unistd::{fork, setgid, setgroups, setuid, ForkResult, Gid, Uid};

/// Forks a child that drops to uid/gid/groups, connects, GETs `path` and exits with a
/// code derived from the status (200→0, 403→3, other→9).
fn status_as(socket: &std::path::Path, uid: u32, gid: u32, groups: &[u32], path: &str) -> i32 {
    let req = request_bytes("GET", path, &[("Connection", "close")], None);
    // SAFETY: the child only calls async-signal-safe-ish syscalls and exits with _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
            let ok = setgroups(&groups).is_ok()
                && setgid(Gid::from_raw(gid)).is_ok()
                && setuid(Uid::from_raw(uid)).is_ok();
            let code = if !ok {
                8
            } else {
                match UnixStream::connect(socket) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = s.write_all(&req);
                        let mut out = Vec::new();
                        let _ = s.read_to_end(&mut out);
                        let text = String::from_utf8_lossy(&out);
                        if text.starts_with("HTTP/1.1 200") {
                            0
                        } else if text.starts_with("HTTP/1.1 403") {
                            3
                        } else {
                            9
                        }
                    }
                    Err(_) => 7,
                }
            };
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("child ended oddly: {other:?}"),
            }
        }
    }
}

#[test]
fn secret_auth_uses_the_kernels_peer_credentials() {
    if !Uid::effective().is_root() {
        eprintln!("needs root to drop privileges in children");
        return;
    }
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node
        .daemon()
        .control_plane(&cp)
        .arg("--secret-auth")
        .start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/secrets")
        .status
        == 200));
    // The socket and its folder must be reachable by other users.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = d.socket.clone();
    // Root passes.
    assert_eq!(d.get("/v1/state/secrets/db-password").status, 200);
    // An ordinary user: denied on secret routes, allowed elsewhere.
    assert_eq!(
        status_as(&sock, 4242, 4242, &[], "/v1/state/secrets/db-password"),
        3
    );
    assert_eq!(status_as(&sock, 4242, 4242, &[], "/v1/state/secrets"), 3);
    assert_eq!(status_as(&sock, 4242, 4242, &[], "/v1/state/metadata"), 0);
    // Added for this test if the host lacks it, and removed again when it ends.
    if let Ok(group) = TempGroup::ensure("plexd-secrets") {
        let gid = group.gid;
        // Restart so the daemon resolves the (possibly just created) group.
        drop(d);
        let d = node
            .daemon()
            .control_plane(&cp)
            .arg("--secret-auth")
            .start();
        assert_eq!(
            status_as(&d.socket, 4242, gid, &[], "/v1/state/secrets/db-password"),
            0,
            "primary gid"
        );
        // qemu-user passes SO_PEERGROUPS an int-sized buffer, so the kernel answers
        // ERANGE and the daemon sees no supplementary groups: not checkable there.
        if !skip_if_emulated("SO_PEERGROUPS (supplementary groups) is not emulated") {
            assert_eq!(
                status_as(
                    &d.socket,
                    4242,
                    4242,
                    &[77, gid],
                    "/v1/state/secrets/db-password"
                ),
                0,
                "supplementary group"
            );
        }
        assert_eq!(
            status_as(
                &d.socket,
                4242,
                4242,
                &[77],
                "/v1/state/secrets/db-password"
            ),
            3
        );
        assert!(d.log_text().contains("secret access denied"));
    }
}

#[test]
fn without_secret_auth_any_local_user_may_read_secrets() {
    if !Uid::effective().is_root() {
        return;
    }
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/secrets")
        .status
        == 200));
    assert_eq!(
        status_as(&d.socket, 4243, 4243, &[], "/v1/state/secrets/db-password"),
        0
    );
}

#[test]
fn a_live_socket_is_never_replaced_and_a_stale_one_is() {
    let node = Node::new();
    let d = node.daemon().start();
    // A second daemon on the same socket refuses to start, exit 1, the first keeps serving.
    let second = node.daemon().spawn();
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert_eq!(d.get("/v1/state").status, 200);
    // SIGKILL leaves a stale socket file; the next start replaces it.
    d.kill();
    assert!(node.socket().exists());
    let d = node.daemon().start();
    assert_eq!(d.get("/v1/state").status, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    let plexd_group = nix::unistd::Group::from_name("plexd")
        .ok()
        .flatten()
        .is_some();
    assert_eq!(mode, if plexd_group { 0o660 } else { 0o666 });
    // A clean stop removes the socket we created.
    assert_eq!(d.stop().code(), Some(0));
    assert!(!node.socket().exists());
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_and_kept() {
    let node = Node::new();
    let config = node.path().join("nodeapi.json");
    std::fs::write(&config, b"{\"precious\":true}\n").unwrap();
    let d = node.daemon().socket(&config).spawn();
    let log = d.log.clone();
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains(&config.display().to_string()) && text.contains("is not a socket"),
        "{text}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), b"{\"precious\":true}\n");
    assert!(
        !node.state().join("revision").exists(),
        "nothing was written"
    );
}

#[test]
fn one_daemon_per_state_folder() {
    let node = Node::new();
    let d = node.daemon().start();
    assert_eq!(
        d.put("/v1/state/report/a", r#"{"content_type":"t","payload":1}"#)
            .status,
        200
    );
    let journal_before = std::fs::read(node.state().join("report.journal")).unwrap();
    let revision_before = std::fs::read(node.state().join("revision")).unwrap();
    // Same data folder, another socket.
    let other = node.path().join("other.sock");
    let second = node.daemon().socket(&other).spawn();
    let log = second.log.clone();
    assert_eq!(second.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("another plexd-nodeapi is using the state folder")
            && text.contains("nodeapi.lock"),
        "{text}"
    );
    assert!(!other.exists(), "the refused daemon left a socket behind");
    assert_eq!(
        std::fs::read(node.state().join("revision")).unwrap(),
        revision_before
    );
    assert_eq!(
        std::fs::read(node.state().join("report.journal")).unwrap(),
        journal_before
    );
    assert_eq!(d.get("/v1/state/report/a").status, 200);
}

#[test]
fn a_stopping_daemon_leaves_a_newer_daemons_socket_alone() {
    let old_node = Node::new();
    let old = old_node.daemon().start();
    // Someone removes the socket and its lock (a cleanup script, a careless restart)
    // and a newer daemon, on another data folder, binds the same path.
    std::fs::remove_file(old_node.socket()).unwrap();
    let mut lock = old_node.socket().into_os_string();
    lock.push(".lock");
    std::fs::remove_file(lock).unwrap();
    let new_node = Node::new();
    let new = new_node.daemon().socket(&old_node.socket()).start();
    assert_eq!(old.stop().code(), Some(0));
    assert!(
        old_node.socket().exists(),
        "the old daemon removed the new socket"
    );
    let r = try_request(&old_node.socket(), "GET", "/v1/health", &[], None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(new.stop().code(), Some(0));
    assert!(!old_node.socket().exists());
}

/// Forks a child that drops to uid/gid/groups, connects and GETs `path`; the child
/// hands the raw response back through a pipe.
fn response_as(socket: &std::path::Path, uid: u32, gid: u32, path: &str) -> Resp {
    let req = request_bytes("GET", path, &[("Connection", "close")], None);
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only makes syscalls and leaves with _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            let mut out = std::fs::File::from(write_end);
            let ok = setgroups(&[]).is_ok()
                && setgid(Gid::from_raw(gid)).is_ok()
                && setuid(Uid::from_raw(uid)).is_ok();
            if ok {
                if let Ok(mut s) = UnixStream::connect(socket) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = s.write_all(&req);
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    let _ = out.write_all(&got);
                }
            }
            drop(out);
            unsafe { nix::libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut got = Vec::new();
            std::fs::File::from(read_end).read_to_end(&mut got).unwrap();
            nix::sys::wait::waitpid(child, None).expect("waitpid");
            read_response(&mut &got[..], false).expect("a response from the child")
        }
    }
}

#[test]
fn secret_auth_hides_secret_names_versions_and_counts_from_other_peers() {
    if !Uid::effective().is_root() {
        eprintln!("needs root to drop privileges in children");
        return;
    }
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node
        .daemon()
        .control_plane(&cp)
        .arg("--secret-auth")
        .start();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state")
        .json()["secret_keys"]
        .as_array()
        .is_some_and(|a| !a.is_empty())));
    let names: Vec<String> = d.get("/v1/state").json()["secret_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_owned())
        .collect();
    // Root sees them; an ordinary user sees none of them anywhere.
    let summary = response_as(&d.socket, 4244, 4244, "/v1/state");
    assert_eq!(summary.status, 200);
    assert_eq!(summary.json()["secret_keys"], serde_json::json!([]));
    assert_eq!(
        summary.json()["metadata"],
        d.get("/v1/state").json()["metadata"]
    );
    let health = response_as(&d.socket, 4244, 4244, "/v1/health");
    assert_eq!(health.status, 200);
    assert!(
        health.json()["cache"].get("secrets").is_none(),
        "{}",
        health.text()
    );
    assert!(
        d.get("/v1/health").json()["cache"]["secrets"]
            .as_u64()
            .unwrap()
            > 0
    );
    let metrics = response_as(&d.socket, 4244, 4244, "/metrics");
    assert!(!metrics.text().contains("kind=\"secrets\""));
    for r in [&summary, &health, &metrics] {
        for name in &names {
            assert!(
                !r.text().contains(name.as_str()),
                "{name} shown: {}",
                r.text()
            );
        }
    }
    assert_eq!(
        response_as(&d.socket, 4244, 4244, "/v1/state/secrets").status,
        403
    );
    // A rotation does not show in the summary's revision either.
    let before = summary.header("x-plexd-index").unwrap().to_owned();
    cp.set_secret("db-password", "rotated");
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state")
        .header("x-plexd-index")
        != Some(before.as_str())));
    let after = response_as(&d.socket, 4244, 4244, "/v1/state");
    assert_eq!(after.header("x-plexd-index"), Some(before.as_str()));
    // Each refused value fetch is counted as `forbidden`.
    let forbidden = "plexd_nodeapi_secret_fetches_total{outcome=\"forbidden\"}";
    let was = d.metric(forbidden).unwrap_or(0.0);
    let refused = response_as(&d.socket, 4244, 4244, "/v1/state/secrets/db-password");
    assert_eq!(refused.status, 403);
    assert_eq!(d.metric(forbidden), Some(was + 1.0));
}
