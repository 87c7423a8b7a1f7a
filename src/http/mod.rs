//! A small synchronous HTTP/1.1 server core: listeners, a fixed worker pool, idle
//! connections parked on epoll, limits and timeouts, and parked (long-poll) requests.
//!
//! The core knows nothing about the node's state: it turns bytes into a `Request`,
//! hands it to a `Handler`, and writes the `Response` back. Transport facts a handler
//! needs for access control (the Unix peer's credentials, the TCP peer's address) travel
//! in `Request::transport`. Errors the core detects itself (malformed requests, limits)
//! are answered with the same `{"error": …}` JSON body the API uses.
//!
//! Code map: `server.rs` (listeners, worker pool, connection table, parking, shutdown;
//! the threading design is described there), `conn.rs` (what a worker does with one
//! ready connection), `parse.rs` (request heads, chunked bodies), `write.rs` (socket
//! I/O with timeouts, response serialization, `Date`), `poller.rs` (epoll/eventfd).
//!
//! Invariants: the thread count is fixed at start (plus one thread per `Reply::Stream`);
//! a connection with no complete request holds no thread and keeps only its unparsed
//! bytes; the core never panics on input, and a panicking handler becomes a 500.

pub mod activation;
mod conn;
pub mod listen;
mod parse;
mod poller;
mod server;
mod write;

pub use server::{Listener, Server, ServerHandle, ServerStats, Waker};

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Credentials of a Unix-socket peer, as the kernel recorded them at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS); empty if the kernel could not report them.
    pub groups: Vec<u32>,
}

/// Which listener a request arrived on, with what the kernel says about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `None` only if SO_PEERCRED failed, which a handler must treat as "unknown peer".
    Unix(Option<PeerCred>),
    Tcp(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other(m) => m,
        }
    }
}

/// One parsed request with its whole body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The path part of the request target, still percent-encoded.
    pub path: String,
    /// What followed `?`, if anything, still percent-encoded (`query_param` decodes).
    pub query: Option<String>,
    /// Header names lower-cased; values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub transport: Arc<Transport>,
}

impl Request {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Value of the first query parameter named `name`, names and values
    /// percent-decoded (`wait=5%73` is `5s`; invalid UTF-8 becomes U+FFFD). `+` stays
    /// `+`: this is a URL, not a form.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        let q = self.query.as_deref()?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode_str(k).decode_utf8_lossy() == name)
                .then(|| percent_decode_str(v).decode_utf8_lossy())
        })
    }
}

/// A response body: owned bytes, or bytes shared with a cache that rendered them once.
#[derive(Debug, Clone, Default)]
pub enum Body {
    #[default]
    Empty,
    Bytes(Vec<u8>),
    Shared(Arc<[u8]>),
    /// Bytes that must not outlive the response (a decrypted secret): wiped on drop.
    Sensitive(zeroize::Zeroizing<Vec<u8>>),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Bytes(b) => b,
            Body::Shared(b) => b,
            Body::Sensitive(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::Bytes(v)
    }
}

impl From<Arc<[u8]>> for Body {
    fn from(v: Arc<[u8]>) -> Body {
        Body::Shared(v)
    }
}

pub type HeaderName = Cow<'static, str>;

/// A complete response. The core adds `Date`, `Content-Length` (except on 1xx, 204,
/// 304) and `Connection`; handlers add everything else.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// A JSON response: sets `Content-Type: application/json`.
    pub fn json(status: u16, body: impl Into<Body>) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// `{"error": message}` with the given status.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message }).to_string();
        Response::json(status, body.into_bytes())
    }

    pub fn header(mut self, name: impl Into<HeaderName>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Body>) -> Response {
        self.body = body.into();
        self
    }
}

/// Why a parked request is being looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something changed (`Waker::wake`); answer only if *this* request's resource did.
    Changed,
    /// The park deadline passed: answer now.
    TimedOut,
    /// The server is shutting down: answer now.
    Shutdown,
}

/// Re-examines a parked request. Must return `Some` for `TimedOut` and `Shutdown`.
pub type ParkCheck = Box<dyn FnMut(Wake) -> Option<Response> + Send>;

/// What a parked request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkKind {
    /// A change its client asked to hear about (a blocking query). These are bounded by
    /// `ServerConfig::max_parked`: beyond it the client gets 429.
    Change,
    /// Work the server already started for it (a durable write). Never refused for lack
    /// of room: connections bound these.
    Completion,
}

/// A request to answer later, without holding a worker thread meanwhile.
pub struct Park {
    pub deadline: Instant,
    pub check: ParkCheck,
    pub kind: ParkKind,
}

/// Writes a streamed body after the head; the connection closes when it returns.
pub type StreamBody = Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send>;

/// A response whose body is produced over time (server-sent events). The core writes
/// the head without `Content-Length`, with `Connection: close`, then gives the
/// connection to a thread of its own running `body`. Meant for the development control
/// plane's event stream, not for the daemon's own routes.
pub struct Stream {
    pub status: u16,
    pub headers: Vec<(HeaderName, String)>,
    pub body: StreamBody,
}

/// What a handler does with a request.
pub enum Reply {
    Now(Response),
    Park(Park),
    Stream(Stream),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Now(r)
    }
}

/// The application side of the server. `HEAD` requests arrive with `Method::Head`;
/// answer them as `GET` — the core drops the body and keeps `Content-Length`.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &Request) -> Reply;

    /// Whether handling `request` may block for long (network, fsync). The core then
    /// gives the other ready connections it holds to other workers first. Cheap; the
    /// default says no.
    fn may_block(&self, _request: &Request) -> bool {
        false
    }
}

/// Per-request and per-connection bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// From the first byte of a request to the end of its head.
    pub head_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Longest wait for the next body byte, and for the peer to take response bytes.
    pub io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub workers: usize,
    pub max_connections: usize,
    pub max_parked: usize,
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ServerConfig {
            workers: (2 * cores).max(4),
            max_connections: 8192,
            max_parked: 4096,
            limits: Limits::default(),
        }
    }
}
