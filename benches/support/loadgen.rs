//! Closed-loop HTTP/1.1 load generator for the benchmarks: many keep-alive connections
//! (Unix socket or TCP) driven by a few threads, each thread multiplexing its share of
//! the connections with one level-triggered epoll instance (`nix`). Every connection has
//! exactly one request outstanding; request bytes are pre-built and sent round-robin
//! from a list of templates. Responses are parsed just enough to frame them: status
//! line, end of head, `Content-Length` or chunked bodies (skipped, not stored; the Go
//! reference answers large bodies chunked), and `Connection: close` (the connection is
//! then re-opened). A response is counted as completed when its status is 2xx; anything
//! else — non-2xx, malformed framing, a reset or a close mid-response — is counted as an
//! error. Only responses that finish inside
//! the measured window (after the warm-up) are counted, and their latencies (send of
//! the first request byte to the last response byte) are kept in µs.
//!
//! It deliberately does not pipeline, retry failed requests, or validate bodies.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Where the load goes.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Target {
    /// Opens one blocking connection.
    pub fn connect(&self) -> io::Result<Stream> {
        match self {
            Target::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Target::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }
}

/// A connected client socket of either family.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Tcp(s) => s.set_nonblocking(on),
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

/// Builds the exact bytes of one HTTP/1.1 request.
pub fn build_request(
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in extra_headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// One load run's parameters.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    pub connections: usize,
    /// Client threads; the connections are split between them.
    pub threads: usize,
    /// Request templates, sent round-robin (per thread).
    pub requests: Arc<Vec<Vec<u8>>>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one load run measured inside its window.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// 2xx responses completed in the window.
    pub completed: u64,
    /// Non-2xx responses and transport/framing failures in the window.
    pub errors: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Latencies of the completed 2xx responses, µs, sorted ascending.
    pub latencies_us: Vec<u32>,
    /// A sample of what went wrong (first error seen), for diagnostics.
    pub first_error: Option<String>,
    /// Connections that could not be (re)opened and were abandoned.
    pub dead_connections: usize,
    /// CPU time the load generator's own threads used inside the window.
    pub client_cpu: Duration,
}

impl LoadResult {
    /// The load generator's own CPU per completed request, µs.
    pub fn client_cpu_us_per_req(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }

    pub fn rps(&self) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 {
            self.completed as f64 / s
        } else {
            0.0
        }
    }

    /// Percentile `p` in [0, 100] of the latencies, µs (0 when there are none).
    pub fn percentile_us(&self, p: f64) -> f64 {
        percentile_sorted(&self.latencies_us, p)
    }
}

/// Nearest-rank percentile of a sorted slice.
pub fn percentile_sorted(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[idx])
}

/// Runs the load: connects everything, then warm-up, then the measured window. `probe`
/// is called on the coordinating thread right at the window's start and end (used to
/// sample the server's CPU time); its two results are returned with the load result.
pub fn run<S>(cfg: &LoadConfig, mut probe: impl FnMut() -> S) -> io::Result<(LoadResult, S, S)> {
    if cfg.connections == 0 || cfg.requests.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "load needs at least one connection and one request",
        ));
    }
    let threads = cfg.threads.clamp(1, cfg.connections);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let setup_failed = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let share = cfg.connections / threads + usize::from(t < cfg.connections % threads);
        let cfg = cfg.clone();
        let barrier = Arc::clone(&barrier);
        let failed = Arc::clone(&setup_failed);
        let h = thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || worker(&cfg, t, share, &barrier, &failed))?;
        handles.push(h);
    }
    // Every worker has connected (or failed to) once the barrier opens.
    barrier.wait();
    let ok = !setup_failed.load(Ordering::SeqCst);
    if ok {
        thread::sleep(cfg.warmup);
    }
    let before = probe();
    if ok {
        thread::sleep(cfg.duration);
    }
    let after = probe();

    let mut total = LoadResult {
        window: cfg.duration,
        ..LoadResult::default()
    };
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                total.completed += r.completed;
                total.errors += r.errors;
                total.dead_connections += r.dead_connections;
                total.client_cpu += r.client_cpu;
                total.latencies_us.extend_from_slice(&r.latencies_us);
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(io::Error::other("load generator thread panicked")),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    total.latencies_us.sort_unstable();
    Ok((total, before, after))
}

