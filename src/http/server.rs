//! The server: listeners, the connection table, the worker pool, the housekeeper,
//! parked requests and shutdown.
//!
//! Design (leader/follower on one epoll): every worker blocks in `epoll_wait` on the
//! same epoll instance and takes a small batch of events (`BATCH`); before a handler
//! call that may block, the rest of the batch is handed to the other workers. Connections, listeners and the doorbell
//! eventfd are registered `EPOLLONESHOT`, so the worker that receives an event owns that
//! fd until it re-arms it. A worker that gets a ready connection takes it out of its
//! table slot, reads, parses, calls the handler, writes, answers any pipelined request
//! already buffered, puts the connection back and re-arms it. There is no hand-off
//! between threads per request (which is what lets a tiny GET cost a few µs), and a
//! connection with nothing to say (idle, or half a head sent) holds no thread.
//!
//! Threads: `ServerConfig::workers` workers plus one housekeeper, fixed for the server's
//! life; the only extra threads are those running a `Reply::Stream` body. The
//! housekeeper scans the table every tick (≤ 100 ms) for idle and head timeouts and
//! park deadlines. Parked requests stay in the table, armed only for `EPOLLRDHUP`;
//! once their check answers, the answer is stored in the slot and the fd is armed for
//! `EPOLLOUT`, so a worker writes it as if the client had sent bytes.
//!
//! Lock order: a slot's mutex, then the parked set. The parked set is never held while
//! a slot is locked by the same thread in the other order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::conn::{self, Conn, Next, Parked, Phase, Scratch, PARK_EVENTS};
use super::poller::{self, EventFd, Poller};
use super::write::{render_stream_head, send_all, Framing};
use super::{Handler, Park, PeerCred, Response, ServerConfig, Stream, Transport, Wake};

/// A listening socket the server accepts on.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
    }

    /// Accepts one connection (nonblocking) with what the kernel says about the peer.
    fn accept(&self) -> io::Result<(OwnedFd, Transport)> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                let cred = peer_cred(&s);
                Ok((OwnedFd::from(s), Transport::Unix(cred)))
            }
            Listener::Tcp(l) => {
                let (s, addr) = l.accept()?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok((OwnedFd::from(s), Transport::Tcp(addr)))
            }
        }
    }
}

/// Counters for metrics; all monotonic except `open_connections` and `parked`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted and not yet closed (streams included).
    pub open_connections: AtomicU64,
    pub accepted_total: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub rejected_connections: AtomicU64,
    /// Requests parked right now.
    pub parked: AtomicU64,
    /// Requests refused with 429 because `max_parked` were already parked.
    pub parked_rejected: AtomicU64,
    /// Requests handed to the handler (not those the core refused itself).
    pub requests_total: AtomicU64,
}

/// Makes every parked request be checked again with `Wake::Changed`. Cheap; bursts
/// coalesce into one pass over the parked set.
#[derive(Clone)]
pub struct Waker {
    shared: Arc<Shared>,
}

