//! A blocking HTTP client for the control-plane API (`/v1/nodes/{id}/…`: state,
//! secrets, report sync, events), over `ureq` and rustls.
//!
//! `CpClient` knows the three calls the daemon makes — fetch the node's state, fetch
//! one encrypted secret, post a batch of report changes — and the rules every call
//! follows: bearer token, user agent, JSON accept header, gzip for bodies over 1 KiB,
//! a 10 MiB cap on responses, connect and request timeouts, `https` except to loopback.
//! It neither retries nor backs off (the syncer and the link do), never decrypts, and
//! never puts the token in an error, a log line or `Debug` output.
//!
//! It also opens the event stream (`CpClient::event_source`): a second agent built by
//! the same `build_agent` function (same trust roots, token and user agent) but with a
//! per-read idle timeout instead of a request timeout. Reading and interpreting the
//! stream is `cp::stream`'s job.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::tls::{config_builder, roots_from_pem, Trust};
use crate::encoding::percent_encode_segment;
use crate::model::{NodeState, ReportSyncRequest, SecretResponse};

/// Largest response body accepted (after gzip decoding).
pub const MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
/// Request bodies larger than this are gzip-compressed.
pub const GZIP_THRESHOLD: usize = 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `plexd-nodeapi/<version>`.
pub fn default_user_agent() -> String {
    format!("plexd-nodeapi/{}", env!("CARGO_PKG_VERSION"))
}

/// Why a control-plane call failed. `Display` never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpError {
    /// Unreachable, refused, timed out, TLS failure, connection cut.
    #[error("control plane unreachable: {0}")]
    Transport(String),
    /// The control plane answered with a non-2xx status.
    #[error("control plane answered {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// A 2xx answer whose body is not what the API promises.
    #[error("control plane response not understood: {0}")]
    Decode(String),
    /// The response body exceeded `MAX_RESPONSE_BYTES`.
    #[error("control plane response larger than 10 MiB")]
    TooLarge,
    /// The client could not be built from its configuration.
    #[error("control plane configuration: {0}")]
    Config(String),
}