/// CPU time used so far by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// One connection's client state.
struct Conn {
    stream: Option<Stream>,
    /// Index of the request template in flight.
    req: usize,
    written: usize,
    /// Whether EPOLLOUT is in the interest set (only while a write is incomplete).
    want_out: bool,
    sent_at: Instant,
    parser: ResponseParser,
}

struct Worker<'a> {
    cfg: &'a LoadConfig,
    epoll: Epoll,
    next_req: usize,
    window_start: Instant,
    window_end: Instant,
    result: LoadResult,
    /// Read buffer shared by this thread's connections (bodies are not kept).
    buf: Vec<u8>,
}

fn worker(
    cfg: &LoadConfig,
    thread_no: usize,
    share: usize,
    barrier: &Barrier,
    setup_failed: &AtomicBool,
) -> io::Result<LoadResult> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from);
    let mut conns = Vec::with_capacity(share);
    let mut setup_err = None;
    for _ in 0..share {
        match cfg.target.connect() {
            Ok(s) => conns.push(Conn {
                stream: Some(s),
                req: 0,
                written: 0,
                want_out: false,
                sent_at: Instant::now(),
                parser: ResponseParser::default(),
            }),
            Err(e) => {
                setup_err = Some(e);
                break;
            }
        }
    }
    // Always reach the barrier, even on failure, so the coordinator is not stuck; a
    // failure anywhere ends the run for everyone.
    if setup_err.is_some() {
        setup_failed.store(true, Ordering::SeqCst);
    }
    barrier.wait();
    if setup_err.is_none() && setup_failed.load(Ordering::SeqCst) {
        return Ok(LoadResult::default());
    }
    let epoll = epoll?;
    if let Some(e) = setup_err {
        return Err(io::Error::new(
            e.kind(),
            format!("connecting to {:?}: {e}", cfg.target),
        ));
    }
    let start = Instant::now();
    let mut w = Worker {
        cfg,
        epoll,
        next_req: thread_no * 7919 % cfg.requests.len(),
        window_start: start + cfg.warmup,
        window_end: start + cfg.warmup + cfg.duration,
        result: LoadResult::default(),
        buf: vec![0u8; 256 * 1024],
    };
    for (i, c) in conns.iter_mut().enumerate() {
        if let Some(s) = &c.stream {
            s.set_nonblocking(true)?;
            w.register(s, i)?;
        }
        w.start_request(c);
        w.flush(c, i);
    }

    let mut events = vec![EpollEvent::empty(); 256];
    let mut cpu_at_window_start = None;
    loop {
        let now = Instant::now();
        if now >= w.window_end {
            break;
        }
        if cpu_at_window_start.is_none() && now >= w.window_start {
            cpu_at_window_start = Some(thread_cpu_time());
        }
        if conns.iter().all(|c| c.stream.is_none()) {
            w.result.dead_connections = conns.len();
            break;
        }
        let n = match w.epoll.wait(&mut events, EpollTimeout::from(20u16)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            if let Some(c) = conns.get_mut(i) {
                w.drive(c, i);
            }
        }
    }
    w.result.dead_connections = conns.iter().filter(|c| c.stream.is_none()).count();
    if let Some(start) = cpu_at_window_start {
        w.result.client_cpu = thread_cpu_time().saturating_sub(start);
    }
    Ok(w.result)
}

