//! `serve` configuration in two stages: `Settings` is what was typed (flags and the
//! JSON config file, flags winning), `Config` is what the daemon runs with — validated,
//! defaults applied, identity and key files read.
//!
//! Every failure is a `ConfigError` naming the offending field; the binary turns it
//! into one line on stderr and exit status 2, before anything is bound or written.
//! This module reads files but never creates or changes any.

use std::fs;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::duration;
use crate::events::PublicKey;
use crate::kube::config::{self as kube_config, KubeConfig, KubeSettings};
use crate::secrets::nsk::Nsk;

pub const DEFAULT_SOCKET: &str = "/var/run/plexd/api.sock";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9100";

/// A configuration problem: which field, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The `serve` settings as typed, before validation. Field names are the flag names
/// with `-` → `_`, which is also the config file's schema (unknown keys are refused).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub node_id: Option<String>,
    pub control_plane: Option<String>,
    pub nsk_file: Option<PathBuf>,
    pub cp_token_file: Option<PathBuf>,
    pub signing_key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub http: Option<bool>,
    pub http_listen: Option<String>,
    pub http_token_file: Option<PathBuf>,
    pub debounce: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub reconcile_interval: Option<String>,
    pub secret_auth: Option<bool>,
    pub allow_core_dumps: Option<bool>,
    pub log_level: Option<String>,
    pub max_connections: Option<u64>,
    pub workers: Option<u64>,
    pub kubernetes: Option<bool>,
    pub k8s_api_server: Option<String>,
    pub k8s_token_file: Option<PathBuf>,
    pub k8s_ca_file: Option<PathBuf>,
    pub k8s_namespace: Option<String>,
    pub k8s_node_name: Option<String>,
    pub mesh_ip: Option<String>,
    pub k8s_token_audience: Option<String>,
    pub upstream_workers: Option<u64>,
    pub secret_timeout: Option<String>,
    pub head_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_body_memory: Option<SizeSetting>,
    pub max_report_keys: Option<u64>,
    pub max_report_bytes: Option<SizeSetting>,
}

/// A byte size as typed: a plain number of bytes (also from JSON), or text with a
/// unit (`64MiB`, `512KiB`, `1GiB`; `K`, `M`, `G` are binary units too).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeSetting {
    Bytes(u64),
    Text(String),
}

/// Parses a byte size (see `SizeSetting`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn size_of(field: &str, s: &Option<SizeSetting>, default: u64) -> Result<u64, ConfigError> {
    match s {
        None => Ok(default),
        Some(SizeSetting::Bytes(n)) => Ok(*n),
        Some(SizeSetting::Text(t)) => parse_size(t).map_err(|e| ConfigError::new(field, e)),
    }
}

macro_rules! overlay {
    ($base:expr, $top:expr, $($f:ident),*) => { $( if $top.$f.is_some() { $base.$f = $top.$f.clone(); } )* };
}

