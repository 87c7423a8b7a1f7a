//! `plexd-nodeapi dev`: the daemon against the built-in development control plane, in a
//! local folder, as an ordinary user — the README's first command.
//!
//! Creates (once) a data folder with an identity, an NSK and the control plane's event
//! signing key, starts the development control plane with demo state on a loopback
//! port, starts the daemon against it, and prints commands to paste. Nothing here is
//! used by `serve`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config::{Config, Settings};
use super::daemon::{Daemon, SignalWait};
use super::error::{CliError, Failure};
use crate::devcp::{DevConfig, DevControlPlane};
use crate::secrets::nsk::Nsk;
use crate::telemetry::logging;

pub const DEFAULT_DEV_DIR: &str = ".plexd-dev";
pub const DEV_NODE_ID: &str = "dev-node";

#[derive(Debug, Default)]
pub struct DevOptions {
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
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
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&nsk_path, format!("{hex}\n").as_bytes())?;
    }
    Ok(fs::read_to_string(&nsk_path)?.trim().to_owned())
}

pub fn run(opts: DevOptions) -> Result<(), Failure> {
    let data_dir = opts
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DEV_DIR));
    let socket = opts.socket.unwrap_or_else(|| data_dir.join("api.sock"));
    let token = match prepare_data_dir(&data_dir) {
        Ok(t) => t,
        Err(e) => return Err(fail(format!("cannot prepare {}: {e}", data_dir.display()))),
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
    print_banner(&socket, &devcp.url());
    let _ = signals.wait();
    daemon.shutdown();
    devcp.stop();
    Ok(())
}

fn print_banner(socket: &Path, cp: &str) {
    let s = socket.display();
    let banner = format!(
        "
plexd-nodeapi dev is running.
  socket:                    {s}
  development control plane: {cp}   (admin API under {cp}/admin/)

Paste these into another terminal:

  curl -s --unix-socket {s} http://localhost/v1/state
  curl -s --unix-socket {s} http://localhost/v1/state/metadata/region
  curl -s --unix-socket {s} http://localhost/v1/state/data/database-config
  curl -s --unix-socket {s} http://localhost/v1/state/secrets/db-password
  curl -s --unix-socket {s} -X PUT -d '{{\"content_type\":\"application/json\",\"payload\":{{\"status\":\"healthy\"}}}}' \\
       http://localhost/v1/state/report/app-health
  curl -s {cp}/admin/reports                                  # what the control plane received (1s debounce)

Change state upstream; it arrives at the socket within a second through the signed
event stream (the 30s reconciliation is only the safety net):

  curl -s -X PUT -d '\"us-west-2\"' {cp}/admin/metadata/region
  curl -s --unix-socket {s} http://localhost/v1/state/metadata/region
  curl -s -X POST {cp}/admin/drop-streams                     # the daemon reconnects with Last-Event-ID
  curl -s -X POST -d '{{\"event_type\":\"node_state_updated\",\"payload\":{{}}}}' {cp}/admin/events   # unsigned: rejected
  curl -s --unix-socket {s} http://localhost/metrics | grep events_
  ./target/debug/plexd-nodeapi state --socket {s} get data feature-flags

Ctrl-C stops both.
"
    );
    println!("{banner}");
    let _ = std::io::stdout().flush();
}
