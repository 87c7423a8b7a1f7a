//! One connection's state machine: what happens when its socket is ready, when a
//! parked request is answered, and when one of its deadlines passes.
//!
//! Every step is nonblocking: bytes are read as far as the socket has them, a head or
//! body that is not complete is kept (the head in `Conn::inbuf`, a body in its own
//! buffer, reserved from the body budget) and the step ends; an answer the socket does
//! not take at once is kept as `write::Pending`. A connection at rest holds only its
//! fd, its transport facts and the bytes it received beyond the last request (usually
//! none). This file does not touch epoll or the loop's lists: it changes `Conn::state`
//! and returns a [`Next`], and the loop (`event_loop.rs`) files the connection
//! accordingly.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::parse::{parse_head, ChunkedDecoder, Framing as BodyFraming, Reject};
use super::poller::{HUP_OR_ERR, IN, OUT, RDHUP};
use super::resume::Resume;
use super::shared::{Delivered, Mailbox, Shared};
use super::stats::RejectReason;
use super::write::{read_some, send_response, send_some, Framing, Pending};
use super::{
    Headers, Later, Method, Park, ParkKind, Reply, Request, Response, Span, Stream, Transport, Wake,
};

/// Bytes read from a socket at once.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// A chunked body's budget reservation grows in steps of this.
const CHUNK_STEP: usize = 64 * 1024;
/// After a refusal, what the client still sends is read and dropped for at most this
/// long, so it sees the answer instead of a reset.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// A whole response must be taken within this many `io_timeout`s.
pub(crate) const WRITE_STALLS: u32 = 6;
/// "Not in a list" for the loop's intrusive indexes.
pub(crate) const NONE: u32 = u32::MAX;

/// Where a connection is between events.
pub(crate) enum State {
    /// No request in progress since `Conn::since`.
    Idle,
    /// Part of a request head is in `inbuf`; it started arriving at `since`.
    Head,
    /// The head is complete, the body is arriving (since `since`, whole-transfer limit).
    Body(Box<BodyRead>),
    /// A request is in `inbuf` but its body does not fit the budget yet; the socket is
    /// not read meanwhile.
    BudgetWait,
    /// Parked until a change answers it, or its deadline.
    Parked(Box<Parked>),
    /// Waiting for work running elsewhere to answer (`Reply::Later`).
    Waiting(Box<Waiting>),
    /// An answer the socket has not taken yet; `since` moves with every byte taken.
    Writing(Box<Writing>),
    /// Refused and half-closed: reading and dropping what the client still sends.
    Linger,
}

pub(crate) struct BodyRead {
    /// The request head's bytes (re-parsed when the body is complete).
    head: Vec<u8>,
    progress: BodyProgress,
}

enum BodyProgress {
    Length { body: Vec<u8>, len: usize },
    Chunked(ChunkedDecoder),
}

pub(crate) struct Parked {
    park: Park,
    framing: Framing,
}

pub(crate) struct Waiting {
    pub seq: u64,
    pub deadline: Instant,
    cancelled: Arc<AtomicBool>,
    on_timeout: Box<dyn FnOnce() -> Response + Send>,
    framing: Framing,
}

pub(crate) struct Writing {
    pending: Pending,
    started: Instant,
}

pub(crate) struct Conn {
    pub fd: OwnedFd,
    pub transport: Transport,
    /// Bytes received beyond the last complete request.
    pub inbuf: Vec<u8>,
    pub state: State,
    /// When the current state began (while writing: when the socket last took bytes).
    pub since: Instant,
    /// The epoll interest currently registered.
    pub interest: u32,
    /// Body budget held; given back when the request is answered.
    pub reserved: usize,
    /// Bytes the current request needs from the budget before it can go on; while
    /// non-zero the connection waits for budget and is not read.
    pub needs: usize,
    /// A request completed during the last step (the loop moves the connection to the
    /// young end of its idle list).
    pub served: bool,
    /// The peer shut down its sending side (`socat`, `nc -N` do after the request)
    /// while a request waited: the answer is still sent, then the connection ends.
    pub half_closed: bool,
    /// The loop's bookkeeping: idle-list links, place in the parked list, whether it is
    /// queued for budget.
    pub prev: u32,
    pub next: u32,
    pub in_idle: bool,
    pub parked_at: u32,
    pub budget_queued: bool,
    /// The deadline the loop's timer heap holds for this connection.
    pub timer: Option<Instant>,
}