impl Settings {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            ConfigError::new(
                "--config",
                format!("{} is not a valid config file: {e}", path.display()),
            )
        })
    }

    /// `self` with every field that `top` sets replaced (flags over file).
    pub fn overlaid_with(mut self, top: &Settings) -> Settings {
        overlay!(
            self,
            top,
            data_dir,
            socket,
            node_id,
            control_plane,
            nsk_file,
            cp_token_file,
            signing_key_file,
            ca_file,
            http,
            http_listen,
            http_token_file,
            debounce,
            shutdown_timeout,
            reconcile_interval,
            secret_auth,
            allow_core_dumps,
            log_level,
            max_connections,
            workers,
            kubernetes,
            k8s_api_server,
            k8s_token_file,
            k8s_ca_file,
            k8s_namespace,
            k8s_node_name,
            mesh_ip,
            k8s_token_audience,
            upstream_workers,
            secret_timeout,
            head_timeout,
            body_timeout,
            idle_timeout,
            max_body_memory,
            max_report_keys,
            max_report_bytes
        );
        self
    }

    /// Sets one field from a command-line flag (`--name value`). Boolean flags take no
    /// value and are passed `None`.
    pub fn set_flag(&mut self, name: &str, value: Option<String>) -> Result<(), ConfigError> {
        let flag = format!("--{name}");
        let need = |v: Option<String>| v.ok_or_else(|| ConfigError::new(&flag, "missing value"));
        match name {
            "data-dir" => self.data_dir = Some(need(value)?.into()),
            "socket" => self.socket = Some(need(value)?.into()),
            "node-id" => self.node_id = Some(need(value)?),
            "control-plane" => self.control_plane = Some(need(value)?),
            "nsk-file" => self.nsk_file = Some(need(value)?.into()),
            "cp-token-file" => self.cp_token_file = Some(need(value)?.into()),
            "signing-key-file" => self.signing_key_file = Some(need(value)?.into()),
            "ca-file" => self.ca_file = Some(need(value)?.into()),
            "http-listen" => self.http_listen = Some(need(value)?),
            "http-token-file" => self.http_token_file = Some(need(value)?.into()),
            "debounce" => self.debounce = Some(need(value)?),
            "shutdown-timeout" => self.shutdown_timeout = Some(need(value)?),
            "reconcile-interval" => self.reconcile_interval = Some(need(value)?),
            "log-level" => self.log_level = Some(need(value)?),
            "max-connections" => self.max_connections = Some(parse_count(&flag, &need(value)?)?),
            "workers" => self.workers = Some(parse_count(&flag, &need(value)?)?),
            "k8s-api-server" => self.k8s_api_server = Some(need(value)?),
            "k8s-token-file" => self.k8s_token_file = Some(need(value)?.into()),
            "k8s-ca-file" => self.k8s_ca_file = Some(need(value)?.into()),
            "k8s-namespace" => self.k8s_namespace = Some(need(value)?),
            "k8s-node-name" => self.k8s_node_name = Some(need(value)?),
            "mesh-ip" => self.mesh_ip = Some(need(value)?),
            // An empty audience turns TokenReview off, so the value may be "".
            "k8s-token-audience" => self.k8s_token_audience = Some(need(value)?),
            "upstream-workers" => self.upstream_workers = Some(parse_count(&flag, &need(value)?)?),
            "secret-timeout" => self.secret_timeout = Some(need(value)?),
            "head-timeout" => self.head_timeout = Some(need(value)?),
            "body-timeout" => self.body_timeout = Some(need(value)?),
            "idle-timeout" => self.idle_timeout = Some(need(value)?),
            "max-body-memory" => self.max_body_memory = Some(SizeSetting::Text(need(value)?)),
            "max-report-keys" => self.max_report_keys = Some(parse_count(&flag, &need(value)?)?),
            "max-report-bytes" => self.max_report_bytes = Some(SizeSetting::Text(need(value)?)),
            "http" => self.http = Some(true),
            "secret-auth" => self.secret_auth = Some(true),
            "kubernetes" => self.kubernetes = Some(true),
            "allow-core-dumps" => self.allow_core_dumps = Some(true),
            _ => return Err(ConfigError::new(&flag, "unknown flag")),
        }
        Ok(())
    }
}

/// Flags of `serve` that take no value.
pub const BOOLEAN_FLAGS: &[&str] = &["http", "secret-auth", "kubernetes", "allow-core-dumps"];

fn parse_count(field: &str, text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| ConfigError::new(field, format!("{text:?} is not a whole number")))
}

