//! The command line: which subcommand, with which arguments. Parses (with `lexopt`)
//! and dispatches; the work lives in `daemon`, `dev` and `state`.
//!
//! Every subcommand ends in `Ok(())` (status 0) or a `Failure`, printed once here;
//! `error::CliError` is the one enum of exit statuses.

pub mod client;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod error;
pub mod json_text;
pub mod sd_notify;
pub mod state;
pub mod watch;
pub mod wipe_alloc;

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::telemetry::logging;
use config::{Config, ConfigError, Settings, BOOLEAN_FLAGS};
use error::{CliError, Failure};

pub const USAGE: &str = "\
plexd-nodeapi — the node-local state API of a Plexsphere node

USAGE:
    plexd-nodeapi serve [--config FILE] [FLAGS]     run the daemon
    plexd-nodeapi dev [--socket PATH] [--data-dir DIR]
                                                    run the daemon against a built-in development control plane
    plexd-nodeapi state [--socket PATH] [SUBCOMMAND] read and write the daemon's state (see `state --help`)
    plexd-nodeapi version                           print version and features

SERVE FLAGS (also keys of the JSON --config file, with - replaced by _):
    --data-dir DIR            cache in DIR/state/, identity files read from DIR (required)
    --socket PATH             Unix socket [/var/run/plexd/api.sock]
    --node-id ID              node id [node_id from DIR/identity.json]
    --control-plane URL       control plane base URL (https://, or http:// on loopback)
    --nsk-file PATH           node secret key [DIR/node_secret_key]
    --cp-token-file PATH      bearer token for the control plane [the NSK file]
    --signing-key-file PATH   Ed25519 public key of control-plane events [DIR/signing_public_key]
    --ca-file PATH            extra PEM CA for the control plane
    --http                    enable the TCP listener on 127.0.0.1:9100
    --http-listen ADDR        enable the TCP listener on ADDR
    --http-token-file PATH    bearer token required on TCP
    --debounce DUR            report sync debounce [5s]
    --shutdown-timeout DUR    graceful shutdown bound [5s]
    --reconcile-interval DUR  full-state reconciliation period, >= 1s [60s]
    --secret-auth             restrict secret routes on the socket to root and plexd-secrets
    --allow-core-dumps        keep the process dumpable (debugging only: a core file may hold secrets)
    --log-level LEVEL         error|warn|info|debug|trace [info]
    --max-connections N       open connections, all listeners [8192]
    --workers N               HTTP worker threads [max(4, 2 x cores)]

ENVIRONMENT (tuning and tests):
    PLEXD_NODEAPI_SSE_IDLE_TIMEOUT=DUR
                              reconnect the event stream after DUR without a byte [90s]
";

/// Who reports a failure of the program itself, `serve` and `dev`'s arguments.
const WHO: &str = "plexd-nodeapi";

/// Runs the command line and returns the process exit status (`error::CliError`).
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(failure) => failure.report(),
    }
}

fn run(args: Vec<OsString>) -> Result<(), Failure> {
    let mut parser = lexopt::Parser::from_args(args);
    let sub = match parser.next() {
        Ok(Some(Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(Long("help") | Short('h'))) | Ok(None) => {
            print!("{USAGE}");
            return Ok(());
        }
        Ok(Some(Long("version") | Short('V'))) => "version".to_owned(),
        Ok(Some(other)) => return Err(usage(format!("unexpected {}", describe(&other)))),
        Err(e) => return Err(usage(e.to_string())),
    };
    match sub.as_str() {
        "serve" => serve(parser),
        "dev" => dev_command(parser),
        "state" => state::main(parser),
        "version" => {
            println!("{}", version_text());
            Ok(())
        }
        "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(usage(format!(
            "unknown command {other:?}; try `plexd-nodeapi --help`"
        ))),
    }
}

fn describe(arg: &lexopt::Arg) -> String {
    match arg {
        Long(l) => format!("--{l}"),
        Short(s) => format!("-{s}"),
        Value(v) => format!("{v:?}"),
    }
}

fn usage(message: String) -> Failure {
    CliError::Usage(message).by(WHO)
}

pub fn version_text() -> String {
    let revision = option_env!("PLEXD_NODEAPI_GIT_REVISION").unwrap_or("unknown");
    format!(
        "plexd-nodeapi {} (revision {revision})\nfeatures: unix-socket, tcp-bearer, secret-auth, tls-rustls, gzip, signed-events, socket-activation, sd-notify",
        env!("CARGO_PKG_VERSION")
    )
}

/// Parses `serve`'s arguments into settings (flags over the config file).
pub fn parse_serve(mut parser: lexopt::Parser) -> Result<Settings, ConfigError> {
    let mut config_file: Option<PathBuf> = None;
    let mut flags = Settings::default();
    while let Some(arg) = parser
        .next()
        .map_err(|e| ConfigError::new("arguments", e.to_string()))?
    {
        match arg {
            Long("config") => {
                let v = parser
                    .value()
                    .map_err(|_| ConfigError::new("--config", "missing value"))?;
                config_file = Some(v.into());
            }
            Long(name) if BOOLEAN_FLAGS.contains(&name) => {
                let name = name.to_owned();
                flags.set_flag(&name, None)?;
            }
            Long(name) => {
                let name = name.to_owned();
                let value = parser
                    .value()
                    .map_err(|_| ConfigError::new(&format!("--{name}"), "missing value"))?;
                let value = value
                    .into_string()
                    .map_err(|_| ConfigError::new(&format!("--{name}"), "value is not UTF-8"))?;
                flags.set_flag(&name, Some(value))?;
            }
            other => {
                return Err(ConfigError::new(
                    "arguments",
                    format!("unexpected {}", describe(&other)),
                ))
            }
        }
    }
    let base = match config_file {
        Some(path) => Settings::from_file(&path)?,
        None => Settings::default(),
    };
    Ok(base.overlaid_with(&flags))
}

fn serve(parser: lexopt::Parser) -> Result<(), Failure> {
    let config = parse_serve(parser)
        .and_then(Config::from_settings)
        .map_err(|e| CliError::from(e).by(WHO))?;
    logging::init(config.log_level);
    daemon::run(config).map_err(|e| {
        log::error!(error:% = e; "start-up failed");
        e.by(WHO)
    })
}

fn dev_command(mut parser: lexopt::Parser) -> Result<(), Failure> {
    let mut opts = dev::DevOptions::default();
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        let value = |p: &mut lexopt::Parser| {
            p.value()
                .map(PathBuf::from)
                .map_err(|e| usage(e.to_string()))
        };
        match arg {
            Long("socket") => opts.socket = Some(value(&mut parser)?),
            Long("data-dir") => opts.data_dir = Some(value(&mut parser)?),
            Long("help") | Short('h') => {
                println!("usage: plexd-nodeapi dev [--socket PATH] [--data-dir DIR]");
                return Ok(());
            }
            other => return Err(usage(format!("dev: unexpected {}", describe(&other)))),
        }
    }
    dev::run(opts)
}
