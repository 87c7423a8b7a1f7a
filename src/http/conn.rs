//! One connection's state between events, and what a worker does with it when its fd
//! becomes ready: read, parse, read the body, call the handler, write, repeat for
//! pipelined requests, then give the connection back.
//!
//! A connection at rest holds only its fd, its transport facts and the bytes it sent
//! beyond the last request (usually none); reading happens in the worker's scratch
//! buffer. This file does not touch epoll or the connection table: it returns a
//! [`Next`] and the server (`server.rs`) acts on it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::parse::{parse_head, ChunkedDecoder, Framing as BodyFraming, Head, Reject};
use super::poller;
use super::server::Shared;
use super::write::{read_some, read_timeout, render, send_all, Framing, WHOLE_TRANSFER_STALLS};
use super::{Method, Park, ParkKind, Reply, Request, Response, Stream, Transport, Wake};

/// Where a connection is between events.
pub(crate) enum Phase {
    /// Waiting for the first byte of a request since this instant.
    Idle(Instant),
    /// Part of a request head is in `leftover`; the head started arriving then.
    Head(Instant),
    /// A parked request waiting for `Waker::wake`, its deadline or shutdown.
    Parked(Box<Parked>),
    /// An answer decided off-worker (parked request, head timeout) waiting to be written.
    Respond(Box<(Response, Framing)>),
}

pub(crate) struct Parked {
    pub park: Park,
    pub framing: Framing,
}

pub(crate) struct Conn {
    pub fd: OwnedFd,
    pub transport: Arc<Transport>,
    /// Bytes received beyond the last complete request.
    pub leftover: Vec<u8>,
    pub phase: Phase,
}

/// What the server must do with a connection after a worker is done with it.
pub(crate) enum Next {
    /// Give it back to epoll for these events.
    Rearm(u32),
    Close,
    /// Park it (the framing is for the eventual answer).
    Park(Park, Framing),
    /// Hand it to a thread of its own; the head is already written.
    Stream(Stream),
}

/// Events a connection at rest waits for.
pub(crate) const READ_EVENTS: u32 = poller::IN;
/// A parked connection only listens for its peer going away.
pub(crate) const PARK_EVENTS: u32 = poller::RDHUP;

/// A worker's reusable buffers, and the events it took from epoll but has not served.
pub(crate) struct Scratch {
    pub buf: Vec<u8>,
    pub out: Vec<u8>,
    pub batch: std::collections::VecDeque<(u64, u32)>,
}

/// Scratch buffers that grew past this (a large body) are shrunk after the request.
const SCRATCH_KEEP: usize = 64 * 1024;

impl Scratch {
    pub fn new(head_max: usize) -> Scratch {
        Scratch {
            buf: Vec::with_capacity(head_max + 1024),
            out: Vec::with_capacity(8192),
            batch: std::collections::VecDeque::with_capacity(16),
        }
    }
}

/// Answers `resp` on `conn`; false if the peer could not take it.
pub(crate) fn respond(
    shared: &Shared,
    out: &mut Vec<u8>,
    conn: &Conn,
    resp: &Response,
    f: Framing,
) -> bool {
    let body_apart = render(out, resp, f);
    let body: &[u8] = if body_apart {
        resp.body.as_bytes()
    } else {
        &[]
    };
    send_all(
        conn.fd.as_raw_fd(),
        &[out.as_slice(), body],
        shared.config.limits.io_timeout,
    )
    .is_ok()
}

