//! A small synchronous HTTP/1.1 server core: listeners, one event loop per worker
//! thread, limits and timeouts, a memory budget for request bodies, and requests that
//! are answered later without holding a thread (parked requests, work handed elsewhere).
//!
//! The core knows nothing about the node's state, its routes or any upstream: it turns
//! bytes into a [`Request`], hands it to a [`Handler`], and writes the [`Response`] back.
//! Transport facts a handler needs for access control (the Unix peer's credentials, the
//! TCP peer's address) travel in `Request::transport`. Errors the core detects itself
//! (malformed requests, limits, timeouts) are answered with the same `{"error": …}` JSON
//! body the API uses.
//!
//! Code map: `server.rs` (start, shutdown, the [`Waker`], statistics), `event_loop.rs`
//! (one worker: its epoll set, its connections, timers, parked requests, accepting and
//! evicting), `conn.rs` (one connection's state machine: head, body, handler, answer),
//! `shared.rs` (what the loops share: configuration, the handler, counters, each loop's
//! mailbox), `budget.rs` (bytes of request bodies in memory), `resume.rs` ([`Resume`]:
//! answering a request from another thread), `parse.rs` (request heads, chunked bodies),
//! `write.rs` (response heads, nonblocking sends), `poller.rs` (epoll/eventfd),
//! `listen.rs` (binding the Unix socket and TCP listener), `activation.rs` (listeners
//! passed by systemd).
//!
//! Invariants: the thread count is fixed at start (plus one thread per `Reply::Stream`);
//! a worker never waits on a peer — every socket is nonblocking and every wait is an
//! epoll wait; a connection with no complete request holds no thread and keeps only its
//! received bytes; the core never panics on input.

pub mod activation;
mod budget;
mod conn;
mod event_loop;
pub mod listen;
mod parse;
mod poller;
mod resume;
mod server;
mod shared;
mod stats;
mod write;

pub use listen::Listener;
pub use resume::Resume;
pub use server::{Server, ServerHandle, Waker};
pub use stats::{RejectReason, ServerStats};

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    /// Any other (syntactically valid) method; routes answer 405.
    Other,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// Where one header's name and value sit in the request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// The headers of a request, borrowed from the bytes it arrived in.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    head: &'a [u8],
    spans: &'a [Span],
}

impl<'a> Headers<'a> {
    fn bytes(&self, (start, len): (u32, u32)) -> &'a [u8] {
        self.head
            .get(start as usize..(start + len) as usize)
            .unwrap_or_default()
    }

    fn text(&self, place: (u32, u32)) -> &'a str {
        // httparse admits only visible ASCII and obs-text; the latter is not UTF-8 text
        // a handler could use, so such a value reads as empty.
        std::str::from_utf8(self.bytes(place)).map_or("", str::trim)
    }

    /// First header named `name` (case-insensitive), trimmed.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.spans
            .iter()
            .find(|s| self.bytes(s.name).eq_ignore_ascii_case(name.as_bytes()))
            .map(|s| self.text(s.value))
    }

    /// Every header as (name as sent, value trimmed).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.spans
            .iter()
            .map(move |s| (self.text(s.name), self.text(s.value)))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl std::fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One parsed request with its whole body, borrowed from the connection's buffers for
/// the duration of `Handler::handle`. A handler that answers later copies what it needs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: Method,
    /// The path part of the request target, still percent-encoded.
    pub path: &'a str,
    /// What followed `?`, if anything, still percent-encoded.
    pub query: Option<&'a str>,
    pub headers: Headers<'a>,
    pub body: &'a [u8],
    pub transport: &'a Transport,
}

impl<'a> Request<'a> {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name)
    }

    /// Value of query parameter `name`, percent-decoded (`+` stays `+`). A value whose
    /// escapes do not decode to UTF-8 is returned as sent, so a handler's own validation
    /// refuses it.
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        let q = self.query?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_encoding::percent_decode_str(k).decode_utf8_lossy() == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap_or(Cow::Borrowed(v))
            })
        })
    }
}

/// A response body: owned bytes, static bytes, or bytes shared with a cache that
/// rendered them once.
#[derive(Debug, Clone, Default)]
pub enum Body {
    #[default]
    Empty,
    Static(&'static [u8]),
    Bytes(Vec<u8>),
    Shared(std::sync::Arc<[u8]>),
    /// Bytes that must not outlive the response (a decrypted secret): wiped on drop and
    /// never copied into the core's own buffers.
    Sensitive(zeroize::Zeroizing<Vec<u8>>),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Static(b) => b,
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

    pub fn is_sensitive(&self) -> bool {
        matches!(self, Body::Sensitive(_))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::Bytes(v)
    }
}

impl From<&'static [u8]> for Body {
    fn from(v: &'static [u8]) -> Body {
        Body::Static(v)
    }
}

