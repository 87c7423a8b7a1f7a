//! The command line as users and black-box suites drive it: configuration errors (exit
//! 2, one line naming the field), bind failures (exit 1), `version`, and the `state`
//! client end to end against a running daemon.

use crate::common::*;
use std::process::Output;
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("run binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_configuration_exits_2_naming_the_field_and_touches_nothing() {
    let node = Node::new();
    let dir = node.path().to_str().unwrap().to_owned();
    let sock = node.socket();
    let sock = sock.to_str().unwrap();
    let cfg = node.path().join("bad.json");
    std::fs::write(&cfg, "{ not json").unwrap();
    let unknown_key = node.path().join("unknown.json");
    std::fs::write(&unknown_key, r#"{"data_dir":"/tmp","frobnicate":true}"#).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--socket", sock], "--data-dir"),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--debounce",
                "0s",
            ],
            "--debounce",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--shutdown-timeout",
                "-5s",
            ],
            "--shutdown-timeout",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--reconcile-interval",
                "100ms",
            ],
            "--reconcile-interval",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--control-plane",
                "http://example.com",
            ],
            "--control-plane",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--control-plane",
                "not a url",
            ],
            "--control-plane",
        ),
        (
            vec!["serve", "--data-dir", &dir, "--socket", sock, "--http"],
            "--http-token-file",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--nsk-file",
                "/nonexistent",
            ],
            "--nsk-file",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--frobnicate",
            ],
            "--frobnicate",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &dir,
                "--socket",
                sock,
                "--log-level",
                "chatty",
            ],
            "--log-level",
        ),
        (vec!["serve", "--config", cfg.to_str().unwrap()], "--config"),
        (
            vec!["serve", "--config", unknown_key.to_str().unwrap()],
            "frobnicate",
        ),
    ];
    for (args, field) in cases {
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(field),
            "{args:?}: message should name {field}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    assert!(
        !node.state().exists(),
        "nothing written when start-up fails"
    );
    assert!(!node.socket().exists());
    // The NSK must be 32 bytes.
    std::fs::write(node.path().join("node_secret_key"), "short").unwrap();
    let o = run(&[
        "serve",
        "--data-dir",
        &dir,
        "--socket",
        sock,
        "--control-plane",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--nsk-file"));
}

#[test]
fn bind_failure_exits_1_with_the_address() {
    let node = Node::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let token = node.path().join("tok");
    std::fs::write(&token, "t").unwrap();
    let o = run(&[
        "serve",
        "--data-dir",
        node.path().to_str().unwrap(),
        "--socket",
        node.socket().to_str().unwrap(),
        "--http-listen",
        &addr,
        "--http-token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&addr), "{}", stderr(&o));
    assert!(
        !node.socket().exists(),
        "socket cleaned up after a failed start"
    );
}

#[test]
fn config_file_values_apply_and_flags_win() {
    let node = Node::new();
    let cfg = node.path().join("c.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"data_dir":"{}","socket":"/nonexistent/dir/never.sock","log_level":"warn"}}"#,
            node.path().display()
        ),
    )
    .unwrap();
    let d = node
        .daemon()
        .args(["--config", cfg.to_str().unwrap()])
        .start();
    assert_eq!(
        d.get("/v1/state").status,
        200,
        "--socket flag overrides the file"
    );
}

#[test]
fn version_prints_version() {
    let o = run(&["version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
    let o = run(&["bogus"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn state_client_end_to_end() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/metadata/region")
        .status
        == 200));
    let sock = d.socket.to_str().unwrap().to_owned();
    let state = |args: &[&str]| {
        let mut all = vec!["state", "--socket", &sock];
        all.extend_from_slice(args);
        run(&all)
    };
    let o = state(&[]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["metadata"]["region"].is_string());
    let o = state(&["get", "metadata", "region"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"value\""));
    let o = state(&["put", "health", "--data", r#"{"ok":true,"n":1.0}"#]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1.0"),
        "numbers printed verbatim"
    );
    let o = state(&["put", "health", "--data", "{}", "--if-match", "5"]);
    assert_eq!(o.status.code(), Some(4), "conflict");
    assert_eq!(stderr(&o).trim().lines().count(), 1);
    let o = state(&["put", "health", "--data", "{oops"]);
    assert_eq!(o.status.code(), Some(2));
    let o = state(&["get", "report", "nope"]);
    assert_eq!(o.status.code(), Some(3));
    let o = state(&["get", "secret", "db-password"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = state(&["delete", "health"]);
    assert!(o.status.success());
    let o = run(&["state", "--socket", "/nonexistent/sock"]);
    assert_eq!(o.status.code(), Some(5));
    // --socket after the subcommand works too.
    let o = run(&["state", "get", "metadata", "region", "--socket", &sock]);
    assert!(o.status.success());
}

/// `state` runs as its flags say, against `d`'s socket (`--socket` first).
fn state_at(sock: &std::path::Path, args: &[&str]) -> Output {
    command()
        .arg("state")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .env_remove("PLEXD_NODEAPI_SOCKET")
        .output()
        .expect("run state")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn state_key_syntax_kinds_raw_output_and_text_payloads() {
    let node = Node::new();
    let cp = node.control_plane(true);
    let d = node.daemon().control_plane(&cp).start();
    assert!(eventually(Duration::from_secs(10), || d
        .get("/v1/state/metadata/region")
        .status
        == 200));
    let sock = d.socket.clone();
    let state = |args: &[&str]| state_at(&sock, args);
    // KIND KEY and KIND/KEY name the same entry; kinds in the singular or the plural.
    let spaced = state(&["get", "metadata", "region"]);
    assert!(spaced.status.success(), "{}", stderr(&spaced));
    assert_eq!(out(&state(&["get", "metadata/region"])), out(&spaced));
    let region = d.get("/v1/state/metadata/region").json()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        out(&state(&["get", "-r", "metadata/region"])),
        format!("{region}\n")
    );
    assert_eq!(
        out(&state(&["get", "secrets", "db-password"])),
        out(&state(&["get", "secret/db-password"]))
    );
    let secret = out(&state(&["get", "secret", "db-password", "--raw"]));
    assert_eq!(
        secret.trim_end(),
        d.get("/v1/state/secrets/db-password").json()["value"]
    );
    // Text payloads: a non-JSON content type takes --data as plain text.
    let o = state(&[
        "put",
        "app-health",
        "--data",
        "healthy",
        "--content-type",
        "text/plain",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        d.get("/v1/state/report/app-health").json()["payload"],
        "healthy"
    );
    let o = state(&["put", "app-health", "--data", "healthy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--content-type"), "{}", stderr(&o));
    for get in [
        &["get", "report", "app-health", "-r"][..],
        &["get", "reports/app-health", "--raw"],
    ] {
        assert_eq!(out(&state(get)), "healthy\n", "{get:?}");
    }
    let o = state(&[
        "put",
        "report/numbers",
        "--data",
        r#"{"n": 1.0, "big": 12345678901234567890}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        out(&state(&["get", "report", "numbers", "-r"])),
        "{\"n\":1.0,\"big\":12345678901234567890}\n"
    );
    // A list with --raw: its keys, one per line.
    assert_eq!(
        out(&state(&["get", "reports", "-r"])),
        "app-health\nnumbers\n"
    );
    assert_eq!(state(&["get", "reports"]).status.code(), Some(0));
    assert_eq!(state(&["--raw"]).status.code(), Some(2));
    // Data entries' payloads are printed the same way.
    let o = state(&["get", "data", "feature-flags", "--raw"]);
    assert!(o.status.success());
    let raw: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(raw, d.get("/v1/state/data/feature-flags").json()["payload"]);
}

#[test]
fn state_lock_and_release_with_etags() {
    let node = Node::new();
    let d = node.daemon().start();
    let state = |args: &[&str]| state_at(&d.socket, args);
    // Take the lock: create only, print the ETag to release it with.
    let take = state(&[
        "put",
        "job-lock",
        "--data",
        r#"{"owner":"job-7"}"#,
        "--if-none-match",
        "*",
        "--etag",
    ]);
    assert!(take.status.success(), "{}", stderr(&take));
    let tag = out(&take).trim().to_owned();
    assert_eq!(
        Some(tag.as_str()),
        d.get("/v1/state/report/job-lock").header("etag")
    );
    // Someone else cannot take it.
    let other = state(&[
        "put",
        "job-lock",
        "--data",
        r#"{"owner":"job-8"}"#,
        "--if-none-match",
        "*",
    ]);
    assert_eq!(other.status.code(), Some(4), "{}", stderr(&other));
    // Nor release it with a tag it never saw.
    let wrong = state(&["delete", "job-lock", "--if-match", "\"1\""]);
    assert_eq!(wrong.status.code(), Some(4));
    assert_eq!(d.get("/v1/state/report/job-lock").status, 200);
    // `get --etag` prints the same tag; releasing with it works once.
    assert_eq!(
        out(&state(&["get", "report", "job-lock", "--etag"])).trim(),
        tag
    );
    let release = state(&["delete", "report/job-lock", "--if-match", &tag]);
    assert!(release.status.success(), "{}", stderr(&release));
    assert_eq!(d.get("/v1/state/report/job-lock").status, 404);
    let again = state(&["delete", "job-lock", "--if-match", &tag]);
    assert_eq!(again.status.code(), Some(4));
    // The seed's integer versions still work, and a malformed condition is refused.
    assert!(state(&["put", "v", "--data", "1", "--if-match", "0"])
        .status
        .success());
    assert_eq!(
        state(&["put", "v", "--data", "2", "--if-match", "0"])
            .status
            .code(),
        Some(4)
    );
    assert!(state(&["delete", "v", "--if-match", "1"]).status.success());
    let bad = state(&["put", "v", "--data", "1", "--if-match", "two"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("HTTP 400"), "{}", stderr(&bad));
}

#[test]
fn state_access_denied_on_the_socket_is_6_and_ends_a_watch() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if nix::unistd::Uid::effective().is_root()
        && skip_if_emulated(
            "runs the client as another user, who cannot read the emulated binary's build folder",
        )
    {
        return;
    }
    let node = Node::new();
    let d = node.daemon().start();
    let root = nix::unistd::Uid::effective().is_root();
    // The folder must be reachable, the socket itself not.
    std::fs::set_permissions(node.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o000)).unwrap();
    let as_other = |args: &[&str]| {
        let mut c = command();
        c.arg("state").arg("--socket").arg(&d.socket).args(args);
        if root {
            c.uid(65534).gid(65534);
        }
        c.output().unwrap()
    };
    let o = as_other(&[]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("access denied"), "{}", stderr(&o));
    // A watch does not retry what cannot work.
    let started = std::time::Instant::now();
    let o = as_other(&["watch", "metadata"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A socket that is not there is unreachable (5), as before.
    let o = run(&["state", "--socket", "/nonexistent/api.sock"]);
    assert_eq!(o.status.code(), Some(5));
}

#[test]
fn state_health_exits_7_when_degraded_or_not_ready() {
    let node = Node::new();
    // No control plane: ok and ready.
    let d = node.daemon().start();
    let o = state_at(&d.socket, &["health"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["status"], "ok");
    drop(d);
    // A control plane that is down: degraded (7) but ready (0 with --ready).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let d = node
        .daemon()
        .args(["--control-plane", url.as_str()])
        .start();
    assert!(eventually(Duration::from_secs(15), || {
        state_at(&d.socket, &["health"]).status.code() == Some(7)
    }));
    let o = state_at(&d.socket, &["health"]);
    assert!(stderr(&o).contains("degraded"), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"],
        "degraded"
    );
    let o = state_at(&d.socket, &["health", "--ready"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // No daemon: unreachable.
    drop(d);
    assert_eq!(state_at(&node.socket(), &["health"]).status.code(), Some(5));
}