/// Drives `conn` after epoll reported `events` for it.
pub(crate) fn drive(shared: &Shared, s: &mut Scratch, conn: &mut Conn, events: u32) -> Next {
    let hangup = events & (poller::HUP_OR_ERR | poller::RDHUP) != 0;
    let mut must_read = true;
    match std::mem::replace(&mut conn.phase, Phase::Idle(Instant::now())) {
        Phase::Parked(p) if !hangup => {
            conn.phase = Phase::Parked(p);
            return Next::Rearm(PARK_EVENTS);
        }
        Phase::Parked(p) => {
            // Keep the phase: releasing a parked connection gives back its park slot.
            conn.phase = Phase::Parked(p);
            return Next::Close;
        }
        Phase::Respond(r) => {
            let (resp, f) = *r;
            if !respond(shared, &mut s.out, conn, &resp, f) || !f.keep_alive {
                return Next::Close;
            }
            must_read = false;
        }
        Phase::Head(started) => conn.phase = Phase::Head(started),
        Phase::Idle(since) => conn.phase = Phase::Idle(since),
    }
    s.buf.clear();
    s.buf.extend_from_slice(&conn.leftover);
    conn.leftover = Vec::new();
    let next = serve_buffered(shared, s, conn, must_read);
    if s.buf.capacity() > SCRATCH_KEEP {
        s.buf = Vec::with_capacity(shared.config.limits.max_head_bytes + 1024);
    }
    next
}

fn serve_buffered(shared: &Shared, s: &mut Scratch, conn: &mut Conn, mut must_read: bool) -> Next {
    let limits = &shared.config.limits;
    let fd = conn.fd.as_raw_fd();
    loop {
        let mut filled = false;
        if must_read {
            let room = (limits.max_head_bytes + 1)
                .saturating_sub(s.buf.len())
                .max(1024);
            match read_some(fd, &mut s.buf, room) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    filled = n == room;
                    if let Phase::Idle(_) = conn.phase {
                        conn.phase = Phase::Head(Instant::now());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Next::Close,
            }
            must_read = false;
        }
        if s.buf.is_empty() {
            if !matches!(conn.phase, Phase::Idle(_)) {
                conn.phase = Phase::Idle(Instant::now());
            }
            return Next::Rearm(READ_EVENTS);
        }
        if let Phase::Idle(_) = conn.phase {
            conn.phase = Phase::Head(Instant::now());
        }
        let head = match parse_head(&s.buf, limits) {
            Ok(Some(head)) => head,
            Ok(None) if s.buf.len() > limits.max_head_bytes => {
                return refuse(
                    shared,
                    s,
                    conn,
                    Reject {
                        status: 431,
                        message: "request head too large",
                    },
                );
            }
            Ok(None) if filled => {
                must_read = true;
                continue;
            }
            Ok(None) => {
                conn.leftover = s.buf.clone();
                return Next::Rearm(READ_EVENTS);
            }
            Err(rej) => return refuse(shared, s, conn, rej),
        };
        let mut framing = Framing {
            keep_alive: head.keep_alive,
            http10: head.http10,
            head: head.method == Method::Head,
        };
        let (body, consumed) = match read_body(shared, s, conn, &head) {
            Ok(v) => v,
            Err(Some(rej)) => return refuse(shared, s, conn, rej),
            Err(None) => return Next::Close,
        };
        let request = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            transport: conn.transport.clone(),
        };
        s.buf.drain(..consumed);
        shared.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        let wake_gen = shared.wake_gen.load(Ordering::Acquire);
        // Before a call that may block, let other workers have the rest of this batch.
        if !s.batch.is_empty() && shared.handler.may_block(&request) {
            shared.hand_off(s.batch.drain(..));
        }
        let reply = catch_unwind(AssertUnwindSafe(|| shared.handler.handle(&request)))
            .unwrap_or_else(|_| {
                log::error!(method:% = request.method.as_str(), path:% = request.path; "handler panicked");
                Reply::Now(Response::error(500, "internal error"))
            });
        conn.phase = Phase::Idle(Instant::now());
        // A shutdown that began while the handler ran ends the connection after this.
        framing.keep_alive &= !shared.shutting.load(Ordering::SeqCst);
        match reply {
            Reply::Now(resp) => {
                if !respond(shared, &mut s.out, conn, &resp, framing) || !framing.keep_alive {
                    return Next::Close;
                }
            }
            Reply::Park(park) => {
                conn.leftover = s.buf.clone();
                conn.phase = Phase::Idle(Instant::now());
                // A wake that raced with the handler must not be lost.
                let missed = shared.wake_gen.load(Ordering::Acquire) != wake_gen;
                if let Some(next) = park_or_answer(shared, s, conn, park, framing, missed) {
                    return next;
                }
            }
            Reply::Stream(stream) => return Next::Stream(stream),
        }
    }
}

