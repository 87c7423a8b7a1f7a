//! The control-plane event stream client (`GET /v1/nodes/{id}/events`): one thread that keeps
//! `GET {cp}/v1/nodes/{id}/events` open, verifies each envelope and applies it.
//!
//! Loop: connect (with `Last-Event-ID` once an event ID was seen) → ask the link for
//! one reconciliation (events may have been missed while disconnected) → read SSE
//! frames through `events::SseParser` → verify with the shared `events::Verifier` →
//! apply with `cp::event_apply`. A stream that ends, errors, or stays silent longer
//! than the idle timeout (90 s; no byte at all, keep-alive comments included) is
//! reconnected after a backoff of 1 s doubling to 60 s ±25 %, reset after a healthy
//! stream (one that delivered a verified event or lived 30 s). `429` honours
//! `Retry-After`; `401`/`403`/`404` keep retrying at the longest interval (an agent
//! never gives up) and show in the link health as errors.
//!
//! Rejected or unusable events are logged with the reason and counted; the cache is
//! untouched and the stream kept. A verified `signing_key_rotated` asks the link for a
//! reconciliation, which fetches the new keys. Without any signing key every event is
//! rejected (`no_keys`) but the stream still connects: each (re)connect triggers a
//! reconciliation, so state keeps arriving by that path.
//!
//! Tuning/test knob: the environment variable `PLEXD_NODEAPI_SSE_IDLE_TIMEOUT` (Go
//! duration, e.g. `500ms`) replaces the 90 s idle timeout. It is not a CLI flag on
//! purpose: the command-line flags are the Go agent's, and this is not one of them.
//!
//! Shutdown does not wait for a blocked read: `EventStreamHandle::shutdown` signals the
//! thread, waits briefly, and otherwise leaves it behind (the process is exiting).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::background::Background;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use super::backoff::Backoff;
use super::client::{CpClient, CpError};
use super::event_apply::{apply_event, Applied, SIGNING_KEY_ROTATED};
use super::syncer::MAX_RETRY_AFTER;
use crate::events::{SseItem, SseParser, Verifier};
use crate::store::Store;
use crate::telemetry::health::LinkHealth;
use crate::telemetry::stream::StreamMetrics;

/// Default idle timeout: no byte for this long → reconnect.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A stream that lived this long counts as healthy (the backoff resets).
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// The environment variable that overrides the idle timeout.
pub const IDLE_TIMEOUT_ENV: &str = "PLEXD_NODEAPI_SSE_IDLE_TIMEOUT";
/// Longest wait for the thread at shutdown before leaving it behind.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// Tunables of the stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub idle_timeout: Duration,
    pub backoff: Backoff,
    pub healthy_after: Duration,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            backoff: Backoff::new(),
            healthy_after: HEALTHY_AFTER,
        }
    }
}

impl StreamOptions {
    /// The defaults, with the idle timeout from `PLEXD_NODEAPI_SSE_IDLE_TIMEOUT` if set
    /// and valid (an invalid value is logged and ignored).
    pub fn from_env() -> StreamOptions {
        let mut options = StreamOptions::default();
        if let Ok(text) = std::env::var(IDLE_TIMEOUT_ENV) {
            match crate::duration::parse(&text) {
                Ok(d) if !d.is_zero() => options.idle_timeout = d,
                Ok(_) => log::warn!(variable = IDLE_TIMEOUT_ENV; "zero idle timeout ignored"),
                Err(e) => {
                    log::warn!(variable = IDLE_TIMEOUT_ENV, error:% = e; "invalid idle timeout ignored")
                }
            }
        }
        options
    }
}

/// What the stream needs from the rest of the daemon.
pub struct StreamDeps {
    pub store: Arc<Store>,
    pub client: Arc<CpClient>,
    pub verifier: Arc<Verifier>,
    pub health: Arc<LinkHealth>,
    pub metrics: Arc<StreamMetrics>,
    /// Asks the link for a full-state reconciliation (non-blocking).
    pub reconcile_now: Box<dyn Fn() + Send>,
}

/// A running event stream thread.
pub struct EventStreamHandle {
    stop: Arc<AtomicBool>,
    wake: Sender<()>,
    thread: Background,
}

/// Starts the stream thread.
pub fn start(deps: StreamDeps, options: StreamOptions) -> EventStreamHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let (wake_tx, wake_rx) = bounded(1);
    let mut worker = Worker {
        source: deps.client.event_source(options.idle_timeout),
        deps,
        options,
        stop: Arc::clone(&stop),
        wake: wake_rx,
        parser: SseParser::default(),
    };
    let thread = Background::spawn("cp-events", "event stream", move || worker.run());
    EventStreamHandle {
        stop,
        wake: wake_tx,
        thread,
    }
}

impl EventStreamHandle {
    /// Signals the thread to stop; waits at most `timeout` (and never more than a
    /// short grace) for it. A thread blocked reading the stream is left behind.
    pub fn shutdown(self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        if !self.thread.wait(timeout.min(SHUTDOWN_GRACE)) {
            log::debug!("event stream read still blocked at shutdown; not waiting");
        }
    }
}

/// How one connection ended.
enum End {
    /// Reconnect after this delay.
    Retry(Duration),
    Stop,
}

