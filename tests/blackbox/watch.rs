//! `plexd-nodeapi state watch` against a real daemon: one compact JSON line per change,
//! `-- COMMAND` run once per change with the body on stdin and `PLEXD_INDEX` set,
//! a missing key waited for, an unreachable daemon retried, an index that goes
//! backwards (another store) reset, Ctrl-C → exit 0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crate::common::*;

struct Watch {
    child: Child,
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Watch {
    fn start(socket: &Path, dir: &Path, args: &[&str]) -> Watch {
        let stderr = dir.join(format!("watch-{}.err", std::process::id()));
        // `--socket` before the subcommand: after `--` it would belong to COMMAND.
        let mut child = command()
            .arg("state")
            .arg("--socket")
            .arg(socket)
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn state watch");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            lines,
            stderr,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no line; stderr: {}", self.stderr_text()))
    }

    fn no_line_for(&self, d: Duration) -> bool {
        self.lines.recv_timeout(d).is_err()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Ctrl-C: the watch must exit 0.
    fn interrupt(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        for _ in 0..250 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "Ctrl-C exit status {status:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("watch did not exit on SIGINT");
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn put(d: &TestDaemon, key: &str, payload: &str) {
    let r = d.put(
        &format!("/v1/state/report/{key}"),
        &format!(r#"{{"content_type":"application/json","payload":{payload}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn prints_one_compact_json_line_per_change() {
    let node = Node::new();
    let d = node.daemon().start();
    let w = Watch::start(&d.socket, node.path(), &["report"]);
    assert_eq!(w.line(), "[]", "the current value comes first");
    put(&d, "a", r#"{"x": 1}"#);
    let line = w.line();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v, serde_json::json!([{"key":"a","version":1}]));
    assert!(!line.contains(' '), "not compact: {line}");
    assert_eq!(d.delete("/v1/state/report/a").status, 204);
    assert_eq!(w.line(), "[]");
    assert!(w.no_line_for(Duration::from_millis(300)), "spurious line");
    w.interrupt();
}

#[test]
fn runs_the_command_once_per_change_with_the_body_and_index() {
    let node = Node::new();
    let d = node.daemon().start();
    put(&d, "cfg", r#"{"v":1}"#);
    let log = node.path().join("runs.log");
    let script = format!(
        "printf '%s ' \"$PLEXD_INDEX\" >> {0}; tr -d '\\n' >> {0}; echo >> {0}",
        log.display()
    );
    let w = Watch::start(
        &d.socket,
        node.path(),
        &["report/cfg", "--", "sh", "-c", &script],
    );
    let runs = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || runs().len() == 1));
    put(&d, "cfg", r#"{"v":2}"#);
    assert!(eventually(Duration::from_secs(5), || runs().len() == 2));
    // Another key is not a change of this one.
    put(&d, "other", "0");
    put(&d, "cfg", r#"{"v":3}"#);
    assert!(eventually(Duration::from_secs(5), || runs().len() == 3));
    std::thread::sleep(Duration::from_millis(300));
    let runs = runs();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let mut last = 0u64;
    for (n, run) in runs.iter().enumerate() {
        let (index, body) = run.split_once(' ').unwrap();
        let index: u64 = index.parse().expect("PLEXD_INDEX set");
        assert!(index > last);
        last = index;
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["payload"]["v"], n + 1);
    }
    w.interrupt();
}

#[test]
fn waits_for_a_missing_key_to_appear() {
    let node = Node::new();
    let d = node.daemon().start();
    let w = Watch::start(&d.socket, node.path(), &["report/later"]);
    assert!(eventually(Duration::from_secs(5), || w
        .stderr_text()
        .contains("waiting for it to appear")));
    assert!(w.no_line_for(Duration::from_millis(200)));
    put(&d, "later", r#""now""#);
    let v: serde_json::Value = serde_json::from_str(&w.line()).unwrap();
    assert_eq!(v["payload"], "now");
    assert_eq!(
        w.stderr_text().matches("waiting for it to appear").count(),
        1,
        "said once"
    );
    w.interrupt();
}

#[test]
fn survives_an_unreachable_daemon_and_a_store_that_went_backwards() {
    let node = Node::new();
    // No daemon yet: retried with a one-line message.
    let w = Watch::start(&node.socket(), node.path(), &["report"]);
    assert!(eventually(Duration::from_secs(5), || w
        .stderr_text()
        .contains("daemon unreachable")));
    let d = node.daemon().start();
    for i in 0..3 {
        put(&d, "k", &i.to_string());
    }
    // The watch prints every version it sees: maybe [] first, maybe intermediate
    // versions of k, and in the end version 3.
    let mut line = w.line();
    for _ in 0..4 {
        if line.contains("\"version\":3") {
            break;
        }
        line = w.line();
    }
    assert!(
        line.contains("\"k\"") && line.contains("\"version\":3"),
        "{line}"
    );
    assert_eq!(w.stderr_text().matches("daemon unreachable").count(), 1);

    // Another store behind the same socket: its revisions start lower.
    assert!(d.stop().success());
    std::fs::remove_dir_all(node.state()).unwrap();
    let d = node.daemon().start();
    assert_eq!(w.line(), "[]");
    assert!(
        w.stderr_text().contains("went backwards"),
        "{}",
        w.stderr_text()
    );
    put(&d, "fresh", "1");
    assert!(w.line().contains("fresh"));
    w.interrupt();
}

#[test]
fn usage_errors() {
    let node = Node::new();
    let run = |args: &[&str]| {
        command()
            .arg("state")
            .arg("--socket")
            .arg(node.socket())
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(run(&["watch"]).status.code(), Some(2));
    assert_eq!(run(&["watch", "nope"]).status.code(), Some(2));
    assert_eq!(run(&["watch", "data", "--"]).status.code(), Some(2));
    assert_eq!(run(&["get", "data", "--", "x"]).status.code(), Some(2));
    let help = run(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("watch KIND[/KEY]"));
}
