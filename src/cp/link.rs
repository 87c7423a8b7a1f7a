//! The state side of the control-plane link: fetch the node's full state in the
//! background and apply it to the store, retrying with backoff until it works, then
//! (optionally) again every reconcile interval or on demand.
//!
//! The daemon serves its disk cache meanwhile; nothing waits for the first fetch.
//! The signing keys from the latest state response are kept for event verification
//! (`Link::signing_keys`). Health (connected, last reconcile, last error) is recorded
//! in `LinkHealth`. The event stream is not here. Shutdown never waits for a blocked
//! HTTP call longer than its timeout: the thread is then left to end on its own.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};

use super::backoff::Backoff;
use super::client::{CpClient, CpError};
use super::health::LinkHealth;
use super::syncer::MAX_RETRY_AFTER;
use crate::model::SigningKeys;
use crate::store::{CpUpdate, Store};

/// Tunables of the link.
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    pub backoff: Backoff,
    /// Fetch the full state again this often after the first success; `None`: only
    /// on `reconcile_now`.
    pub reconcile_interval: Option<Duration>,
}

/// A running state link.
pub struct Link {
    signing_keys: Arc<Mutex<Option<SigningKeys>>>,
    stop: Sender<()>,
    trigger: Sender<()>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the background fetch loop.
    pub fn start(
        store: Arc<Store>,
        client: Arc<CpClient>,
        health: Arc<LinkHealth>,
        options: LinkOptions,
    ) -> Link {
        let signing_keys = Arc::new(Mutex::new(None));
        let (stop_tx, stop_rx) = bounded(1);
        let (trigger_tx, trigger_rx) = bounded(1);
        let (done_tx, done_rx) = bounded(1);
        let mut worker = Worker {
            store,
            client,
            health,
            options,
            signing_keys: Arc::clone(&signing_keys),
            stop: stop_rx,
            trigger: trigger_rx,
        };
        let thread = std::thread::Builder::new()
            .name("cp-link".into())
            .spawn(move || {
                worker.run();
                let _ = done_tx.send(());
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!(error:% = e; "cannot start the control-plane link");
                None
            }
        };
        Link {
            signing_keys,
            stop: stop_tx,
            trigger: trigger_tx,
            done: done_rx,
            thread,
        }
    }

    /// The signing keys from the latest successful state fetch, if it had any.
    pub fn signing_keys(&self) -> Option<SigningKeys> {
        self.signing_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks for a full-state fetch as soon as possible (e.g. after an event stream
    /// reconnect). Non-blocking; merged with one already requested.
    pub fn reconcile_now(&self) {
        let _ = self.trigger.try_send(());
    }

    /// Stops the loop; waits at most `timeout` for an in-flight fetch.
    pub fn shutdown(mut self, timeout: Duration) {
        let _ = self.stop.try_send(());
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                log::warn!("state fetch still in flight at shutdown; not waiting");
            }
        }
    }
}

struct Worker {
    store: Arc<Store>,
    client: Arc<CpClient>,
    health: Arc<LinkHealth>,
    options: LinkOptions,
    signing_keys: Arc<Mutex<Option<SigningKeys>>>,
    stop: Receiver<()>,
    trigger: Receiver<()>,
}

enum Wait {
    Go,
    Stop,
}

impl Worker {
    fn run(&mut self) {
        loop {
            // Fetch until one succeeds.
            loop {
                match self.reconcile() {
                    Ok(()) => {
                        self.options.backoff.reset();
                        break;
                    }
                    Err(delay) => {
                        if let Wait::Stop = self.wait(Some(delay)) {
                            return;
                        }
                    }
                }
            }
            if let Wait::Stop = self.wait(self.options.reconcile_interval) {
                return;
            }
        }
    }

    /// Waits for `delay` (forever if `None`), a trigger, or stop.
    fn wait(&self, delay: Option<Duration>) -> Wait {
        let until = delay.map(|d| Instant::now() + d);
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        match left {
            Some(left) => select! {
                recv(self.stop) -> _ => Wait::Stop,
                recv(self.trigger) -> _ => Wait::Go,
                default(left) => Wait::Go,
            },
            None => select! {
                recv(self.stop) -> _ => Wait::Stop,
                recv(self.trigger) -> msg => if msg.is_ok() { Wait::Go } else { Wait::Stop },
            },
        }
    }

    /// One fetch-and-apply; on failure, the delay before the next attempt.
    fn reconcile(&mut self) -> Result<(), Duration> {
        let state = match self.client.fetch_state() {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("state fetch failed: {e}");
                let unreachable = e.is_transport() || e.status().is_some_and(|s| s >= 500);
                self.health.record_reconcile_failure(&msg, unreachable);
                let delay = match &e {
                    CpError::Status {
                        status: 429,
                        retry_after: Some(after),
                    } => (*after).min(MAX_RETRY_AFTER),
                    _ => self.options.backoff.next_delay(),
                };
                log::warn!(error:% = e, retry_in_ms:% = delay.as_millis(); "fetching node state failed; serving the cache and retrying");
                return Err(delay);
            }
        };
        let keys = state.signing_keys.clone();
        let update = CpUpdate {
            metadata: state.metadata,
            data: state.data,
            secret_refs: state.secret_refs,
        };
        match self.store.apply_control_plane(update) {
            Ok(outcome) => {
                if keys.is_some() {
                    *self
                        .signing_keys
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = keys;
                }
                self.health.record_reconcile_ok();
                for key in &outcome.skipped_keys {
                    log::warn!(key:? = key; "data entry with an unusable key skipped");
                }
                log::info!(metadata_changed:% = outcome.metadata_changed, data_written:% = outcome.data_written, data_removed:% = outcome.data_removed, secrets_changed:% = outcome.secrets_changed; "node state applied");
                Ok(())
            }
            Err(e) => {
                let msg = format!("applying node state failed: {e}");
                log::error!("{msg}");
                self.health.record_reconcile_failure(&msg, false);
                Err(self.options.backoff.next_delay())
            }
        }
    }
}
