//! `plexd-nodeapi dev`: the daemon against the built-in development control plane, in a
//! local folder, as an ordinary user — the README's first command.
//!
//! Creates (once) a data folder with an identity, an NSK and the control plane's event
//! signing key, starts the development control plane with demo state on a loopback
//! port, starts the daemon against it, and prints commands to paste — with absolute
//! paths, so they work from any folder, and `curl -fsS`, so a failure shows. With
//! `--http` the daemon also opens its TCP listener with a token generated into the
//! data folder (once), and the commands show bearer auth and `/metrics`. Nothing here
//! is used by `serve`.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client::LocalClient;
use super::config::{Config, Settings};
use super::daemon::{Daemon, SignalWait};
use super::error::{CliError, Failure};
use crate::devcp::{DevConfig, DevControlPlane};
use crate::encoding::encode_hex;
use crate::secrets::nsk::Nsk;
use crate::telemetry::logging;

pub const DEFAULT_DEV_DIR: &str = ".plexd-dev";
pub const DEV_NODE_ID: &str = "dev-node";

#[derive(Debug, Default)]
pub struct DevOptions {
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// `--http [ADDR]`: the TCP listener too.
    pub http: Option<HttpListen>,
}

/// Where `dev --http` listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// 127.0.0.1:9100, or another free loopback port if that one is taken.
    Default,
    At(SocketAddr),
}

impl HttpListen {
    fn resolve(self) -> SocketAddr {
        match self {
            HttpListen::At(addr) => addr,
            HttpListen::Default => {
                let preferred: SocketAddr = ([127, 0, 0, 1], 9100).into();
                // Another program (node_exporter's default port) may hold 9100.
                match TcpListener::bind(preferred) {
                    Ok(_) => preferred,
                    Err(_) => ([127, 0, 0, 1], 0).into(),
                }
            }
        }
    }
}

/// Who reports a failure of `dev`.
const WHO: &str = "plexd-nodeapi dev";

fn fail(message: String) -> Failure {
    CliError::Failed(message).by(WHO)
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// Writes `content` to `path` (0600) through a temporary file and a rename.
fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_private(&tmp, content)?;
    fs::rename(&tmp, path)
}

/// 32 random bytes as 64 hex digits.
fn random_hex() -> std::io::Result<String> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("no system randomness"))?;
    Ok(encode_hex(&key))
}

/// The TCP listener's token file, created with a random token if missing.
fn prepare_http_token(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("http-token");
    if !path.exists() {
        write_private(&path, format!("{}\n", random_hex()?).as_bytes())?;
    }
    Ok(path)
}

/// Creates the identity and NSK files if missing; returns the NSK file's text.
fn prepare_data_dir(dir: &Path) -> std::io::Result<String> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let identity = dir.join("identity.json");
    if !identity.exists() {
        write_private(
            &identity,
            format!("{{\"node_id\":\"{DEV_NODE_ID}\"}}\n").as_bytes(),
        )?;
    }
    let nsk_path = dir.join("node_secret_key");
    if !nsk_path.exists() {
        write_private(&nsk_path, format!("{}\n", random_hex()?).as_bytes())?;
    }
    Ok(fs::read_to_string(&nsk_path)?.trim().to_owned())
}

pub fn run(opts: DevOptions) -> Result<(), Failure> {
    let data_dir = absolute(
        &opts
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DEV_DIR)),
    );
    let socket = absolute(&opts.socket.unwrap_or_else(|| data_dir.join("api.sock")));
    let token = match prepare_data_dir(&data_dir) {
        Ok(t) => t,
        Err(e) => return Err(fail(format!("cannot prepare {}: {e}", data_dir.display()))),
    };
    let http_token_file = match opts.http.map(|_| prepare_http_token(&data_dir)).transpose() {
        Ok(t) => t,
        Err(e) => {
            return Err(fail(format!(
                "cannot write {}/http-token: {e}",
                data_dir.display()
            )))
        }
    };
    let nsk = match Nsk::parse(token.as_bytes()) {
        Ok(n) => n,
        Err(e) => {
            return Err(fail(format!(
                "{}: {e}",
                data_dir.join("node_secret_key").display()
            )))
        }
    };
    logging::init(log::LevelFilter::Info);
    let devcp = match DevControlPlane::start(DevConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        node_id: DEV_NODE_ID.to_owned(),
        nsk,
        token: token.clone(),
        demo: true,
        signing_seed: None,
    }) {
        Ok(d) => d,
        Err(e) => {
            return Err(fail(format!(
                "cannot start the development control plane: {e}"
            )))
        }
    };
    // The daemon trusts the development control plane's event key from the start.
    let key_file = data_dir.join("signing_public_key");
    if let Err(e) = replace_file(
        &key_file,
        format!("{}\n", devcp.signing_public_key()).as_bytes(),
    ) {
        devcp.stop();
        return Err(fail(format!("cannot write {}: {e}", key_file.display())));
    }
    let settings = Settings {
        data_dir: Some(data_dir.clone()),
        socket: Some(socket.clone()),
        control_plane: Some(devcp.url()),
        debounce: Some("1s".into()),
        reconcile_interval: Some("30s".into()),
        http_listen: opts.http.map(|h| h.resolve().to_string()),
        http_token_file: http_token_file.clone(),
        ..Settings::default()
    };
    let config = match Config::from_settings(settings) {
        Ok(c) => c,
        Err(e) => return Err(fail(e.to_string())),
    };
    let signals = match SignalWait::install() {
        Ok(s) => s,
        Err(e) => return Err(fail(format!("signal handling: {e}"))),
    };
    let daemon = match Daemon::start(config) {
        Ok(d) => d,
        Err(e) => {
            devcp.stop();
            return Err(e.by(WHO));
        }
    };
    let region_index = settle(&socket);
    let tcp = daemon.http_listen.zip(http_token_file);
    print_banner(
        &socket,
        &devcp.url(),
        tcp.as_ref().map(|(a, t)| (*a, t.as_path())),
        region_index,
    );
    let _ = signals.wait();
    daemon.shutdown();
    devcp.stop();
    Ok(())
}

