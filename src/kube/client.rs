//! A small synchronous client for the Kubernetes API over `ureq` and rustls, in the
//! shape of Tailscale's `kube/kubeclient`: in-cluster credentials, JSON only.
//!
//! Every call carries `Authorization: Bearer <service-account token>`, `Accept:
//! application/json` and the daemon's user agent. The token is re-read from its file
//! (by path: kubelet swaps it through a symlink) at least every minute and at once
//! after a 401, and that request is retried once. TLS trusts only the cluster CA
//! (no system roots); the CA file is re-read after a TLS or connection failure and the
//! configuration rebuilt when its content changed. Error answers are decoded from the
//! API server's `Status` body into `KubeError::Status` (code, reason, message,
//! `Retry-After`, causes); `Warning` headers are logged once each. Responses are capped
//! at 8 MiB. It neither retries (beyond the one 401 retry) nor backs off: its callers
//! do. It never logs or shows the token.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use zeroize::Zeroizing;

use super::config::KubeConfig;
use crate::cp::tls::{config_builder, roots_from_pem, Trust};

/// Largest response body accepted.
pub const MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The token file is re-read at least this often.
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);
/// The `fieldManager` of every write.
pub const FIELD_MANAGER: &str = "plexd-nodeapi";
/// Distinct `Warning` texts remembered (each is logged once).
const MAX_WARNINGS: usize = 256;

/// A `Status` answer of the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiStatus {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// `field: message` of each `details.causes[]` entry.
    pub causes: Vec<String>,
}

/// Why a call failed. `Display` never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// Unreachable, refused, timed out, TLS failure, connection cut.
    #[error("kubernetes API unreachable: {0}")]
    Transport(String),
    #[error("kubernetes API answered {} {}: {}", .0.code, .0.reason, .0.message)]
    Status(ApiStatus),
    #[error("kubernetes API response not understood: {0}")]
    Decode(String),
    #[error("kubernetes API response larger than 8 MiB")]
    TooLarge,
    #[error("kubernetes client configuration: {0}")]
    Config(String),
}

impl KubeError {
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Status(s) => Some(s.code),
            _ => None,
        }
    }

    pub fn is(&self, code: u16) -> bool {
        self.code() == Some(code)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KubeError::Status(s) => s.retry_after,
            _ => None,
        }
    }

    /// The API server refuses plexd itself (token, RBAC, or the resource type is not
    /// served): retrying quickly does not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self.code(), Some(401 | 403))
            || (self.is(404) && self.status_reason() == Some("NotFound") && self.is_type_missing())
    }

    /// A 404 for the resource type (CRD or namespace missing), not for an object.
    pub fn is_type_missing(&self) -> bool {
        match self {
            KubeError::Status(s) => {
                s.code == 404 && s.message == "the server could not find the requested resource"
            }
            _ => false,
        }
    }

    /// The content itself is refused (400, 413, 422, or etcd's size limit): sending it
    /// again cannot succeed.
    pub fn is_bad_content(&self) -> bool {
        match self {
            KubeError::Status(s) => {
                matches!(s.code, 400 | 413 | 415 | 422)
                    || (s.code == 500 && s.message.contains("request is too large"))
            }
            _ => false,
        }
    }

    fn status_reason(&self) -> Option<&str> {
        match self {
            KubeError::Status(s) => Some(&s.reason),
            _ => None,
        }
    }
}

struct TokenState {
    token: Zeroizing<String>,
    read_at: Option<Instant>,
}

struct Tls {
    /// The CA file's bytes the current configuration was built from.
    ca: Vec<u8>,
    config: Option<Arc<rustls::ClientConfig>>,
    agent: ureq::Agent,
}

/// The Kubernetes API client. Share it as `Arc<KubeClient>`.
pub struct KubeClient {
    base: String,
    token_file: PathBuf,
    ca_file: Option<PathBuf>,
    token: Mutex<TokenState>,
    tls: Mutex<Tls>,
    user_agent: String,
    warnings: Mutex<HashSet<String>>,
}

