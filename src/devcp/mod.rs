//! The development control plane (SPEC §11): one node's control-plane API on a
//! loopback TCP port, for the `dev` command, integration tests and benchmarks.
//!
//! `DevControlPlane::start` serves `devcp::routes::DevHandler` through the crate's
//! HTTP core. State lives in memory (`DevState`): metadata, data, secrets (encrypted
//! with the node's NSK on every read), signing keys and the reports received; tests
//! change it through Rust methods, people through the `/admin/` HTTP API. It is not a
//! model of a production control plane (no persistence, one node, no TLS) and the
//! daemon's own code never depends on it. The event stream (SSE) is added separately;
//! `DevState::subscribe` is its hook.

pub mod routes;
pub mod state;

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::cp::nsk::Nsk;
use crate::http::{Limits, Listener, Server, ServerConfig, ServerHandle};
use crate::model::{Metadata, NodeState, ReportEntry, ReportSyncRequest, SigningKeys};

pub use routes::DevHandler;
pub use state::{DevChange, DevState, FailRoute, PayloadError, Subscriber};

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
        let state = Arc::new(DevState::new(
            cfg.node_id,
            cfg.nsk,
            Zeroizing::new(cfg.token),
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
        };
        let handler = Arc::new(DevHandler {
            state: Arc::clone(&state),
        });
        let server = Server::start(config, vec![Listener::Tcp(listener)], handler)?;
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

    pub fn reject_report_keys(&self, keys: &[&str]) {
        self.state.reject_report_keys(keys)
    }
}