/// The validated configuration `serve` runs with.
pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub node_id: String,
    pub control_plane: Option<String>,
    /// The node secret key; `None` only when no control plane is configured and no NSK
    /// file exists (a cache-only node).
    pub nsk: Option<Nsk>,
    pub cp_token: Option<Zeroizing<String>>,
    /// The Ed25519 public key that signs control-plane events (`--signing-key-file`).
    pub signing_key: Option<PublicKey>,
    pub ca_file: Option<PathBuf>,
    pub http_listen: Option<SocketAddr>,
    pub http_token: Option<Zeroizing<String>>,
    pub debounce: Duration,
    pub shutdown_timeout: Duration,
    pub reconcile_interval: Duration,
    pub secret_auth: bool,
    /// Leave the process dumpable (core files, ptrace by the same user): for
    /// debugging only, a core file may hold secrets.
    pub allow_core_dumps: bool,
    pub log_level: LevelFilter,
    pub max_connections: usize,
    pub workers: usize,
    /// The Kubernetes mode (`--kubernetes`), resolved with the in-cluster defaults.
    pub kubernetes: Option<KubeConfig>,
    /// Threads for calls that wait on the control plane (secret fetches).
    pub upstream_workers: usize,
    /// How long a secret request waits for the control plane.
    pub secret_timeout: Duration,
    /// A request head must arrive within this; its body within `body_timeout` after
    /// it; an idle keep-alive connection is closed after `idle_timeout`.
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bytes of request bodies held in memory at once.
    pub max_body_memory: usize,
    /// Report quotas: distinct keys, and bytes of stored payloads.
    pub max_report_keys: usize,
    pub max_report_bytes: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("socket", &self.socket)
            .field("node_id", &self.node_id)
            .field("control_plane", &self.control_plane)
            .field("http_listen", &self.http_listen)
            .field("secret_auth", &self.secret_auth)
            .field("kubernetes", &self.kubernetes)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Validates `settings`, applies defaults and reads the identity and key files.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let data_dir = s
            .data_dir
            .clone()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| ConfigError::new("--data-dir", "is required"))?;
        // A missing folder is created at start (0700, as plexd does); only a missing
        // flag is a configuration error.
        let socket = s.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
        if socket.as_os_str().is_empty() {
            return Err(ConfigError::new("--socket", "must not be empty"));
        }
        let node_id = match s.node_id.clone() {
            Some(id) => id,
            None => node_id_from_identity(&data_dir)?,
        };
        if node_id.trim().is_empty() || node_id.len() > 256 || node_id.chars().any(char::is_control)
        {
            return Err(ConfigError::new(
                "--node-id",
                "must be 1 to 256 printable characters",
            ));
        }

        let control_plane = s
            .control_plane
            .clone()
            .map(|u| validate_url(&u))
            .transpose()?;

        let nsk_given = s.nsk_file.is_some();
        let nsk_file = s
            .nsk_file
            .clone()
            .unwrap_or_else(|| data_dir.join("node_secret_key"));
        let nsk = if nsk_given || control_plane.is_some() || nsk_file.exists() {
            let bytes = Zeroizing::new(fs::read(&nsk_file).map_err(|e| {
                ConfigError::new(
                    "--nsk-file",
                    format!("cannot read {}: {e}", nsk_file.display()),
                )
            })?);
            Some(Nsk::parse(&bytes).map_err(|e| ConfigError::new("--nsk-file", e.to_string()))?)
        } else {
            None
        };

        let cp_token = match (&control_plane, &s.cp_token_file) {
            (Some(_), token_file) => {
                let path = token_file.clone().unwrap_or_else(|| nsk_file.clone());
                Some(read_token("--cp-token-file", &path)?)
            }
            (None, Some(path)) => Some(read_token("--cp-token-file", path)?),
            (None, None) => None,
        };

        let signing_key = match &s.signing_key_file {
            Some(path) => Some(read_signing_key(path)?),
            None => {
                let default = data_dir.join("signing_public_key");
                if default.exists() {
                    Some(read_signing_key(&default)?)
                } else {
                    None
                }
            }
        };

        if let Some(ca) = &s.ca_file {
            fs::metadata(ca).map_err(|e| {
                ConfigError::new("--ca-file", format!("cannot read {}: {e}", ca.display()))
            })?;
        }

        let listen_text = match (&s.http_listen, s.http) {
            (Some(addr), _) => Some(addr.clone()),
            (None, Some(true)) => Some(DEFAULT_HTTP_LISTEN.to_owned()),
            _ => None,
        };
        let http_listen = listen_text.map(|t| parse_listen(&t)).transpose()?;
        let http_token = match (&http_listen, &s.http_token_file) {
            (Some(_), Some(path)) => Some(read_token("--http-token-file", path)?),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--http-token-file",
                    "is required when the TCP listener is enabled",
                ))
            }
            (None, _) => None,
        };

        let debounce = positive_duration("--debounce", s.debounce.as_deref(), "5s")?;
        let shutdown_timeout =
            positive_duration("--shutdown-timeout", s.shutdown_timeout.as_deref(), "5s")?;
        let reconcile_interval = positive_duration(
            "--reconcile-interval",
            s.reconcile_interval.as_deref(),
            "60s",
        )?;
        if reconcile_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "--reconcile-interval",
                "must be at least 1s",
            ));
        }

        let log_level = parse_level(s.log_level.as_deref().unwrap_or("info"))?;
        let max_connections = bounded("--max-connections", s.max_connections, 8192, 1, 1_000_000)?;
        let default_workers = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let workers = bounded(
            "--workers",
            s.workers,
            default_workers.max(4) as u64,
            1,
            1024,
        )?;

        let kubernetes = if s.kubernetes.unwrap_or(false) {
            let k = KubeSettings {
                api_server: s.k8s_api_server.clone(),
                token_file: s.k8s_token_file.clone(),
                ca_file: s.k8s_ca_file.clone(),
                namespace: s.k8s_namespace.clone(),
                node_name: s.k8s_node_name.clone(),
                mesh_ip: s.mesh_ip.clone(),
                token_audience: s.k8s_token_audience.clone(),
            };
            Some(
                KubeConfig::resolve(&k, &data_dir, &node_id, &kube_config::process_env)
                    .map_err(|e| ConfigError::new(e.field, e.message))?,
            )
        } else {
            None
        };
        let upstream_workers = bounded("--upstream-workers", s.upstream_workers, 4, 1, 256)?;
        let secret_timeout =
            positive_duration("--secret-timeout", s.secret_timeout.as_deref(), "5s")?;
        if secret_timeout > Duration::from_secs(30) {
            return Err(ConfigError::new("--secret-timeout", "must be at most 30s"));
        }
        let head_timeout = positive_duration("--head-timeout", s.head_timeout.as_deref(), "10s")?;
        let body_timeout = positive_duration("--body-timeout", s.body_timeout.as_deref(), "10s")?;
        let idle_timeout = positive_duration("--idle-timeout", s.idle_timeout.as_deref(), "60s")?;
        let max_body_memory = size_of("--max-body-memory", &s.max_body_memory, 64 << 20)?;
        if max_body_memory < 1 << 20 {
            return Err(ConfigError::new(
                "--max-body-memory",
                "must be at least 1MiB (the largest request body)",
            ));
        }
        let max_report_keys = bounded(
            "--max-report-keys",
            s.max_report_keys,
            10_000,
            1,
            10_000_000,
        )?;
        let max_report_bytes = size_of("--max-report-bytes", &s.max_report_bytes, 64 << 20)?;
        if max_report_bytes == 0 {
            return Err(ConfigError::new("--max-report-bytes", "must be positive"));
        }

        Ok(Config {
            data_dir,
            socket,
            node_id,
            control_plane,
            nsk,
            cp_token,
            signing_key,
            ca_file: s.ca_file,
            http_listen,
            http_token,
            debounce,
            shutdown_timeout,
            reconcile_interval,
            secret_auth: s.secret_auth.unwrap_or(false),
            allow_core_dumps: s.allow_core_dumps.unwrap_or(false),
            log_level,
            max_connections,
            workers,
            kubernetes,
            upstream_workers,
            secret_timeout,
            head_timeout,
            body_timeout,
            idle_timeout,
            max_body_memory: usize::try_from(max_body_memory).unwrap_or(usize::MAX),
            max_report_keys,
            max_report_bytes,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}

fn node_id_from_identity(data_dir: &Path) -> Result<String, ConfigError> {
    let path = data_dir.join("identity.json");
    let text = fs::read_to_string(&path).map_err(|e| {
        ConfigError::new(
            "--node-id",
            format!("not given and {} cannot be read: {e}", path.display()),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        ConfigError::new("--node-id", format!("{} is not JSON: {e}", path.display()))
    })?;
    value
        .get("node_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| ConfigError::new("--node-id", format!("{} has no node_id", path.display())))
}

/// Accepts `https://host[:port][/path]`, and `http://` only for loopback hosts.
/// Returns the URL without a trailing slash.
pub fn validate_url(url: &str) -> Result<String, ConfigError> {
    let field = "--control-plane";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ConfigError::new(field, format!("{url:?} is not an http(s) URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.chars().any(char::is_whitespace)
    {
        return Err(ConfigError::new(
            field,
            format!("{url:?} has no valid host"),
        ));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => {
            return Err(ConfigError::new(
                field,
                "http:// is allowed for loopback hosts only; use https://",
            ))
        }
        _ => {
            return Err(ConfigError::new(
                field,
                format!("unsupported scheme {scheme:?}"),
            ))
        }
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let field = "--http-listen";
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError::new(field, format!("{text:?} is not a host:port address")))
}

/// Reads a bearer token file (`--cp-token-file`, `--http-token-file`, or the NSK file
/// as the control-plane token): trimmed, non-empty UTF-8 without spaces or control
/// characters inside (it goes into an HTTP header).
fn read_token(field: &str, path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    let raw =
        Zeroizing::new(fs::read(path).map_err(|e| {
            ConfigError::new(field, format!("cannot read {}: {e}", path.display()))
        })?);
    let text = std::str::from_utf8(raw.trim_ascii())
        .map_err(|_| ConfigError::new(field, format!("{} is not UTF-8 text", path.display())))?;
    if text.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{} is empty", path.display()),
        ));
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::new(
            field,
            format!(
                "{} holds spaces or control characters inside the token",
                path.display()
            ),
        ));
    }
    Ok(Zeroizing::new(text.to_owned()))
}

/// Longest signing key file read (a key is 44 characters).
const MAX_SIGNING_KEY_FILE: u64 = 4096;

/// Reads the signing key file: one standard-base64 Ed25519 public key, white space
/// trimmed.
fn read_signing_key(path: &Path) -> Result<PublicKey, ConfigError> {
    use std::io::Read;
    let field = "--signing-key-file";
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_SIGNING_KEY_FILE + 1).read_to_string(&mut text))
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
    PublicKey::from_base64(&text)
        .ok()
        .filter(|_| text.len() as u64 <= MAX_SIGNING_KEY_FILE)
        .ok_or_else(|| {
            ConfigError::new(
                field,
                format!(
                    "{} must hold a standard-base64 Ed25519 public key (32 bytes)",
                    path.display()
                ),
            )
        })
}

