//! The README's examples, run as a reader runs them: against `plexd-nodeapi dev --http`
//! (what `make run` starts), from a folder of their own, with the paths the README
//! shows replaced by the ones dev prints, one block after another in README order.
//!
//! The convention (also written in an HTML comment at the top of README.md): the line
//! before every ```sh, ```bash or ```console block is one of
//!
//! * `<!-- example: run -->` — run by `bash -e -o pipefail`; it must exit 0 within a
//!   minute. A ```console block is `$ COMMAND` lines, each followed by the output it
//!   shows: each command must exit 0 and print lines of the same shape (the same JSON
//!   keys, recursively, where the README shows JSON).
//! * `<!-- example: run until Ctrl-C -->` — a loop or a watch: it must still be
//!   running after a few seconds and have printed something (in the shape shown, for
//!   a console block); then it gets Ctrl-C.
//! * `<!-- example: skip: REASON -->` — not run, for a reason a test cannot satisfy
//!   (systemd, a cluster, a cross build, …). A block without a marker fails the test.
//!
//! and the line before a ```json block marked `<!-- sample: GET PATH -->` is a sample
//! of that answer: it must have exactly the fields of the live answer, recursively.
//! Every `curl` in a shell block must fail loudly (`-f`, `--fail` or
//! `--fail-with-body`).

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the README shows for an installed daemon, or for a `make run` in a checkout at
/// `/home/alice/plexd-nodeapi`; each is replaced by what dev printed.
const README_DEV_DIR: &str = "/home/alice/plexd-nodeapi/.plexd-dev";
const README_SOCKET: &str = "/var/run/plexd/api.sock";
const README_TOKEN_FILE: &str = "/etc/plexd/http-token";
const README_TCP: &str = "127.0.0.1:9100";
const README_CONTROL_PLANE: &str = "http://127.0.0.1:38541";

/// How long a `run until Ctrl-C` block must keep running; it is interrupted then, once
/// it has printed something (or after `FIRST_OUTPUT_LIMIT`: a slow or emulated start).
const KEEPS_RUNNING: Duration = Duration::from_secs(3);
const FIRST_OUTPUT_LIMIT: Duration = Duration::from_secs(30);
/// How long a `run` block may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
enum Marker {
    Run,
    RunUntilInterrupted,
    Skip(String),
    Sample(String),
    Missing,
    Unknown(String),
}

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    marker: Marker,
    text: String,
}

impl Block {
    fn is_shell(&self) -> bool {
        matches!(self.lang.as_str(), "sh" | "bash" | "console" | "shell")
    }
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(path).expect("README.md")
}

fn marker(line: &str) -> Marker {
    let Some(inner) = line
        .trim()
        .strip_prefix("<!--")
        .and_then(|l| l.strip_suffix("-->"))
    else {
        return Marker::Missing;
    };
    let inner = inner.trim();
    if let Some(what) = inner.strip_prefix("example:") {
        match what.trim() {
            "run" => Marker::Run,
            "run until Ctrl-C" => Marker::RunUntilInterrupted,
            other => match other.strip_prefix("skip:") {
                Some(reason) => Marker::Skip(reason.trim().to_owned()),
                None => Marker::Unknown(inner.to_owned()),
            },
        }
    } else if let Some(path) = inner.strip_prefix("sample: GET ") {
        Marker::Sample(path.trim().to_owned())
    } else {
        Marker::Missing
    }
}

/// Every fenced block of `text`, with the marker on the line before it.
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut before = "";
    for (i, line) in text.lines().enumerate() {
        if let Some(block) = open.as_mut() {
            if line.starts_with("```") {
                out.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
        } else if let Some(info) = line.strip_prefix("```") {
            open = Some(Block {
                line: i + 1,
                lang: info.split_whitespace().next().unwrap_or("").to_owned(),
                marker: marker(before),
                text: String::new(),
            });
        }
        if !line.trim().is_empty() {
            before = line;
        }
    }
    assert!(open.is_none(), "README.md ends inside a fenced block");
    out
}

/// What dev printed, and where: the values the README's samples stand for.
struct Dev {
    run: DevRun,
    data: PathBuf,
    socket: PathBuf,
    tcp: String,
    control_plane: String,
}