impl fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClient")
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A body to send and its content type.
pub enum Body<'a> {
    Json(&'a Value),
    MergePatch(&'a Value),
}

impl KubeClient {
    /// Loads the CA and the token; sends nothing.
    pub fn new(cfg: &KubeConfig) -> Result<KubeClient, KubeError> {
        let https = cfg.api_server.starts_with("https://");
        let (ca, config) = match (&cfg.ca_file, https) {
            (Some(path), true) => {
                let ca = std::fs::read(path)
                    .map_err(|e| KubeError::Config(format!("ca file {}: {e}", path.display())))?;
                let config = tls_config(&ca)?;
                (ca, Some(config))
            }
            (None, true) => return Err(KubeError::Config("https needs the cluster CA".into())),
            (_, false) => (Vec::new(), None),
        };
        let client = KubeClient {
            base: cfg.api_server.trim_end_matches('/').to_owned(),
            token_file: cfg.token_file.clone(),
            ca_file: cfg.ca_file.clone().filter(|_| https),
            token: Mutex::new(TokenState {
                token: Zeroizing::new(String::new()),
                read_at: None,
            }),
            tls: Mutex::new(Tls {
                ca,
                agent: request_agent(config.as_ref()),
                config,
            }),
            user_agent: format!("plexd-nodeapi/{}", env!("CARGO_PKG_VERSION")),
            warnings: Mutex::new(HashSet::new()),
        };
        client.bearer(true)?;
        Ok(client)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, KubeError> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        self.call("POST", path, Some(Body::Json(body)))
    }

    /// `PUT path` with a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        self.call("PUT", path, Some(Body::Json(body)))
    }

    /// `PATCH path` with a JSON merge patch.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, KubeError> {
        self.call("PATCH", path, Some(Body::MergePatch(patch)))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<(), KubeError> {
        self.call("DELETE", path, None).map(drop)
    }

    /// Opens a watch stream: `GET path` (with `watch=1` in its query) on an agent
    /// without an overall timeout, where every read may wait up to `idle_timeout`.
    /// Returns the body once a 200 with a JSON content type arrived.
    pub fn watch(
        &self,
        path: &str,
        idle_timeout: Duration,
    ) -> Result<Box<dyn Read + Send>, KubeError> {
        let mut retried = false;
        loop {
            let config = lock(&self.tls).config.clone();
            let agent = crate::cp::tls::agent_builder(config.map(Trust::Ready).as_ref())
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(idle_timeout)
                .timeout_write(REQUEST_TIMEOUT)
                .max_idle_connections(0)
                .redirects(0)
                .build();
            let bearer = self.bearer(false)?;
            let result = agent
                .get(&format!("{}{path}", self.base))
                .set("Authorization", &format!("Bearer {}", bearer.as_str()))
                .set("Accept", "application/json")
                .set("User-Agent", &self.user_agent)
                .call();
            match result {
                Ok(resp) => {
                    let ct = resp.content_type().to_ascii_lowercase();
                    if ct != "application/json" {
                        return Err(KubeError::Decode(format!(
                            "watch answered with content type {ct:?}"
                        )));
                    }
                    return Ok(Box::new(resp.into_reader()));
                }
                Err(ureq::Error::Status(401, _)) if !retried => {
                    retried = true;
                    self.bearer(true)?;
                }
                Err(e) => return Err(self.map_error(e)),
            }
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Body<'_>>) -> Result<Value, KubeError> {
        let encoded = match &body {
            Some(Body::Json(v)) | Some(Body::MergePatch(v)) => {
                Some(serde_json::to_vec(v).map_err(|e| KubeError::Decode(e.to_string()))?)
            }
            None => None,
        };
        let content_type = match body {
            Some(Body::Json(_)) => Some("application/json"),
            Some(Body::MergePatch(_)) => Some("application/merge-patch+json"),
            None => None,
        };
        let url = format!("{}{path}", self.base);
        let mut retried = false;
        loop {
            let agent = lock(&self.tls).agent.clone();
            let bearer = self.bearer(false)?;
            let mut request = agent
                .request(method, &url)
                .set("Authorization", &format!("Bearer {}", bearer.as_str()))
                .set("Accept", "application/json")
                .set("User-Agent", &self.user_agent);
            if let Some(ct) = content_type {
                request = request.set("Content-Type", ct);
            }
            let result = match &encoded {
                Some(bytes) => request.send_bytes(bytes),
                None => request.call(),
            };
            match result {
                Ok(resp) => {
                    self.log_warnings(&resp);
                    let bytes = read_capped(resp)?;
                    if bytes.is_empty() {
                        return Ok(Value::Null);
                    }
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| KubeError::Decode(e.to_string()));
                }
                Err(ureq::Error::Status(401, _)) if !retried => {
                    // The token expired or was rotated: read it again, retry once.
                    retried = true;
                    self.bearer(true)?;
                }
                Err(e) => return Err(self.map_error(e)),
            }
        }
    }

    /// The current token, re-read from the file when `force` or older than a minute.
    /// A file that cannot be read keeps the last good token (logged).
    fn bearer(&self, force: bool) -> Result<Zeroizing<String>, KubeError> {
        let mut state = lock(&self.token);
        let stale = state.read_at.is_none_or(|t| t.elapsed() >= TOKEN_REREAD);
        if force || stale {
            match read_token(&self.token_file) {
                Ok(token) => {
                    state.token = token;
                    state.read_at = Some(Instant::now());
                }
                Err(e) if !state.token.is_empty() => {
                    log::warn!(file = self.token_file.display().to_string(), error:% = e; "cannot re-read the service-account token; using the last one");
                    state.read_at = Some(Instant::now());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(state.token.clone())
    }

    fn map_error(&self, e: ureq::Error) -> KubeError {
        match e {
            ureq::Error::Status(code, resp) => {
                self.log_warnings(&resp);
                let retry_after = resp
                    .header("Retry-After")
                    .and_then(crate::cp::client::parse_retry_after);
                let body = read_capped(resp).unwrap_or_default();
                KubeError::Status(decode_status(code, &body, retry_after))
            }
            ureq::Error::Transport(t) => {
                self.reload_ca_if_changed();
                KubeError::Transport(t.to_string())
            }
        }
    }

    /// After a connection or TLS failure: rebuild the TLS configuration if the CA file
    /// changed (CA rotation).
    fn reload_ca_if_changed(&self) {
        let Some(path) = &self.ca_file else { return };
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let mut tls = lock(&self.tls);
        if bytes == tls.ca {
            return;
        }
        match tls_config(&bytes) {
            Ok(config) => {
                log::info!(file = path.display().to_string(); "cluster CA changed; reloaded");
                tls.agent = request_agent(Some(&config));
                tls.config = Some(config);
                tls.ca = bytes;
            }
            Err(e) => log::warn!(error:% = e; "cluster CA file changed but cannot be used"),
        }
    }

    fn log_warnings(&self, resp: &ureq::Response) {
        for name in resp.headers_names() {
            if !name.eq_ignore_ascii_case("warning") {
                continue;
            }
            for value in resp.all(&name) {
                let mut seen = lock(&self.warnings);
                if seen.len() < MAX_WARNINGS && seen.insert(value.to_owned()) {
                    log::warn!(warning = value; "kubernetes API warning");
                }
            }
        }
    }
}

fn read_token(path: &std::path::Path) -> Result<Zeroizing<String>, KubeError> {
    let raw = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| KubeError::Config(format!("token file {}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(&raw)
        .map_err(|_| KubeError::Config(format!("token file {} is not text", path.display())))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(KubeError::Config(format!(
            "token file {} is empty or malformed",
            path.display()
        )));
    }
    Ok(Zeroizing::new(token.to_owned()))
}

fn request_agent(tls: Option<&Arc<rustls::ClientConfig>>) -> ureq::Agent {
    crate::cp::tls::agent_builder(tls.cloned().map(Trust::Ready).as_ref())
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .max_idle_connections_per_host(4)
        .redirects(0)
        .build()
}

/// A rustls configuration trusting only the certificates in `ca_pem`.
fn tls_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, KubeError> {
    let roots =
        roots_from_pem(ca_pem).map_err(|e| KubeError::Config(format!("cluster CA: {e}")))?;
    let config = config_builder()
        .map_err(KubeError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_capped(resp: ureq::Response) -> Result<Vec<u8>, KubeError> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| KubeError::Transport(format!("reading response: {e}")))?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(KubeError::TooLarge);
    }
    Ok(body)
}

/// Decodes a `Status` body; anything else keeps the code with an empty reason.
pub fn decode_status(code: u16, body: &[u8], retry_after: Option<Duration>) -> ApiStatus {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let causes = v["details"]["causes"]
        .as_array()
        .map(|causes| {
            causes
                .iter()
                .map(|c| format!("{}: {}", text(&c["field"]), text(&c["message"])))
                .collect()
        })
        .unwrap_or_default();
    ApiStatus {
        code: v["code"].as_u64().map_or(code, |c| c as u16),
        reason: text(&v["reason"]),
        message: text(&v["message"]),
        retry_after,
        causes,
    }
}

/// Percent-encodes one query value.
pub fn query_value(s: &str) -> String {
    crate::encoding::percent_encode_segment(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies() {
        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"PlexdNodeState.plexd.plexsphere.com \"x\" is invalid: spec.data[0].version: Invalid value",
            "reason":"Invalid","details":{"name":"x","causes":[{"reason":"FieldValueTypeInvalid",
            "message":"Invalid value: \"string\"","field":"spec.data[0].version"}]},"code":422}"#;
        let s = decode_status(422, body, None);
        assert_eq!(s.code, 422);
        assert_eq!(s.reason, "Invalid");
        assert_eq!(
            s.causes,
            ["spec.data[0].version: Invalid value: \"string\""]
        );
        let e = KubeError::Status(s);
        assert!(e.is_bad_content() && !e.is_refusal());
        let s = decode_status(503, b"<html>", Some(Duration::from_secs(3)));
        assert_eq!((s.code, s.reason.as_str()), (503, ""));
        assert_eq!(
            KubeError::Status(s).retry_after(),
            Some(Duration::from_secs(3))
        );
        let missing = KubeError::Status(decode_status(
            404,
            br#"{"kind":"Status","code":404,"reason":"NotFound","message":"the server could not find the requested resource"}"#,
            None,
        ));
        assert!(missing.is_type_missing() && missing.is_refusal());
        let object = KubeError::Status(decode_status(
            404,
            br#"{"kind":"Status","code":404,"reason":"NotFound","message":"plexdnodestates.plexd.plexsphere.com \"x\" not found"}"#,
            None,
        ));
        assert!(!object.is_type_missing() && !object.is_refusal());
        let etcd = KubeError::Status(decode_status(
            500,
            br#"{"code":500,"reason":"InternalError","message":"etcdserver: request is too large"}"#,
            None,
        ));
        assert!(etcd.is_bad_content());
    }

    #[test]
    fn tokens_are_trimmed_and_never_shown() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("token");
        std::fs::write(&path, "  s3cret-t0ken \n").unwrap();
        assert_eq!(read_token(&path).unwrap().as_str(), "s3cret-t0ken");
        std::fs::write(&path, "\n").unwrap();
        let e = read_token(&path).unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
        let cfg = KubeConfig {
            api_server: "http://127.0.0.1:1".into(),
            token_file: path.clone(),
            ca_file: None,
            namespace: "ns".into(),
            node_name: "n".into(),
            node_id: "n".into(),
            mesh_ip: None,
            token_audience: None,
        };
        assert!(matches!(KubeClient::new(&cfg), Err(KubeError::Config(_))));
        std::fs::write(&path, "s3cret-t0ken").unwrap();
        let c = KubeClient::new(&cfg).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = c.get("/api").unwrap_err();
        assert!(matches!(e, KubeError::Transport(_)), "{e}");
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn only_the_cluster_ca_is_trusted() {
        assert!(tls_config(b"not pem").is_err());
        let ca = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/test-ca.pem"
        ))
        .unwrap();
        assert!(tls_config(&ca).is_ok());
    }
}