struct Worker {
    deps: StreamDeps,
    options: StreamOptions,
    source: super::client::EventSource,
    stop: Arc<AtomicBool>,
    wake: Receiver<()>,
    parser: SseParser,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        loop {
            if self.stopping() {
                return;
            }
            let delay = match self.connection() {
                End::Stop => return,
                End::Retry(delay) => delay,
            };
            log::debug!(retry_in_ms:% = delay.as_millis(); "event stream reconnecting");
            match self.wake.recv_timeout(delay) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// One connection: open, read until it ends; the delay before the next one.
    fn connection(&mut self) -> End {
        let last_id = self.parser.last_event_id().to_owned();
        let mut body = match self.source.connect(Some(&last_id)) {
            Ok(body) => body,
            Err(e) => return End::Retry(self.connect_failed(&e)),
        };
        if self.stopping() {
            return End::Stop;
        }
        self.parser.reconnect();
        self.deps.metrics.record_connected();
        self.deps.health.set_connected(true);
        log::info!(last_event_id = last_id.as_str(); "event stream connected");
        // Events may have been missed while disconnected.
        (self.deps.reconcile_now)();

        let opened = Instant::now();
        let mut healthy = false;
        let mut buf = vec![0u8; 16 * 1024];
        let mut items = Vec::new();
        let reason = loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break "closed by the control plane".to_owned(),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    break format!(
                        "idle for {} ms (no bytes, not even keep-alives)",
                        self.options.idle_timeout.as_millis()
                    )
                }
                Err(e) => break format!("read failed: {e}"),
            };
            if self.stopping() {
                self.deps.metrics.record_disconnected();
                return End::Stop;
            }
            items.clear();
            let fed = self.parser.feed(&buf[..n], &mut items);
            for item in items.drain(..) {
                if let SseItem::Event {
                    event_type, data, ..
                } = item
                {
                    healthy |= self.handle_event(&event_type, &data);
                }
            }
            if let Err(e) = fed {
                break format!("{e}");
            }
        };
        self.deps.metrics.record_disconnected();
        if self.stopping() {
            return End::Stop;
        }
        log::warn!(reason = reason.as_str(), lived_ms:% = opened.elapsed().as_millis(); "event stream ended; reconnecting");
        if healthy || opened.elapsed() >= self.options.healthy_after {
            self.options.backoff.reset();
        }
        End::Retry(self.options.backoff.next_delay())
    }

    /// Records a failed connect and picks the delay before the next attempt.
    fn connect_failed(&mut self, e: &CpError) -> Duration {
        let delay = match e {
            CpError::Status {
                status: 429,
                retry_after: Some(after),
            } => (*after).min(MAX_RETRY_AFTER),
            CpError::Status {
                status: 401 | 403 | 404,
                ..
            } => {
                // Misconfigured or not (yet) registered: keep trying, slowly.
                self.deps.health.set_connected(false);
                self.options.backoff.ceiling_delay()
            }
            _ => {
                if e.is_transport() || e.status().is_some_and(|s| s >= 500) {
                    self.deps.health.set_connected(false);
                }
                self.options.backoff.next_delay()
            }
        };
        log::warn!(error:% = e, retry_in_ms:% = delay.as_millis(); "cannot open the event stream");
        // Recorded after the line is written: whoever sees the error can read the line.
        self.deps.health.record_error(&format!("event stream: {e}"));
        delay
    }

    /// Verifies and applies one event; true if it verified.
    fn handle_event(&self, sse_type: &str, data: &str) -> bool {
        let event = match self.deps.verifier.verify(data) {
            Ok(ev) => ev,
            Err(reason) => {
                // Logged before counted: whoever sees the count can read the line.
                log::warn!(sse_event = sse_type, reason = reason.as_label(), error:% = reason; "event rejected; cache untouched");
                self.deps.metrics.record_rejected(reason.as_label());
                return false;
            }
        };
        match apply_event(&self.deps.store, &event) {
            Ok(Applied::Updated(outcome)) => {
                self.deps.metrics.record_accepted();
                self.deps.health.record_event();
                log::info!(event_type = event.event_type.as_str(), event_id = event.event_id.as_str(), metadata_changed:% = outcome.metadata_changed, data_written:% = outcome.data_written, data_removed:% = outcome.data_removed, secrets_changed:% = outcome.secrets_changed; "event applied");
            }
            Ok(Applied::NotApplied) => {
                self.deps.metrics.record_ignored(&event.event_type);
                self.deps.health.record_event();
                if event.event_type == SIGNING_KEY_ROTATED {
                    log::info!(event_id = event.event_id.as_str(); "signing keys rotated; fetching the new keys");
                    (self.deps.reconcile_now)();
                } else {
                    log::debug!(event_type = event.event_type.as_str(), event_id = event.event_id.as_str(); "event type not used; ignored");
                }
            }
            Err(e) => {
                log::warn!(event_type = event.event_type.as_str(), event_id = event.event_id.as_str(), reason = e.as_label(), error:% = e; "event not applied; cache untouched");
                self.deps.metrics.record_rejected(e.as_label());
            }
        }
        true
    }
}