fn positive_duration(
    field: &str,
    text: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = text.unwrap_or(default);
    let d = duration::parse(text).map_err(|e| ConfigError::new(field, e))?;
    if d.is_zero() {
        return Err(ConfigError::new(field, "must be positive"));
    }
    Ok(d)
}

fn parse_level(text: &str) -> Result<LevelFilter, ConfigError> {
    match text.to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(ConfigError::new(
            "--log-level",
            format!("{text:?} is not one of error, warn, info, debug, trace"),
        )),
    }
}

fn bounded(
    field: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_identity() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("identity.json"),
            r#"{"node_id":"n_abc123","mesh_ip":"10.0.0.1"}"#,
        )
        .unwrap();
        d
    }

    fn settings(dir: &Path) -> Settings {
        Settings {
            data_dir: Some(dir.to_owned()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_and_identity() {
        let d = dir_with_identity();
        let c = Config::from_settings(settings(d.path())).unwrap();
        assert_eq!(c.node_id, "n_abc123");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.debounce, Duration::from_secs(5));
        assert_eq!(c.reconcile_interval, Duration::from_secs(60));
        assert!(c.nsk.is_none() && c.http_listen.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let d = dir_with_identity();
        let cases: Vec<(Settings, &str)> = vec![
            (Settings::default(), "--data-dir"),
            (
                Settings {
                    debounce: Some("0s".into()),
                    ..settings(d.path())
                },
                "--debounce",
            ),
            (
                Settings {
                    shutdown_timeout: Some("-1s".into()),
                    ..settings(d.path())
                },
                "--shutdown-timeout",
            ),
            (
                Settings {
                    reconcile_interval: Some("500ms".into()),
                    ..settings(d.path())
                },
                "--reconcile-interval",
            ),
            (
                Settings {
                    control_plane: Some("ftp://x".into()),
                    ..settings(d.path())
                },
                "--control-plane",
            ),
            (
                Settings {
                    control_plane: Some("http://example.com".into()),
                    ..settings(d.path())
                },
                "--control-plane",
            ),
            (
                Settings {
                    http: Some(true),
                    ..settings(d.path())
                },
                "--http-token-file",
            ),
            (
                Settings {
                    log_level: Some("loud".into()),
                    ..settings(d.path())
                },
                "--log-level",
            ),
            (
                Settings {
                    nsk_file: Some(d.path().join("missing")),
                    ..settings(d.path())
                },
                "--nsk-file",
            ),
            (
                Settings {
                    workers: Some(0),
                    ..settings(d.path())
                },
                "--workers",
            ),
        ];
        for (s, field) in cases {
            match Config::from_settings(s) {
                Err(e) => assert_eq!(e.field, field, "{e}"),
                Ok(_) => panic!("expected an error for {field}"),
            }
        }
    }

    #[test]
    fn nsk_and_tokens() {
        let d = dir_with_identity();
        fs::write(
            d.path().join("node_secret_key"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        fs::write(d.path().join("short"), "too short").unwrap();
        let c = Config::from_settings(Settings {
            control_plane: Some("http://127.0.0.1:1".into()),
            ..settings(d.path())
        })
        .unwrap();
        assert!(c.nsk.is_some());
        assert_eq!(
            c.cp_token.as_deref().map(String::as_str),
            Some("0123456789abcdef0123456789abcdef")
        );
        let e = Config::from_settings(Settings {
            nsk_file: Some(d.path().join("short")),
            ..settings(d.path())
        })
        .err()
        .unwrap();
        assert_eq!(e.field, "--nsk-file");
    }

    #[test]
    fn tokens_are_read_strictly() {
        let d = dir_with_identity();
        let token = d.path().join("token");
        let with_token = |text: &[u8]| {
            fs::write(&token, text).unwrap();
            Config::from_settings(Settings {
                http_listen: Some("127.0.0.1:0".into()),
                http_token_file: Some(token.clone()),
                ..settings(d.path())
            })
        };
        let c = with_token(b" abc.def \n").unwrap();
        assert_eq!(c.http_token.as_deref().map(String::as_str), Some("abc.def"));
        for bad in [&b" \n"[..], b"a b", b"a\tb", b"a\x01b", &[0xff, 0xfe]] {
            let e = with_token(bad).err().unwrap();
            assert_eq!(e.field, "--http-token-file", "{bad:?}");
            assert!(!e.message.contains("a b"), "{e}");
        }
    }

    #[test]
    fn signing_key_file() {
        let d = dir_with_identity();
        let path = d.path().join("signing.pub");
        let with_key = |text: &[u8]| {
            fs::write(&path, text).unwrap();
            Config::from_settings(Settings {
                signing_key_file: Some(path.clone()),
                ..settings(d.path())
            })
        };
        let (signer, _) = crate::events::Signer::generate().unwrap();
        let c = with_key(format!("  {}\n", signer.public_key_b64()).as_bytes()).unwrap();
        assert_eq!(c.signing_key, Some(signer.public_key()));
        for bad in [&b"garbage\n"[..], &[b'A'; 5000]] {
            let e = with_key(bad).err().unwrap();
            assert_eq!(e.field, "--signing-key-file");
            assert!(e.message.contains("must hold"), "{e}");
        }
        let e = Config::from_settings(Settings {
            signing_key_file: Some(d.path().join("missing")),
            ..settings(d.path())
        })
        .err()
        .unwrap();
        assert!(e.message.contains("missing"), "{e}");
        // The default file is read when present.
        fs::write(d.path().join("signing_public_key"), signer.public_key_b64()).unwrap();
        let c = Config::from_settings(settings(d.path())).unwrap();
        assert_eq!(c.signing_key, Some(signer.public_key()));
    }

    #[test]
    fn file_keys_are_checked() {
        let d = dir_with_identity();
        let p = d.path().join("c.json");
        fs::write(&p, r#"{"data_dir":"/x","bogus":1}"#).unwrap();
        assert!(Settings::from_file(&p)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        fs::write(&p, "not json").unwrap();
        assert_eq!(Settings::from_file(&p).unwrap_err().field, "--config");
        fs::write(&p, r#"{"debounce":"1s","http_listen":"127.0.0.1:0"}"#).unwrap();
        let file = Settings::from_file(&p).unwrap();
        let flags = Settings {
            debounce: Some("2s".into()),
            ..Settings::default()
        };
        let merged = file.overlaid_with(&flags);
        assert_eq!(merged.debounce.as_deref(), Some("2s"));
        assert_eq!(merged.http_listen.as_deref(), Some("127.0.0.1:0"));
    }
}