impl Dev {
    fn start(data: PathBuf) -> Dev {
        let run = DevRun::start(&data);
        let socket = PathBuf::from(run.banner_value("socket:"));
        let tcp = run
            .banner_value("TCP listener:")
            .trim_start_matches("http://")
            .to_owned();
        let control_plane = run.banner_value("development control plane:");
        assert_eq!(socket, data.join("api.sock"), "{}", run.banner);
        Dev {
            run,
            data,
            socket,
            tcp,
            control_plane,
        }
    }

    /// `text` with the README's paths replaced by dev's, as a reader pastes it.
    fn substitute(&self, text: &str) -> String {
        let token_file = self.data.join("http-token");
        text.replace(README_DEV_DIR, &self.data.to_string_lossy())
            .replace(README_SOCKET, &self.socket.to_string_lossy())
            .replace(README_TOKEN_FILE, &token_file.to_string_lossy())
            .replace(README_TCP, &self.tcp)
            .replace(README_CONTROL_PLANE, &self.control_plane)
    }

    fn get_json(&self, path: &str) -> Value {
        let r = try_request(&self.socket, "GET", path, &[], None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }
}

/// A folder with `plexd-nodeapi` in it, as an installed binary is on `PATH`: the binary
/// under test, through its runner if there is one.
fn bin_folder(dir: &Path) -> PathBuf {
    let folder = dir.join("bin");
    std::fs::create_dir_all(&folder).unwrap();
    let link = folder.join("plexd-nodeapi");
    let runner = runner();
    if runner.is_empty() {
        std::os::unix::fs::symlink(bin(), &link).unwrap();
    } else {
        use std::os::unix::fs::PermissionsExt;
        let script = format!(
            "#!/bin/sh\nexec {} '{}' \"$@\"\n",
            runner.join(" "),
            bin().display()
        );
        std::fs::write(&link, script).unwrap();
        std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    folder
}

/// The shell a block runs in: its own folder, the binary on `PATH`, and
/// `PLEXD_NODEAPI_SOCKET` exported as the README tells readers of `make run` to.
struct Shell {
    cwd: PathBuf,
    path: String,
    socket: PathBuf,
}

struct Ran {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    /// Still running when it was interrupted.
    kept_running: bool,
}

impl Shell {
    fn spawn(&self, script: &str) -> std::process::Child {
        let mut cmd = Command::new("bash");
        cmd.args(["-e", "-o", "pipefail", "-c", script])
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            .env("PLEXD_NODEAPI_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches the whole pipeline, as in a terminal.
            .process_group(0);
        cmd.spawn().expect("bash")
    }

    /// Runs `script` to its end (`RUN_LIMIT`), or until it has run `KEEPS_RUNNING` and
    /// printed something, and then Ctrl-C.
    fn run(&self, script: &str, until_interrupted: bool) -> Ran {
        let mut child = self.spawn(script);
        let (out, printed) = collect(child.stdout.take().unwrap());
        let (err, _) = collect(child.stderr.take().unwrap());
        let started = Instant::now();
        let mut kept_running = false;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            let elapsed = started.elapsed();
            let stop = if until_interrupted {
                (elapsed >= KEEPS_RUNNING && printed.load(Ordering::Acquire))
                    || elapsed >= FIRST_OUTPUT_LIMIT
            } else {
                elapsed >= RUN_LIMIT
            };
            if stop {
                kept_running = true;
                let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT);
                let stop = Instant::now() + Duration::from_secs(10);
                while child.try_wait().unwrap().is_none() && Instant::now() < stop {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ran {
            status: status.code(),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
            kept_running,
        }
    }
}

/// Reads a pipe to its end on a thread of its own; the flag says whether anything but
/// white space arrived yet.
fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
) -> (std::thread::JoinHandle<String>, Arc<AtomicBool>) {
    let printed = Arc::new(AtomicBool::new(false));
    let seen = printed.clone();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            bytes.extend_from_slice(&chunk[..n]);
            if bytes.iter().any(|b| !b.is_ascii_whitespace()) {
                seen.store(true, Ordering::Release);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    (reader, printed)
}

/// The shape of a JSON value: object keys (recursively), arrays as the union of their
/// elements' shapes; scalars are all alike (a sample's `null` may be a string live).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum Shape {
    Scalar,
    Object(Vec<(String, Shape)>),
    Array(BTreeSet<Shape>),
}

fn shape(v: &Value) -> Shape {
    match v {
        Value::Object(map) => {
            Shape::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Shape::Array(items.iter().map(shape).collect()),
        _ => Shape::Scalar,
    }
}

/// Where two shapes differ, as paths (empty: the same).
fn differences(sample: &Shape, live: &Shape, at: &str, out: &mut Vec<String>) {
    match (sample, live) {
        (Shape::Scalar, Shape::Scalar) => {}
        (Shape::Object(a), Shape::Object(b)) => {
            let keys_a: BTreeSet<&String> = a.iter().map(|(k, _)| k).collect();
            let keys_b: BTreeSet<&String> = b.iter().map(|(k, _)| k).collect();
            for k in keys_b.difference(&keys_a) {
                out.push(format!("{at}.{k}: missing in the sample"));
            }
            for k in keys_a.difference(&keys_b) {
                out.push(format!("{at}.{k}: not in the live answer"));
            }
            for (k, sa) in a {
                if let Some((_, sb)) = b.iter().find(|(kb, _)| kb == k) {
                    differences(sa, sb, &format!("{at}.{k}"), out);
                }
            }
        }
        (Shape::Array(a), Shape::Array(b)) => {
            if a.is_empty() != b.is_empty() {
                out.push(format!("{at}: one array is empty, the other is not"));
            }
            for sa in a {
                for sb in b {
                    differences(sa, sb, &format!("{at}[]"), out);
                }
            }
        }
        (a, b) => out.push(format!("{at}: {a:?} in the sample, {b:?} live")),
    }
}

fn same_shape(sample: &Value, live: &Value) -> Vec<String> {
    let mut out = Vec::new();
    differences(&shape(sample), &shape(live), "", &mut out);
    out
}

/// Whether a curl command line in `words` fails on an error status.
fn curl_fails_loudly(words: &[&str]) -> bool {
    words.iter().any(|w| {
        matches!(*w, "--fail" | "--fail-with-body")
            || (w.starts_with('-') && !w.starts_with("--") && w.contains('f'))
    })
}

/// A console block: `$ COMMAND` lines, each with the output lines it shows.
fn console_commands(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.push((cmd.to_owned(), Vec::new()));
        } else if let Some((_, shown)) = out.last_mut() {
            shown.push(line.to_owned());
        }
    }
    out
}

/// Output lines of the shape shown: the same JSON keys where the README shows JSON.
fn assert_output_like(got: &str, shown: &[String], what: &str) {
    let got: Vec<&str> = got.lines().collect();
    assert!(
        !got.is_empty(),
        "{what}: printed nothing, the README shows {shown:?}"
    );
    for (got, shown) in got.iter().zip(shown) {
        if let Ok(sample) = serde_json::from_str::<Value>(shown) {
            let live: Value = serde_json::from_str(got).unwrap_or_else(|e| {
                panic!("{what}: {got:?} is not JSON ({e}), the README shows {shown}")
            });
            let diff = same_shape(&sample, &live);
            assert!(
                diff.is_empty(),
                "{what}: {got} vs the README's {shown}: {diff:?}"
            );
        }
    }
}

#[test]
fn every_shell_block_is_marked_and_every_curl_fails_loudly() {
    let blocks = blocks(&readme());
    let mut run = 0;
    for b in blocks.iter().filter(|b| b.is_shell()) {
        match &b.marker {
            Marker::Run | Marker::RunUntilInterrupted => run += 1,
            Marker::Skip(reason) => assert!(
                reason.len() >= 10,
                "README.md:{}: a skipped example says why",
                b.line
            ),
            other => panic!(
                "README.md:{}: ```{} needs <!-- example: run --> or <!-- example: skip: REASON --> on the line before (found {other:?})",
                b.line, b.lang
            ),
        }
        let joined = b.text.replace("\\\n", " ");
        for line in joined.lines() {
            for part in line.split(['|', ';', '(']).filter(|p| p.contains("curl ")) {
                let words: Vec<&str> = part.split_whitespace().collect();
                assert!(
                    curl_fails_loudly(&words),
                    "README.md:{}: curl without -f/--fail-with-body hides failures: {}",
                    b.line,
                    line.trim()
                );
            }
        }
    }
    for b in blocks.iter().filter(|b| !b.is_shell()) {
        assert!(
            matches!(b.marker, Marker::Sample(_) | Marker::Missing),
            "README.md:{}: a marker on a ```{} block: {:?}",
            b.line,
            b.lang,
            b.marker
        );
    }
    assert!(run >= 10, "only {run} runnable examples");
}

#[test]
fn the_shape_comparison_sees_a_missing_field() {
    let sample = serde_json::json!({"a": 1, "b": {"c": null}, "l": [{"k": 1}]});
    assert!(same_shape(
        &sample,
        &serde_json::json!({"a": 2, "b": {"c": "x"}, "l": [{"k": 3}]})
    )
    .is_empty());
    assert_eq!(
        same_shape(
            &sample,
            &serde_json::json!({"a": 1, "b": {"c": 1, "d": 2}, "l": [{"k": 1}]})
        ),
        [".b.d: missing in the sample"]
    );
    assert_eq!(
        same_shape(
            &sample,
            &serde_json::json!({"a": 1, "b": {"c": 1}, "l": [{"k": 1, "v": 2}]})
        ),
        [".l[].v: missing in the sample"]
    );
    assert_eq!(
        same_shape(&sample, &serde_json::json!({"b": {"c": 1}, "l": []})),
        [
            ".a: not in the live answer",
            ".l: one array is empty, the other is not"
        ]
    );
}

#[test]
fn readme_samples_and_examples_hold_against_a_dev_daemon() {
    for tool in ["curl", "jq"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("{tool} not installed (CI installs it): the README's examples cannot be run");
            return;
        }
    }
    let text = readme();
    let blocks = blocks(&text);
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path().join("dev"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let shell = Shell {
        cwd: work,
        path: format!(
            "{}:{}",
            bin_folder(dir.path()).display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        socket: dev.socket.clone(),
    };

    // The samples, against the demo node with the quick start's report written (its
    // first example), before the examples change anything.
    let put = try_request(
        &dev.socket,
        "PUT",
        "/v1/state/report/app-health",
        &[],
        Some(br#"{"content_type":"application/json","payload":{"status":"healthy"}}"#),
    )
    .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    let mut samples = 0;
    for b in &blocks {
        let Marker::Sample(path) = &b.marker else {
            continue;
        };
        let sample: Value = serde_json::from_str(&b.text)
            .unwrap_or_else(|e| panic!("README.md:{}: the sample is not JSON: {e}", b.line));
        let live = dev.get_json(path);
        let diff = same_shape(&sample, &live);
        assert!(
            diff.is_empty(),
            "README.md:{}: the sample of GET {path} differs from the live answer: {diff:#?}\nlive: {live:#}",
            b.line
        );
        samples += 1;
    }
    assert!(samples >= 2, "the samples of /v1/state and /v1/health");

    // The examples, in order.
    let mut ran = 0;
    for b in blocks.iter().filter(|b| b.is_shell()) {
        let until_interrupted = match b.marker {
            Marker::Run => false,
            Marker::RunUntilInterrupted => true,
            _ => continue,
        };
        let script = dev.substitute(&b.text);
        let what = format!("README.md:{}", b.line);
        if b.lang == "console" {
            let commands = console_commands(&script);
            assert!(!commands.is_empty(), "{what}: no $ command");
            for (cmd, shown) in commands {
                let ran = shell.run(&cmd, until_interrupted);
                check(&ran, until_interrupted, &format!("{what}: {cmd}"));
                assert_output_like(&ran.stdout, &shown, &format!("{what}: {cmd}"));
            }
        } else {
            let result = shell.run(&script, until_interrupted);
            check(&result, until_interrupted, &format!("{what}:\n{script}"));
        }
        ran += 1;
    }
    assert!(ran >= 10, "{ran} examples ran");
    assert_eq!(dev.run.interrupt().code(), Some(0));
}

/// A `run` block exited 0; a `run until Ctrl-C` block was still running, with output.
fn check(ran: &Ran, until_interrupted: bool, what: &str) {
    let output = format!("stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    if until_interrupted {
        assert!(
            ran.kept_running,
            "{what}\nended early ({:?})\n{output}",
            ran.status
        );
        assert!(
            !ran.stdout.trim().is_empty(),
            "{what}\nprinted nothing\n{output}"
        );
    } else {
        assert!(
            !ran.kept_running,
            "{what}\nstill running after {RUN_LIMIT:?}\n{output}"
        );
        assert_eq!(ran.status, Some(0), "{what}\n{output}");
    }
}
