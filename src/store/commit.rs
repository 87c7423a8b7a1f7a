//! Group commit of report writes: the queue, the committer thread and the tickets that
//! tell a writer how its write ended.
//!
//! Writers decide their write under the queue lock (see `reports`): the version comes
//! from the per-key *pending latest* view (the state after every queued but uncommitted
//! write of that key, else the published cache), so `If-Match` is judged in commit order.
//! The decided write, with its journal record, joins the queue, and the writer gets a
//! `Ticket` at once. The committer thread takes everything queued as one group, appends
//! the records with one `write` and one `fdatasync` of the journal, then publishes the
//! group in order under one cache write lock, completes the tickets and notifies the
//! subscribers: acknowledged = durable = visible. A group whose append fails fails every
//! writer in it (and writes queued behind it on the same keys, which were decided on top
//! of it) and leaves memory as it was. Report files are written later by the checkpointer
//! (`checkpoint`). Lock order: journal state, then queue, then cache.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::model::ReportEntry;

use super::cache::ReportItem;
use super::journal::Journal;
use super::{lock, Change, ChangeKind, Inner, Json, StoreError, Versioned};

/// How a submitted write ended; poll it (`try_result`) or wait for it.
pub struct Ticket<T> {
    slot: Arc<Slot<T>>,
}

struct Slot<T> {
    result: Mutex<Option<Result<T, StoreError>>>,
    done: Condvar,
}

impl<T> Ticket<T> {
    pub(super) fn new() -> Ticket<T> {
        Ticket {
            slot: Arc::new(Slot {
                result: Mutex::new(None),
                done: Condvar::new(),
            }),
        }
    }

    /// A ticket that is already complete (a write refused before it was queued).
    pub(super) fn ready(result: Result<T, StoreError>) -> Ticket<T> {
        let t = Ticket::new();
        t.complete(result);
        t
    }

    fn handle(&self) -> Ticket<T> {
        Ticket {
            slot: Arc::clone(&self.slot),
        }
    }

    fn complete(&self, result: Result<T, StoreError>) {
        *lock(&self.slot.result) = Some(result);
        self.slot.done.notify_all();
    }

    /// The result once the write has ended (durable and visible, or failed); `None`
    /// while it is in progress. The result is handed out once.
    pub fn try_result(&self) -> Option<Result<T, StoreError>> {
        lock(&self.slot.result).take()
    }

