//! One worker: an epoll set, the connections it accepted, and everything that happens
//! to them until they close.
//!
//! The loop waits on its own epoll set (level-triggered), which holds every listener
//! (shared with the other loops, `EPOLLEXCLUSIVE`), its doorbell and its connections.
//! A ready connection is served right here (`conn::on_ready`); interest is changed with
//! `epoll_ctl` only when a connection's state calls for it (writing, parked, waiting
//! for budget), never per request. Besides the epoll set the loop keeps:
//!
//! * an **idle list** (intrusive, oldest first) of keep-alive connections with nothing
//!   in progress, published as a count and the oldest one's age so that any loop can
//!   pick the globally longest-idle connection to evict at the connection limit;
//! * the **parked list** (blocking queries, writes in progress, `Later` requests) and a
//!   timer heap of their deadlines;
//! * the connections **waiting for body budget**, first come first served;
//! * a periodic **sweep** for head, body, idle and write timeouts.
//!
//! The doorbell brings what other threads ask (`shared::Mailbox`): re-check parked
//! requests after a change, answers from `Resume`, evictions, budget that came free,
//! shutdown and exit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::conn::{self, Conn, Cx, Next, Scratch, State, LINGER, NONE};
use super::poller::{Poller, Ready, IN};
use super::shared::{lock, Mailbox, Shared, NO_IDLE};
use super::stats::RejectReason;
use super::write::{render_stream_head, send_response, send_some, Framing};
use super::{PeerCred, Response, Stream, Transport, Wake};

pub(crate) const MAX_LISTENERS: usize = 64;
const DOORBELL: u64 = u64::MAX;
const LISTENER_BASE: u64 = u64::MAX - 1 - MAX_LISTENERS as u64;
const GEN_MASK: u32 = 0x7FFF_FFFF;
/// Connections accepted per listener event.
const ACCEPT_BATCH: usize = 32;
/// Events taken from epoll at once.
const EVENTS: usize = 64;
/// How long a listener rests after `accept` failed for lack of descriptors or memory.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

fn token(idx: usize, gen: u32) -> u64 {
    (u64::from(gen) << 32) | idx as u64
}

