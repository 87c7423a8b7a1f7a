//! Socket output for the core: the response head serializer, the per-second `Date`
//! cache, and nonblocking sends that remember what is left.
//!
//! Sockets stay nonblocking for their whole life; a send that would block hands back a
//! [`Pending`] with the unsent rest, and the event loop finishes it when the socket is
//! writable again. Writes use `sendmsg` with `MSG_NOSIGNAL`, so a vanished peer is an
//! error, never a SIGPIPE. A sensitive body (a decrypted secret) is never copied into
//! the head buffer: it is sent from its own wiped-on-drop buffer. Nothing here knows
//! about connections, epoll or parking.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Body, HeaderValue, Response};

/// Bodies up to this size are copied behind the head and sent with one `send`.
const COPY_BODY_MAX: usize = 16 * 1024;

/// Reads once into the spare capacity of `buf` (at most `max` bytes). `WouldBlock` when
/// nothing is there; `Ok(0)` when the peer closed.
pub(crate) fn read_some(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < max {
        buf.reserve(max);
    }
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(max);
    loop {
        // SAFETY: recv writes at most `want` bytes into the spare capacity we own.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, 0) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel initialised `n` bytes.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// One `sendmsg` of up to two slices; `Ok(0)` when the socket would block.
pub(crate) fn send_some(fd: RawFd, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let mut iov = [IoSlice::new(a), IoSlice::new(b)];
    let cnt = if b.is_empty() { 1 } else { 2 };
    // SAFETY: zeroed msghdr is valid; the iovecs outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = cnt;
    loop {
        // SAFETY: msg points to live iovecs.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(err),
        }
    }
}

/// What is left of a response the socket did not take at once.
pub(crate) struct Pending {
    head: Vec<u8>,
    head_off: usize,
    body: Body,
    body_off: usize,
    /// Close the connection once it is sent.
    pub close: bool,
    /// Half-close and drain the client's bytes for a moment before closing (a refusal).
    pub linger: bool,
}

impl Pending {
    /// Sends as much as the socket takes; `true` once everything is sent.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        loop {
            let a = &self.head[self.head_off..];
            let b = &self.body.as_bytes()[self.body_off..];
            if a.is_empty() && b.is_empty() {
                self.body = Body::Empty;
                return Ok(true);
            }
            let n = send_some(fd, a, b)?;
            if n == 0 {
                return Ok(false);
            }
            let from_head = n.min(a.len());
            self.head_off += from_head;
            self.body_off += n - from_head;
        }
    }
}

/// Sends `resp` on `fd` without waiting. `Ok(None)`: all of it went out. `Ok(Some)`:
/// the rest to send when the socket is writable. `out` is scratch space for the head.
pub(crate) fn send_response(
    fd: RawFd,
    out: &mut Vec<u8>,
    resp: Response,
    f: Framing,
) -> io::Result<Option<Pending>> {
    let apart = render(out, &resp, f);
    let body: &[u8] = if apart { resp.body.as_bytes() } else { &[] };
    let mut sent = 0;
    let total = out.len() + body.len();
    while sent < total {
        let (a, b) = if sent < out.len() {
            (&out[sent..], body)
        } else {
            (&body[sent - out.len()..], &[][..])
        };
        let n = send_some(fd, a, b)?;
        if n == 0 {
            break;
        }
        sent += n;
    }
    if sent == total {
        return Ok(None);
    }
    let (head, body_off) = if sent < out.len() {
        (out[sent..].to_vec(), 0)
    } else {
        (Vec::new(), sent - out.len())
    };
    Ok(Some(Pending {
        head,
        head_off: 0,
        body: if apart { resp.body } else { Body::Empty },
        body_off,
        close: !f.keep_alive,
        linger: false,
    }))
}

/// What the core must say about the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    pub keep_alive: bool,
    pub http10: bool,
    /// A `HEAD` request: send `Content-Length` but no body.
    pub head: bool,
}

/// Serializes the head of `resp` into `out` (cleared first), and the body too when it
/// is small; returns whether the body still has to be sent separately.
pub(crate) fn render(out: &mut Vec<u8>, resp: &Response, f: Framing) -> bool {
    out.clear();
    let status = resp.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_num(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    push_headers(out, &resp.headers);
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    if !bodyless {
        out.extend_from_slice(b"Content-Length: ");
        push_num(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if !f.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if f.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodyless || f.head || resp.body.is_empty() {
        return false;
    }
    if resp.body.len() <= COPY_BODY_MAX && !resp.body.is_sensitive() {
        out.extend_from_slice(resp.body.as_bytes());
        return false;
    }
    true
}

fn push_headers(out: &mut Vec<u8>, headers: &[(super::HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        if is_core_header(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        match value {
            HeaderValue::Static(s) => out.extend_from_slice(s.as_bytes()),
            HeaderValue::Text(s) => out.extend_from_slice(s.as_bytes()),
            HeaderValue::Int(n) => push_num(out, *n),
            HeaderValue::QuotedInt(n) => {
                out.push(b'"');
                push_num(out, *n);
                out.push(b'"');
            }
            HeaderValue::Date(t) => with_http_date(*t, |d| out.extend_from_slice(d)),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Serializes a streamed response's head: no `Content-Length`, `Connection: close`.
pub(crate) fn render_stream_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(super::HeaderName, HeaderValue)],
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_num(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    push_headers(out, headers);
    out.extend_from_slice(b"Connection: close\r\n\r\n");
}

/// Headers the core owns; a handler's copies are dropped.
fn is_core_header(name: &str) -> bool {
    ["content-length", "date", "connection", "transfer-encoding"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

thread_local! {
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    static OTHER_DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs `f` with `t` as an HTTP date from `cell`, formatted only when the second changes.
fn cached_date(
    cell: &'static std::thread::LocalKey<RefCell<(u64, String)>>,
    t: SystemTime,
    f: impl FnOnce(&[u8]),
) {
    let secs = whole_seconds(t);
    cell.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            *cached = (secs, httpdate::fmt_http_date(whole));
        }
        f(cached.1.as_bytes());
    });
}

/// Runs `f` with the current `Date` value, formatted at most once per second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    cached_date(&DATE, SystemTime::now(), f);
}

/// Runs `f` with `t` as an HTTP date; responses mostly repeat a few timestamps, so each
/// thread keeps the last one it formatted.
fn with_http_date(t: SystemTime, f: impl FnOnce(&[u8])) {
    cached_date(&OTHER_DATE, t, f);
}

/// The reason phrase for the statuses this service uses; others get a generic one.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        s if s < 200 => "Informational",
        s if s < 300 => "Success",
        s if s < 400 => "Redirection",
        s if s < 500 => "Client Error",
        _ => "Server Error",
    }
}
