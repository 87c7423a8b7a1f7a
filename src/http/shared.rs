//! What the event loops share: the configuration, the handler, the counters, the body
//! budget, and each loop's [`Mailbox`] — the only way one thread asks something of a
//! loop (answer this parked request, re-check parked requests, evict an idle
//! connection, look for budget room, stop).
//!
//! Everything here is either immutable after start or an atomic/short-held mutex; no
//! lock is ever held across I/O. Requests are never handed between loops: a loop owns
//! its connections from accept to close.

use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::listen::Listener;
use super::poller::EventFd;
use super::stats::ServerStats;
use super::{Handler, Response, ServerConfig};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// No idle connection (for `Mailbox::oldest_idle`).
pub(crate) const NO_IDLE: u64 = u64::MAX;

/// An answer for a connection a loop parked, posted from another thread.
pub(crate) struct Answer {
    pub token: u64,
    pub seq: u64,
    pub reply: Delivered,
}

/// What work done elsewhere hands back for a request: its response, or a park (the
/// request now waits for a change, like a blocking query).
pub(crate) enum Delivered {
    Response(Response),
    Park(super::Park),
}

/// One loop's inbox and the facts it publishes for the others.
pub(crate) struct Mailbox {
    pub doorbell: EventFd,
    /// A change happened (`Waker::wake`): re-check parked requests.
    pub changed: AtomicBool,
    /// Answers for requests this loop handed to other threads (`Reply::Later`).
    pub answers: Mutex<Vec<Answer>>,
    /// Idle connections other loops asked this one to close (connection limit).
    pub evict: AtomicUsize,
    /// Requests parked on this loop (blocking queries, writes in progress, later
    /// answers); a change rings only loops that have some.
    pub parked: AtomicUsize,
    /// Connections of this loop waiting for body budget.
    pub budget_waiting: AtomicUsize,
    /// Idle keep-alive connections, and when the longest-idle one went idle
    /// (milliseconds since the server started; `NO_IDLE` when none).
    pub idle: AtomicUsize,
    pub oldest_idle: AtomicU64,
    /// Requests this loop handed to the handler.
    pub requests: AtomicU64,
    /// Connections accepted elsewhere for this loop to serve (`ServerHandle::adopt`).
    pub adopted: Mutex<Vec<OwnedFd>>,
}

impl Mailbox {
    pub fn new() -> std::io::Result<Mailbox> {
        Ok(Mailbox {
            doorbell: EventFd::new()?,
            changed: AtomicBool::new(false),
            answers: Mutex::new(Vec::new()),
            evict: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            budget_waiting: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            oldest_idle: AtomicU64::new(NO_IDLE),
            requests: AtomicU64::new(0),
            adopted: Mutex::new(Vec::new()),
        })
    }

    pub fn post(&self, answer: Answer) {
        lock(&self.answers).push(answer);
        self.doorbell.ring();
    }
}

pub(crate) struct Shared {
    pub config: ServerConfig,
    pub handler: Arc<dyn Handler>,
    pub stats: Arc<ServerStats>,
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// The listeners (closed at shutdown), their fds and whether each is a Unix socket.
    pub listeners: Mutex<Vec<Listener>>,
    pub listener_fds: Vec<RawFd>,
    pub listener_unix: Vec<bool>,
    /// Bumped by every `Waker::wake`, so a request parking while a change happens is
    /// checked once more instead of missing it.
    pub change_gen: AtomicU64,
    /// Shutdown began: stop accepting, close idle connections, answer parked ones.
    pub shutting: AtomicBool,
    /// Stop now: the loops answer what is left as they can and end.
    pub exit: AtomicBool,
    pub started: Instant,
    /// Dups of streaming sockets, shut down at server shutdown to end their threads.
    pub streams: Mutex<HashMap<u64, OwnedFd>>,
    pub stream_seq: AtomicU64,
}

impl Shared {
    /// Milliseconds since the server started, for the idle ordering between loops.
    pub fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    pub fn ring_all(&self) {
        for m in &self.mailboxes {
            m.doorbell.ring();
        }
    }

    /// Tells loops with parked requests that something changed.
    pub fn changed(&self) {
        self.change_gen.fetch_add(1, Ordering::SeqCst);
        for m in &self.mailboxes {
            if m.parked.load(Ordering::SeqCst) > 0 && !m.changed.swap(true, Ordering::AcqRel) {
                m.doorbell.ring();
            }
        }
    }

    /// Body budget came free: loops with waiting connections look again.
    pub fn budget(&self) -> &super::budget::Budget {
        &self.stats.budget
    }

    pub fn budget_freed(&self) {
        for m in &self.mailboxes {
            if m.budget_waiting.load(Ordering::Acquire) > 0 {
                m.doorbell.ring();
            }
        }
    }
}