fn split(token: u64) -> (usize, u32) {
    ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

pub(crate) struct EventLoop {
    id: usize,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    poller: Poller,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    idle_head: u32,
    idle_tail: u32,
    idle_len: usize,
    /// Slot indices of parked and waiting connections.
    parked: Vec<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    budget_waiters: VecDeque<(u32, u32)>,
    scratch: Scratch,
    events: Vec<Ready>,
    now: Instant,
    next_sweep: Instant,
    tick: Duration,
    seq: u64,
    shutting: bool,
    /// Listeners taken out after `accept` failed (no fds), and when to put them back.
    paused_until: Option<Instant>,
}

impl EventLoop {
    pub fn new(id: usize, shared: Arc<Shared>) -> io::Result<EventLoop> {
        let mailbox = Arc::clone(&shared.mailboxes[id]);
        let poller = Poller::new(EVENTS)?;
        poller.add(mailbox.doorbell.raw(), IN, DOORBELL)?;
        for (i, fd) in shared.listener_fds.iter().enumerate() {
            poller.add_exclusive(*fd, LISTENER_BASE + i as u64)?;
        }
        let l = &shared.config.limits;
        let tick = (l
            .head_timeout
            .min(l.idle_timeout)
            .min(l.body_timeout)
            .min(l.io_timeout)
            / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let now = Instant::now();
        Ok(EventLoop {
            id,
            mailbox,
            poller,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            idle_head: NONE,
            idle_tail: NONE,
            idle_len: 0,
            parked: Vec::new(),
            timers: BinaryHeap::new(),
            budget_waiters: VecDeque::new(),
            scratch: Scratch::new(),
            events: Vec::with_capacity(EVENTS),
            now,
            next_sweep: now + tick,
            tick,
            seq: 0,
            shutting: false,
            paused_until: None,
            shared,
        })
    }

    pub fn run(mut self) {
        loop {
            let timeout = self.timeout_ms();
            self.events.clear();
            if let Err(e) = self.poller.wait(&mut self.events, timeout) {
                log::error!(error:% = e; "epoll_wait failed");
                thread::sleep(Duration::from_millis(10));
            }
            self.now = Instant::now();
            for i in 0..self.events.len() {
                let ready = self.events[i];
                self.dispatch(ready);
            }
            self.fire_timers();
            if self.now >= self.next_sweep {
                self.sweep();
            }
            if self.shared.exit.load(Ordering::Acquire) {
                self.exit();
                return;
            }
        }
    }

    /// How long epoll may wait: until the next deadline, or the next sweep while there
    /// are connections to watch.
    fn timeout_ms(&self) -> i32 {
        let mut until: Option<Instant> = self.timers.peek().map(|Reverse((d, _, _))| *d);
        if self.live > 0 || self.shutting {
            until = Some(until.map_or(self.next_sweep, |d| d.min(self.next_sweep)));
        }
        if let Some(p) = self.paused_until {
            until = Some(until.map_or(p, |d| d.min(p)));
        }
        match until {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up so a wake-up is never a little early.
                (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
            }
        }
    }

    fn dispatch(&mut self, ready: Ready) {
        if ready.token == DOORBELL {
            self.on_doorbell();
        } else if ready.token >= LISTENER_BASE {
            self.accept((ready.token - LISTENER_BASE) as usize);
        } else {
            let (idx, gen) = split(ready.token);
            let next = self.with_conn(idx, gen, |cx, c| conn::on_ready(cx, c, ready.events));
            if let Some(next) = next {
                self.after(idx, next);
            }
        }
    }

    /// Runs `f` on the connection in slot `idx` if it is still generation `gen`.
    fn with_conn<R>(
        &mut self,
        idx: usize,
        gen: u32,
        f: impl FnOnce(&mut Cx, &mut Conn) -> R,
    ) -> Option<R> {
        let slot = self.slots.get_mut(idx)?;
        if slot.gen != gen {
            return None;
        }
        let c = slot.conn.as_mut()?;
        let mut cx = Cx {
            shared: &self.shared,
            mailbox: &self.mailbox,
            scratch: &mut self.scratch,
            now: self.now,
            token: token(idx, gen),
            seq: &mut self.seq,
        };
        Some(f(&mut cx, c))
    }

    fn gen_of(&self, idx: usize) -> u32 {
        self.slots.get(idx).map_or(0, |s| s.gen)
    }

    /// Files a connection after a step.
    fn after(&mut self, idx: usize, next: Next) {
        match next {
            Next::Keep => self.settle(idx),
            Next::Close => self.close(idx),
            Next::Stream(stream) => self.start_stream(idx, stream),
        }
    }

    /// Puts a connection where its state says: epoll interest, idle list, parked list
    /// and timer, budget queue.
    fn settle(&mut self, idx: usize) {
        let gen = self.gen_of(idx);
        let Some(c) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        if self.shutting && matches!(c.state, State::Idle | State::Head) && c.inbuf.is_empty() {
            self.close(idx);
            return;
        }
        let want = c.wanted_interest();
        if want != c.interest {
            if self
                .poller
                .modify(c.fd.as_raw_fd(), want, token(idx, gen))
                .is_err()
            {
                self.close(idx);
                return;
            }
            c.interest = want;
        }
        let idle = matches!(c.state, State::Idle) && c.needs == 0;
        let served = std::mem::take(&mut c.served);
        let deadline = c.deadline();
        let parked_at = c.parked_at;
        let wants_budget = c.needs > 0 && !c.budget_queued;
        let leaves_budget = c.needs == 0 && c.budget_queued;
        if wants_budget || leaves_budget {
            c.budget_queued = wants_budget;
        }
        let in_idle = c.in_idle;
        if idle {
            if !in_idle {
                self.idle_push(idx);
            } else if served {
                self.idle_remove(idx);
                self.idle_push(idx);
            }
        } else if in_idle {
            self.idle_remove(idx);
        }
        match (deadline, parked_at) {
            (Some(_), NONE) => {
                let at = self.parked.len() as u32;
                if let Some(c) = self.conn_mut(idx) {
                    c.parked_at = at;
                }
                self.parked.push(idx as u32);
            }
            (None, at) if at != NONE => self.parked_remove(idx),
            _ => {}
        }
        // A new deadline (a request parked, or a waiting one parked again with its own)
        // gets its timer; an old one left in the heap no longer matches and is skipped.
        if let Some(d) = deadline {
            if let Some(c) = self.conn_mut(idx) {
                if c.timer != Some(d) {
                    c.timer = Some(d);
                    self.timers.push(Reverse((d, idx as u32, gen)));
                    self.compact_timers();
                }
            }
        }
        if wants_budget {
            self.budget_waiters.push_back((idx as u32, gen));
            self.shared.budget().add_waiter();
            self.mailbox.budget_waiting.fetch_add(1, Ordering::AcqRel);
        } else if leaves_budget {
            self.shared.budget().remove_waiter();
            self.mailbox.budget_waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn conn_mut(&mut self, idx: usize) -> Option<&mut Conn> {
        self.slots.get_mut(idx).and_then(|s| s.conn.as_mut())
    }

    // ------------------------------------------------------------ idle list

    fn idle_push(&mut self, idx: usize) {
        let tail = self.idle_tail;
        let since = {
            let Some(c) = self.conn_mut(idx) else {
                return;
            };
            c.prev = tail;
            c.next = NONE;
            c.in_idle = true;
            c.since
        };
        if tail == NONE {
            self.idle_head = idx as u32;
            self.publish_oldest(Some(since));
        } else if let Some(t) = self.conn_mut(tail as usize) {
            t.next = idx as u32;
        }
        self.idle_tail = idx as u32;
        self.idle_len += 1;
        self.mailbox.idle.store(self.idle_len, Ordering::Relaxed);
    }

    fn idle_remove(&mut self, idx: usize) {
        let (prev, next) = {
            let Some(c) = self.conn_mut(idx) else {
                return;
            };
            if !c.in_idle {
                return;
            }
            c.in_idle = false;
            let links = (c.prev, c.next);
            c.prev = NONE;
            c.next = NONE;
            links
        };
        if prev == NONE {
            self.idle_head = next;
            let since = self.conn_mut(next as usize).map(|c| c.since);
            self.publish_oldest(since);
        } else if let Some(p) = self.conn_mut(prev as usize) {
            p.next = next;
        }
        if next == NONE {
            self.idle_tail = prev;
        } else if let Some(n) = self.conn_mut(next as usize) {
            n.prev = prev;
        }
        self.idle_len -= 1;
        self.mailbox.idle.store(self.idle_len, Ordering::Relaxed);
    }

    fn publish_oldest(&self, since: Option<Instant>) {
        let v = since.map_or(NO_IDLE, |t| self.shared.millis(t));
        self.mailbox.oldest_idle.store(v, Ordering::Relaxed);
    }

    // ------------------------------------------------------------ parked list

    fn parked_remove(&mut self, idx: usize) {
        let Some(at) = self
            .conn_mut(idx)
            .map(|c| std::mem::replace(&mut c.parked_at, NONE))
        else {
            return;
        };
        let at = at as usize;
        if at >= self.parked.len() {
            return;
        }
        self.parked.swap_remove(at);
        if let Some(&moved) = self.parked.get(at) {
            if let Some(c) = self.conn_mut(moved as usize) {
                c.parked_at = at as u32;
            }
        }
    }

    /// Asks every parked request again (their timers stay; a stale timer is ignored).
    fn recheck_parked(&mut self, wake: Wake) {
        let parked: Vec<u32> = self.parked.clone();
        for idx in parked {
            let idx = idx as usize;
            let gen = self.gen_of(idx);
            if let Some(Some(next)) = self.with_conn(idx, gen, |cx, c| conn::recheck(cx, c, wake)) {
                self.after(idx, next);
            }
        }
    }

    /// Timers of requests answered early stay in the heap until they come due; when
    /// they outnumber the live ones, drop them (writes park for up to 30 s each).
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.parked.len() + 1024 {
            return;
        }
        let slots = &self.slots;
        self.timers.retain(|Reverse((d, idx, gen))| {
            slots
                .get(*idx as usize)
                .filter(|s| s.gen == *gen)
                .and_then(|s| s.conn.as_ref())
                .and_then(Conn::deadline)
                .is_some_and(|live| live == *d)
        });
    }

    fn fire_timers(&mut self) {
        while let Some(Reverse((deadline, idx, gen))) = self.timers.peek().copied() {
            if deadline > self.now {
                break;
            }
            self.timers.pop();
            let idx = idx as usize;
            let due = self
                .slots
                .get(idx)
                .filter(|s| s.gen == gen)
                .and_then(|s| s.conn.as_ref())
                .and_then(Conn::deadline)
                .is_some_and(|d| d == deadline);
            if !due {
                continue;
            }
            if let Some(Some(next)) = self.with_conn(idx, gen, conn::expire) {
                self.after(idx, next);
            }
        }
    }

    // ------------------------------------------------------------ doorbell

    fn on_doorbell(&mut self) {
        self.mailbox.doorbell.drain();
        if self.shared.shutting.load(Ordering::Acquire) && !self.shutting {
            self.begin_shutdown();
        }
        if self.mailbox.changed.swap(false, Ordering::AcqRel) {
            let wake = if self.shutting {
                Wake::Shutdown
            } else {
                Wake::Changed
            };
            self.recheck_parked(wake);
        }
        let answers = std::mem::take(&mut *lock(&self.mailbox.answers));
        for a in answers {
            let (idx, gen) = split(a.token);
            let reply = a.reply;
            if let Some(Some(next)) =
                self.with_conn(idx, gen, |cx, c| conn::resume(cx, c, a.seq, reply))
            {
                self.after(idx, next);
            }
        }
        let adopted = std::mem::take(&mut *lock(&self.mailbox.adopted));
        for sock in adopted {
            self.admit(sock, true, None);
        }
        let evict = self.mailbox.evict.swap(0, Ordering::AcqRel);
        for _ in 0..evict {
            self.evict_oldest_idle();
        }
        if self.mailbox.budget_waiting.load(Ordering::Acquire) > 0 {
            self.retry_budget_waiters();
        }
    }

    fn retry_budget_waiters(&mut self) {
        while let Some(&(idx, gen)) = self.budget_waiters.front() {
            let idx = idx as usize;
            let queued = self
                .slots
                .get(idx)
                .filter(|s| s.gen == gen)
                .and_then(|s| s.conn.as_ref())
                .is_some_and(|c| c.budget_queued);
            if !queued {
                self.budget_waiters.pop_front();
                continue;
            }
            match self.with_conn(idx, gen, conn::retry_budget) {
                Some(None) => break,
                Some(Some(next)) => {
                    self.budget_waiters.pop_front();
                    if let Some(c) = self.conn_mut(idx) {
                        c.budget_queued = false;
                    }
                    self.shared.budget().remove_waiter();
                    self.mailbox.budget_waiting.fetch_sub(1, Ordering::AcqRel);
                    self.after(idx, next);
                }
                None => {
                    self.budget_waiters.pop_front();
                }
            }
        }
    }

    // ------------------------------------------------------------ accepting

    fn accept(&mut self, li: usize) {
        if self.shutting {
            return;
        }
        let Some(&fd) = self.shared.listener_fds.get(li) else {
            return;
        };
        let unix = self.shared.listener_unix.get(li).copied().unwrap_or(true);
        for _ in 0..ACCEPT_BATCH {
            match accept4(fd) {
                Ok((sock, peer)) => self.admit(sock, unix, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!(error:% = e; "accept failed; pausing the listeners briefly");
                    self.pause_listeners();
                    return;
                }
            }
        }
    }

    /// Out of descriptors or memory: a level-triggered listener would fire at once
    /// again, so take the listeners out of this loop's set for a moment.
    fn pause_listeners(&mut self) {
        for fd in &self.shared.listener_fds {
            let _ = self.poller.delete(*fd);
        }
        self.paused_until = Some(self.now + ACCEPT_PAUSE);
    }

    fn resume_listeners(&mut self) {
        if let Some(until) = self.paused_until {
            if self.now >= until {
                self.paused_until = None;
                if !self.shutting {
                    for (i, fd) in self.shared.listener_fds.iter().enumerate() {
                        let _ = self.poller.add_exclusive(*fd, LISTENER_BASE + i as u64);
                    }
                }
            }
        }
    }

    fn admit(&mut self, sock: OwnedFd, unix: bool, peer: Option<SocketAddr>) {
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        let open = stats.open_connections.fetch_add(1, Ordering::AcqRel) + 1;
        if open as usize > shared.config.max_connections && !self.make_room() {
            stats.open_connections.fetch_sub(1, Ordering::AcqRel);
            stats.reject(RejectReason::ConnectionLimit);
            refuse_newcomer(&sock);
            return;
        }
        stats.accepted_total.fetch_add(1, Ordering::Relaxed);
        let transport = if unix {
            Transport::Unix(peer_cred(sock.as_raw_fd()))
        } else {
            set_nodelay(sock.as_raw_fd());
            match peer {
                Some(addr) => Transport::Tcp(addr),
                None => Transport::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            }
        };
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(Slot { gen: 1, conn: None });
                self.slots.len() - 1
            }
        };
        let gen = self.slots[idx].gen;
        let raw = sock.as_raw_fd();
        let mut c = Conn::new(sock, transport, self.now);
        c.interest = IN;
        if self.poller.add(raw, IN, token(idx, gen)).is_err() {
            self.free.push(idx as u32);
            self.shared
                .stats
                .open_connections
                .fetch_sub(1, Ordering::AcqRel);
            return;
        }
        self.slots[idx].conn = Some(c);
        self.live += 1;
        self.idle_push(idx);
    }

    /// At the connection limit: closes (here, or asks another loop to close) the
    /// connection that has been idle longest, over all loops. False when none is idle.
    fn make_room(&mut self) -> bool {
        let mut best: Option<(usize, u64)> = None;
        for (i, m) in self.shared.mailboxes.iter().enumerate() {
            let idle = m.idle.load(Ordering::Relaxed);
            let asked = m.evict.load(Ordering::Relaxed);
            if idle <= asked {
                continue;
            }
            let oldest = m.oldest_idle.load(Ordering::Relaxed);
            if best.is_none_or(|(_, t)| oldest < t) {
                best = Some((i, oldest));
            }
        }
        match best {
            None => false,
            Some((i, _)) if i == self.id => {
                self.evict_oldest_idle();
                true
            }
            Some((i, _)) => {
                let m = &self.shared.mailboxes[i];
                m.evict.fetch_add(1, Ordering::AcqRel);
                m.doorbell.ring();
                true
            }
        }
    }

    fn evict_oldest_idle(&mut self) {
        let head = self.idle_head;
        if head == NONE {
            return;
        }
        self.shared
            .stats
            .evicted_connections
            .fetch_add(1, Ordering::Relaxed);
        self.close(head as usize);
    }

    // ------------------------------------------------------------ closing

    fn close(&mut self, idx: usize) {
        let Some(mut c) = self.take(idx) else {
            return;
        };
        conn::on_close(&self.shared, &self.mailbox, &mut c);
        drop(c);
        self.shared
            .stats
            .open_connections
            .fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes a connection out of its slot and every list, freeing the slot.
    fn take(&mut self, idx: usize) -> Option<Conn> {
        self.idle_remove(idx);
        self.parked_remove(idx);
        let slot = self.slots.get_mut(idx)?;
        let c = slot.conn.take()?;
        slot.gen = (slot.gen + 1) & GEN_MASK;
        self.free.push(idx as u32);
        self.live -= 1;
        if c.budget_queued {
            self.shared.budget().remove_waiter();
            self.mailbox.budget_waiting.fetch_sub(1, Ordering::AcqRel);
        }
        Some(c)
    }

    // ------------------------------------------------------------ timeouts

    fn sweep(&mut self) {
        self.next_sweep = self.now + self.tick;
        self.resume_listeners();
        let limits = self.shared.config.limits.clone();
        for idx in 0..self.slots.len() {
            let gen = self.slots[idx].gen;
            let Some(c) = self.slots[idx].conn.as_ref() else {
                continue;
            };
            let age = self.now.saturating_duration_since(c.since);
            enum Act {
                Close,
                TimedOut,
                BudgetTimedOut,
            }
            let act = match c.state {
                State::Idle if self.shutting || age >= limits.idle_timeout => Some(Act::Close),
                State::Head if self.shutting => Some(Act::Close),
                State::Head if age >= limits.head_timeout => Some(Act::TimedOut),
                State::Body(_) if c.needs == 0 && age >= limits.body_timeout => Some(Act::TimedOut),
                State::Body(_) | State::BudgetWait if age >= limits.body_timeout => {
                    Some(Act::BudgetTimedOut)
                }
                State::Writing(_) if conn::write_stalled(c, self.now, limits.io_timeout) => {
                    Some(Act::Close)
                }
                State::Linger if age >= LINGER || self.shutting => Some(Act::Close),
                _ => None,
            };
            let next = match act {
                None => continue,
                Some(Act::Close) => Next::Close,
                Some(Act::TimedOut) => match self.with_conn(idx, gen, conn::timed_out) {
                    Some(n) => n,
                    None => continue,
                },
                Some(Act::BudgetTimedOut) => {
                    match self.with_conn(idx, gen, conn::budget_timed_out) {
                        Some(n) => n,
                        None => continue,
                    }
                }
            };
            if let Some(c) = self.conn_mut(idx) {
                c.needs = 0;
            }
            self.after(idx, next);
        }
    }

    // ------------------------------------------------------------ shutdown

    fn begin_shutdown(&mut self) {
        self.shutting = true;
        for fd in &self.shared.listener_fds {
            let _ = self.poller.delete(*fd);
        }
        self.paused_until = None;
        self.recheck_parked(Wake::Shutdown);
        self.next_sweep = self.now;
    }

    /// The server stops now: answer what still waits as well as the socket allows, then
    /// close everything.
    fn exit(&mut self) {
        self.now = Instant::now();
        for idx in 0..self.slots.len() {
            let gen = self.gen_of(idx);
            if let Some(Some(next)) = self.with_conn(idx, gen, conn::expire) {
                self.after(idx, next);
            }
            if self.slots[idx].conn.is_some() {
                self.close(idx);
            }
        }
    }

    // ------------------------------------------------------------ streams

    /// Writes a streamed response's head, then gives the socket to a thread of its own.
    fn start_stream(&mut self, idx: usize, stream: Stream) {
        let Some(c) = self.take(idx) else {
            return;
        };
        let sh = Arc::clone(&self.shared);
        render_stream_head(&mut self.scratch.out, stream.status, &stream.headers);
        let raw = c.fd.as_raw_fd();
        let _ = self.poller.delete(raw);
        if !send_all_now(raw, &self.scratch.out) {
            let mut c = c;
            conn::on_close(&sh, &self.mailbox, &mut c);
            sh.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let Conn { fd, transport, .. } = c;
        // Blocking from here on: the stream writes at its own pace, on its own thread.
        set_blocking(fd.as_raw_fd());
        let id = sh.stream_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(dup) = fd.try_clone() {
            lock(&sh.streams).insert(id, dup);
        }
        let mut writer: Box<dyn Write + Send> = match transport {
            Transport::Unix(_) => Box::new(UnixStream::from(fd)),
            Transport::Tcp(_) => Box::new(TcpStream::from(fd)),
        };
        let body = stream.body;
        let sh2 = Arc::clone(&sh);
        let spawned = thread::Builder::new()
            .name("http-stream".into())
            .spawn(move || {
                let _ = body(&mut *writer);
                let _ = writer.flush();
                drop(writer);
                lock(&sh2.streams).remove(&id);
                sh2.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            log::warn!(error:% = e; "cannot start stream thread");
            lock(&sh.streams).remove(&id);
            sh.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Sends a short buffer on a socket whose send buffer is empty; false if it did not
/// all go out at once.
fn send_all_now(fd: RawFd, bytes: &[u8]) -> bool {
    let mut off = 0;
    while off < bytes.len() {
        match send_some(fd, &bytes[off..], &[]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => off += n,
        }
    }
    true
}

/// A newcomer refused because every connection is busy: a short 503, then close.
fn refuse_newcomer(sock: &OwnedFd) {
    let resp = Response::error(503, "too many connections: every connection is busy")
        .header("Retry-After", "1");
    let framing = Framing {
        keep_alive: false,
        http10: false,
        head: false,
    };
    let mut out = Vec::with_capacity(256);
    let _ = send_response(sock.as_raw_fd(), &mut out, resp, framing);
    // SAFETY: shutdown on a socket we own.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) };
}

/// `accept4` with the new socket nonblocking and close-on-exec, and the peer's address
/// for TCP.
fn accept4(listener: RawFd) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: zeroed sockaddr_storage is valid; the kernel fills at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: plain syscall with valid pointers.
    let fd = unsafe {
        libc::accept4(
            listener,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((sock, sockaddr_to_std(&storage)))
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a live int; failure only costs latency.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
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
fn peer_cred(fd: RawFd) -> Option<PeerCred> {
    // SAFETY: zeroed ucred is valid; the kernel fills at most `len` bytes.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid pointers for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    Some(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd),
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
    fn tokens_round_trip_below_reserved_range() {
        let t = token(8191, GEN_MASK);
        assert_eq!(split(t), (8191, GEN_MASK));
        assert!(t < LISTENER_BASE);
    }
}