impl CpError {
    /// The status code, if the control plane answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The control plane could not be reached at all.
    pub fn is_transport(&self) -> bool {
        matches!(self, CpError::Transport(_))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What the client needs to talk to the control plane.
#[derive(Clone)]
pub struct CpConfig {
    /// `https://host[:port][/prefix]`; `http://` only for loopback hosts.
    pub base_url: String,
    pub node_id: String,
    pub token: Zeroizing<String>,
    /// Extra PEM CA certificates trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub user_agent: String,
}

impl CpConfig {
    /// A configuration with the default user agent and no extra CA.
    pub fn new(base_url: &str, node_id: &str, token: Zeroizing<String>) -> CpConfig {
        CpConfig {
            base_url: base_url.to_owned(),
            node_id: node_id.to_owned(),
            token,
            ca_file: None,
            user_agent: default_user_agent(),
        }
    }
}

impl fmt::Debug for CpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpConfig")
            .field("base_url", &self.base_url)
            .field("node_id", &self.node_id)
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// The control-plane client. Cheap to share (`Arc`); calls are independent.
pub struct CpClient {
    agent: ureq::Agent,
    /// The TLS configuration for `https` (shared with the event-stream agent).
    tls: Option<Trust>,
    /// Base URL without a trailing slash, then `/v1/nodes/{node id}`.
    node_url: String,
    base_url: String,
    node_id: String,
    /// `Bearer <token>`: the one copy, shared with the event stream's agent.
    authorization: Arc<Zeroizing<String>>,
    user_agent: String,
}

impl fmt::Debug for CpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpClient")
            .field("base_url", &self.base_url)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl CpClient {
    /// Validates the URL and, for `https`, reads `ca_file`; builds the agent. Nothing
    /// is sent; the system trust roots are loaded at the first `https` connection.
    pub fn new(cfg: CpConfig) -> Result<CpClient, CpError> {
        let url = parse_base_url(&cfg.base_url)?;
        if cfg.node_id.is_empty() {
            return Err(CpError::Config("node id is empty".into()));
        }
        if cfg.token.is_empty() || cfg.token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(CpError::Config(
                "token is empty or contains spaces or control characters".into(),
            ));
        }
        let tls = if url.https {
            Some(trust(cfg.ca_file.as_ref())?)
        } else {
            if cfg.ca_file.is_some() {
                log::warn!(url:% = cfg.base_url; "ca file ignored for a plain http control plane");
            }
            None
        };
        let base = cfg.base_url.trim_end_matches('/').to_owned();
        Ok(CpClient {
            agent: build_agent(tls.as_ref(), AgentTimeouts::Request),
            tls,
            node_url: format!("{base}/v1/nodes/{}", percent_encode_segment(&cfg.node_id)),
            base_url: base,
            node_id: cfg.node_id,
            authorization: Arc::new(bearer(&cfg.token)),
            user_agent: cfg.user_agent,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// `GET {cp}/v1/nodes/{id}/state`.
    pub fn fetch_state(&self) -> Result<NodeState, CpError> {
        let url = format!("{}/state", self.node_url);
        self.read_json(self.request("GET", &url).call())
    }

    /// `GET {cp}/v1/nodes/{id}/secrets/{key}`: the encrypted value. A missing secret is
    /// `CpError::Status { status: 404, .. }`.
    /// `GET {cp}/v1/nodes/{id}/secrets/{key}`, bounded by `timeout` as a whole (the
    /// caller's deadline) instead of the usual request timeout.
    pub fn fetch_secret(&self, key: &str, timeout: Duration) -> Result<SecretResponse, CpError> {
        let url = format!("{}/secrets/{}", self.node_url, percent_encode_segment(key));
        let request = self
            .request("GET", &url)
            .timeout(timeout.min(REQUEST_TIMEOUT));
        self.read_json(request.call())
    }

    /// `POST {cp}/v1/nodes/{id}/report` with entries and deletions.
    pub fn sync_reports(&self, batch: &ReportSyncRequest) -> Result<(), CpError> {
        let url = format!("{}/report", self.node_url);
        let body = serde_json::to_vec(batch).map_err(|e| CpError::Decode(e.to_string()))?;
        let request = self
            .request("POST", &url)
            .set("Content-Type", "application/json");
        let result = if body.len() > GZIP_THRESHOLD {
            let compressed = gzip(&body)?;
            request
                .set("Content-Encoding", "gzip")
                .send_bytes(&compressed)
        } else {
            request.send_bytes(&body)
        };
        let response = result.map_err(map_error)?;
        // Drain (bounded) so the connection can be reused; the body is not used.
        read_capped(response).map(drop)
    }

    /// A connection factory for `GET {cp}/v1/nodes/{id}/events` with its own agent:
    /// the same TLS setup, token and user agent as this client, no overall request
    /// timeout, and `idle_timeout` as the longest wait for any byte.
    pub fn event_source(&self, idle_timeout: Duration) -> EventSource {
        EventSource {
            agent: build_agent(self.tls.as_ref(), AgentTimeouts::Stream { idle_timeout }),
            url: format!("{}/events", self.node_url),
            authorization: Arc::clone(&self.authorization),
            user_agent: self.user_agent.clone(),
        }
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        self.agent
            .request(method, url)
            .set("Authorization", &self.authorization)
            .set("User-Agent", &self.user_agent)
            .set("Accept", "application/json")
    }

    fn read_json<T: DeserializeOwned>(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, CpError> {
        let response = result.map_err(map_error)?;
        let body = read_capped(response)?;
        serde_json::from_slice(&body).map_err(|e| CpError::Decode(e.to_string()))
    }
}

/// `Bearer <token>`, built in a buffer of its final size (a growing `String` would
/// leave partial copies of the token behind in the blocks it outgrew).
fn bearer(token: &str) -> Zeroizing<String> {
    let mut value = Zeroizing::new(String::with_capacity(7 + token.len()));
    value.push_str("Bearer ");
    value.push_str(token);
    value
}

/// Opens the node's event stream; see `CpClient::event_source`.
pub struct EventSource {
    agent: ureq::Agent,
    url: String,
    authorization: Arc<Zeroizing<String>>,
    user_agent: String,
}

impl fmt::Debug for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSource")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl EventSource {
    /// `GET …/events` with `Accept: text/event-stream` and, when resuming,
    /// `Last-Event-ID`. Returns the body once a 2xx head with an event-stream content
    /// type arrived; every read on it may block up to the idle timeout.
    pub fn connect(&self, last_event_id: Option<&str>) -> Result<Box<dyn Read + Send>, CpError> {
        let mut request = self
            .agent
            .get(&self.url)
            .set("Authorization", &self.authorization)
            .set("User-Agent", &self.user_agent)
            .set("Accept", "text/event-stream")
            .set("Cache-Control", "no-cache");
        if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
            request = request.set("Last-Event-ID", id);
        }
        let response = request.call().map_err(map_error)?;
        let content_type = response.content_type().to_ascii_lowercase();
        if content_type != "text/event-stream" {
            return Err(CpError::Decode(format!(
                "event stream answered with content type {content_type:?}"
            )));
        }
        Ok(Box::new(response.into_reader()))
    }
}

/// Which timeouts an agent gets.
enum AgentTimeouts {
    /// Ordinary calls: connect timeout and a bound on the whole request.
    Request,
    /// The event stream: connect timeout and a per-read idle timeout, no overall bound.
    Stream { idle_timeout: Duration },
}

/// The one place agents are built, so both share TLS, redirect and timeout policy.
fn build_agent(tls: Option<&Trust>, timeouts: AgentTimeouts) -> ureq::Agent {
    let mut builder = super::tls::agent_builder(tls)
        .timeout_connect(CONNECT_TIMEOUT)
        .redirects(0);
    builder = match timeouts {
        AgentTimeouts::Request => builder
            .timeout(REQUEST_TIMEOUT)
            .max_idle_connections_per_host(4),
        AgentTimeouts::Stream { idle_timeout } => builder
            .timeout_read(idle_timeout)
            .timeout_write(REQUEST_TIMEOUT)
            .max_idle_connections(0),
    };
    builder.build()
}

/// Reads at most `MAX_RESPONSE_BYTES` of (decoded) body.
fn read_capped(response: ureq::Response) -> Result<Vec<u8>, CpError> {
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > MAX_RESPONSE_BYTES && response.header("Content-Encoding").is_none() {
            return Err(CpError::TooLarge);
        }
    }
    let mut body = Vec::new();
    response
        .into_reader()
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| CpError::Transport(format!("reading response: {e}")))?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(CpError::TooLarge);
    }
    Ok(body)
}

