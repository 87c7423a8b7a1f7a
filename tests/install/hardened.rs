//! The daemon under what the hardened unit (`contrib/plexd-nodeapi.service`) imposes,
//! without systemd: as root with no capability at all, no new privileges, a member of
//! `plexd` only and umask 077 (`setpriv`), it still binds its socket and gives it to
//! the group plexd, tells peers apart by their kernel credentials (`--secret-auth`),
//! writes its state, takes a socket passed by socket activation
//! (`systemd-socket-activate`) and stops cleanly; and every system call it makes
//! while serving (`strace`) is one the unit's `SystemCallFilter=` allows.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{eventually, try_request, Node, TempGroup};
use super::{built_binary, have, repo, run_ok};

/// The restrictions of the unit, as a command prefix: no capabilities (bounding,
/// inheritable, ambient; root gets none on exec then), no new privileges, only the
/// supplementary group `plexd`, umask 077.
fn restricted(plexd_gid: u32) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077; exec \"$@\"", "sh", "setpriv"])
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
        ])
        .arg(format!("--groups={plexd_gid}"))
        .arg("--");
    cmd
}

fn wait_answering(socket: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if try_request(socket, "GET", "/v1/state", &[], None).is_ok_and(|r| r.status == 200) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the daemon did not answer on {}", socket.display());
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    stop_pid(child, child.id())
}