impl From<std::sync::Arc<[u8]>> for Body {
    fn from(v: std::sync::Arc<[u8]>) -> Body {
        Body::Shared(v)
    }
}

pub type HeaderName = Cow<'static, str>;

/// A header value, kept in the form it was produced in and written out by the core
/// without an intermediate `String` where that is possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Static(&'static str),
    Text(String),
    /// A decimal number.
    Int(u64),
    /// A decimal number in double quotes (a strong entity tag).
    QuotedInt(u64),
    /// An HTTP date (IMF-fixdate), whole seconds.
    Date(SystemTime),
}

impl From<&'static str> for HeaderValue {
    fn from(v: &'static str) -> HeaderValue {
        HeaderValue::Static(v)
    }
}

impl From<String> for HeaderValue {
    fn from(v: String) -> HeaderValue {
        HeaderValue::Text(v)
    }
}

impl From<u64> for HeaderValue {
    fn from(v: u64) -> HeaderValue {
        HeaderValue::Int(v)
    }
}

impl std::fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValue::Static(s) => f.write_str(s),
            HeaderValue::Text(s) => f.write_str(s),
            HeaderValue::Int(n) => write!(f, "{n}"),
            HeaderValue::QuotedInt(n) => write!(f, "\"{n}\""),
            HeaderValue::Date(t) => f.write_str(&httpdate::fmt_http_date(*t)),
        }
    }
}

/// A complete response. The core adds `Date`, `Content-Length` (except on 1xx, 204,
/// 304) and `Connection`; handlers add everything else.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
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
        let mut r = Response {
            status,
            headers: Vec::with_capacity(5),
            body: body.into(),
        };
        r.headers.push((
            Cow::Borrowed("Content-Type"),
            HeaderValue::Static("application/json"),
        ));
        r
    }

    /// `{"error": message}` with the given status.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message }).to_string();
        Response::json(status, body.into_bytes())
    }

    pub fn header(
        mut self,
        name: impl Into<HeaderName>,
        value: impl Into<HeaderValue>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The first header named `name` (case-insensitive), rendered as text.
    pub fn header_text(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
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
    /// The park deadline passed, or the server stops now: answer now.
    TimedOut,
    /// The server is shutting down: answer now if the answer is known; `None` keeps the
    /// request parked until it is, or until the shutdown deadline (then `TimedOut`).
    Shutdown,
}

/// Re-examines a parked request. Must return `Some` for `TimedOut`.
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

/// A request to answer later, when a change makes its `check` answer, without holding a
/// worker thread meanwhile.
pub struct Park {
    pub deadline: Instant,
    pub check: ParkCheck,
    pub kind: ParkKind,
}

/// Starts work elsewhere (another thread) that will answer through the [`Resume`]; an
/// `Err` is answered at once instead (e.g. no room to queue the work).
pub type LaterStart = Box<dyn FnOnce(Resume) -> Result<(), Response> + Send>;

/// A request answered by work running elsewhere. The connection is parked (no thread
/// held) until the work calls `Resume::answer`, or the deadline passes and the client
/// gets `on_timeout()` (the work's answer is then dropped, and `Resume::is_cancelled`
/// tells the work it may stop).
pub struct Later {
    pub deadline: Instant,
    pub start: LaterStart,
    pub on_timeout: Box<dyn FnOnce() -> Response + Send>,
}

/// Writes a streamed body after the head; the connection closes when it returns.
pub type StreamBody = Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send>;

/// A response whose body is produced over time (server-sent events). The core writes
/// the head without `Content-Length`, with `Connection: close`, then gives the
/// connection to a thread of its own running `body`. Meant for the development control
/// plane's event stream, not for the daemon's own routes.
pub struct Stream {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: StreamBody,
}

/// What a handler does with a request.
pub enum Reply {
    Now(Response),
    Park(Park),
    Later(Later),
    Stream(Stream),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Now(r)
    }
}

