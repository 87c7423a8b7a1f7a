//! Checkpointing: writes the report files the journal's records changed, then empties
//! the journal, off the request path.
//!
//! A background thread wakes after a group commit, waits until the writes are quiet
//! (`QUIET`, at most `MAX_WAIT` under a steady stream) to collect more
//! changes, takes the set of changed keys and writes each key's *published* state the
//! durable way (temp files fsynced in parallel, renamed, one folder fsync; files a key
//! left are removed). The journal is emptied only when no key changed meanwhile (or,
//! past `FORCE_BYTES`, after writing those too while holding the journal), so every
//! record in it is always reflected in files before it goes. A failed checkpoint keeps
//! the journal and its keys and is retried. `Store::close` runs a final, forced one:
//! after a clean shutdown the journal is empty and `report/` is the Go agent's layout.
//! This module does not decide versions or publish anything: the committer did.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::disk::PROBE_EVERY;
use super::{lock, Inner, Json, StoreError};

/// Files are written once the writes have been quiet this long (a key changed many
/// times meanwhile is written once)…
const QUIET: Duration = Duration::from_millis(2000);
/// …or, under a steady stream of writes, this long after the first change: every
/// key's file costs a new inode and an fsync, so a busy writer gets its files every
/// half minute rather than every two seconds, while the journal keeps every change
/// durable in between.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The checkpointer (and the file writers it starts, which inherit it) yields the CPU
/// to request handling: it is never on a request's path.
const NICE: libc::c_int = 10;
/// A journal this large is checkpointed without waiting for `QUIET` or `MAX_WAIT`.
const EAGER_BYTES: u64 = 8 << 20;
/// A journal this large is emptied even while writers keep changing keys.
const FORCE_BYTES: u64 = 64 << 20;
/// Pause after a failed checkpoint.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Signal {
    pending: bool,
    stop: bool,
    /// When the latest change was committed.
    changed_at: Option<Instant>,
}

/// Wake-ups of the checkpointer thread, and the lock that serializes checkpoints.
#[derive(Default)]
pub struct Checkpoints {
    signal: Mutex<Signal>,
    wake: Condvar,
    serial: Mutex<()>,
}

impl Checkpoints {
    /// Asks for a checkpoint once the writes are quiet (see `QUIET`). Only the first
    /// change of a batch wakes the thread: it reads `changed_at` when it wakes anyway,
    /// so a steady stream of commits costs no wake-up each.
    pub(super) fn request(&self) {
        let mut s = lock(&self.signal);
        s.changed_at = Some(Instant::now());
        if !s.pending {
            s.pending = true;
            self.wake.notify_all();
        }
    }

    /// Wakes the thread without asking for a checkpoint (the disk turned read-only:
    /// it probes it in the background from now on).
    pub(super) fn nudge(&self) {
        self.wake.notify_all();
    }

    pub(super) fn stop(&self) {
        lock(&self.signal).stop = true;
        self.wake.notify_all();
    }
}

/// The checkpointer thread.
pub(super) fn run(inner: Arc<Inner>) {
    lower_priority(NICE);
    let cp = &inner.checkpoints;
    loop {
        {
            let mut s = lock(&cp.signal);
            while !s.pending && !s.stop {
                if inner.disk.writable() {
                    s = cp.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                // A disk that took no writes is probed now and then, so writing
                // resumes by itself once there is room again.
                drop(s);
                inner.probe_disk();
                s = lock(&cp.signal);
                if !inner.disk.writable() && !s.pending && !s.stop {
                    s = cp
                        .wake
                        .wait_timeout(s, PROBE_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            let first = Instant::now();
            while !s.stop && lock(&inner.writes.journal).journal.len() < EAGER_BYTES {
                let quiet_at = s.changed_at.unwrap_or(first) + QUIET;
                let until = quiet_at.min(first + MAX_WAIT);
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s = cp
                    .wake
                    .wait_timeout(s, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if s.stop {
                return;
            }
            s.pending = false;
        }
        if let Err(e) = checkpoint(&inner, false) {
            if matches!(e, StoreError::Unwritable { .. }) {
                log::debug!(error:% = e; "report checkpoint waits for the disk to take writes");
            } else {
                log::error!(error:% = e; "report checkpoint failed; the journal keeps the changes, retrying");
            }
            let s = lock(&cp.signal);
            let (mut s, _) = cp
                .wake
                .wait_timeout_while(s, RETRY, |s| !s.stop)
                .unwrap_or_else(PoisonError::into_inner);
            s.pending = true;
        }
    }
}

/// Sets this thread's nice value (threads it starts inherit it). Best effort.
pub(super) fn lower_priority(nice: libc::c_int) {
    // SAFETY: plain syscalls on this thread's own id; no memory is passed.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if failed {
        log::debug!(error:% = std::io::Error::last_os_error(); "cannot lower a store thread's priority");
    }
}

type Dirty = BTreeMap<String, BTreeSet<String>>;

/// Writes every changed key's file; empties the journal when nothing changed meanwhile,
/// or always when `force`.
pub(super) fn checkpoint(inner: &Inner, force: bool) -> Result<(), StoreError> {
    let _serial = lock(&inner.checkpoints.serial);
    inner.ready_to_write()?;
    let dirty = std::mem::take(&mut lock(&inner.writes.journal).dirty);
    if let Err(e) = write_files(inner, &dirty) {
        merge_back(&mut lock(&inner.writes.journal).dirty, dirty);
        return Err(inner.write_failed("writing report files failed", e));
    }
    let mut js = lock(&inner.writes.journal);
    if !js.dirty.is_empty() {
        if !force && js.journal.len() < FORCE_BYTES {
            return Ok(()); // The next round covers them; the journal stays.
        }
        let rest = std::mem::take(&mut js.dirty);
        if let Err(e) = write_files(inner, &rest) {
            merge_back(&mut js.dirty, rest);
            return Err(inner.write_failed("writing report files failed", e));
        }
    }
    if js.journal.is_broken() {
        return Ok(());
    }
    js.journal
        .reset()
        .map_err(|e| inner.write_failed("emptying the report journal failed", e))
}

fn merge_back(into: &mut Dirty, from: Dirty) {
    for (k, files) in from {
        into.entry(k).or_default().extend(files);
    }
}

/// Writes the published state of each key in `dirty` and removes the files it left.
fn write_files(inner: &Inner, dirty: &Dirty) -> io::Result<()> {
    if dirty.is_empty() {
        return Ok(());
    }
    let mut writes: Vec<(String, Json)> = Vec::new();
    let mut removes: Vec<String> = Vec::new();
    {
        let c = inner.read();
        for (key, old_files) in dirty {
            match c.reports.get(key) {
                Some(item) => {
                    writes.push((item.file.clone(), item.body.clone()));
                    removes.extend(old_files.iter().filter(|f| **f != item.file).cloned());
                }
                None => removes.extend(old_files.iter().cloned()),
            }
        }
    }
    let files: Vec<(&str, &[u8])> = writes.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let removes: Vec<&str> = removes.iter().map(String::as_str).collect();
    inner.report.prepare(&files)?.commit(&removes)
}