/// Sends SIGTERM to `pid` (the child itself, or the process it traces) and waits for
/// the child to exit.
fn stop_pid(child: &mut Child, pid: u32) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/PID/status` fields.
fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// `state` as another user (uid 4242) with the given supplementary groups.
fn state_as(socket: &Path, groups: &[u32], args: &[&str]) -> Option<i32> {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups = if list.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!("--groups={}", list.join(","))
    };
    let out = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", &groups, "--"])
        .arg(built_binary())
        .arg("state")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    out.status.code()
}

#[test]
fn the_daemon_runs_without_capabilities_as_the_unit_runs_it() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("needs root: the unit runs the daemon as root without capabilities");
        return;
    }
    if !have("setpriv") {
        return;
    }
    let plexd = TempGroup::ensure("plexd").unwrap_or_else(|e| panic!("{e}"));
    let secrets = TempGroup::ensure("plexd-secrets").unwrap_or_else(|e| panic!("{e}"));
    let node = Node::new();
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        node.path().join("node_secret_key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let socket = node.socket();
    let log = std::fs::File::create(node.path().join("daemon.log")).unwrap();
    let mut child = restricted(plexd.gid)
        .arg(built_binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(node.path())
        .arg("--socket")
        .arg(&socket)
        .arg("--secret-auth")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_answering(&socket, &mut child);
    let pid = child.id();
    // What it runs with.
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Groups"), plexd.gid.to_string());
    // The socket went to the group plexd, without CAP_CHOWN.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (plexd.gid, 0o660));
    // Peers told apart by the kernel's credentials.
    assert_eq!(state_as(&socket, &[plexd.gid], &[]), Some(0));
    assert_eq!(
        state_as(&socket, &[plexd.gid], &["get", "secrets"]),
        Some(6)
    );
    assert_eq!(
        state_as(&socket, &[plexd.gid, secrets.gid], &["get", "secrets"]),
        Some(0)
    );
    assert_eq!(
        state_as(&socket, &[], &[]),
        Some(6),
        "not in plexd: no access"
    );
    // It writes its state, privately.
    let put = try_request(
        &socket,
        "PUT",
        "/v1/state/report/hardened",
        &[],
        Some(br#"{"content_type":"text/plain","payload":"ok"}"#),
    )
    .unwrap();
    assert_eq!(put.status, 200);
    assert_eq!(stop(&mut child).code(), Some(0));
    assert!(!socket.exists(), "its own socket is removed at stop");
    let state = node.state();
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    let report = state.join("report").join("hardened.json");
    assert_eq!(std::fs::metadata(&report).unwrap().mode() & 0o777, 0o600);

    // Socket activation: the socket passed in is served, and left in place.
    if !have("systemd-socket-activate") {
        return;
    }
    let activated = node.path().join("activated.sock");
    let log = std::fs::File::create(node.path().join("activated.log")).unwrap();
    let mut sa = Command::new("systemd-socket-activate");
    sa.arg("-l").arg(&activated).arg("--");
    let inner = restricted(plexd.gid);
    sa.arg(inner.get_program()).args(inner.get_args());
    let mut child = sa
        .arg(built_binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(node.path())
        .arg("--socket")
        .arg(node.path().join("unused.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || activated.exists()));
    wait_answering(&activated, &mut child);
    let r = try_request(&activated, "GET", "/v1/state/report/hardened", &[], None).unwrap();
    assert_eq!(r.status, 200, "the state written before is there");
    assert!(
        !node.path().join("unused.sock").exists(),
        "--socket is not bound"
    );
    assert_eq!(stop(&mut child).code(), Some(0));
    assert!(activated.exists(), "a passed socket is left in place");
}

/// Every system call in the named groups, with nested groups expanded
/// (`systemd-analyze syscall-filter`).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = run_ok(Command::new("systemd-analyze").args(["syscall-filter", "--no-pager"]));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('@').filter(|_| !line.starts_with(' ')) {
            current = Some(format!("@{name}"));
            groups.entry(format!("@{name}")).or_default();
        } else if !t.is_empty() && !t.starts_with('#') {
            if let Some(g) = &current {
                groups.get_mut(g).unwrap().push(t.to_owned());
            }
        }
    }
    groups
}

fn expand(groups: &BTreeMap<String, Vec<String>>, item: &str, out: &mut BTreeSet<String>) {
    match groups.get(item) {
        Some(members) => members.iter().for_each(|m| expand(groups, m, out)),
        None => {
            out.insert(item.to_owned());
        }
    }
}

/// What the unit's `SystemCallFilter=` lines allow (the first is an allow list, a `~`
/// line removes, a later plain line adds back).
fn unit_filter() -> BTreeSet<String> {
    let groups = syscall_groups();
    let unit = std::fs::read_to_string(repo().join("contrib/plexd-nodeapi.service")).unwrap();
    let mut allowed = BTreeSet::new();
    for line in unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
    {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut set = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(&groups, item, &mut set);
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    // Always allowed by systemd whatever the filter says.
    let mut always = BTreeSet::new();
    expand(&groups, "@default", &mut always);
    allowed.extend(always);
    allowed
}

#[test]
fn every_system_call_the_daemon_makes_is_in_the_units_filter() {
    if !have("strace") || !have("systemd-analyze") {
        return;
    }
    let allowed = unit_filter();
    assert!(allowed.contains("epoll_wait") && !allowed.contains("mount"));
    let node = Node::new();
    let cp = node.control_plane(true);
    let token = node.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let trace: PathBuf = node.path().join("strace.txt");
    let log = std::fs::File::create(node.path().join("daemon.log")).unwrap();
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-c", "-U", "name", "-o"])
        .arg(&trace)
        .arg(built_binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(node.path())
        .arg("--socket")
        .arg(node.socket())
        .args(["--control-plane", &cp.url(), "--http-listen", "127.0.0.1:0"])
        .arg("--http-token-file")
        .arg(&token)
        .args(["--debounce", "100ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let socket = node.socket();
    wait_answering(&socket, &mut child);
    // The work of a day: reads, a blocking query, writes synced upstream, a secret.
    let get = |path: &str| try_request(&socket, "GET", path, &[], None).unwrap();
    assert!(eventually(Duration::from_secs(10), || get(
        "/v1/state/metadata/region"
    )
    .status
        == 200));
    assert_eq!(get("/v1/state/secrets/db-password").status, 200);
    let index = get("/v1/state").header("x-plexd-index").unwrap().to_owned();
    assert_eq!(
        get(&format!("/v1/state?index={index}&wait=100ms")).status,
        200
    );
    let body = br#"{"content_type":"application/json","payload":{"ok":true}}"#;
    for _ in 0..3 {
        let r = try_request(&socket, "PUT", "/v1/state/report/k", &[], Some(body)).unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(eventually(Duration::from_secs(10), || cp
        .reports()
        .contains_key("k")));
    assert_eq!(
        try_request(&socket, "DELETE", "/v1/state/report/k", &[], None)
            .unwrap()
            .status,
        204
    );
    assert_eq!(get("/metrics").status, 200);
    assert_eq!(get("/v1/health").status, 200);
    // SIGTERM to the daemon, strace's child; strace exits with its status.
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let daemon: u32 = std::fs::read_to_string(&children)
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("strace's child");
    assert_eq!(stop_pid(&mut child, daemon).code(), Some(0));
    let text = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with("syscall") && !l.starts_with('-') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "total")
        .collect();
    assert!(
        used.contains("epoll_wait") || used.contains("epoll_pwait"),
        "{text}"
    );
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allowed.contains(*s) && s.as_str() != "execve")
        .collect();
    assert!(
        refused.is_empty(),
        "system calls the unit's SystemCallFilter would refuse: {refused:?}"
    );
}