/// The application side of the server. `HEAD` requests arrive with `Method::Head`;
/// answer them as `GET` — the core drops the body and keeps `Content-Length`.
///
/// `handle` runs on an event-loop thread that serves many connections: it must not
/// block (no network, no disk sync, no sleeping). Slow work is handed elsewhere with
/// `Reply::Later`; waiting for a change is `Reply::Park`.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &Request<'_>) -> Reply;
}

/// Per-request and per-connection bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// From the first byte of a request to the end of its head.
    pub head_timeout: Duration,
    /// From the end of a request head to the end of its body (whole transfer).
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Longest a peer may take no response bytes; a whole response must be taken
    /// within `WRITE_STALLS` of these.
    pub io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Event-loop threads.
    pub workers: usize,
    /// Open connections, all listeners together. At the limit the longest-idle
    /// keep-alive connection is closed to admit a newcomer; a newcomer is refused only
    /// when every connection is busy.
    pub max_connections: usize,
    /// Blocking queries (`ParkKind::Change`) parked at once; beyond it 429.
    pub max_parked: usize,
    /// Bytes of request bodies held in memory at once (received, and until their
    /// request is answered). A body that does not fit waits (its connection is not read)
    /// until others are answered.
    pub max_body_memory: usize,
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ServerConfig {
            workers: (2 * cores).max(4),
            max_connections: 8192,
            max_parked: 4096,
            max_body_memory: 64 * 1024 * 1024,
            limits: Limits::default(),
        }
    }
}

/// Entry points for the coverage-guided fuzz targets (`fuzz/`), compiled only there
/// (`--cfg fuzzing`). Each runs one parser on hostile bytes and panics if an invariant
/// the core relies on does not hold; the parsers themselves must never panic.
#[cfg(fuzzing)]
pub mod fuzz {
    use super::parse::{parse_head, ChunkedDecoder, Framing};
    use super::Limits;

    /// A request head: a parsed head lies within the input and the limits, every
    /// header span lies within the head, and a refusal is a 4xx/5xx.
    pub fn head(bytes: &[u8]) {
        let limits = Limits::default();
        let mut spans = Vec::new();
        match parse_head(bytes, &limits, &mut spans) {
            Ok(Some(head)) => {
                assert!(head.len <= bytes.len() && head.len <= limits.max_head_bytes);
                assert!(spans.len() <= limits.max_headers);
                for s in &spans {
                    for (start, len) in [s.name, s.value] {
                        assert!((start + len) as usize <= head.len);
                    }
                }
                assert!(head.path.starts_with('/') || head.path == "*");
                if let Framing::Length(n) = head.framing {
                    assert!(n <= limits.max_body_bytes);
                }
                let headers = super::Headers {
                    head: &bytes[..head.len],
                    spans: &spans,
                };
                let _ = headers.get("content-type");
                let transport = super::Transport::Unix(None);
                let req = super::Request {
                    method: head.method,
                    path: head.path,
                    query: head.query,
                    headers,
                    body: &[],
                    transport: &transport,
                };
                let _ = req.query_param("index");
            }
            Ok(None) => {}
            Err(reject) => assert!((400..600).contains(&reject.status)),
        }
    }

    /// A chunked body: fed whole and fed in pieces (the first byte picks the piece
    /// size) it decodes to the same body and the same end; the body stays within its
    /// limit; what is left over after the end is never consumed.
    pub fn chunked(bytes: &[u8]) {
        const MAX: usize = 64 * 1024;
        let Some((&step, input)) = bytes.split_first() else {
            return;
        };
        let step = usize::from(step).max(1);
        let mut whole = ChunkedDecoder::new(MAX);
        let whole_result = whole.feed(input);
        let mut pieces = ChunkedDecoder::new(MAX);
        let mut used = 0;
        let mut piece_result = Ok(0);
        while used < input.len() && !pieces.is_done() {
            let end = (used + step).min(input.len());
            match pieces.feed(&input[used..end]) {
                Ok(n) => used += n,
                Err(e) => {
                    piece_result = Err(e);
                    break;
                }
            }
        }
        assert!(whole.body.len() <= MAX && pieces.body.len() <= MAX);
        match (whole_result, piece_result) {
            (Ok(n), Ok(_)) => {
                assert_eq!(whole.is_done(), pieces.is_done());
                if whole.is_done() {
                    assert_eq!(n, used, "the end is found at the same byte");
                    assert_eq!(whole.body, pieces.body);
                }
            }
            (Err(a), Err(b)) => assert_eq!(a.status, b.status),
            (a, b) => panic!("whole: {a:?}, in pieces: {b:?}"),
        }
    }
}