/// Parks the request, or answers it at once (a missed wake said it is ready, or the
/// parked set is full: 429). `None`: answered, carry on with buffered requests.
fn park_or_answer(
    shared: &Shared,
    s: &mut Scratch,
    conn: &mut Conn,
    mut park: Park,
    framing: Framing,
    missed_wake: bool,
) -> Option<Next> {
    let mut answer = None;
    if missed_wake {
        if let Ok(Some(resp)) = catch_unwind(AssertUnwindSafe(|| (park.check)(Wake::Changed))) {
            answer = Some(resp);
        }
    }
    if answer.is_none() {
        let parked = shared.stats.parked.fetch_add(1, Ordering::AcqRel);
        if park.kind == ParkKind::Change && parked as usize >= shared.config.max_parked {
            shared.stats.parked.fetch_sub(1, Ordering::AcqRel);
            shared.stats.parked_rejected.fetch_add(1, Ordering::Relaxed);
            answer =
                Some(Response::error(429, "too many parked requests").header("Retry-After", "1"));
        }
    }
    match answer {
        None => Some(Next::Park(park, framing)),
        Some(resp) => {
            conn.leftover.clear();
            if !respond(shared, &mut s.out, conn, &resp, framing) || !framing.keep_alive {
                return Some(Next::Close);
            }
            None
        }
    }
}

/// Answers a rejected request and closes. A `HEAD` request gets no body even here.
fn refuse(shared: &Shared, s: &mut Scratch, conn: &Conn, rej: Reject) -> Next {
    let resp = Response::error(rej.status, rej.message);
    let framing = Framing {
        keep_alive: false,
        http10: false,
        head: s.buf.starts_with(b"HEAD "),
    };
    respond(shared, &mut s.out, conn, &resp, framing);
    Next::Close
}

/// Reads the body of `head`; returns it and the bytes of `s.buf` the request used.
/// `Err(None)`: the peer stalled or went away (no answer possible).
fn read_body(
    shared: &Shared,
    s: &mut Scratch,
    conn: &Conn,
    head: &Head,
) -> Result<(Vec<u8>, usize), Option<Reject>> {
    let limits = &shared.config.limits;
    let fd = conn.fd.as_raw_fd();
    let timeout = limits.io_timeout;
    let deadline = Instant::now() + timeout * WHOLE_TRANSFER_STALLS;
    let mut continued = false;
    let mut send_continue = || -> Result<(), Option<Reject>> {
        if head.expect_continue && !continued {
            continued = true;
            send_all(fd, &[b"HTTP/1.1 100 Continue\r\n\r\n"], timeout).map_err(|_| None)?;
        }
        Ok(())
    };
    match head.framing {
        BodyFraming::Length(0) => Ok((Vec::new(), head.len)),
        BodyFraming::Length(n) => {
            let end = head.len + n;
            if s.buf.len() < end {
                send_continue()?;
                s.buf.reserve(end - s.buf.len());
            }
            while s.buf.len() < end {
                let want = end - s.buf.len();
                read_timeout(fd, &mut s.buf, want.max(4096), timeout, deadline)
                    .map_err(|_| None)?;
            }
            Ok((s.buf[head.len..end].to_vec(), end))
        }
        BodyFraming::Chunked => {
            let mut dec = ChunkedDecoder::new(limits.max_body_bytes);
            let mut pos = head.len;
            loop {
                pos += dec.feed(&s.buf[pos..]).map_err(Some)?;
                if dec.is_done() {
                    return Ok((dec.body, pos));
                }
                send_continue()?;
                // Keep the scratch buffer small: drop what the decoder already took.
                if pos > 0 && s.buf.len() == pos {
                    s.buf.truncate(0);
                    pos = 0;
                }
                read_timeout(fd, &mut s.buf, 16 * 1024, timeout, deadline).map_err(|_| None)?;
            }
        }
    }
}
