//! The control plane the benchmarked daemon talks to: the crate's development control
//! plane (`plexd_nodeapi::devcp`) run in-process on a loopback port, behind the
//! one function `start_upstream`. It is loaded with the scenario's metadata and data
//! entries; the daemon's cache fixture is then written from the very entries it serves
//! (`Upstream::data_entries`), so a daemon that fetches state at start finds its cache
//! already current.
//!
//! Secrets can be added and their requests stalled (accepted, not answered) to play a
//! slow control plane.
//!
//! It deliberately does not verify the daemon's requests (that is the integration
//! tests' job) or push events.

use std::net::{Ipv4Addr, SocketAddr};

use plexd_nodeapi::devcp::{DevConfig, DevControlPlane};
use plexd_nodeapi::model::DataEntry;
use plexd_nodeapi::secrets::nsk::Nsk;
use serde_json::value::RawValue;

use super::daemon::{bench_data_entry, NODE_ID, NSK_HEX};
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
    cp: Option<DevControlPlane>,
}

impl Upstream {
    /// The data entries exactly as the control plane serves them.
    pub fn data_entries(&self) -> Vec<DataEntry> {
        self.cp
            .as_ref()
            .and_then(|cp| cp.state().data)
            .unwrap_or_default()
    }

    /// The base64 Ed25519 public key its events are signed with (the content of a
    /// daemon's `--signing-key-file`).
    pub fn signing_key(&self) -> String {
        self.cp
            .as_ref()
            .map(DevControlPlane::signing_public_key)
            .unwrap_or_default()
    }

    /// Adds (or replaces) a secret the node may fetch.
    pub fn set_secret(&self, key: &str, plaintext: &str) {
        if let Some(cp) = &self.cp {
            cp.set_secret(key, plaintext);
        }
    }

    /// While `true`, secret requests are accepted but not answered; `false` answers the
    /// held ones.
    pub fn stall_secrets(&self, stalled: bool) {
        if let Some(cp) = &self.cp {
            cp.stall_secrets(stalled);
        }
    }

    pub fn stop(mut self) {
        if let Some(cp) = self.cp.take() {
            cp.stop();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.stop();
        }
    }
}

/// Starts the development control plane with `content`. The daemon authenticates with
/// the NSK string (its `--cp-token-file` defaults to the NSK file), so that is the token.
pub fn start_upstream(content: &UpstreamContent) -> Result<Upstream, BenchError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| BenchError::Upstream(format!("{what}: {e}"));
    let nsk = Nsk::parse(NSK_HEX.as_bytes()).map_err(|e| fail("NSK", &e))?;
    let cp = DevControlPlane::start(DevConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..DevConfig::new(NODE_ID, nsk, NSK_HEX)
    })
    .map_err(|e| fail("starting the development control plane", &e))?;
    for (k, v) in &content.metadata {
        cp.set_metadata(k, v);
    }
    let mut entries = Vec::with_capacity(content.data_entries);
    for n in 0..content.data_entries {
        let (key, content_type, payload) = bench_data_entry(n);
        entries.push(DataEntry {
            key,
            content_type,
            payload: RawValue::from_string(payload).map_err(|e| fail("data payload", &e))?,
            version: 1,
            updated_at: "2026-01-01T00:00:00Z".to_string(),
        });
    }
    // One change (and one event) for the whole set, not one per entry.
    cp.replace_data(entries);
    Ok(Upstream {
        url: cp.url(),
        cp: Some(cp),
    })
}
