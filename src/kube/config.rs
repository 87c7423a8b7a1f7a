//! The Kubernetes mode's configuration: the `--k8s-*` and `--mesh-ip` values as typed,
//! completed from the in-cluster environment (`KUBERNETES_SERVICE_HOST`/`PORT`, the
//! service-account token, CA and namespace files, `POD_NAMESPACE`, `MY_NODE_NAME`,
//! `identity.json`) and validated.
//!
//! A missing or unusable value is a `KubeConfigError` naming the flag; the CLI turns it
//! into exit status 2 before anything is bound. Files are read to check them, never
//! written; nothing here talks to the network.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where a pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The TokenReview audience callers' tokens must carry by default.
pub const DEFAULT_AUDIENCE: &str = "plexd";

/// A configuration problem: which flag, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KubeConfigError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> KubeConfigError {
    KubeConfigError {
        field,
        message: message.into(),
    }
}

/// The values as typed (flags or the JSON config); `None` means "use the default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    pub api_server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub node_name: Option<String>,
    pub mesh_ip: Option<String>,
    pub token_audience: Option<String>,
}

/// The validated configuration the Kubernetes mode runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// `https://host:port` (or `http://` to a loopback host, for development).
    pub api_server: String,
    pub token_file: PathBuf,
    /// The cluster CA; `None` only for a plain-HTTP loopback API server.
    pub ca_file: Option<PathBuf>,
    pub namespace: String,
    pub node_name: String,
    pub node_id: String,
    pub mesh_ip: Option<String>,
    /// `None`: TokenReview is off (only the static token works on TCP).
    pub token_audience: Option<String>,
}

/// Reads the environment; a seam so tests can pass their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, empty values treated as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl KubeConfig {
    /// Completes `s` from the environment and validates it. `data_dir` holds
    /// `identity.json` (for the mesh IP); `node_id` is the daemon's.
    pub fn resolve(
        s: &KubeSettings,
        data_dir: &Path,
        node_id: &str,
        env: Env<'_>,
    ) -> Result<KubeConfig, KubeConfigError> {
        let sa = Path::new(SERVICE_ACCOUNT_DIR);
        let api_server = match &s.api_server {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => in_cluster_url(env)?,
        };
        let https = check_url(&api_server)?;

        let token_file = s.token_file.clone().unwrap_or_else(|| sa.join("token"));
        check_token_file(&token_file)?;

        let ca_file = match (&s.ca_file, https) {
            (Some(path), _) => Some(path.clone()),
            (None, true) => Some(sa.join("ca.crt")),
            (None, false) => None,
        };
        if let (Some(path), true) = (&ca_file, https) {
            check_ca_file(path)?;
        }

        let namespace = match &s.namespace {
            Some(ns) => ns.trim().to_owned(),
            None => fs::read_to_string(sa.join("namespace"))
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .or_else(|| env("POD_NAMESPACE"))
                .ok_or_else(|| {
                    err(
                        "--k8s-namespace",
                        format!(
                            "not given, and neither {}/namespace nor POD_NAMESPACE is set",
                            SERVICE_ACCOUNT_DIR
                        ),
                    )
                })?,
        };
        if !is_dns_label(&namespace) {
            return Err(err(
                "--k8s-namespace",
                format!("{namespace:?} is not a valid namespace name"),
            ));
        }

        let node_name = match &s.node_name {
            Some(n) => n.trim().to_owned(),
            None => env("MY_NODE_NAME").ok_or_else(|| {
                err(
                    "--k8s-node-name",
                    "not given and MY_NODE_NAME is not set (set it from spec.nodeName)",
                )
            })?,
        };
        if node_name.is_empty() || node_name.len() > 253 || node_name.chars().any(char::is_control)
        {
            return Err(err(
                "--k8s-node-name",
                "must be 1 to 253 printable characters",
            ));
        }

        let mesh_ip = match &s.mesh_ip {
            Some(ip) => Some(parse_ip("--mesh-ip", ip)?),
            None => mesh_ip_from_identity(data_dir),
        };

        let token_audience = match &s.token_audience {
            Some(a) if a.trim().is_empty() => None,
            Some(a) => Some(a.trim().to_owned()),
            None => Some(DEFAULT_AUDIENCE.to_owned()),
        };

        Ok(KubeConfig {
            api_server,
            token_file,
            ca_file,
            namespace,
            node_name,
            node_id: node_id.to_owned(),
            mesh_ip,
            token_audience,
        })
    }
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, IPv6 hosts bracketed.
fn in_cluster_url(env: Env<'_>) -> Result<String, KubeConfigError> {
    let missing = || {
        err(
            "--k8s-api-server",
            "not given, and KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?)",
        )
    };
    let host = env("KUBERNETES_SERVICE_HOST").ok_or_else(missing)?;
    let port = env("KUBERNETES_SERVICE_PORT").ok_or_else(missing)?;
    let host = host.trim();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!("https://{host}:{}", port.trim()))
}

/// `https://host[:port]`, or `http://` for a loopback host. Returns whether it is https.
fn check_url(url: &str) -> Result<bool, KubeConfigError> {
    let field = "--k8s-api-server";
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(err(field, format!("{url:?} must start with https://")));
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(
            field,
            format!("{url:?} must be scheme://host[:port], nothing else"),
        ));
    }
    let host = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| err(field, format!("{url:?}: unclosed '['")))?;
        if !(after.is_empty() || after.starts_with(':')) {
            return Err(err(field, format!("{url:?}: bad port")));
        }
        h
    } else {
        rest.split(':').next().unwrap_or("")
    };
    if let Some((_, port)) = rest.rsplit_once(':') {
        if !rest.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(err(field, format!("{url:?}: bad port")));
        }
    }
    if host.is_empty() {
        return Err(err(field, format!("{url:?}: missing host")));
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !https && !loopback {
        return Err(err(
            field,
            "http:// is allowed for loopback hosts only; use https://",
        ));
    }
    Ok(https)
}