impl Waker {
    pub fn wake(&self) {
        self.shared.wake_gen.fetch_add(1, Ordering::AcqRel);
        self.shared.changed.store(true, Ordering::Release);
        self.shared.doorbell.ring();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

pub struct Server;

impl Server {
    /// Starts the worker pool and the housekeeper on `listeners`.
    pub fn start(
        config: ServerConfig,
        listeners: Vec<Listener>,
        handler: Arc<dyn Handler>,
    ) -> io::Result<ServerHandle> {
        if listeners.len() as u64 > MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_LISTENERS} listeners"),
            ));
        }
        let poller = Poller::new()?;
        let doorbell = EventFd::new()?;
        poller.add(doorbell.raw(), poller::IN, WAKE_TOKEN)?;
        for l in &listeners {
            l.set_nonblocking()?;
        }
        let listener_fds: Vec<RawFd> = listeners.iter().map(Listener::raw_fd).collect();
        let slots = (0..config.max_connections)
            .map(|_| Mutex::new(Slot { gen: 1, conn: None }))
            .collect();
        let free = (0..config.max_connections as u32).rev().collect();
        let workers = config.workers.max(1);
        let shared = Arc::new(Shared {
            handler,
            stats: Arc::new(ServerStats::default()),
            shutting: AtomicBool::new(false),
            wake_gen: AtomicU64::new(0),
            exit: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            rechecking: AtomicBool::new(false),
            poller,
            doorbell,
            listeners: Mutex::new(listeners.into_iter().map(Some).collect()),
            slots,
            free: Mutex::new(free),
            high_water: AtomicUsize::new(0),
            parked_set: Mutex::new(HashSet::new()),
            handoff: Mutex::new(VecDeque::new()),
            handed_off: AtomicUsize::new(0),
            streams: Mutex::new(HashMap::new()),
            stream_seq: AtomicU64::new(0),
            config,
        });
        let mut threads = Vec::with_capacity(workers + 1);
        for i in 0..workers {
            let sh = shared.clone();
            let t = thread::Builder::new()
                .name(format!("http-worker-{i}"))
                .spawn(move || worker_loop(&sh));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop_threads(&shared, threads, Instant::now() + Duration::from_secs(1));
                    return Err(e);
                }
            }
        }
        let sh = shared.clone();
        match thread::Builder::new()
            .name("http-housekeeper".into())
            .spawn(move || housekeeper_loop(&sh))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_threads(&shared, threads, Instant::now() + Duration::from_secs(1));
                return Err(e);
            }
        }
        // Accept only once every thread runs: the first answer finds the pool complete.
        for (i, fd) in listener_fds.into_iter().enumerate() {
            if let Err(e) = shared.poller.add(fd, poller::IN, LISTENER_BASE + i as u64) {
                stop_threads(&shared, threads, Instant::now() + Duration::from_secs(1));
                return Err(e);
            }
        }
        Ok(ServerHandle { shared, threads })
    }
}

/// The running server. Dropping it shuts it down with a short timeout.
pub struct ServerHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn waker(&self) -> Waker {
        Waker {
            shared: self.shared.clone(),
        }
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Stops accepting, closes idle connections, lets requests in progress finish,
    /// answers parked requests with `Wake::Shutdown`, then joins the threads. Returns
    /// after about `timeout` at most; a handler still running then is left behind.
    pub fn shutdown(mut self, timeout: Duration) {
        self.stop(timeout);
    }

