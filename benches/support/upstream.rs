//! The control plane the benchmarked daemon talks to, run in-process, behind the one
//! function `start_upstream`. It serves the same metadata and data entries as the
//! daemon's cache fixture, so a daemon that fetches state at start finds nothing to
//! change.
//!
//! **ADAPTER — to adjust when `src/devcp` lands on main.** The harness is meant to use
//! the crate's development control plane (SPEC §11). Its API was not on this branch
//! when the harness was written, so `start_upstream` currently runs a minimal stand-in
//! on `tinyserver` (state, a held-open event stream, report ingestion answered 200,
//! secrets 404). Swapping in devcp is a change of this one function body:
//!
//! ```text
//! let cp = plexd_nodeapi::devcp::DevControlPlane::start(plexd_nodeapi::devcp::DevConfig {
//!     listen: "127.0.0.1:0".parse().expect("literal address"),
//!     node_id: NODE_ID.to_string(),
//!     nsk: plexd_nodeapi::cp::nsk::Nsk::parse(NSK_HEX.as_bytes()).map_err(|e| BenchError::Upstream(e.to_string()))?,
//!     token: NSK_HEX.to_string(),
//!     demo: false,
//! }).map_err(|e| BenchError::Upstream(e.to_string()))?;
//! for (k, v) in &content.metadata { cp.set_metadata(k, v); }
//! for n in 0..content.data_entries { let (k, ct, p) = bench_data_entry(n); cp.set_data(&k, &ct, &p); }
//! Ok(Upstream { url: cp.url(), stop: Some(Box::new(move || cp.stop())) })
//! ```
//!
//! It deliberately does not verify the daemon's requests (that is the integration
//! tests' job) nor sign events.

use std::sync::Arc;

use super::daemon::{bench_data_entry, NODE_ID, UPDATED_AT};
use super::tinyserver::{Reply, Req, TinyServer};
use super::BenchError;

/// What the control plane holds for the node.
pub struct UpstreamContent {
    pub metadata: Vec<(String, String)>,
    /// Entries `key-0 … key-{n-1}` as in `daemon::bench_data_entry`.
    pub data_entries: usize,
}

/// A running control plane; stopped on `stop()` or drop.
pub struct Upstream {
    pub url: String,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Upstream {
    pub fn stop(mut self) {
        if let Some(f) = self.stop.take() {
            f();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(f) = self.stop.take() {
            f();
        }
    }
}

/// ADAPTER: starts the control plane (see the module doc for the devcp version).
pub fn start_upstream(content: &UpstreamContent) -> Result<Upstream, BenchError> {
    let state = Arc::new(render_state(content));
    let prefix = format!("/v1/nodes/{NODE_ID}/");
    let handler = move |req: &Req| -> Reply {
        let Some(rest) = req.path.strip_prefix(prefix.as_str()) else {
            return Reply::json(404, "{\"error\":\"not found\"}");
        };
        match (req.method.as_str(), rest) {
            ("GET", "state") => Reply::json(200, state.as_bytes().to_vec()),
            ("GET", "events") => Reply::Hold,
            ("POST", "report") => Reply::json(200, "{}"),
            _ => Reply::json(404, "{\"error\":\"not found\"}"),
        }
    };
    let server = TinyServer::tcp(Arc::new(handler))
        .map_err(|e| BenchError::Upstream(format!("starting the stand-in: {e}")))?;
    let url = server
        .url()
        .ok_or_else(|| BenchError::Upstream("stand-in has no TCP address".into()))?;
    Ok(Upstream {
        url,
        stop: Some(Box::new(move || server.stop())),
    })
}

/// The `GET /v1/nodes/{id}/state` body of the stand-in.
pub fn render_state(content: &UpstreamContent) -> String {
    let metadata: serde_json::Map<String, serde_json::Value> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let data: Vec<serde_json::Value> = (0..content.data_entries)
        .map(|n| {
            let (key, ct, payload) = bench_data_entry(n);
            serde_json::json!({
                "key": key,
                "content_type": ct,
                "payload": serde_json::from_str::<serde_json::Value>(&payload)
                    .unwrap_or(serde_json::Value::Null),
                "version": 1,
                "updated_at": UPDATED_AT,
            })
        })
        .collect();
    serde_json::json!({ "metadata": metadata, "data": data, "secret_refs": [] }).to_string()
}