/// What the loop does with a connection after a step.
pub(crate) enum Next {
    /// Keep it; file it by its state.
    Keep,
    Close,
    /// Hand it to a thread of its own (the head is not yet written).
    Stream(Stream),
}

/// What a step needs from its loop.
pub(crate) struct Cx<'a> {
    pub shared: &'a Shared,
    pub mailbox: &'a Arc<Mailbox>,
    pub scratch: &'a mut Scratch,
    pub now: Instant,
    /// This connection's token (for `Resume`).
    pub token: u64,
    /// The loop's counter for `Later` requests.
    pub seq: &'a mut u64,
}

/// A loop's reusable buffers.
pub(crate) struct Scratch {
    pub read: Vec<u8>,
    pub out: Vec<u8>,
    pub spans: Vec<Span>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            read: Vec::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(8192),
            spans: Vec::with_capacity(32),
        }
    }
}

/// Whether a step may go on with the next buffered request.
enum Flow {
    Continue,
    Stop(Next),
}

impl Conn {
    pub fn new(fd: OwnedFd, transport: Transport, now: Instant) -> Conn {
        Conn {
            fd,
            transport,
            inbuf: Vec::new(),
            state: State::Idle,
            since: now,
            interest: 0,
            reserved: 0,
            needs: 0,
            served: false,
            half_closed: false,
            prev: NONE,
            next: NONE,
            in_idle: false,
            parked_at: NONE,
            budget_queued: false,
            timer: None,
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The epoll interest the state calls for. Waiting states listen only for the peer
    /// going away (a half-close once, then only a full hang-up, which epoll always
    /// reports); a connection waiting for budget is not read at all.
    pub fn wanted_interest(&self) -> u32 {
        if self.needs > 0 {
            return 0;
        }
        match self.state {
            State::Idle | State::Head | State::Body(_) | State::Linger => IN,
            State::Writing(_) => OUT,
            State::Parked(_) | State::Waiting(_) if !self.half_closed => RDHUP,
            State::Parked(_) | State::Waiting(_) | State::BudgetWait => 0,
        }
    }

    /// When a parked or waiting request must be answered at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Parked(p) => Some(p.park.deadline),
            State::Waiting(w) => Some(w.deadline),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ readiness

/// The socket reported `events`.
pub(crate) fn on_ready(cx: &mut Cx, conn: &mut Conn, events: u32) -> Next {
    match conn.state {
        State::Writing(_) => flush(cx, conn),
        State::Parked(_) | State::Waiting(_) => {
            if events & HUP_OR_ERR != 0 {
                Next::Close
            } else {
                // A half-close: the client still reads the answer.
                conn.half_closed |= events & RDHUP != 0;
                Next::Keep
            }
        }
        State::BudgetWait => {
            if events & HUP_OR_ERR != 0 {
                Next::Close
            } else {
                Next::Keep
            }
        }
        State::Linger => linger(cx, conn),
        State::Body(_) => read_body(cx, conn),
        State::Idle | State::Head => read_and_serve(cx, conn),
    }
}

/// Empties `buf`, zeroing the bytes it held first: request bytes (a client's
/// `Authorization` header among them) do not outlive their request in a loop's read
/// buffer. `explicit_bzero` runs at `memset` speed, so this costs about what the
/// request's bytes cost to read.
pub(crate) fn wipe_clear(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // SAFETY: the first `len` bytes of `buf` are initialised and ours.
        unsafe { libc::explicit_bzero(buf.as_mut_ptr().cast(), buf.len()) };
    }
    buf.clear();
}

/// Reads what the socket has behind any bytes kept from before, and serves every
/// complete request in it. The loop's read buffer is wiped when it returns.
pub(crate) fn read_and_serve(cx: &mut Cx, conn: &mut Conn) -> Next {
    let next = read_and_serve_buffered(cx, conn);
    wipe_clear(&mut cx.scratch.read);
    next
}

fn read_and_serve_buffered(cx: &mut Cx, conn: &mut Conn) -> Next {
    let limits = &cx.shared.config.limits;
    wipe_clear(&mut cx.scratch.read);
    if !conn.inbuf.is_empty() {
        cx.scratch.read.extend_from_slice(&conn.inbuf);
        conn.inbuf = Vec::new();
    }
    // While bodies wait for budget, read no more than a head: a connection that then
    // has to wait keeps at most that much.
    let budget = cx.shared.budget();
    let tight = budget.waiters() > 0 || budget.used() + READ_CHUNK > budget.limit();
    let room = if tight {
        limits.max_head_bytes + 1
    } else {
        READ_CHUNK.max(limits.max_head_bytes + 1)
    };
    loop {
        let filled = match read_some(conn.raw(), &mut cx.scratch.read, room) {
            Ok(0) => return Next::Close,
            Ok(n) => n == room,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => return Next::Close,
        };
        match serve_buffered(cx, conn, filled) {
            Some(next) => return next,
            None => continue,
        }
    }
}

/// Serves the complete requests at the front of `scratch.read`. `None`: a head is
/// incomplete and the read filled the buffer, so there may be more to read now.
fn serve_buffered(cx: &mut Cx, conn: &mut Conn, filled: bool) -> Option<Next> {
    let mut pos = 0;
    loop {
        let avail = cx.scratch.read.len() - pos;
        if avail == 0 {
            if !matches!(conn.state, State::Idle) {
                conn.state = State::Idle;
                conn.since = cx.now;
            }
            wipe_clear(&mut cx.scratch.read);
            return Some(Next::Keep);
        }
        if matches!(conn.state, State::Idle) {
            conn.state = State::Head;
            conn.since = cx.now;
        }
        match step(cx, conn, pos) {
            Step::Served(used, Flow::Continue) => pos += used,
            Step::Served(used, Flow::Stop(next)) => {
                keep_rest(cx, conn, pos + used);
                return Some(next);
            }
            Step::Incomplete => {
                let limits = &cx.shared.config.limits;
                if avail > limits.max_head_bytes {
                    let head = cx.scratch.read[pos..].starts_with(b"HEAD ");
                    return Some(refuse(cx, conn, too_large_head(), head));
                }
                if filled {
                    // Served requests go; the copy the move leaves behind the new end
                    // is wiped too.
                    let old_len = cx.scratch.read.len();
                    cx.scratch.read.drain(..pos);
                    let new_len = cx.scratch.read.len();
                    cx.scratch.read.resize(old_len, 0);
                    cx.scratch.read.truncate(new_len);
                    return None;
                }
                keep_rest(cx, conn, pos);
                return Some(Next::Keep);
            }
            Step::Stop(next) => {
                keep_rest(cx, conn, pos);
                return Some(next);
            }
            Step::Refused(next) => return Some(next),
        }
    }
}

/// Keeps the unserved bytes from `pos` on for later.
fn keep_rest(cx: &mut Cx, conn: &mut Conn, pos: usize) {
    if pos < cx.scratch.read.len() {
        conn.inbuf = cx.scratch.read[pos..].to_vec();
    }
    wipe_clear(&mut cx.scratch.read);
}

fn too_large_head() -> Reject {
    Reject {
        status: 431,
        message: "request head too large",
    }
}

enum Step {
    /// A request of this many bytes was answered (or handed on).
    Served(usize, Flow),
    /// The head at `pos` is not complete.
    Incomplete,
    /// The request at `pos` cannot go on yet (body arriving, no budget): keep it.
    Stop(Next),
    /// Refused; the connection is done reading.
    Refused(Next),
}

/// Looks at the request starting at `scratch.read[pos..]`.
fn step(cx: &mut Cx, conn: &mut Conn, pos: usize) -> Step {
    let shared = cx.shared;
    let mailbox = cx.mailbox;
    let limits = &shared.config.limits;
    let Scratch { read, spans, .. } = &mut *cx.scratch;
    let buf = &read[pos..];
    let head = match parse_head(buf, limits, spans) {
        Ok(Some(head)) => head,
        Ok(None) => return Step::Incomplete,
        Err(rej) => {
            let is_head = buf.starts_with(b"HEAD ");
            return Step::Refused(refuse(cx, conn, rej, is_head));
        }
    };
    let head_len = head.len;
    let framing = Framing {
        keep_alive: head.keep_alive,
        http10: head.http10,
        head: head.method == Method::Head,
    };
    let expect_continue = head.expect_continue;
    let gen = shared.change_gen.load(Ordering::SeqCst);
    match head.framing {
        BodyFraming::Length(n) if buf.len() - head_len >= n => {
            if !reserve(shared, conn, n) {
                return Step::Stop(wait_for_budget(conn, n));
            }
            let request = Request {
                method: head.method,
                path: head.path,
                query: head.query,
                headers: Headers { head: buf, spans },
                body: &buf[head_len..head_len + n],
                transport: &conn.transport,
            };
            let reply = call(shared, mailbox, &request);
            Step::Served(head_len + n, finish(cx, conn, reply, framing, gen))
        }
        BodyFraming::Length(n) => {
            if !reserve(shared, conn, n) {
                return Step::Stop(wait_for_budget(conn, n));
            }
            let mut body = Vec::with_capacity(n);
            body.extend_from_slice(&buf[head_len..]);
            conn.state = State::Body(Box::new(BodyRead {
                head: buf[..head_len].to_vec(),
                progress: BodyProgress::Length { body, len: n },
            }));
            conn.since = cx.now;
            if expect_continue {
                send_continue(conn);
            }
            wipe_clear(&mut cx.scratch.read);
            Step::Stop(Next::Keep)
        }
        BodyFraming::Chunked => {
            // Decoded bytes never outnumber raw ones: reserve what is here, fix it after.
            let raw = (buf.len() - head_len).min(limits.max_body_bytes);
            if !reserve(shared, conn, raw) {
                return Step::Stop(wait_for_budget(conn, raw));
            }
            let mut dec = ChunkedDecoder::new(limits.max_body_bytes);
            let used = match dec.feed(&buf[head_len..]) {
                Ok(used) => used,
                Err(rej) => return Step::Refused(refuse(cx, conn, rej, framing.head)),
            };
            if dec.is_done() {
                let body = std::mem::take(&mut dec.body);
                trim_reservation(shared, conn, body.len());
                let request = Request {
                    method: head.method,
                    path: head.path,
                    query: head.query,
                    headers: Headers { head: buf, spans },
                    body: &body,
                    transport: &conn.transport,
                };
                let reply = call(shared, mailbox, &request);
                return Step::Served(head_len + used, finish(cx, conn, reply, framing, gen));
            }
            conn.state = State::Body(Box::new(BodyRead {
                head: buf[..head_len].to_vec(),
                progress: BodyProgress::Chunked(dec),
            }));
            conn.since = cx.now;
            if expect_continue {
                send_continue(conn);
            }
            wipe_clear(&mut cx.scratch.read);
            Step::Stop(Next::Keep)
        }
    }
}

/// Takes `n` bytes from the body budget for the current request.
fn reserve(shared: &Shared, conn: &mut Conn, n: usize) -> bool {
    if n == 0 || shared.budget().try_reserve(n) {
        conn.reserved += n;
        conn.needs = 0;
        true
    } else {
        false
    }
}

/// Keeps the reservation at what a completed body holds.
fn trim_reservation(shared: &Shared, conn: &mut Conn, keep: usize) {
    if conn.reserved > keep {
        let extra = conn.reserved - keep;
        conn.reserved = keep;
        if shared.budget().release(extra) {
            shared.budget_freed();
        }
    }
}

/// Gives the current request's reservation back.
pub(crate) fn release_budget(shared: &Shared, conn: &mut Conn) {
    let n = std::mem::take(&mut conn.reserved);
    if shared.budget().release(n) {
        shared.budget_freed();
    }
}

fn wait_for_budget(conn: &mut Conn, n: usize) -> Next {
    conn.state = State::BudgetWait;
    conn.needs = n;
    Next::Keep
}

/// Budget may have come free: try the waiting request again. `None` if it still does
/// not fit (it stays first in line).
pub(crate) fn retry_budget(cx: &mut Cx, conn: &mut Conn) -> Option<Next> {
    let budget = cx.shared.budget();
    if conn.needs == 0 {
        return Some(Next::Keep);
    }
    if conn.needs > budget.limit() {
        conn.needs = 0;
        return Some(refuse(cx, conn, busy(), false));
    }
    match conn.state {
        State::Body(_) => {
            if !budget.try_reserve(conn.needs) {
                return None;
            }
            conn.reserved += std::mem::take(&mut conn.needs);
            Some(read_body(cx, conn))
        }
        State::BudgetWait => {
            if budget.used() + conn.needs > budget.limit() {
                return None;
            }
            conn.needs = 0;
            conn.state = State::Head;
            let next = read_and_serve(cx, conn);
            if conn.needs > 0 {
                return None;
            }
            Some(next)
        }
        _ => {
            conn.needs = 0;
            Some(Next::Keep)
        }
    }
}

fn busy() -> Reject {
    Reject {
        status: 503,
        message: "server busy: too many request bodies in memory, retry shortly",
    }
}

fn send_continue(conn: &Conn) {
    // The socket's send buffer is empty at this point; a failure shows up later.
    let _ = send_some(conn.raw(), b"HTTP/1.1 100 Continue\r\n\r\n", &[]);
}

// ------------------------------------------------------------------ bodies

/// Reads more of a body; dispatches the request once it is complete.
fn read_body(cx: &mut Cx, conn: &mut Conn) -> Next {
    let next = read_body_buffered(cx, conn);
    wipe_clear(&mut cx.scratch.read);
    next
}

fn read_body_buffered(cx: &mut Cx, conn: &mut Conn) -> Next {
    let limits = &cx.shared.config.limits;
    let fd = conn.raw();
    loop {
        let State::Body(b) = &mut conn.state else {
            return Next::Keep;
        };
        let done = match &mut b.progress {
            BodyProgress::Length { body, len } => {
                let want = *len - body.len();
                match read_some(fd, body, want) {
                    Ok(0) => return Next::Close,
                    Ok(_) => body.len() == *len,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
                    Err(_) => return Next::Close,
                }
            }
            BodyProgress::Chunked(dec) => {
                // Never read more raw bytes than the reservation can hold decoded.
                let held = dec.body.len();
                if conn.reserved < held + CHUNK_STEP {
                    let step = CHUNK_STEP
                        .min(limits.max_body_bytes.saturating_sub(held))
                        .max(1);
                    if cx.shared.budget().try_reserve(step) {
                        conn.reserved += step;
                    } else if conn.reserved <= held {
                        // Not read until budget comes free (see `retry_budget`).
                        conn.needs = step;
                        return Next::Keep;
                    }
                }
                let room = conn.reserved.saturating_sub(held).clamp(1, READ_CHUNK);
                wipe_clear(&mut cx.scratch.read);
                match read_some(fd, &mut cx.scratch.read, room) {
                    Ok(0) => return Next::Close,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
                    Err(_) => return Next::Close,
                }
                match dec.feed(&cx.scratch.read) {
                    Ok(used) => {
                        if dec.is_done() {
                            conn.inbuf = cx.scratch.read[used..].to_vec();
                            true
                        } else {
                            false
                        }
                    }
                    Err(rej) => return refuse(cx, conn, rej, false),
                }
            }
        };
        if done {
            break;
        }
    }
    let State::Body(b) = std::mem::replace(&mut conn.state, State::Head) else {
        return Next::Keep;
    };
    let BodyRead { head, progress } = *b;
    let body = match progress {
        BodyProgress::Length { body, .. } => body,
        BodyProgress::Chunked(dec) => dec.body,
    };
    trim_reservation(cx.shared, conn, body.len());
    let parsed = match parse_head(&head, limits, &mut cx.scratch.spans) {
        Ok(Some(h)) => h,
        _ => return Next::Close,
    };
    let framing = Framing {
        keep_alive: parsed.keep_alive,
        http10: parsed.http10,
        head: parsed.method == Method::Head,
    };
    let request = Request {
        method: parsed.method,
        path: parsed.path,
        query: parsed.query,
        headers: Headers {
            head: &head,
            spans: &cx.scratch.spans,
        },
        body: &body,
        transport: &conn.transport,
    };
    let gen = cx.shared.change_gen.load(Ordering::SeqCst);
    let reply = call(cx.shared, cx.mailbox, &request);
    drop(body);
    match finish(cx, conn, reply, framing, gen) {
        Flow::Continue => read_and_serve(cx, conn),
        Flow::Stop(next) => next,
    }
}

// ------------------------------------------------------------------ dispatch

fn call(shared: &Shared, mailbox: &Mailbox, request: &Request<'_>) -> Reply {
    mailbox.requests.fetch_add(1, Ordering::Relaxed);
    shared.handler.handle(request)
}

/// Acts on a handler's reply. `gen` is the change generation seen before the handler
/// ran (a parked request re-checks if it moved).
fn finish(cx: &mut Cx, conn: &mut Conn, reply: Reply, framing: Framing, gen: u64) -> Flow {
    conn.served = true;
    match reply {
        Reply::Now(resp) => {
            release_budget(cx.shared, conn);
            send(cx, conn, resp, framing)
        }
        Reply::Park(park) => park_request(cx, conn, park, framing, gen),
        Reply::Later(later) => wait_later(cx, conn, later, framing),
        Reply::Stream(stream) => {
            release_budget(cx.shared, conn);
            Flow::Stop(Next::Stream(stream))
        }
    }
}

/// Sends an answer; the connection goes on (keep-alive), waits to write, or closes.
fn send(cx: &mut Cx, conn: &mut Conn, resp: Response, mut framing: Framing) -> Flow {
    framing.keep_alive &= !cx.shared.shutting.load(Ordering::Relaxed);
    match send_response(conn.raw(), &mut cx.scratch.out, resp, framing) {
        Err(_) => Flow::Stop(Next::Close),
        Ok(None) if framing.keep_alive => {
            conn.state = State::Idle;
            conn.since = cx.now;
            Flow::Continue
        }
        Ok(None) => Flow::Stop(Next::Close),
        Ok(Some(pending)) => {
            conn.state = State::Writing(Box::new(Writing {
                pending,
                started: cx.now,
            }));
            conn.since = cx.now;
            Flow::Stop(Next::Keep)
        }
    }
}

fn park_request(cx: &mut Cx, conn: &mut Conn, mut park: Park, framing: Framing, gen: u64) -> Flow {
    let stats = &cx.shared.stats;
    if park.kind == ParkKind::Change {
        let parked = stats.parked.fetch_add(1, Ordering::AcqRel);
        if parked as usize >= cx.shared.config.max_parked {
            stats.parked.fetch_sub(1, Ordering::AcqRel);
            stats.reject(RejectReason::TooManyParked);
            release_budget(cx.shared, conn);
            let resp = Response::error(429, "too many parked requests").header("Retry-After", "1");
            return send(cx, conn, resp, framing);
        }
    }
    cx.mailbox.parked.fetch_add(1, Ordering::SeqCst);
    // A change between the handler's look and the count above rang no doorbell here.
    if cx.shared.change_gen.load(Ordering::SeqCst) != gen {
        if let Some(resp) = (park.check)(Wake::Changed) {
            leave_park_counts(cx.shared, cx.mailbox, park.kind);
            release_budget(cx.shared, conn);
            return send(cx, conn, resp, framing);
        }
    }
    conn.state = State::Parked(Box::new(Parked { park, framing }));
    conn.since = cx.now;
    Flow::Stop(Next::Keep)
}

fn leave_park_counts(shared: &Shared, mailbox: &Mailbox, kind: ParkKind) {
    mailbox.parked.fetch_sub(1, Ordering::SeqCst);
    if kind == ParkKind::Change {
        shared.stats.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

fn wait_later(cx: &mut Cx, conn: &mut Conn, later: Later, framing: Framing) -> Flow {
    *cx.seq += 1;
    let seq = *cx.seq;
    let cancelled = Arc::new(AtomicBool::new(false));
    conn.state = State::Waiting(Box::new(Waiting {
        seq,
        deadline: later.deadline,
        cancelled: Arc::clone(&cancelled),
        on_timeout: later.on_timeout,
        framing,
    }));
    conn.since = cx.now;
    let resume = Resume::new(Arc::clone(cx.mailbox), cx.token, seq, cancelled);
    match (later.start)(resume) {
        Ok(()) => Flow::Stop(Next::Keep),
        Err(resp) => {
            if let State::Waiting(w) = std::mem::replace(&mut conn.state, State::Head) {
                w.cancelled.store(true, Ordering::Release);
            }
            release_budget(cx.shared, conn);
            send(cx, conn, resp, framing)
        }
    }
}

// ------------------------------------------------------------------ answers

/// Answers a parked or waiting request with `resp` and goes on with what the client
/// sent behind it.
fn answer(cx: &mut Cx, conn: &mut Conn, resp: Response, framing: Framing) -> Next {
    release_budget(cx.shared, conn);
    conn.state = State::Head;
    match send(cx, conn, resp, framing) {
        Flow::Continue if conn.inbuf.is_empty() => Next::Keep,
        Flow::Continue => read_and_serve(cx, conn),
        Flow::Stop(next) => next,
    }
}

/// Re-checks a parked request; `None` if it stays parked.
pub(crate) fn recheck(cx: &mut Cx, conn: &mut Conn, wake: Wake) -> Option<Next> {
    let State::Parked(p) = &mut conn.state else {
        return None;
    };
    let resp = match (p.park.check)(wake) {
        Some(resp) => resp,
        None if wake == Wake::TimedOut => Response::error(503, "request could not be completed"),
        None => return None,
    };
    let State::Parked(p) = std::mem::replace(&mut conn.state, State::Head) else {
        return None;
    };
    leave_park_counts(cx.shared, cx.mailbox, p.park.kind);
    Some(answer(cx, conn, resp, p.framing))
}

/// Work elsewhere answered request `seq`; `None` if the connection no longer waits for it.
pub(crate) fn resume(cx: &mut Cx, conn: &mut Conn, seq: u64, reply: Delivered) -> Option<Next> {
    if !matches!(&conn.state, State::Waiting(w) if w.seq == seq) {
        return None;
    }
    let State::Waiting(w) = std::mem::replace(&mut conn.state, State::Head) else {
        return None;
    };
    w.cancelled.store(true, Ordering::Release);
    match reply {
        Delivered::Response(resp) => Some(answer(cx, conn, resp, w.framing)),
        Delivered::Park(park) => {
            // Nobody knows what changed while the work ran: check once at once.
            let missed = cx.shared.change_gen.load(Ordering::SeqCst).wrapping_sub(1);
            match park_request(cx, conn, park, w.framing, missed) {
                Flow::Stop(next) => Some(next),
                Flow::Continue if conn.inbuf.is_empty() => Some(Next::Keep),
                Flow::Continue => Some(read_and_serve(cx, conn)),
            }
        }
    }
}

/// A parked or waiting request's deadline passed (or the server stops now).
pub(crate) fn expire(cx: &mut Cx, conn: &mut Conn) -> Option<Next> {
    match &conn.state {
        State::Parked(_) => recheck(cx, conn, Wake::TimedOut),
        State::Waiting(_) => {
            let State::Waiting(w) = std::mem::replace(&mut conn.state, State::Head) else {
                return None;
            };
            w.cancelled.store(true, Ordering::Release);
            let resp = (w.on_timeout)();
            Some(answer(cx, conn, resp, w.framing))
        }
        _ => None,
    }
}

/// Undoes what a connection holds when it closes: budget, park counts, a pending
/// `Later` (cancelled so its work can skip the call).
pub(crate) fn on_close(shared: &Shared, mailbox: &Mailbox, conn: &mut Conn) {
    release_budget(shared, conn);
    match std::mem::replace(&mut conn.state, State::Linger) {
        State::Parked(p) => leave_park_counts(shared, mailbox, p.park.kind),
        State::Waiting(w) => w.cancelled.store(true, Ordering::Release),
        _ => {}
    }
}

// ------------------------------------------------------------------ writing

fn flush(cx: &mut Cx, conn: &mut Conn) -> Next {
    let State::Writing(w) = &mut conn.state else {
        return Next::Keep;
    };
    match w.pending.flush(conn.fd.as_raw_fd()) {
        Err(_) => Next::Close,
        Ok(false) => {
            conn.since = cx.now;
            Next::Keep
        }
        Ok(true) if w.pending.close || cx.shared.shutting.load(Ordering::Relaxed) => {
            if w.pending.linger {
                start_linger(cx, conn)
            } else {
                Next::Close
            }
        }
        Ok(true) => {
            conn.state = State::Head;
            conn.since = cx.now;
            read_and_serve(cx, conn)
        }
    }
}

/// Whether a writing connection has stalled past its limits.
pub(crate) fn write_stalled(conn: &Conn, now: Instant, io_timeout: Duration) -> bool {
    match &conn.state {
        State::Writing(w) => {
            now.duration_since(conn.since) >= io_timeout
                || now.duration_since(w.started) >= io_timeout * WRITE_STALLS
        }
        _ => false,
    }
}

// ------------------------------------------------------------------ refusals

/// Answers a request the core refuses, then half-closes and drops what the client
/// still sends for a moment, so it reads the answer rather than a reset.
pub(crate) fn refuse(cx: &mut Cx, conn: &mut Conn, rej: Reject, head: bool) -> Next {
    cx.shared.stats.reject(reason_for(rej.status));
    release_budget(cx.shared, conn);
    conn.inbuf = Vec::new();
    let mut resp = Response::error(rej.status, rej.message);
    if rej.status == 503 {
        resp = resp.header("Retry-After", "1");
    }
    let framing = Framing {
        keep_alive: false,
        http10: false,
        head,
    };
    match send_response(conn.raw(), &mut cx.scratch.out, resp, framing) {
        Err(_) => Next::Close,
        Ok(None) => start_linger(cx, conn),
        Ok(Some(mut pending)) => {
            pending.linger = true;
            conn.state = State::Writing(Box::new(Writing {
                pending,
                started: cx.now,
            }));
            conn.since = cx.now;
            Next::Keep
        }
    }
}

fn reason_for(status: u16) -> RejectReason {
    match status {
        408 => RejectReason::Timeout,
        413 => RejectReason::BodyTooLarge,
        431 => RejectReason::HeadTooLarge,
        503 => RejectReason::BodyMemory,
        _ => RejectReason::Malformed,
    }
}

/// A request's head or body did not arrive in time.
pub(crate) fn timed_out(cx: &mut Cx, conn: &mut Conn) -> Next {
    let message = match conn.state {
        State::Body(_) => "request body timeout",
        _ => "request head timeout",
    };
    refuse(
        cx,
        conn,
        Reject {
            status: 408,
            message,
        },
        false,
    )
}

/// A request waited too long for body budget.
pub(crate) fn budget_timed_out(cx: &mut Cx, conn: &mut Conn) -> Next {
    refuse(cx, conn, busy(), false)
}

fn start_linger(cx: &mut Cx, conn: &mut Conn) -> Next {
    // SAFETY: shutdown on a socket we own.
    unsafe { libc::shutdown(conn.raw(), libc::SHUT_WR) };
    conn.state = State::Linger;
    conn.since = cx.now;
    Next::Keep
}

fn linger(cx: &mut Cx, conn: &mut Conn) -> Next {
    let next = drain_for_linger(cx, conn);
    wipe_clear(&mut cx.scratch.read);
    next
}

fn drain_for_linger(cx: &mut Cx, conn: &mut Conn) -> Next {
    for _ in 0..16 {
        wipe_clear(&mut cx.scratch.read);
        match read_some(conn.raw(), &mut cx.scratch.read, READ_CHUNK) {
            Ok(0) => return Next::Close,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
            Err(_) => return Next::Close,
        }
    }
    Next::Keep
}
