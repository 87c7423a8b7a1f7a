//! The report syncer (reports are delivered upstream at least once): one thread that sends the store's pending report
//! changes to the control plane, debounced, batched, retried with backoff.
//!
//! Writers call `SyncerHandle::notify()` (a non-blocking `try_send` on a one-slot
//! channel) after each durable change. The thread waits for a notification, collects
//! further ones until the debounce period after the first has passed, then drains the
//! store's outbox batch by batch (`pending_batch` → `sync_reports` → `mark_synced`).
//! Network errors, 5xx, 401 and 403 keep everything pending and back off; 429 honours
//! `Retry-After`; a 400/413/422 on a batch of several keys is bisected by asking the
//! store for smaller batches until the rejected key is alone, and that key alone is
//! dropped (error log, health counter). Shutdown makes one last flush attempt within
//! its timeout. Without a client (offline mode) everything stays pending. The syncer
//! never changes report contents and never holds a store lock across a request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::background::Background;
use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};

use super::backoff::Backoff;
use super::client::{CpClient, CpError};
use crate::store::Store;
use crate::telemetry::health::LinkHealth;

/// Most keys per report POST.
pub const MAX_BATCH_KEYS: usize = 1000;
/// About the most bytes per report POST (before compression).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Longest `Retry-After` honoured; longer requests are capped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Tunables of the syncer; `SyncerOptions::new(debounce)` has the product defaults.
#[derive(Debug, Clone)]
pub struct SyncerOptions {
    pub debounce: Duration,
    pub backoff: Backoff,
    pub max_keys: usize,
    pub max_bytes: usize,
}

impl SyncerOptions {
    pub fn new(debounce: Duration) -> SyncerOptions {
        SyncerOptions {
            debounce,
            backoff: Backoff::new(),
            max_keys: MAX_BATCH_KEYS,
            max_bytes: MAX_BATCH_BYTES,
        }
    }
}

/// Starts the syncer thread.
pub struct Syncer;

/// Control of a running syncer.
pub struct SyncerHandle {
    notify: Sender<()>,
    stop: Sender<Instant>,
    thread: Background,
}

impl Syncer {
    /// Spawns the syncer with the default backoff (1 s doubling to 60 s) and batch caps.
    pub fn spawn(
        store: Arc<Store>,
        client: Option<Arc<CpClient>>,
        debounce: Duration,
        health: Arc<LinkHealth>,
    ) -> SyncerHandle {
        Syncer::spawn_with(store, client, SyncerOptions::new(debounce), health)
    }

    pub fn spawn_with(
        store: Arc<Store>,
        client: Option<Arc<CpClient>>,
        options: SyncerOptions,
        health: Arc<LinkHealth>,
    ) -> SyncerHandle {
        let (notify_tx, notify_rx) = bounded(1);
        let (stop_tx, stop_rx) = bounded(1);
        let mut worker = Worker {
            store,
            client,
            health,
            limit: options.max_keys.max(1),
            options,
            notify: notify_rx,
            stop: stop_rx,
        };
        let thread = Background::spawn("report-syncer", "syncer", move || worker.run());
        SyncerHandle {
            notify: notify_tx,
            stop: stop_tx,
            thread,
        }
    }
}

impl SyncerHandle {
    /// Tells the syncer that something changed. Never blocks; repeated calls before the
    /// syncer looks are merged into one.
    pub fn notify(&self) {
        match self.notify.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// A cheap, clonable notifier for store subscribers.
    pub fn notifier(&self) -> impl Fn() + Send + Sync + 'static {
        let tx = self.notify.clone();
        move || {
            let _ = tx.try_send(());
        }
    }

    /// Stops the syncer after one final flush attempt bounded by `timeout`. If a
    /// request is still in flight when the timeout passes, the thread is left to
    /// finish on its own and this returns anyway.
    pub fn shutdown(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let _ = self.stop.try_send(deadline);
        if !self.thread.wait(timeout) {
            log::warn!("final report flush did not finish within the shutdown timeout");
        }
    }
}

/// How a flush ended.
enum Flush {
    /// Nothing pending any more.
    Done,
    /// Try again after this delay.
    Retry(Duration),
    /// The shutdown deadline passed.
    OutOfTime,
}

struct Worker {
    store: Arc<Store>,
    client: Option<Arc<CpClient>>,
    health: Arc<LinkHealth>,
    options: SyncerOptions,
    /// Current batch size limit; lowered while isolating a rejected key.
    limit: usize,
    notify: Receiver<()>,
    stop: Receiver<Instant>,
}