fn map_error(err: ureq::Error) -> CpError {
    match err {
        ureq::Error::Status(status, response) => CpError::Status {
            status,
            retry_after: response.header("Retry-After").and_then(parse_retry_after),
        },
        ureq::Error::Transport(t) => CpError::Transport(t.to_string()),
    }
}

/// `Retry-After`: delta seconds, or an HTTP date (converted to a delay from now).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, CpError> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(body)
        .and_then(|()| enc.finish())
        .map_err(|e| CpError::Config(format!("gzip: {e}")))
}

/// The TLS configuration for an `https` control plane: the system roots plus the
/// certificates of `ca_file`. The file is read and checked now (a bad one stops the
/// start); the system roots are loaded at the first connection.
fn trust(ca_file: Option<&PathBuf>) -> Result<Trust, CpError> {
    let extra = match ca_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| roots_from_pem(&pem))
            .map_err(|e| CpError::Config(format!("ca file {}: {e}", path.display())))?,
        None => rustls::RootCertStore::empty(),
    };
    let builder = config_builder().map_err(CpError::Config)?;
    Ok(Trust::deferred(move || {
        let mut roots = extra.clone();
        match rustls_native_certs::load_native_certs() {
            Ok(certs) => {
                let (valid, _invalid) = roots.add_parsable_certificates(certs);
                if valid == 0 && extra.is_empty() {
                    log::warn!("no usable system CA certificates found");
                }
            }
            Err(e) => {
                if extra.is_empty() {
                    log::warn!(error:% = e; "loading system CA certificates failed");
                }
            }
        }
        Arc::new(
            builder
                .clone()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }))
}

struct BaseUrl {
    https: bool,
}

/// Checks `scheme://host[:port][/path]`: `https`, or `http` to a loopback host.
fn parse_base_url(url: &str) -> Result<BaseUrl, CpError> {
    let bad = |why: &str| CpError::Config(format!("control plane url {url:?}: {why}"));
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("must start with https:// (or http:// for loopback)"));
    };
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain a query, fragment or white space"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("must not contain credentials"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        if !(after.is_empty() || after.starts_with(':')) {
            return Err(bad("bad port"));
        }
        host
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if let Some((_, port)) = authority.rsplit_once(':') {
        if !authority.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(bad("bad port"));
        }
    }
    if !https && !is_loopback_host(host) {
        return Err(bad(
            "http:// is allowed only for loopback hosts; use https://",
        ));
    }
    Ok(BaseUrl { https })
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for ok in [
            "https://cp.example.com",
            "https://cp.example.com:8443/api/",
            "http://127.0.0.1:9000",
            "http://127.1.2.3",
            "http://localhost:80/x",
            "http://[::1]:9000",
            "https://[2001:db8::1]",
        ] {
            assert!(parse_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "cp.example.com",
            "ftp://cp",
            "http://cp.example.com",
            "http://10.0.0.1:80",
            "http://[2001:db8::1]",
            "https://",
            "https://:443",
            "https://cp:notaport",
            "https://user:pw@cp",
            "https://cp/?x=1",
            "http://localhost.evil.com",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
        let future = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn config_errors_never_show_the_token() {
        let token = Zeroizing::new("sup3r-s3cret-t0ken".to_owned());
        let cfg = CpConfig::new("http://example.com", "node-1", token.clone());
        let err = CpClient::new(cfg.clone()).unwrap_err();
        assert!(matches!(err, CpError::Config(_)));
        assert!(!err.to_string().contains("sup3r"));
        assert!(!format!("{cfg:?}").contains("sup3r"));
        let client = CpClient::new(CpConfig::new("http://127.0.0.1:1", "node-1", token)).unwrap();
        assert!(!format!("{client:?}").contains("sup3r"));
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, b"not a certificate\n").unwrap();
        let mut cfg = CpConfig::new(
            "https://cp.example.com",
            "n",
            Zeroizing::new("t".to_owned()),
        );
        cfg.ca_file = Some(path);
        assert!(matches!(
            CpClient::new(cfg.clone()),
            Err(CpError::Config(_))
        ));
        cfg.ca_file = Some(dir.path().join("missing.pem"));
        assert!(matches!(CpClient::new(cfg), Err(CpError::Config(_))));
    }
}