impl Worker<'_> {
    // Level-triggered EPOLLIN only: one read per readiness event, and with one request
    // outstanding per connection that is usually one read per response. EPOLLOUT is
    // added only while a request could not be written whole (rare: requests are small).
    fn register(&self, s: &Stream, i: usize) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        self.epoll
            .add(s, EpollEvent::new(flags, i as u64))
            .map_err(io::Error::from)
    }

    fn set_want_out(&mut self, c: &mut Conn, i: usize, on: bool) -> bool {
        let Some(s) = c.stream.as_ref() else {
            return false;
        };
        let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if on {
            flags |= EpollFlags::EPOLLOUT;
        }
        let mut ev = EpollEvent::new(flags, i as u64);
        if let Err(e) = self.epoll.modify(s, &mut ev) {
            self.error(format!("epoll modify: {e}"));
            return false;
        }
        c.want_out = on;
        true
    }

    fn start_request(&mut self, c: &mut Conn) {
        c.req = self.next_req;
        self.next_req = (self.next_req + 1) % self.cfg.requests.len();
        c.written = 0;
        c.parser = ResponseParser::default();
        c.sent_at = Instant::now();
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }

    fn error(&mut self, what: String) {
        if self.in_window(Instant::now()) {
            self.result.errors += 1;
            if self.result.first_error.is_none() {
                self.result.first_error = Some(what);
            }
        }
    }

    /// Replaces a failed or closed connection and sends the next request on it.
    fn reconnect(&mut self, c: &mut Conn, i: usize) {
        c.stream = None;
        c.want_out = false;
        if Instant::now() >= self.window_end {
            return;
        }
        match self.cfg.target.connect() {
            Ok(s) => {
                if s.set_nonblocking(true).is_err() || self.register(&s, i).is_err() {
                    self.error("registering a re-opened connection failed".into());
                    return;
                }
                c.stream = Some(s);
                self.start_request(c);
                self.flush(c, i);
            }
            Err(e) => {
                self.error(format!("reconnect failed: {e}"));
            }
        }
    }

    /// Writes what is left of the request; false if the connection failed.
    fn flush(&mut self, c: &mut Conn, i: usize) -> bool {
        let requests = Arc::clone(&self.cfg.requests);
        let req = &requests[c.req];
        while c.written < req.len() {
            let Some(stream) = c.stream.as_mut() else {
                return false;
            };
            match stream.write(&req[c.written..]) {
                Ok(0) => {
                    self.error("write returned 0".into());
                    self.reconnect(c, i);
                    return false;
                }
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return c.want_out || self.set_want_out(c, i, true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error(format!("write: {e}"));
                    self.reconnect(c, i);
                    return false;
                }
            }
        }
        if c.want_out {
            return self.set_want_out(c, i, false);
        }
        true
    }

    /// Handles one readiness event of a connection.
    fn drive(&mut self, c: &mut Conn, i: usize) {
        if c.written < self.cfg.requests[c.req].len() {
            // Still writing: nothing can be answered yet.
            self.flush(c, i);
            return;
        }
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let n = match stream.read(&mut self.buf) {
            Ok(0) => {
                self.error("connection closed by server mid-request".into());
                self.reconnect(c, i);
                return;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return
            }
            Err(e) => {
                self.error(format!("read: {e}"));
                self.reconnect(c, i);
                return;
            }
        };
        let fed = c.parser.feed(&self.buf[..n]);
        match fed {
            Ok(Feed::More) => {}
            Ok(Feed::Done {
                status,
                extra,
                close,
            }) => {
                let done = Instant::now();
                if extra != 0 {
                    self.error(format!("{extra} unexpected bytes after a response"));
                    self.reconnect(c, i);
                    return;
                }
                if self.in_window(done) {
                    if (200..300).contains(&status) {
                        self.result.completed += 1;
                        let us = done.duration_since(c.sent_at).as_micros();
                        self.result
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        self.error(format!("status {status}"));
                    }
                }
                if done >= self.window_end {
                    c.stream = None;
                } else if close {
                    self.reconnect(c, i);
                } else {
                    self.start_request(c);
                    self.flush(c, i);
                }
            }
            Err(e) => {
                self.error(format!("bad response: {e}"));
                self.reconnect(c, i);
            }
        }
    }
}

/// Progress of one response.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    More,
    /// The response is complete; `extra` bytes beyond it were in the fed chunk.
    Done {
        status: u16,
        extra: usize,
        close: bool,
    },
}

/// Minimal response framing: head up to 64 KiB, then a `Content-Length` or chunked body
/// that is counted down, not stored.
#[derive(Debug, Default)]
pub struct ResponseParser {
    head: Vec<u8>,
    body: Option<BodyLeft>,
}

#[derive(Debug)]
struct BodyLeft {
    status: u16,
    close: bool,
    framing: Framing,
}

/// How the rest of a body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(usize),
    /// Reading a chunk-size line; its bytes so far.
    ChunkSize(Vec<u8>),
    /// Bytes of chunk data left, its closing CRLF included.
    ChunkData(usize),
    /// Reading trailer lines after the last chunk; the current line's bytes so far.
    Trailer(Vec<u8>),
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 1024;

