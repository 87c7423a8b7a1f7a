//! A tiny thread-per-connection HTTP/1.1 keep-alive server (on `httparse`): the load
//! generator's counterpart in `--self-test`, so the harness is verified without the
//! daemon. A handler closure maps each request to a full response, optionally followed
//! by closing the connection.
//!
//! It deliberately does not bound its threads, time out slow clients, decode chunked
//! request bodies (answered 411; it can send chunked responses), or aim for speed: it is test equipment, not the
//! product.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::loadgen::{Stream, Target};

/// One parsed request.
#[derive(Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the handler answers.
pub enum Reply {
    Full {
        status: u16,
        body: Vec<u8>,
        close: bool,
    },
    /// `body` sent with `Transfer-Encoding: chunked`, `chunk` bytes per chunk, each
    /// chunk written on its own (as the Go reference sends large bodies).
    Chunked {
        status: u16,
        body: Vec<u8>,
        chunk: usize,
    },
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            body: body.into(),
            close: false,
        }
    }
}

pub type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

/// A running server; stops (and joins its threads) on `stop()` or drop.
pub struct TinyServer {
    target: Target,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    unix_path: Option<PathBuf>,
}

impl TinyServer {
    pub fn unix(path: &Path, handler: Arc<Handler>) -> io::Result<TinyServer> {
        let l = UnixListener::bind(path)?;
        l.set_nonblocking(true)?;
        let target = Target::Unix(path.to_path_buf());
        let mut s = Self::start(target, handler, move || {
            l.accept().map(|(s, _)| Stream::Unix(s))
        })?;
        s.unix_path = Some(path.to_path_buf());
        Ok(s)
    }

    pub fn tcp(handler: Arc<Handler>) -> io::Result<TinyServer> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let target = Target::Tcp(l.local_addr()?);
        Self::start(target, handler, move || {
            l.accept().map(|(s, _)| {
                // Best effort: a latency-bound loopback responder wants no Nagle delay.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            })
        })
    }

    fn start(
        target: Target,
        handler: Arc<Handler>,
        accept: impl Fn() -> io::Result<Stream> + Send + 'static,
    ) -> io::Result<TinyServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (Arc::clone(&stop), Arc::clone(&conns));
        let acceptor = thread::Builder::new()
            .name("tiny-accept".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match accept() {
                        Ok(s) => {
                            let (h, st) = (Arc::clone(&handler), Arc::clone(&stop2));
                            let spawned = thread::Builder::new()
                                .name("tiny-conn".into())
                                .stack_size(64 * 1024)
                                .spawn(move || serve_conn(s, &*h, &st));
                            if let (Ok(j), Ok(mut list)) = (spawned, conns2.lock()) {
                                list.retain(|j| !j.is_finished());
                                list.push(j);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(TinyServer {
            target,
            stop,
            acceptor: Some(acceptor),
            conns,
            unix_path: None,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let list = match self.conns.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => Vec::new(),
        };
        for j in list {
            let _ = j.join();
        }
        if let Some(p) = self.unix_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_conn(mut s: Stream, handler: &Handler, stop: &AtomicBool) {
    if s.set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 65536];
    loop {
        // Parse as many complete requests as the buffer holds.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            let head_len = match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    let _ = write_full(&mut s, 400, b"{\"error\":\"bad request\"}", true);
                    return;
                }
            };
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let mut req = Req {
                method: parsed.method.unwrap_or_default().to_string(),
                path: parsed.path.unwrap_or_default().to_string(),
                headers,
                body: Vec::new(),
            };
            if req.header("transfer-encoding").is_some() {
                let _ = write_full(&mut s, 411, b"{\"error\":\"length required\"}", true);
                return;
            }
            let len: usize = req
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < head_len + len {
                break;
            }
            req.body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);
            match handler(&req) {
                Reply::Full {
                    status,
                    body,
                    close,
                } => {
                    let close = close
                        || req
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    if write_full(&mut s, status, &body, close).is_err() || close {
                        return;
                    }
                }
                Reply::Chunked {
                    status,
                    body,
                    chunk,
                } => {
                    if write_chunked(&mut s, status, &body, chunk).is_err() {
                        return;
                    }
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => return,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        _ => "Status",
    }
}

fn write_chunked(s: &mut Stream, status: u16, body: &[u8], chunk: usize) -> io::Result<()> {
    s.write_all(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            reason(status)
        )
        .as_bytes(),
    )?;
    for part in body.chunks(chunk.max(1)) {
        let mut out = format!("{:x}\r\n", part.len()).into_bytes();
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
        s.write_all(&out)?;
    }
    s.write_all(b"0\r\n\r\n")
}

fn write_full(s: &mut Stream, status: u16, body: &[u8], close: bool) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if status != 204 {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if status != 204 {
        bytes.extend_from_slice(body);
    }
    s.write_all(&bytes)
}