    fn stop(&mut self, timeout: Duration) {
        if self.threads.is_empty() {
            return;
        }
        let deadline = Instant::now() + timeout;
        let sh = &self.shared;
        sh.shutting.store(true, Ordering::SeqCst);
        for l in lock(&sh.listeners).iter_mut() {
            if let Some(l) = l.take() {
                let _ = sh.poller.delete(l.raw_fd());
            }
        }
        for fd in lock(&sh.streams).values() {
            // SAFETY: fd is our own dup of the stream's socket.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        loop {
            sh.housekeep(Instant::now());
            if sh.stats.open_connections.load(Ordering::Acquire) == 0 || Instant::now() >= deadline
            {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let threads = std::mem::take(&mut self.threads);
        stop_threads(
            sh,
            threads,
            deadline.max(Instant::now() + Duration::from_millis(100)),
        );
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

fn stop_threads(sh: &Shared, threads: Vec<JoinHandle<()>>, deadline: Instant) {
    sh.exit.store(true, Ordering::SeqCst);
    sh.doorbell.ring();
    for t in &threads {
        t.thread().unpark();
    }
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

const WAKE_TOKEN: u64 = u64::MAX;
const MAX_LISTENERS: u64 = 1024;
const LISTENER_BASE: u64 = u64::MAX - 1 - MAX_LISTENERS;
const GEN_MASK: u32 = 0x7FFF_FFFF;

fn token(idx: usize, gen: u32) -> u64 {
    (u64::from(gen) << 32) | idx as u64
}

fn split(token: u64) -> (usize, u32) {
    ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection-table entry. `conn` is `None` while a worker holds the connection
/// (or the slot is free); `gen` changes on every reuse, so a stale event is ignored.
struct Slot {
    gen: u32,
    conn: Option<Box<Conn>>,
}

pub(crate) struct Shared {
    pub config: ServerConfig,
    pub handler: Arc<dyn Handler>,
    pub stats: Arc<ServerStats>,
    pub shutting: AtomicBool,
    /// Bumped by every `Waker::wake`, so a park racing a wake is re-checked.
    pub wake_gen: AtomicU64,
    exit: AtomicBool,
    /// A wake is pending: parked requests must be re-checked.
    changed: AtomicBool,
    /// A re-check pass is running; wakes meanwhile make it run once more instead of
    /// starting a concurrent pass over the same requests.
    rechecking: AtomicBool,
    poller: Poller,
    doorbell: EventFd,
    listeners: Mutex<Vec<Option<Listener>>>,
    slots: Box<[Mutex<Slot>]>,
    free: Mutex<Vec<u32>>,
    high_water: AtomicUsize,
    parked_set: Mutex<HashSet<u32>>,
    /// Events a worker took but could not serve promptly (see `HAND_OFF_AFTER`).
    handoff: Mutex<VecDeque<(u64, u32)>>,
    handed_off: AtomicUsize,
    /// Dups of streaming sockets, shut down at server shutdown to end their threads.
    streams: Mutex<HashMap<u64, OwnedFd>>,
    stream_seq: AtomicU64,
}

/// Events a worker takes from epoll at once. A burst of ready connections is then
/// served by one woken worker instead of one context switch each.
const BATCH: usize = 8;
/// A batch whose handling has taken this long hands its unserved events to other
/// workers. Handlers that know a call may block (`Handler::may_block`) trigger the
/// hand-off before the call, so a slow request never holds other ready connections.
const HAND_OFF_AFTER: Duration = Duration::from_millis(1);

fn worker_loop(sh: &Arc<Shared>) {
    let mut scratch = Scratch::new(sh.config.limits.max_head_bytes);
    let mut fresh: Vec<(u64, u32)> = Vec::with_capacity(BATCH);
    loop {
        if sh.handed_off.load(Ordering::Acquire) > 0 {
            if let Some(ev) = lock(&sh.handoff).pop_front() {
                sh.handed_off.fetch_sub(1, Ordering::AcqRel);
                scratch.batch.push_back(ev);
            }
        }
        if scratch.batch.is_empty() {
            fresh.clear();
            if let Err(e) = sh.poller.wait_batch(&mut fresh, BATCH, -1) {
                log::error!(error:% = e; "epoll_wait failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            scratch.batch.extend(fresh.iter().copied());
        }
        let started = Instant::now();
        while let Some((tok, events)) = scratch.batch.pop_front() {
            if !handle_event(sh, &mut scratch, tok, events) {
                return;
            }
            // A handler that turned out slow without saying so: pass the rest on.
            if !scratch.batch.is_empty() && started.elapsed() > HAND_OFF_AFTER {
                sh.hand_off(scratch.batch.drain(..));
            }
        }
    }
}

/// Handles one epoll event; `false` when the worker must exit.
fn handle_event(sh: &Arc<Shared>, scratch: &mut Scratch, tok: u64, events: u32) -> bool {
    if tok == WAKE_TOKEN {
        if sh.exit.load(Ordering::SeqCst) {
            // Leave the doorbell ringing so the next worker sees it too.
            sh.doorbell.ring();
            let _ = sh.poller.rearm(sh.doorbell.raw(), poller::IN, WAKE_TOKEN);
            return false;
        }
        sh.doorbell.drain();
        let _ = sh.poller.rearm(sh.doorbell.raw(), poller::IN, WAKE_TOKEN);
        sh.recheck_changed();
    } else if tok >= LISTENER_BASE {
        sh.accept_ready((tok - LISTENER_BASE) as usize);
    } else if let Some(conn) = sh.take(tok) {
        let mut conn = conn;
        let next = conn::drive(sh, scratch, &mut conn, events);
        sh.finish(tok, conn, next, scratch);
    }
    true
}

fn housekeeper_loop(sh: &Arc<Shared>) {
    let l = &sh.config.limits;
    let tick = (l.head_timeout.min(l.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(100));
    while !sh.exit.load(Ordering::SeqCst) {
        thread::park_timeout(tick);
        // Fallback for a wake that no worker picked up (all busy in slow handlers).
        sh.recheck_changed();
        sh.housekeep(Instant::now());
    }
}

impl Shared {
    /// Gives events this worker took but will not serve soon to the other workers.
    pub(crate) fn hand_off(&self, events: impl Iterator<Item = (u64, u32)>) {
        let mut queue = lock(&self.handoff);
        let before = queue.len();
        queue.extend(events);
        let added = queue.len() - before;
        drop(queue);
        if added > 0 {
            self.handed_off.fetch_add(added, Ordering::AcqRel);
            self.doorbell.ring();
        }
    }

    fn accept_ready(&self, li: usize) {
        let mut backoff = false;
        {
            let listeners = lock(&self.listeners);
            let Some(Some(l)) = listeners.get(li) else {
                return;
            };
            for _ in 0..64 {
                match l.accept() {
                    Ok((fd, transport)) => self.admit(fd, transport),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        log::warn!(error:% = e; "accept failed");
                        backoff = true;
                        break;
                    }
                }
            }
        }
        if backoff {
            // Out of descriptors or memory: don't spin on a level-triggered listener.
            thread::sleep(Duration::from_millis(10));
        }
        let listeners = lock(&self.listeners);
        if let Some(Some(l)) = listeners.get(li) {
            let _ = self
                .poller
                .rearm(l.raw_fd(), poller::IN, LISTENER_BASE + li as u64);
        }
    }

    fn admit(&self, fd: OwnedFd, transport: Transport) {
        let open = self.stats.open_connections.load(Ordering::Acquire);
        let idx = if (open as usize) < self.config.max_connections {
            lock(&self.free).pop()
        } else {
            None
        };
        let Some(idx) = idx else {
            self.stats
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let idx = idx as usize;
        self.stats.open_connections.fetch_add(1, Ordering::AcqRel);
        self.stats.accepted_total.fetch_add(1, Ordering::Relaxed);
        self.high_water.fetch_max(idx + 1, Ordering::AcqRel);
        let raw = fd.as_raw_fd();
        let conn = Box::new(Conn {
            fd,
            transport: Arc::new(transport),
            leftover: Vec::new(),
            phase: Phase::Idle(Instant::now()),
        });
        let mut slot = lock(&self.slots[idx]);
        let tok = token(idx, slot.gen);
        slot.conn = Some(conn);
        if let Err(e) = self.poller.add(raw, poller::IN, tok) {
            log::warn!(error:% = e; "epoll add failed");
            let conn = slot.conn.take();
            drop(slot);
            if let Some(conn) = conn {
                self.release(tok, conn);
            }
        }
    }

    /// Takes the connection for `tok` out of its slot, if it is still there.
    fn take(&self, tok: u64) -> Option<Box<Conn>> {
        let (idx, gen) = split(tok);
        let mut slot = lock(self.slots.get(idx)?);
        if slot.gen != gen {
            return None;
        }
        slot.conn.take()
    }

    /// Acts on what a worker decided for a connection it held.
    fn finish(self: &Arc<Self>, tok: u64, conn: Box<Conn>, next: Next, s: &mut Scratch) {
        match next {
            Next::Rearm(events) => {
                let resting = matches!(conn.phase, Phase::Idle(_) | Phase::Head(_));
                if resting && self.shutting.load(Ordering::SeqCst) {
                    self.release(tok, conn);
                } else {
                    self.put_back(tok, conn, events);
                }
            }
            Next::Close => self.release(tok, conn),
            Next::Park(park, framing) => self.park(tok, conn, park, framing),
            Next::Stream(stream) => self.start_stream(tok, conn, stream, s),
        }
    }

    /// Returns a connection to its slot and re-arms it, under the slot lock so the
    /// housekeeper's own re-arming cannot interleave.
    fn put_back(&self, tok: u64, conn: Box<Conn>, events: u32) {
        let (idx, _) = split(tok);
        let raw = conn.fd.as_raw_fd();
        let mut slot = lock(&self.slots[idx]);
        slot.conn = Some(conn);
        if self.poller.rearm(raw, events, tok).is_err() {
            let conn = slot.conn.take();
            drop(slot);
            if let Some(conn) = conn {
                self.release(tok, conn);
            }
        }
    }

    /// Closes a connection the caller holds and frees its slot.
    fn release(&self, tok: u64, conn: Box<Conn>) {
        let (idx, _) = split(tok);
        if let Phase::Parked(_) = conn.phase {
            self.stats.parked.fetch_sub(1, Ordering::AcqRel);
            lock(&self.parked_set).remove(&(idx as u32));
        }
        drop(conn);
        self.free_slot(idx);
        self.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
    }

    fn free_slot(&self, idx: usize) {
        {
            let mut slot = lock(&self.slots[idx]);
            slot.gen = (slot.gen + 1) & GEN_MASK;
            slot.conn = None;
        }
        lock(&self.free).push(idx as u32);
    }

    /// Parks a request (the parked count was already reserved by the worker).
    fn park(&self, tok: u64, mut conn: Box<Conn>, park: Park, framing: Framing) {
        let (idx, _) = split(tok);
        conn.phase = Phase::Parked(Box::new(Parked { park, framing }));
        let raw = conn.fd.as_raw_fd();
        let mut slot = lock(&self.slots[idx]);
        slot.conn = Some(conn);
        if self.poller.rearm(raw, PARK_EVENTS, tok).is_err() {
            let conn = slot.conn.take();
            drop(slot);
            if let Some(conn) = conn {
                self.release(tok, conn);
            }
            return;
        }
        drop(slot);
        lock(&self.parked_set).insert(idx as u32);
        if self.shutting.load(Ordering::SeqCst) {
            self.recheck_parked(Wake::Shutdown);
        } else {
            // A wake that came after the worker's last look but before the insert above
            // found nothing to re-check: look once more now that the request is in the
            // set (a spurious `Changed` check is harmless by contract).
            let mut slot = lock(&self.slots[idx]);
            let gen = slot.gen;
            if let Some(conn) = slot.conn.as_mut() {
                self.resolve(idx, gen, conn, Wake::Changed);
            }
        }
    }

    /// Re-checks parked requests while wakes are pending, one pass at a time: a burst
    /// of wakes (every store change rings) costs one pass, plus at most one more for
    /// the wakes that arrived during it — not one pass per wake, nor concurrent passes.
    fn recheck_changed(&self) {
        loop {
            if self.rechecking.swap(true, Ordering::AcqRel) {
                // The running pass sees `changed` when it ends and goes again.
                return;
            }
            while self.changed.swap(false, Ordering::AcqRel) {
                self.recheck_parked(Wake::Changed);
            }
            self.rechecking.store(false, Ordering::Release);
            // A wake between the last swap and the release above would be lost.
            if !self.changed.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Runs the check of every parked request with `reason`.
    fn recheck_parked(&self, reason: Wake) {
        let parked: Vec<u32> = lock(&self.parked_set).iter().copied().collect();
        for idx in parked {
            let idx = idx as usize;
            let mut slot = lock(&self.slots[idx]);
            let gen = slot.gen;
            if let Some(conn) = slot.conn.as_mut() {
                self.resolve(idx, gen, conn, reason);
            }
        }
    }

    /// With the slot locked: asks a parked request's check; if it answers, stores the
    /// answer and arms the fd for writing so a worker sends it.
    fn resolve(&self, idx: usize, gen: u32, conn: &mut Conn, reason: Wake) {
        let Phase::Parked(p) = &mut conn.phase else {
            return;
        };
        let resp = match catch_unwind(AssertUnwindSafe(|| (p.park.check)(reason))) {
            Ok(Some(resp)) => resp,
            Ok(None) if reason == Wake::Changed => return,
            Ok(None) => Response::error(503, "request could not be completed"),
            Err(_) => {
                log::error!("park check panicked");
                Response::error(500, "internal error")
            }
        };
        let mut framing = p.framing;
        if self.shutting.load(Ordering::SeqCst) {
            framing.keep_alive = false;
        }
        conn.phase = Phase::Respond(Box::new((resp, framing)));
        self.stats.parked.fetch_sub(1, Ordering::AcqRel);
        lock(&self.parked_set).remove(&(idx as u32));
        // If this fails the connection is broken; its hang-up event or the idle scan
        // cleans it up.
        let _ = self
            .poller
            .rearm(conn.fd.as_raw_fd(), poller::OUT, token(idx, gen));
    }

    /// One pass of timeouts over the table; at shutdown also closes resting connections
    /// and answers parked ones.
    fn housekeep(&self, now: Instant) {
        let limits = &self.config.limits;
        let shutting = self.shutting.load(Ordering::SeqCst);
        let hw = self
            .high_water
            .load(Ordering::Acquire)
            .min(self.slots.len());
        for idx in 0..hw {
            let mut slot = lock(&self.slots[idx]);
            let gen = slot.gen;
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            let close = match &conn.phase {
                Phase::Idle(since) => shutting || now.duration_since(*since) >= limits.idle_timeout,
                Phase::Head(_) if shutting => true,
                Phase::Head(started) => {
                    if now.duration_since(*started) >= limits.head_timeout {
                        let resp = Response::error(408, "request head timeout");
                        let framing = Framing {
                            keep_alive: false,
                            http10: false,
                            head: false,
                        };
                        conn.phase = Phase::Respond(Box::new((resp, framing)));
                        let _ =
                            self.poller
                                .rearm(conn.fd.as_raw_fd(), poller::OUT, token(idx, gen));
                    }
                    false
                }
                Phase::Parked(p) => {
                    if shutting {
                        self.resolve(idx, gen, conn, Wake::Shutdown);
                    } else if p.park.deadline <= now {
                        self.resolve(idx, gen, conn, Wake::TimedOut);
                    }
                    false
                }
                Phase::Respond(_) => false,
            };
            if close {
                let conn = slot.conn.take();
                drop(slot);
                if let Some(conn) = conn {
                    self.release(token(idx, gen), conn);
                }
            }
        }
    }

    /// Writes a streamed response's head, then gives the socket to a thread of its own.
    fn start_stream(self: &Arc<Self>, tok: u64, conn: Box<Conn>, stream: Stream, s: &mut Scratch) {
        let (idx, _) = split(tok);
        render_stream_head(&mut s.out, stream.status, &stream.headers);
        let raw = conn.fd.as_raw_fd();
        if send_all(raw, &[s.out.as_slice()], self.config.limits.io_timeout).is_err() {
            self.release(tok, conn);
            return;
        }
        let _ = self.poller.delete(raw);
        let Conn { fd, transport, .. } = *conn;
        self.free_slot(idx);
        // Blocking from here on: the stream writes at its own pace.
        set_blocking(fd.as_raw_fd());
        let id = self.stream_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(dup) = fd.try_clone() {
            lock(&self.streams).insert(id, dup);
        }
        let mut writer: Box<dyn Write + Send> = match *transport {
            Transport::Unix(_) => Box::new(UnixStream::from(fd)),
            Transport::Tcp(_) => Box::new(TcpStream::from(fd)),
        };
        let sh = self.clone();
        let body = stream.body;
        let spawned = thread::Builder::new()
            .name("http-stream".into())
            .spawn(move || {
                let _ = catch_unwind(AssertUnwindSafe(|| body(&mut *writer)));
                let _ = writer.flush();
                drop(writer);
                lock(&sh.streams).remove(&id);
                sh.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            log::warn!(error:% = e; "cannot start stream thread");
            lock(&self.streams).remove(&id);
            self.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Clears O_NONBLOCK on a socket.
fn set_blocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; failure leaves it nonblocking, which only
    // turns a full socket buffer into a write error.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// `SO_PEERGROUPS` (Linux ≥ 4.13); the `libc` crate does not export it for every arch.
const SO_PEERGROUPS: libc::c_int = 59;

/// SO_PEERCRED and SO_PEERGROUPS of a freshly accepted Unix peer.
fn peer_cred(s: &UnixStream) -> Option<PeerCred> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let c = getsockopt(s, PeerCredentials).ok()?;
    Some(PeerCred {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
        groups: peer_groups(s.as_raw_fd()),
    })
}

fn peer_groups(fd: RawFd) -> Vec<u32> {
    let mut n = 64usize;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; n];
        let mut len = (n * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; the kernel writes at most that.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return groups;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && n < 65536 {
            n = (len as usize / std::mem::size_of::<libc::gid_t>()).max(n * 2);
            continue;
        }
        return Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_thread_safe() {
        fn check<T: Send + Sync>() {}
        check::<Waker>();
        check::<ServerStats>();
        check::<ServerHandle>();
    }

    #[test]
    fn tokens_round_trip_below_reserved_range() {
        let t = token(8191, GEN_MASK);
        assert_eq!(split(t), (8191, GEN_MASK));
        assert!(t < LISTENER_BASE);
    }
}
