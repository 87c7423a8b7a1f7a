//! The state side of the control-plane link and the reconciler: fetch the node's full
//! state in the background and apply it to the store, retrying with backoff until it
//! works, then again every reconcile interval and on demand (`reconcile_now`, after
//! each event stream (re)connect and each verified key rotation).
//!
//! Invariant: the cache converges to the control plane's state. The full state
//! response is authoritative: a `null` or absent `metadata`, `data` or `secret_refs`
//! means empty, and `Store::apply_control_plane` diffs against the cache itself, so
//! any divergence — an event that never arrived, a diverging event, a file edited on
//! disk while stopped — is rewritten at the next reconciliation, and only the entries
//! that differ are. A state fetched while an event was applied is fetched again
//! rather than applied, so a reconcile does not step the cache back behind an event.
//!
//! The daemon serves its disk cache meanwhile; nothing waits for the first fetch.
//! The signing keys from the latest state response are kept (`Link::signing_keys`)
//! and, when a shared `Verifier` is given, installed in it at once, replacing the
//! signing key file's key (an absent `signing_keys` keeps the keys in force).
//! Health (connected, last reconcile, last error) is recorded in `LinkHealth`,
//! reconciliations and corrections in `StreamMetrics`. The event stream is not here. Shutdown never waits for a blocked
//! HTTP call longer than its timeout: the thread is then left to end on its own.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::background::Background;
use crossbeam_channel::{bounded, select, Receiver, Sender};

use super::backoff::Backoff;
use super::client::{CpClient, CpError};
use super::syncer::MAX_RETRY_AFTER;
use crate::events::{KeySet, Verifier};
use crate::model::SigningKeys;
use crate::store::{ApplyOutcome, CpUpdate, Store};
use crate::telemetry::health::LinkHealth;
use crate::telemetry::stream::StreamMetrics;

/// State fetches per reconciliation when events keep landing during the fetch.
const MAX_FETCHES: usize = 3;

/// Tunables of the link.
#[derive(Clone, Default)]
pub struct LinkOptions {
    pub backoff: Backoff,
    /// Fetch the full state again this often after the first success; `None`: only
    /// on `reconcile_now`.
    pub reconcile_interval: Option<Duration>,
    /// Receives the state response's signing keys on every successful fetch.
    pub verifier: Option<Arc<Verifier>>,
    /// Counts reconciliations and corrections.
    pub metrics: Option<Arc<StreamMetrics>>,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("backoff", &self.backoff)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("verifier", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

/// A running state link.
pub struct Link {
    signing_keys: Arc<Mutex<Option<SigningKeys>>>,
    stop: Sender<()>,
    trigger: Sender<()>,
    thread: Background,
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
        let mut worker = Worker {
            store,
            client,
            health,
            options,
            signing_keys: Arc::clone(&signing_keys),
            stop: stop_rx,
            trigger: trigger_rx,
        };
        let thread = Background::spawn("cp-link", "link", move || worker.run());
        Link {
            signing_keys,
            stop: stop_tx,
            trigger: trigger_tx,
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

    /// A cheap, clonable `reconcile_now` for other threads (the event stream).
    pub fn reconcile_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let trigger = self.trigger.clone();
        move || {
            let _ = trigger.try_send(());
        }
    }

    /// Stops the loop; waits at most `timeout` for an in-flight fetch.
    pub fn shutdown(self, timeout: Duration) {
        let _ = self.stop.try_send(());
        if !self.thread.wait(timeout) {
            log::warn!("state fetch still in flight at shutdown; not waiting");
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
        // A state fetched before an event was applied may predate that event; applying
        // it would step the cache back. The store applies it only if no other update
        // landed since the fetch began (checked under its apply lock); otherwise fetch
        // again, a few times at most — events that keep arriving carry the state anyway.
        for _ in 0..MAX_FETCHES {
            let seen = self.store.control_plane_applies();
            let state = match self.client.fetch_state() {
                Ok(s) => s,
                Err(e) => return Err(self.fetch_failed(&e)),
            };
            let keys = state.signing_keys.clone();
            if let Some(keys) = &keys {
                self.install_keys(keys);
            }
            // The full state is authoritative: a collection it leaves out is empty.
            let update = CpUpdate {
                metadata: Some(state.metadata.unwrap_or_default()),
                data: Some(state.data.unwrap_or_default()),
                secret_refs: Some(state.secret_refs.unwrap_or_default()),
            };
            match self.store.apply_control_plane_since(update, seen) {
                Ok(Some(outcome)) => {
                    if keys.is_some() {
                        *self
                            .signing_keys
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = keys;
                    }
                    self.record_applied(&outcome);
                    return Ok(());
                }
                Ok(None) => {
                    log::debug!("an event was applied during the state fetch; fetching again")
                }
                Err(e) => {
                    let msg = format!("applying node state failed: {e}");
                    log::error!("{msg}");
                    self.health.record_reconcile_failure(&msg, false);
                    return Err(self.retry_delay());
                }
            }
        }
        log::debug!("events kept arriving during state fetches; reconciling at the next interval");
        Ok(())
    }

    fn record_applied(&self, outcome: &ApplyOutcome) {
        self.health.record_reconcile_ok();
        if let Some(m) = &self.options.metrics {
            m.record_reconciliation(outcome.changed());
        }
        for key in &outcome.skipped_keys {
            log::warn!(key:? = key; "data entry with an unusable key skipped");
        }
        if outcome.changed() {
            log::info!(metadata_changed:% = outcome.metadata_changed, data_written:% = outcome.data_written, data_removed:% = outcome.data_removed, secrets_changed:% = outcome.secrets_changed; "reconciliation corrected the cache");
        } else {
            log::debug!("reconciliation: cache matches the control plane");
        }
    }

    /// The backoff's next delay, but never longer than the reconcile interval: once
    /// the control plane answers usably again, the node recovers within one interval.
    fn retry_delay(&mut self) -> Duration {
        let delay = self.options.backoff.next_delay();
        match self.options.reconcile_interval {
            Some(interval) => delay.min(interval),
            None => delay,
        }
    }

    /// Records a failed fetch; the delay before the next attempt.
    fn fetch_failed(&mut self, e: &CpError) -> Duration {
        let msg = format!("state fetch failed: {e}");
        let unreachable = e.is_transport() || e.status().is_some_and(|s| s >= 500);
        self.health.record_reconcile_failure(&msg, unreachable);
        let delay = match e {
            CpError::Status {
                status: 429,
                retry_after: Some(after),
            } => (*after).min(MAX_RETRY_AFTER),
            _ => self.retry_delay(),
        };
        log::warn!(error:% = e, retry_in_ms:% = delay.as_millis(); "fetching node state failed; serving the cache and retrying");
        delay
    }

    /// Puts the state response's keys into the shared verifier (if any), replacing
    /// the key file's. Unusable keys are logged and the keys in force kept.
    fn install_keys(&self, keys: &SigningKeys) {
        let Some(verifier) = &self.options.verifier else {
            return;
        };
        match KeySet::from_signing_keys(keys) {
            Ok(set) => {
                if verifier.keys().as_ref() != Some(&set) {
                    log::info!(current = set.current().to_base64(), previous = set.previous().map(|(k, _)| k.to_base64()).unwrap_or_default(); "event signing keys updated from the control plane");
                    verifier.set_keys(set);
                }
            }
            Err(e) => {
                log::warn!(error:% = e; "control plane sent unusable signing keys; keeping the keys in force");
            }
        }
    }
}
