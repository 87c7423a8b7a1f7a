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