impl Framing {
    /// Consumes body bytes from `data`; `Some(n)` when the body ended after `n` of them.
    fn consume(&mut self, data: &[u8]) -> Result<Option<usize>, String> {
        let mut at = 0;
        loop {
            match self {
                Framing::Length(left) => {
                    let take = (*left).min(data.len() - at);
                    *left -= take;
                    at += take;
                    return Ok((*left == 0).then_some(at));
                }
                Framing::ChunkData(left) => {
                    let take = (*left).min(data.len() - at);
                    *left -= take;
                    at += take;
                    if *left > 0 {
                        return Ok(None);
                    }
                    *self = Framing::ChunkSize(Vec::new());
                }
                Framing::ChunkSize(line) | Framing::Trailer(line) => {
                    let Some(nl) = data[at..].iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(&data[at..]);
                        if line.len() > MAX_CHUNK_LINE {
                            return Err("chunk line over 1 KiB".into());
                        }
                        return Ok(None);
                    };
                    line.extend_from_slice(&data[at..at + nl]);
                    at += nl + 1;
                    let text = String::from_utf8_lossy(line)
                        .trim_end_matches('\r')
                        .to_string();
                    if matches!(self, Framing::Trailer(_)) {
                        if text.is_empty() {
                            return Ok(Some(at));
                        }
                        *self = Framing::Trailer(Vec::new());
                        continue;
                    }
                    let size = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| format!("bad chunk size line {text:?}"))?;
                    *self = if size == 0 {
                        Framing::Trailer(Vec::new())
                    } else {
                        Framing::ChunkData(size + 2)
                    };
                }
            }
            if at == data.len() {
                // Nothing left to read; a zero-length body part ends only a finished
                // Length framing, handled above.
                return Ok(None);
            }
        }
    }
}

impl ResponseParser {
    pub fn feed(&mut self, data: &[u8]) -> Result<Feed, String> {
        if let Some(b) = self.body.as_mut() {
            return Ok(match b.framing.consume(data)? {
                Some(used) => Feed::Done {
                    status: b.status,
                    extra: data.len() - used,
                    close: b.close,
                },
                None => Feed::More,
            });
        }
        let from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(data);
        let Some(pos) = find(&self.head[from..], b"\r\n\r\n") else {
            if self.head.len() > MAX_HEAD {
                return Err("response head over 64 KiB".into());
            }
            return Ok(Feed::More);
        };
        let head_end = from + pos + 4;
        let (status, framing, close) = parse_head(&self.head[..head_end])?;
        let rest = self.head.split_off(head_end);
        let mut body = BodyLeft {
            status,
            close,
            framing,
        };
        if body.framing == Framing::Length(0) {
            return Ok(Feed::Done {
                status,
                extra: rest.len(),
                close,
            });
        }
        if let Some(used) = body.framing.consume(&rest)? {
            return Ok(Feed::Done {
                status,
                extra: rest.len() - used,
                close,
            });
        }
        self.body = Some(body);
        Ok(Feed::More)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status code, body framing and whether the server will close, from a response head.
fn parse_head(head: &[u8]) -> Result<(u16, Framing, bool), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(format!("unsupported Transfer-Encoding {value:?}"));
            }
            chunked = true;
        }
    }
    let framing = match (length, chunked) {
        (_, true) if status == 204 || status == 304 || status < 200 => Framing::Length(0),
        (_, true) => Framing::ChunkSize(Vec::new()),
        (Some(n), false) => Framing::Length(n),
        (None, false) if status == 204 || status == 304 || status < 200 => Framing::Length(0),
        (None, false) => return Err(format!("status {status} without Content-Length")),
    };
    Ok((status, framing, close))
}

/// The data of a complete chunked body (`raw` as framed by `ResponseParser`).
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while let Some(nl) = raw[at..].iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&raw[at..at + nl]);
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or_default(), 16)
            .unwrap_or(0);
        at += nl + 1;
        if size == 0 || at + size > raw.len() {
            break;
        }
        out.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
        if at >= raw.len() {
            break;
        }
    }
    out
}

/// One blocking request/response on a fresh or given stream, for probes and readiness
/// checks (not for load). Returns the status and the body.
pub fn request_once(
    stream: &mut Stream,
    request: &[u8],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let mut parser = ResponseParser::default();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no complete response within {timeout:?}"),
                ));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response ended",
            ));
        }
        all.extend_from_slice(&buf[..n]);
        match parser.feed(&buf[..n]) {
            Ok(Feed::More) => {}
            Ok(Feed::Done { status, extra, .. }) => {
                let head_end = find(&all, b"\r\n\r\n").map_or(0, |p| p + 4);
                let raw = &all[head_end..all.len() - extra];
                let head = String::from_utf8_lossy(&all[..head_end]).to_ascii_lowercase();
                let body = if head.contains("\r\ntransfer-encoding: chunked") {
                    dechunk(raw)
                } else {
                    raw.to_vec()
                };
                return Ok((status, body));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}
