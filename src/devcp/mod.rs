//! The development control plane: one node's control-plane API on a
//! loopback TCP port, for the `dev` command, integration tests and benchmarks.
//!
//! `DevControlPlane::start` serves `devcp::routes::DevHandler` through the crate's
//! HTTP core. State lives in memory (`DevState`): metadata, data, secrets (encrypted
//! with the node's NSK on every read), signing keys and the reports received; tests
//! change it through Rust methods, people through the `/admin/` HTTP API. It is not a
//! model of a production control plane (no persistence, one node, no TLS) and the
//! daemon's own code never depends on it. The signed event stream (SSE) is
//! `devcp::events`, fed through the `DevState::subscribe` hook.

pub mod events;
pub mod routes;
pub mod state;

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::events::{SignError, Signer};
use crate::http::{Limits, Listener, Server, ServerConfig, ServerHandle};
use crate::model::{Metadata, NodeState, ReportEntry, ReportSyncRequest, SigningKeys};
use crate::secrets::nsk::Nsk;

pub use events::{DevChange, EventHub};
pub use routes::DevHandler;
pub use state::{DevState, FailRoute, PayloadError, Subscriber};

/// How to start a development control plane.
#[derive(Clone)]
pub struct DevConfig {
    /// Loopback address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    pub node_id: String,
    /// Secrets are encrypted with this key.
    pub nsk: Nsk,
    /// The bearer token clients must send.
    pub token: String,
    /// Preload demo metadata, data and secrets.
    pub demo: bool,
    /// Ed25519 seed of the event signing key; `None`: a fresh key for this run.
    pub signing_seed: Option<Zeroizing<[u8; 32]>>,
}

impl DevConfig {
    /// Loopback port 0, no demo state, a fresh signing key.
    pub fn new(node_id: &str, nsk: Nsk, token: &str) -> DevConfig {
        DevConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            node_id: node_id.to_owned(),
            nsk,
            token: token.to_owned(),
            demo: false,
            signing_seed: None,
        }
    }
}

impl std::fmt::Debug for DevConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevConfig")
            .field("listen", &self.listen)
            .field("node_id", &self.node_id)
            .field("nsk", &self.nsk)
            .field("token", &"<redacted>")
            .field("demo", &self.demo)
            .finish()
    }
}

/// A running development control plane. Dropping it stops the server as `stop` does.
pub struct DevControlPlane {
    state: Arc<DevState>,
    server: ServerHandle,
    addr: SocketAddr,
}