/// Waits (a few seconds at most) until the daemon has fetched the development control
/// plane's state once, so what the banner says holds from its first line; returns the
/// `X-Plexd-Index` of the demo's metadata key `region` then.
fn settle(socket: &Path) -> Option<u64> {
    let client = LocalClient::new(socket).with_timeout(Some(Duration::from_secs(2)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let ready = client
            .request("GET", "/v1/health?ready", &[], None)
            .is_ok_and(|r| r.status == 200);
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    client
        .request("GET", "/v1/state/metadata/region", &[], None)
        .ok()?
        .header("x-plexd-index")?
        .parse()
        .ok()
}

/// `path` made absolute against the current folder (the banner's commands must work
/// from anywhere).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    std::env::current_dir().map_or_else(|_| path.to_owned(), |cwd| cwd.join(path))
}

/// A word for a shell command line, single-quoted if it needs quoting.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@%+=,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn print_banner(socket: &Path, cp: &str, tcp: Option<(SocketAddr, &Path)>, index: Option<u64>) {
    let s = shell_word(&socket.to_string_lossy());
    let bin = std::env::current_exe()
        .map(|p| shell_word(&p.to_string_lossy()))
        .unwrap_or_else(|_| "plexd-nodeapi".to_owned());
    let get = |path: &str| format!("  curl -fsS --unix-socket {s} http://localhost{path}");
    let mut out = format!(
        "
plexd-nodeapi dev is running (Ctrl-C stops it and its control plane).
  socket:                    {s}
  development control plane: {cp}   (admin API: README, \"The development control plane\")
"
    );
    if let Some((addr, token_file)) = tcp {
        let token = fs::read_to_string(token_file).unwrap_or_default();
        out.push_str(&format!(
            "  TCP listener:              http://{addr}   token: {}   (in {})\n",
            token.trim(),
            shell_word(&token_file.to_string_lossy())
        ));
    }
    out.push_str(&format!(
        "
Paste these into another terminal:

{}
{}
{}
{}
  curl -fsS --unix-socket {s} -X PUT -d '{{\"content_type\":\"application/json\",\"payload\":{{\"status\":\"healthy\"}}}}' \\
       http://localhost/v1/state/report/app-health
  curl -fsS {cp}/admin/reports        # what the control plane received (after the 1s debounce)
  {bin} state --socket {s} get metadata region
",
        get("/v1/state"),
        get("/v1/state/metadata/region"),
        get("/v1/state/data/database-config"),
        get("/v1/state/secrets/db-password"),
    ));
    if let Some((addr, token_file)) = tcp {
        let auth = format!(
            "-H \"Authorization: Bearer $(cat {})\"",
            shell_word(&token_file.to_string_lossy())
        );
        out.push_str(&format!(
            "
Over TCP with the bearer token (Prometheus scrapes /metrics the same way):

  curl -fsS {auth} http://{addr}/v1/state
  curl -fsS {auth} http://{addr}/metrics | grep '^plexd_nodeapi_requests_total'
  curl -sS -o /dev/null -w '%{{http_code}}\\n' http://{addr}/v1/state      # 401 without it
"
        ));
    }
    let wait = match index {
        Some(i) => format!(
            "  curl -fsS --unix-socket {s} 'http://localhost/v1/state/metadata/region?index={i}&wait=10s'"
        ),
        None => get("/v1/state/metadata/region"),
    };
    out.push_str(&format!(
        "
Change state upstream: the control plane signs an event and the change reaches the
socket within a second (the 30s reconciliation is only the safety net). A forged,
unsigned event is rejected. Events are handled in order, so when the blocking query
below answers with the signed change, the forged event has been judged:

  curl -fsS -X POST -d '{{\"event_type\":\"node_state_updated\",\"payload\":{{\"metadata\":{{\"region\":\"forged\"}}}}}}' {cp}/admin/events
  curl -fsS -X PUT -d '\"us-west-2\"' {cp}/admin/metadata/region
{wait}
  curl -fsS --unix-socket {s} http://localhost/metrics | grep '^plexd_nodeapi_events_rejected_total'
"
    ));
    println!("{out}");
    let _ = std::io::stdout().flush();
}
