//! `plexd-nodeapi dev --http`, as the quick start runs it: every command its banner
//! prints is run, in order, from another folder (absolute paths, `curl -fsS`, so a
//! failure fails the test), including bearer auth and `/metrics` on the TCP listener
//! and the signed/unsigned event demo; Ctrl-C ends it with status 0.

use crate::common::*;
use std::process::Command;

/// The banner's paste-able commands: lines starting with `curl` or the binary, with
/// `\` continuations joined.
fn commands(banner: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut continued = false;
    for line in banner.lines() {
        let text = line.trim();
        if continued {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(text.trim_end_matches('\\'));
            }
        } else if text.starts_with("curl ") || text.contains("plexd-nodeapi state ") {
            out.push(text.trim_end_matches('\\').to_owned());
        }
        continued = text.ends_with('\\');
    }
    out
}

#[test]
fn dev_with_http_prints_commands_that_work_from_anywhere() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: the banner's commands cannot be run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = DevRun::start(&data);
    let banner = &dev.banner;
    // Absolute paths, the token printed and kept in a private file.
    let socket = data.join("api.sock");
    assert!(
        banner.contains(&format!("socket:                    {}", socket.display())),
        "{banner}"
    );
    let token_file = data.join("http-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        banner.contains(&format!("token: {}", token.trim())),
        "{banner}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !banner.contains("curl -s "),
        "curl -fsS everywhere: {banner}"
    );

    let commands = commands(banner);
    assert!(commands.len() >= 12, "{commands:?}");
    // Under an emulator the printed binary (the ARM one) runs through it, as it would
    // on the host it was built for without one.
    let binary = bin().display().to_string();
    let runner = runner();
    for cmd in &commands {
        let cmd = &if runner.is_empty() {
            cmd.clone()
        } else {
            cmd.replace(&binary, &format!("{} {binary}", runner.join(" ")))
        };
        let o = Command::new("bash")
            .args(["-o", "pipefail", "-c", cmd])
            .current_dir("/")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{cmd}\n{text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if cmd.contains("%{http_code}") {
            assert_eq!(text.trim(), "401", "{cmd}");
        } else if cmd.contains("wait=10s") {
            assert!(text.contains("us-west-2"), "{cmd}: {text}");
        } else if cmd.contains("events_rejected_total") {
            let rejected: f64 = text
                .lines()
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert!(rejected >= 1.0, "the forged event was rejected: {text}");
        } else if cmd.contains("requests_total") {
            assert!(text.contains("plexd_nodeapi_requests_total{"), "{text}");
        }
    }
    // The forged event changed nothing.
    let region = try_request(&socket, "GET", "/v1/state/metadata/region", &[], None).unwrap();
    assert_eq!(region.json()["value"], "us-west-2");

    assert_eq!(dev.interrupt().code(), Some(0));
}