impl DevControlPlane {
    /// Binds `cfg.listen` (must be a loopback address) and starts serving.
    pub fn start(cfg: DevConfig) -> io::Result<DevControlPlane> {
        if !cfg.listen.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the development control plane listens on loopback addresses only",
            ));
        }
        let signer = match &cfg.signing_seed {
            Some(seed) => Signer::from_seed(seed),
            None => Signer::generate().map(|(signer, _)| signer),
        }
        .map_err(|e| io::Error::other(format!("event signing key: {e}")))?;
        let state = Arc::new(DevState::new(
            cfg.node_id,
            cfg.nsk,
            Zeroizing::new(cfg.token),
            signer,
        ));
        if cfg.demo {
            state.load_demo();
        }
        DevControlPlane::serve(state, cfg.listen)
    }

    /// Serves existing state on `listen` (e.g. again after `stop_keep_state`).
    pub fn serve(state: Arc<DevState>, listen: SocketAddr) -> io::Result<DevControlPlane> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let config = ServerConfig {
            workers: 4,
            max_connections: 1024,
            max_parked: 64,
            // Report batches may approach 1 MiB before compression; a single oversized
            // entry must reach the report route (which answers 400), not the core's 413.
            limits: Limits {
                max_body_bytes: 16 * 1024 * 1024,
                ..Limits::default()
            },
            ..ServerConfig::default()
        };
        let waker = Arc::new(std::sync::OnceLock::new());
        let handler = Arc::new(DevHandler {
            state: Arc::clone(&state),
            waker: Arc::clone(&waker),
        });
        let server = Server::start(config, vec![Listener::Tcp(listener)], handler)?;
        let _ = waker.set(server.waker());
        Ok(DevControlPlane {
            state,
            server,
            addr,
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        match self.addr {
            SocketAddr::V4(a) => format!("http://{a}"),
            SocketAddr::V6(a) => format!("http://[{}]:{}", a.ip(), a.port()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (to subscribe to changes, or to serve it again later).
    pub fn shared(&self) -> Arc<DevState> {
        Arc::clone(&self.state)
    }

    /// Stops serving and closes the port.
    pub fn stop(self) {
        self.stop_keep_state();
    }

    /// Stops serving and returns the state, so `serve` can bring the same control
    /// plane back (tests of outages).
    pub fn stop_keep_state(self) -> Arc<DevState> {
        self.state.events.drop_streams();
        self.server.shutdown(Duration::from_secs(2));
        self.state
    }

    pub fn node_id(&self) -> &str {
        self.state.node_id()
    }

    pub fn state(&self) -> NodeState {
        self.state.state()
    }

    pub fn set_metadata(&self, key: &str, value: &str) {
        self.state.set_metadata(key, value)
    }

    pub fn remove_metadata(&self, key: &str) -> bool {
        self.state.remove_metadata(key)
    }

    pub fn replace_metadata(&self, metadata: Metadata) {
        self.state.replace_metadata(metadata)
    }

    /// Version auto-increments; `updated_at` is now. Returns the new version.
    pub fn set_data(
        &self,
        key: &str,
        content_type: &str,
        payload_json: &str,
    ) -> Result<i64, PayloadError> {
        self.state.set_data(key, content_type, payload_json)
    }

    /// Replaces every data entry in one change (one event).
    pub fn replace_data(&self, entries: Vec<crate::model::DataEntry>) {
        self.state.replace_data(entries)
    }

    pub fn remove_data(&self, key: &str) -> bool {
        self.state.remove_data(key)
    }

    /// Returns the new version.
    pub fn set_secret(&self, key: &str, plaintext: &str) -> i64 {
        self.state.set_secret(key, plaintext)
    }

    pub fn remove_secret(&self, key: &str) -> bool {
        self.state.remove_secret(key)
    }

    pub fn set_signing_keys(&self, keys: Option<SigningKeys>) {
        self.state.set_signing_keys(keys)
    }

    /// The public key that signs events now, standard base64 (the content of a
    /// node's `signing_public_key` file).
    pub fn signing_public_key(&self) -> String {
        self.state.events.public_key()
    }

    /// Signs future events with `signer` and advertises `{current: new, previous:
    /// old, transition_expires: now + transition}` in the state response; the
    /// `signing_key_rotated` event announcing it is signed with the old key.
    pub fn rotate_signing_key(&self, signer: Signer, transition: Duration) {
        let previous = self.state.events.public_key();
        let current = signer.public_key_b64();
        self.state.events.rotate(signer);
        self.state.set_signing_keys(Some(SigningKeys {
            current,
            previous,
            transition_expires: crate::timefmt::format_rfc3339_utc(
                std::time::SystemTime::now() + transition,
            ),
        }));
    }

    /// `: keep-alive` comment interval of event streams (default 15 s).
    pub fn set_keep_alive(&self, every: Duration) {
        self.state.events.set_keep_alive(every)
    }

    /// Closes every open event stream now (clients reconnect).
    pub fn drop_streams(&self) {
        self.state.events.drop_streams()
    }

    /// Keeps event streams open but silent (no events, no comments) while `true`.
    pub fn stall_streams(&self, stalled: bool) {
        self.state.events.stall_streams(stalled)
    }

    /// While `true`, the node's state endpoint sends every data payload re-formatted
    /// (pretty-printed, keys sorted, numbers re-spelled) — the same values as the
    /// events carry, in other bytes, as a control plane with two encoders would.
    pub fn reformat_state(&self, on: bool) {
        self.state
            .reformat_state
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// Accepts secret requests without answering them while `true` (a stalled control
    /// plane); they are answered normally once the stall ends.
    pub fn stall_secrets(&self, stalled: bool) {
        self.state
            .secrets_stalled
            .store(stalled, std::sync::atomic::Ordering::Release);
        self.server.waker().wake();
    }

    /// Sends `envelope_json` verbatim as an event of `event_type`. Returns its SSE id.
    pub fn publish_raw(&self, event_type: &str, envelope_json: &str) -> u64 {
        self.state.events.publish_raw(event_type, envelope_json)
    }

    /// Sends a validly signed event with a chosen `issued_at` and nonce (to test
    /// freshness and replay checks). Returns its event id.
    pub fn publish_signed_with(
        &self,
        event_type: &str,
        payload_json: &str,
        issued_at: &str,
        nonce: &str,
    ) -> Result<u64, SignError> {
        self.state.events.publish_signed(
            event_type,
            payload_json,
            Some(issued_at),
            Some(nonce),
            false,
        )
    }

    /// Sends a validly signed event, issued now with a fresh nonce.
    pub fn publish_signed(&self, event_type: &str, payload_json: &str) -> Result<u64, SignError> {
        self.state
            .events
            .publish_signed(event_type, payload_json, None, None, false)
    }

    /// `Last-Event-ID` headers seen on event stream requests, oldest first.
    pub fn last_event_ids(&self) -> Vec<String> {
        self.state.events.resume_ids()
    }

    /// Event stream requests accepted so far.
    pub fn stream_connects(&self) -> usize {
        self.state.events.connects()
    }

    /// Event streams open now.
    pub fn open_streams(&self) -> usize {
        self.state.events.open_streams()
    }

    pub fn reports(&self) -> BTreeMap<String, ReportEntry> {
        self.state.reports()
    }

    pub fn report_posts(&self) -> Vec<ReportSyncRequest> {
        self.state.report_posts()
    }

    /// Accepted report POSTs that arrived gzip-compressed.
    pub fn gzipped_report_posts(&self) -> usize {
        self.state.gzipped_report_posts()
    }

    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.state.request_count(path_prefix)
    }

    pub fn fail_next(&self, count: usize, status: u16, retry_after: Option<u64>, route: FailRoute) {
        self.state.fail_next(count, status, retry_after, route)
    }

    /// The next `count` requests to `route` get `status` with `body` verbatim (garbage,
    /// a wrong shape, an oversized answer).
    pub fn answer_next(&self, count: usize, status: u16, route: FailRoute, body: Vec<u8>) {
        self.state.answer_next(count, status, route, body)
    }

    pub fn reject_report_keys(&self, keys: &[&str]) {
        self.state.reject_report_keys(keys)
    }
}
