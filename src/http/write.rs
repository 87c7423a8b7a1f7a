//! Socket I/O for the core: nonblocking reads, writes bounded by a stall timeout, the
//! response head serializer and the per-second `Date` cache.
//!
//! Sockets stay nonblocking for their whole life; "blocking with a timeout" is a
//! `poll(2)` on the one fd followed by a retry. Writes use `sendmsg` with
//! `MSG_NOSIGNAL`, so a vanished peer is an error, never a SIGPIPE. Nothing here knows
//! about connections or parking.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Response;

/// Bodies up to this size are copied behind the head and sent with one `send`.
const COPY_BODY_MAX: usize = 4096;

/// Reads once into the spare capacity of `buf` (at most `max` bytes). `WouldBlock` when
/// nothing is there.
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

/// A whole request body, or a whole response, must move within this many
/// `io_timeout`s, so a peer trickling one byte per timeout cannot hold a worker for long.
pub(crate) const WHOLE_TRANSFER_STALLS: u32 = 6;

/// Reads at least one byte, waiting up to `stall` for it but never past `deadline`.
pub(crate) fn read_timeout(
    fd: RawFd,
    buf: &mut Vec<u8>,
    max: usize,
    stall: Duration,
    deadline: Instant,
) -> io::Result<usize> {
    let until = deadline.min(Instant::now() + stall);
    loop {
        match read_some(fd, buf, max) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(fd, libc::POLLIN, until)?,
            Err(e) => return Err(e),
        }
    }
}

/// Waits until `fd` is ready for `events` or the deadline passes (`TimedOut`).
fn wait_fd(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Sends all of `parts`; a peer that takes no bytes for `timeout`, or has not taken
/// everything within `WHOLE_TRANSFER_STALLS` of them, gets `TimedOut`.
pub(crate) fn send_all(fd: RawFd, parts: &[&[u8]], timeout: Duration) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    let start = Instant::now();
    let whole = start + timeout * WHOLE_TRANSFER_STALLS;
    let mut deadline = start + timeout;
    while idx < parts.len() {
        if off == parts[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut iov: [IoSlice; 2] = [IoSlice::new(&parts[idx][off..]), IoSlice::new(&[])];
        let mut cnt = 1;
        if let Some(next) = parts.get(idx + 1) {
            iov[1] = IoSlice::new(next);
            cnt = 2;
        }
        // SAFETY: zeroed msghdr is valid; the iovecs outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr().cast();
        msg.msg_iovlen = cnt;
        // SAFETY: msg points to live iovecs.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    wait_fd(fd, libc::POLLOUT, deadline)?;
                    continue;
                }
                _ => return Err(err),
            }
        }
        deadline = whole.min(Instant::now() + timeout);
        let mut n = n as usize;
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
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
    for (name, value) in &resp.headers {
        if is_core_header(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
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
    if resp.body.len() <= COPY_BODY_MAX {
        out.extend_from_slice(resp.body.as_bytes());
        return false;
    }
    true
}

/// Serializes a streamed response's head: no `Content-Length`, `Connection: close`.
pub(crate) fn render_stream_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(super::HeaderName, String)],
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_num(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if is_core_header(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
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
}

/// Runs `f` with the current `Date` value, formatted at most once per second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
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