impl Worker {
    fn run(&mut self) {
        let Some(client) = self.client.clone() else {
            // Offline: keep everything pending until shutdown.
            let _ = self.stop.recv();
            return;
        };
        let mut notified = self.store.pending_count() > 0;
        loop {
            if !notified {
                select! {
                    recv(self.notify) -> msg => if msg.is_err() { return },
                    recv(self.stop) -> deadline => return self.final_flush(&client, deadline.ok()),
                }
            }
            // Debounce: collect changes until `debounce` after the first one.
            if let Some(deadline) = self.sleep(self.options.debounce) {
                return self.final_flush(&client, deadline);
            }
            // Drain the outbox, retrying until it is empty.
            loop {
                match self.flush(&client, None) {
                    Flush::Done | Flush::OutOfTime => {
                        self.options.backoff.reset();
                        // Changes made during the flush (or left by a byte-capped
                        // batch): debounce them, then send.
                        notified = self.store.pending_count() > 0;
                        break;
                    }
                    Flush::Retry(delay) => {
                        log::debug!(in_ms:% = delay.as_millis(); "retrying report sync");
                        // Changes during a backoff wait for it; the retry picks them up.
                        if let Some(deadline) = self.sleep(delay) {
                            return self.final_flush(&client, deadline);
                        }
                    }
                }
            }
        }
    }

    /// Waits `period`, absorbing change notifications (they are covered by the flush
    /// that follows). `Some(deadline)` if shutdown was asked for meanwhile.
    fn sleep(&self, period: Duration) -> Option<Option<Instant>> {
        let until = Instant::now() + period;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            select! {
                recv(self.notify) -> _ => {},
                recv(self.stop) -> deadline => return Some(deadline.ok()),
                default(left) => return None,
            }
        }
    }

    fn final_flush(&mut self, client: &CpClient, deadline: Option<Instant>) {
        let deadline = deadline.unwrap_or_else(Instant::now);
        let pending = self.store.pending_count();
        if pending == 0 {
            return;
        }
        log::info!(pending:% = pending; "final report flush");
        loop {
            match self.flush(client, Some(deadline)) {
                Flush::Done if self.store.pending_count() > 0 && Instant::now() < deadline => {}
                Flush::Done => return,
                Flush::Retry(_) | Flush::OutOfTime => {
                    log::warn!(pending:% = self.store.pending_count(); "reports still pending at shutdown; they are kept on disk and sent after restart");
                    return;
                }
            }
        }
    }

    /// Sends batches until one comes back below the key cap (everything pending when it
    /// was built went out), a failure asks for a retry, or `deadline` passes.
    fn flush(&mut self, client: &CpClient, deadline: Option<Instant>) -> Flush {
        let mut sent_entries = 0usize;
        let mut sent_deleted = 0usize;
        let mut batches = 0usize;
        let result = loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Flush::OutOfTime;
            }
            let Some(batch) = self.store.pending_batch(self.limit, self.options.max_bytes) else {
                break Flush::Done;
            };
            self.health.record_sync_attempt();
            match client.sync_reports(&batch.request) {
                Ok(()) => {
                    if let Err(e) = self.store.mark_synced(&batch) {
                        let msg = format!("recording synced reports failed: {e}");
                        log::error!("{msg}");
                        self.health.record_error(&msg);
                        break Flush::Retry(self.options.backoff.next_delay());
                    }
                    self.health.record_sync_ok(batch.len());
                    self.options.backoff.reset();
                    sent_entries += batch.request.entries.len();
                    sent_deleted += batch.request.deleted.len();
                    batches += 1;
                    // A batch below the key cap took everything pending when it was
                    // built: what is pending now arrived during the flush and gets its
                    // own debounce window (the run loop checks for it).
                    if batch.len() < self.limit {
                        break Flush::Done;
                    }
                }
                Err(CpError::Status { status, .. }) if matches!(status, 400 | 413 | 422) => {
                    if batch.len() > 1 {
                        self.limit = (batch.len() / 2).max(1);
                        log::warn!(status:% = status, keys:% = batch.len(), next_keys:% = self.limit; "control plane rejected a report batch; splitting it");
                        continue;
                    }
                    let key = batch.keys().next().unwrap_or_default().to_owned();
                    log::error!(key:? = key, status:% = status; "control plane rejected a report; dropping it");
                    if let Err(e) = self.store.drop_rejected(&batch) {
                        let msg = format!("dropping a rejected report failed: {e}");
                        log::error!("{msg}");
                        self.health.record_error(&msg);
                        break Flush::Retry(self.options.backoff.next_delay());
                    }
                    self.health.record_report_dropped();
                    self.health
                        .record_error(&format!("control plane rejected report {key:?} ({status})"));
                    self.limit = self.options.max_keys.max(1);
                }
                Err(e) => {
                    let msg = format!("report sync failed: {e}");
                    self.health.record_sync_failure(&msg, e.is_transport());
                    let delay = match &e {
                        CpError::Status {
                            status: 429,
                            retry_after: Some(after),
                        } => (*after).min(MAX_RETRY_AFTER),
                        _ => self.options.backoff.next_delay(),
                    };
                    log::warn!(error:% = e, retry_in_ms:% = delay.as_millis(), pending:% = self.store.pending_count(); "report sync failed; will retry");
                    break Flush::Retry(delay);
                }
            }
        };
        if batches > 0 {
            log::info!(entries:% = sent_entries, deleted:% = sent_deleted, requests:% = batches; "reports synced");
        }
        if matches!(result, Flush::Done) {
            self.limit = self.options.max_keys.max(1);
        }
        result
    }
}