fn check_token_file(path: &Path) -> Result<(), KubeConfigError> {
    let text = fs::read(path).map_err(|e| {
        err(
            "--k8s-token-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let text = zeroize::Zeroizing::new(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(err(
            "--k8s-token-file",
            format!("{} is empty", path.display()),
        ));
    }
    Ok(())
}

fn check_ca_file(path: &Path) -> Result<(), KubeConfigError> {
    let bytes = fs::read(path).map_err(|e| {
        err(
            "--k8s-ca-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let mut reader = std::io::BufReader::new(&bytes[..]);
    let certs = rustls_pemfile::certs(&mut reader)
        .filter_map(Result::ok)
        .count();
    if certs == 0 {
        return Err(err(
            "--k8s-ca-file",
            format!("{}: no PEM certificates found", path.display()),
        ));
    }
    Ok(())
}

fn parse_ip(field: &'static str, text: &str) -> Result<String, KubeConfigError> {
    text.trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| err(field, format!("{text:?} is not an IP address")))
}

/// `mesh_ip` from `identity.json`, if it is there and an IP address.
fn mesh_ip_from_identity(data_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(data_dir.join("identity.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let ip = value.get("mesh_ip")?.as_str()?;
    parse_ip("--mesh-ip", ip).ok()
}

/// A DNS-1123 label (namespace names).
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-ca.pem");

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn setup() -> (tempfile::TempDir, KubeSettings) {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("token"), "tok\n").unwrap();
        fs::write(
            d.path().join("identity.json"),
            r#"{"node_id":"n_abc123","mesh_ip":"10.100.1.5"}"#,
        )
        .unwrap();
        let s = KubeSettings {
            token_file: Some(d.path().join("token")),
            ca_file: Some(CA.into()),
            ..KubeSettings::default()
        };
        (d, s)
    }

    #[test]
    fn in_cluster_defaults() {
        let (d, s) = setup();
        let env = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("POD_NAMESPACE", "plexd-system"),
            ("MY_NODE_NAME", "worker-1"),
        ]);
        let c = KubeConfig::resolve(&s, d.path(), "n_abc123", &env).unwrap();
        assert_eq!(c.api_server, "https://10.96.0.1:443");
        assert_eq!(c.namespace, "plexd-system");
        assert_eq!(c.node_name, "worker-1");
        assert_eq!(c.mesh_ip.as_deref(), Some("10.100.1.5"));
        assert_eq!(c.token_audience.as_deref(), Some("plexd"));
        let env6 = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("POD_NAMESPACE", "ns"),
            ("MY_NODE_NAME", "n"),
        ]);
        let c = KubeConfig::resolve(&s, d.path(), "x", &env6).unwrap();
        assert_eq!(c.api_server, "https://[fd00::1]:443");
    }

    #[test]
    fn flags_win_and_an_empty_audience_disables_reviews() {
        let (d, mut s) = setup();
        s.api_server = Some("https://127.0.0.1:6443/".into());
        s.namespace = Some("plexd-test".into());
        s.node_name = Some("node-a".into());
        s.mesh_ip = Some("fd00::5".into());
        s.token_audience = Some(String::new());
        let c = KubeConfig::resolve(&s, d.path(), "n", &env_of(&[])).unwrap();
        assert_eq!(c.api_server, "https://127.0.0.1:6443");
        assert_eq!(c.mesh_ip.as_deref(), Some("fd00::5"));
        assert_eq!(c.token_audience, None);
    }

    #[test]
    fn missing_values_name_the_flag() {
        let (d, s) = setup();
        let full = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("POD_NAMESPACE", "plexd-system"),
            ("MY_NODE_NAME", "worker-1"),
        ];
        let without = |name: &str| -> Vec<(&str, &str)> {
            full.iter().copied().filter(|(k, _)| *k != name).collect()
        };
        let field = |s: &KubeSettings, env: &[(&str, &str)]| {
            KubeConfig::resolve(s, d.path(), "n", &env_of(env))
                .unwrap_err()
                .field
        };
        assert_eq!(
            field(&s, &without("KUBERNETES_SERVICE_HOST")),
            "--k8s-api-server"
        );
        assert_eq!(field(&s, &without("POD_NAMESPACE")), "--k8s-namespace");
        assert_eq!(field(&s, &without("MY_NODE_NAME")), "--k8s-node-name");
        let mut bad = s.clone();
        bad.token_file = Some(d.path().join("missing"));
        assert_eq!(field(&bad, &full), "--k8s-token-file");
        let mut bad = s.clone();
        bad.ca_file = Some(d.path().join("token"));
        assert_eq!(field(&bad, &full), "--k8s-ca-file");
        let mut bad = s.clone();
        bad.ca_file = None;
        assert_eq!(
            field(&bad, &full),
            "--k8s-ca-file",
            "the in-cluster CA is absent here"
        );
        let mut bad = s.clone();
        bad.mesh_ip = Some("10.0.0".into());
        assert_eq!(field(&bad, &full), "--mesh-ip");
        let mut bad = s.clone();
        bad.api_server = Some("http://10.0.0.1:80".into());
        assert_eq!(field(&bad, &full), "--k8s-api-server");
        let mut bad = s;
        bad.namespace = Some("Bad_NS".into());
        assert_eq!(field(&bad, &full), "--k8s-namespace");
    }
}
