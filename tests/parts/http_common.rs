//! Shared test fixtures: a small handler with echo, slow, park and stream routes, a
//! `TestServer` on a Unix socket in a temp dir, and a raw HTTP client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_nodeapi::http::{
    Handler, Later, Limits, Listener, Park, ParkKind, Reply, Request, Response, Server,
    ServerConfig, ServerHandle, Stream, Transport, Wake,
};

#[derive(Default)]
pub struct TestHandler {
    /// The park route answers `Changed` only when this is set.
    pub ready: Arc<AtomicBool>,
}

impl Handler for TestHandler {
    fn handle(&self, req: &Request<'_>) -> Reply {
        match req.path {
            "/echo" => {
                let mut body = format!("{} {}\n", req.method.as_str(), req.path).into_bytes();
                body.extend_from_slice(req.body);
                Reply::Now(
                    Response::new(200)
                        .header("Content-Type", "text/plain")
                        .body(body),
                )
            }
            // Slow work answers from another thread, as the upstream pool does.
            "/slow" => {
                let ms = req
                    .query_param("ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300);
                Reply::Later(Later {
                    deadline: Instant::now() + Duration::from_secs(10),
                    start: Box::new(move |resume| {
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(ms));
                            resume.answer(Response::json(200, b"{\"slow\":true}".to_vec()));
                        });
                        Ok(())
                    }),
                    on_timeout: Box::new(|| Response::error(503, "slow work timed out")),
                })
            }
            "/json" => Reply::Now(Response::json(200, b"{\"ok\":true}".to_vec())),
            "/big" => Reply::Now(Response::new(200).body(vec![b'x'; 8 << 20])),
            "/nocontent" => Reply::Now(Response::new(204)),
            "/panic" => panic!("test handler panics on purpose"),
            "/creds" => {
                let body = match req.transport {
                    Transport::Unix(Some(c)) => format!(
                        "pid={} uid={} gid={} groups={:?}",
                        c.pid, c.uid, c.gid, c.groups
                    ),
                    other => format!("{other:?}"),
                };
                Reply::Now(Response::new(200).body(body.into_bytes()))
            }
            "/park" => {
                let ms: u64 = req
                    .query_param("ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(5000);
                Reply::Park(park_for(self.ready.clone(), ms))
            }
            // Work elsewhere that ends by parking the request (`Resume::park`).
            "/later-park" => {
                let ms: u64 = req
                    .query_param("ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(5000);
                let ready = self.ready.clone();
                Reply::Later(Later {
                    deadline: Instant::now() + Duration::from_secs(10),
                    start: Box::new(move |resume| {
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(50));
                            resume.park(park_for(ready, ms));
                        });
                        Ok(())
                    }),
                    on_timeout: Box::new(|| Response::error(503, "later timed out")),
                })
            }
            "/stream" => Reply::Stream(Stream {
                status: 200,
                headers: vec![("Content-Type".into(), "text/event-stream".into())],
                body: Box::new(|w| {
                    for i in 0..3 {
                        write!(w, "data: {i}\n\n")?;
                        w.flush()?;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(())
                }),
            }),
            _ => Reply::Now(Response::error(404, "not found")),
        }
    }
}

/// A park that answers "ready" on a change once `ready` is set, "timeout" at its
/// deadline `ms` from now.
fn park_for(ready: Arc<AtomicBool>, ms: u64) -> Park {
    Park {
        kind: ParkKind::Change,
        deadline: Instant::now() + Duration::from_millis(ms),
        check: Box::new(move |why| match why {
            Wake::Changed if ready.load(Ordering::SeqCst) => {
                Some(Response::new(200).body(b"ready".to_vec()))
            }
            Wake::Changed => None,
            Wake::TimedOut => Some(Response::new(200).body(b"timeout".to_vec())),
            Wake::Shutdown => Some(Response::new(503).body(b"shutdown".to_vec())),
        }),
    }
}

pub fn test_limits() -> Limits {
    Limits {
        max_head_bytes: 16 * 1024,
        max_headers: 64,
        max_body_bytes: 1024 * 1024,
        head_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(800),
        io_timeout: Duration::from_millis(500),
    }
}

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub path: PathBuf,
    pub ready: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut config = ServerConfig {
            workers: 4,
            max_connections: 4096,
            max_parked: 16,
            max_body_memory: 64 << 20,
            limits: test_limits(),
        };
        tweak(&mut config);
        let handler = TestHandler::default();
        let ready = handler.ready.clone();
        let handle =
            Server::start(config, vec![Listener::Unix(listener)], Arc::new(handler)).unwrap();
        TestServer {
            handle: Some(handle),
            path,
            ready,
            _dir: dir,
        }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    pub fn client(&self) -> Client {
        Client::new(UnixStream::connect(&self.path).unwrap())
    }

    pub fn stats(&self) -> Arc<plexd_nodeapi::http::ServerStats> {
        self.handle().stats()
    }
}

/// A parsed response as seen on the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(stream: UnixStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        self.read_response(false).unwrap()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 8192];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response; `head_request`: no body follows whatever Content-Length says.
    pub fn read_response(&mut self, head_request: bool) -> Option<Resp> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = resp
            .header("Content-Length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        if !head_request && status != 100 {
            while self.buf.len() < len {
                match self.fill() {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            resp.body = self.buf.drain(..len).collect();
        }
        Some(resp)
    }

    /// True if the server closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        loop {
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }

    /// Everything until EOF, including bytes already buffered.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let _ = self.stream.read_to_end(&mut out);
        out
    }

    pub fn set_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
