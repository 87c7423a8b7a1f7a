//! The daemon under test: a data directory prepared the way plexd leaves one (NSK file,
//! HTTP token file, a state cache of data entries written straight to
//! `state/data/*.json` plus `state/metadata.json`), spawning a subject (ours or the
//! reference, `subject.rs`) with the `serve` flags of the README, waiting for the socket to answer
//! `GET /v1/state` with 200, and stopping it (SIGTERM, then SIGKILL after a bound). The
//! daemon's stderr goes to `DIR/daemon.log`, whose tail is quoted when it fails to start.
//!
//! It deliberately does not build the binary (cargo builds it before a bench runs,
//! see `daemon_binary`) nor know anything about routes beyond the readiness probe.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plexd_nodeapi::model::DataEntry;

use super::loadgen::{build_request, request_once, Target};
use super::subject::Subject;
use super::BenchError;

pub const NODE_ID: &str = "bench-node";
/// 32 bytes as 64 hex chars (accepted by `--nsk-file`); also the control-plane token,
/// since `--cp-token-file` defaults to the NSK file.
pub const NSK_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const HTTP_TOKEN: &str = "bench-http-token";

/// Our binary: the one cargo built for this bench (release profile under `cargo
/// bench`), or `$PLEXD_NODEAPI_BIN` when set (e.g. the static musl build, or an older
/// commit's build for a before/after comparison).
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("PLEXD_NODEAPI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_plexd-nodeapi")))
}

/// The cache content every daemon fixture starts from.
pub fn bench_metadata() -> Vec<(String, String)> {
    [
        ("region", "eu-central-1"),
        ("zone", "eu-central-1a"),
        ("hostname", "bench-node"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `(key, content_type, payload JSON)` of data entry `n`.
pub fn bench_data_entry(n: usize) -> (String, String, String) {
    (
        format!("key-{n}"),
        "application/json".to_string(),
        format!("{{\"n\":{n}}}"),
    )
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Creates `dir` as a node data directory whose cache holds `entries` (one plexd
/// `DataEntry` file each) and `bench_metadata()`.
pub fn prepare_data_dir(dir: &Path, entries: &[DataEntry]) -> Result<(), BenchError> {
    let data = dir.join("state").join("data");
    fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
    fs::create_dir_all(dir.join("state").join("report"))
        .map_err(io_err("creating state/report"))?;
    fs::write(dir.join("nsk"), NSK_HEX).map_err(io_err("writing the NSK file"))?;
    fs::write(dir.join("http-token"), HTTP_TOKEN).map_err(io_err("writing the token file"))?;
    let meta: serde_json::Map<String, serde_json::Value> = bench_metadata()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    fs::write(
        dir.join("state").join("metadata.json"),
        serde_json::Value::Object(meta).to_string(),
    )
    .map_err(io_err("writing metadata.json"))?;
    for e in entries {
        let name = plexd_nodeapi::store::keys::file_name_for(&e.key)
            .ok_or_else(|| BenchError::Setup(format!("no file name for key {}", e.key)))?;
        let json = serde_json::to_string(e)
            .map_err(|err| BenchError::Setup(format!("encoding {}: {err}", e.key)))?;
        fs::write(data.join(name), json)
            .map_err(io_err(format!("writing data entry {}", e.key)))?;
    }
    Ok(())
}

/// A free loopback port (bound, then released: a tiny race we accept in a bench).
pub fn free_port() -> Result<SocketAddr, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    l.local_addr().map_err(io_err("finding a free port"))
}

/// Pids of daemons started and not yet reaped, for `kill_all_live` (the watchdog).
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn set_live(pid: u32, live: bool) {
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|&p| p != pid);
        if live {
            l.push(pid);
        }
    }
}

/// SIGKILLs every daemon still running (used before aborting a stuck bench).
pub fn kill_all_live() {
    let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// How to start one daemon.
pub struct DaemonConfig<'a> {
    pub dir: &'a Path,
    pub control_plane: String,
    pub tcp: bool,
    /// The control plane's event signing key (base64), written to `DIR/signing-key` and
    /// passed as `--signing-key-file` (the Go agent refuses to start without one).
    pub signing_key: Option<String>,
    /// Further flags (`--name`, value) beyond the basic ones.
    pub extra: Vec<(&'static str, Option<String>)>,
}

impl<'a> DaemonConfig<'a> {
    pub fn new(dir: &'a Path, control_plane: String) -> DaemonConfig<'a> {
        DaemonConfig {
            dir,
            control_plane,
            tcp: false,
            signing_key: None,
            extra: Vec::new(),
        }
    }
}

/// A running daemon; killed on drop if not stopped.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    log: PathBuf,
    pub spawned_at: Instant,
}

impl Daemon {
    /// Starts `subject` on `cfg.dir`. `BenchError::Unsupported` if the subject lacks a
    /// flag `cfg` needs.
    pub fn spawn(subject: &Subject, cfg: &DaemonConfig<'_>) -> Result<Daemon, BenchError> {
        let socket = cfg.dir.join("api.sock");
        let log = cfg.dir.join("daemon.log");
        let path = |p: &Path| Some(p.display().to_string());
        let mut flags: Vec<(&str, Option<String>)> = vec![
            ("--data-dir", path(cfg.dir)),
            ("--socket", path(&socket)),
            ("--node-id", Some(NODE_ID.to_string())),
            ("--nsk-file", path(&cfg.dir.join("nsk"))),
            ("--control-plane", Some(cfg.control_plane.clone())),
        ];
        let tcp = if cfg.tcp {
            let addr = free_port()?;
            flags.push(("--http-listen", Some(addr.to_string())));
            flags.push(("--http-token-file", path(&cfg.dir.join("http-token"))));
            Some(addr)
        } else {
            None
        };
        if let Some(key) = &cfg.signing_key {
            let file = cfg.dir.join("signing-key");
            fs::write(&file, key).map_err(io_err("writing the signing key file"))?;
            flags.push(("--signing-key-file", path(&file)));
        }
        flags.extend(cfg.extra.iter().cloned());
        let mut cmd = subject.command(&flags)?;
        let log_file = fs::File::create(&log).map_err(io_err("creating daemon.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawning {}", subject.bin.display())))?;
        set_live(child.id(), true);
        Ok(Daemon {
            child: Some(child),
            socket,
            tcp,
            log,
            spawned_at,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn unix_target(&self) -> Target {
        Target::Unix(self.socket.clone())
    }

    /// Polls `GET /v1/state` on the socket until it answers 200; returns the time since
    /// spawn. Fails early if the process exits.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<Duration, BenchError> {
        let req = build_request("GET", "/v1/state", &[], None);
        let target = self.unix_target();
        let deadline = self.spawned_at + limit;
        loop {
            if let Ok(mut s) = target.connect() {
                if let Ok((200, _)) = request_once(&mut s, &req, Duration::from_secs(2)) {
                    return Ok(self.spawned_at.elapsed());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    set_live(child.id(), false);
                    self.child = None;
                    return Err(BenchError::Daemon(format!(
                        "daemon exited ({status}) before answering GET /v1/state; log tail: {}",
                        self.log_tail()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Daemon(format!(
                    "socket {} did not answer GET /v1/state with 200 within {limit:?}; log tail: {}",
                    self.socket.display(),
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_micros(500));
        }
    }

    /// The last 5 lines of the daemon's log, joined with ` | `.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(empty)".to_string()
        } else {
            tail
        }
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        set_live(child.id(), false);
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}