    /// Waits up to `timeout` for the result.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, StoreError>> {
        let deadline = Instant::now() + timeout;
        let mut r = lock(&self.slot.result);
        loop {
            if let Some(result) = r.take() {
                return Some(result);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            r = self
                .slot
                .done
                .wait_timeout(r, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for the result.
    pub fn wait(&self) -> Result<T, StoreError> {
        let mut r = lock(&self.slot.result);
        loop {
            if let Some(result) = r.take() {
                return result;
            }
            r = self
                .slot
                .done
                .wait(r)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A decided write waiting for the committer.
pub(super) struct Op {
    pub key: String,
    pub kind: OpKind,
    pub at: SystemTime,
    pub record: super::journal::Frame,
    /// What the write changes in the report quota's use, counted while it is in flight.
    pub usage: UsageDelta,
}

/// A change in report keys and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct UsageDelta {
    pub keys: i64,
    pub bytes: i64,
}

impl std::ops::AddAssign for UsageDelta {
    fn add_assign(&mut self, o: UsageDelta) {
        self.keys += o.keys;
        self.bytes += o.bytes;
    }
}

impl std::ops::SubAssign for UsageDelta {
    fn sub_assign(&mut self, o: UsageDelta) {
        self.keys -= o.keys;
        self.bytes -= o.bytes;
    }
}

pub(super) enum OpKind {
    Put {
        entry: ReportEntry,
        body: Json,
        /// The file the entry goes to, and the one it was in before if that differs.
        file: String,
        old_file: Option<String>,
        ticket: Ticket<Versioned<Json>>,
    },
    Delete {
        file: String,
        ticket: Ticket<u64>,
    },
}

/// The state of one key after its queued writes: `Some((version, file, payload
/// bytes))` or deleted.
pub(super) type Latest = Option<(i64, String, u64)>;

#[derive(Default)]
pub(super) struct Queue {
    pub ops: Vec<Op>,
    /// Keys with writes in flight: their state after those writes, and how many.
    pub latest: HashMap<String, (Latest, usize)>,
    /// What writes in flight add to the published quota use.
    pub in_flight: UsageDelta,
    pub quota: Quota,
    pub closed: bool,
}

/// Limits on what local writers may store as reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_keys: usize,
    pub max_bytes: u64,
}

impl Default for Quota {
    fn default() -> Quota {
        Quota {
            max_keys: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

/// The journal and what the checkpointer still has to write to report files: per key,
/// the files it occupied before (to remove unless the key still lives there).
pub(super) struct JournalState {
    pub journal: Journal,
    pub dirty: BTreeMap<String, BTreeSet<String>>,
}

pub(super) fn mark_dirty(
    dirty: &mut BTreeMap<String, BTreeSet<String>>,
    key: &str,
    old: Option<&str>,
) {
    let files = dirty.entry(key.to_owned()).or_default();
    if let Some(f) = old {
        files.insert(f.to_owned());
    }
}

/// The write path's shared state.
pub struct Writes {
    pub(super) queue: Mutex<Queue>,
    queued: Condvar,
    pub(super) journal: Mutex<JournalState>,
    /// Journal appends (each one `fdatasync`), to observe group commit.
    pub(super) syncs: AtomicU64,
    /// Tests: extra time each group commit takes (a slow disk).
    #[cfg(test)]
    pub(super) delay: Mutex<Duration>,
}

impl Writes {
    pub(super) fn new(journal: JournalState) -> Writes {
        Writes {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            journal: Mutex::new(journal),
            syncs: AtomicU64::new(0),
            #[cfg(test)]
            delay: Mutex::new(Duration::ZERO),
        }
    }

    /// Queues a decided write (the caller holds the queue lock and updated `latest`).
    pub(super) fn push(&self, q: &mut Queue, op: Op) {
        q.in_flight += op.usage;
        q.ops.push(op);
        self.queued.notify_one();
    }

    /// Lets the committer finish what is queued and stop.
    pub(super) fn close(&self) {
        lock(&self.queue).closed = true;
        self.queued.notify_all();
    }
}

/// The committer yields the CPU to request handling a little: under a write storm on
/// a small machine, reads keep more of the cores and a write waits a moment longer
/// for its group commit.
const COMMIT_NICE: libc::c_int = 5;

/// The committer thread: commits queued groups until closed and drained.
pub(super) fn run(inner: Arc<Inner>) {
    super::checkpoint::lower_priority(COMMIT_NICE);
    loop {
        let group = {
            let mut q = lock(&inner.writes.queue);
            while q.ops.is_empty() && !q.closed {
                q = inner
                    .writes
                    .queued
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if q.ops.is_empty() {
                return;
            }
            std::mem::take(&mut q.ops)
        };
        commit(&inner, group);
    }
}

fn commit(inner: &Inner, group: Vec<Op>) {
    let frames: Vec<&super::journal::Frame> = group.iter().map(|op| &op.record).collect();
    let mut js = lock(&inner.writes.journal);
    inner.writes.syncs.fetch_add(1, Ordering::Relaxed);
    #[cfg(test)]
    std::thread::sleep(*lock(&inner.writes.delay));
    let appended = js.journal.append(&frames);
    drop(frames);
    if let Err(e) = appended {
        drop(js);
        fail(inner, group, &e);
        return;
    }
    // Durable from here on: publish. The epoch reservation only matters after 2^31
    // changes in one run; a failure is retried by the next group.
    let jump = inner.epoch_jump().unwrap_or_else(|e| {
        log::error!(error:% = e; "reserving the next revision epoch failed");
        None
    });
    let mut done: Vec<Box<dyn FnOnce()>> = Vec::with_capacity(group.len());
    let mut last_rev = 0;
    {
        let mut q = lock(&inner.writes.queue);
        let mut c = inner.write();
        for op in group {
            let stamp = c.next_stamp(op.at, jump);
            last_rev = stamp.rev;
            match op.kind {
                OpKind::Put {
                    entry,
                    body,
                    file,
                    old_file,
                    ticket,
                } => {
                    let old = old_file.filter(|o| *o != file);
                    mark_dirty(&mut js.dirty, &op.key, old.as_deref());
                    c.put_report(ReportItem {
                        entry,
                        body: body.clone(),
                        file,
                        stamp,
                    });
                    let v = Versioned::new(body, stamp);
                    done.push(Box::new(move || ticket.complete(Ok(v))));
                }
                OpKind::Delete { file, ticket } => {
                    mark_dirty(&mut js.dirty, &op.key, Some(&file));
                    c.remove_report(&op.key, stamp);
                    done.push(Box::new(move || ticket.complete(Ok(stamp.rev))));
                }
            }
            q.in_flight -= op.usage;
            settle(&mut q, &op.key);
        }
    }
    drop(js);
    for d in done {
        d();
    }
    inner.checkpoint_soon();
    inner.notify(&[Change {
        revision: last_rev,
        kind: ChangeKind::Reports,
    }]);
}

/// One write of `key` left the in-flight set.
fn settle(q: &mut Queue, key: &str) {
    if let Some((_, n)) = q.latest.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            q.latest.remove(key);
        }
    }
}

/// Fails `group` and the queued writes of the same keys; memory stays as it was.
fn fail(inner: &Inner, group: Vec<Op>, e: &io::Error) {
    log::error!(error:% = e, writes = group.len(); "report journal write failed");
    let keys: HashSet<String> = group.iter().map(|op| op.key.clone()).collect();
    let behind = {
        let mut q = lock(&inner.writes.queue);
        let (behind, keep): (Vec<Op>, Vec<Op>) =
            q.ops.drain(..).partition(|op| keys.contains(&op.key));
        q.ops = keep;
        for k in &keys {
            q.latest.remove(k);
        }
        for op in group.iter().chain(&behind) {
            q.in_flight -= op.usage;
        }
        behind
    };
    let disk = inner.disk.failed("appending to the report journal", e);
    if disk.is_some() {
        inner.checkpoints.nudge();
    }
    for op in group.into_iter().chain(behind) {
        let err = match &disk {
            Some(StoreError::Unwritable { full, reason }) => StoreError::Unwritable {
                full: *full,
                reason: reason.clone(),
            },
            _ => StoreError::Io {
                context: format!("persisting report {:?} failed", op.key),
                source: io::Error::new(e.kind(), e.to_string()),
            },
        };
        match op.kind {
            OpKind::Put { ticket, .. } => ticket.complete(Err(err)),
            OpKind::Delete { ticket, .. } => ticket.complete(Err(err)),
        }
    }
    // Parked requests learn about their failed tickets through the same wake-up.
    inner.notify(&[Change {
        revision: inner.revision(),
        kind: ChangeKind::Reports,
    }]);
}

/// A handle the queue keeps while the writer holds the ticket.
pub(super) fn pair<T>() -> (Ticket<T>, Ticket<T>) {
    let t = Ticket::new();
    let h = t.handle();
    (t, h)
}
