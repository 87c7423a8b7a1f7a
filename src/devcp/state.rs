//! The development control plane's in-memory world: one node's metadata, data entries,
//! secrets (plaintext, encrypted on every read), signing keys, the reports it received,
//! request counters and injected failures.
//!
//! Every change made through the test/admin API is announced to subscribers after the
//! lock is released, with a snapshot of the node state, so an event stream can be added
//! on top without touching this code. Nothing here does I/O or knows HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::events::{DevChange, EventHub};
use crate::events::Signer;
use crate::model::{
    DataEntry, Metadata, NodeState, ReportEntry, ReportSyncRequest, SecretRef, SigningKeys,
};
use crate::secrets::nsk::Nsk;
use crate::timefmt::format_rfc3339_utc;

/// Which control-plane route an injected failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailRoute {
    State,
    Secrets,
    Report,
    Events,
    Any,
}

impl FailRoute {
    pub fn parse(s: &str) -> Option<FailRoute> {
        match s {
            "state" => Some(FailRoute::State),
            "secrets" => Some(FailRoute::Secrets),
            "report" => Some(FailRoute::Report),
            "events" => Some(FailRoute::Events),
            "any" => Some(FailRoute::Any),
            _ => None,
        }
    }
}

/// Called after each change, outside the state lock.
pub type Subscriber = Box<dyn Fn(DevChange, &NodeState) + Send + Sync>;

/// `set_data` refused its payload.
#[derive(Debug, thiserror::Error)]
#[error("payload is not valid JSON: {0}")]
pub struct PayloadError(#[from] serde_json::Error);

#[derive(Debug, Clone)]
pub(crate) struct FailPlan {
    pub remaining: usize,
    pub status: u16,
    pub retry_after: Option<u64>,
    pub route: FailRoute,
    /// Sent as the body instead of an error document (garbage, a wrong shape, an
    /// oversized answer), with `status`, which may then be 2xx.
    pub body: Option<std::sync::Arc<[u8]>>,
}

struct Secret {
    plaintext: Zeroizing<String>,
    version: i64,
}

#[derive(Default)]
struct World {
    metadata: Metadata,
    data: BTreeMap<String, DataEntry>,
    secrets: BTreeMap<String, Secret>,
    signing_keys: Option<SigningKeys>,
    reports: BTreeMap<String, ReportEntry>,
    posts: Vec<ReportSyncRequest>,
    gzipped_posts: usize,
    requests: BTreeMap<String, usize>,
    fail: Option<FailPlan>,
    rejected_report_keys: Vec<String>,
}

/// The shared state behind a development control plane.
pub struct DevState {
    pub(crate) node_id: String,
    pub(crate) nsk: Nsk,
    pub(crate) token: Zeroizing<String>,
    pub(crate) events: Arc<EventHub>,
    /// Secret requests are accepted but not answered while set (a stalled upstream).
    pub(crate) secrets_stalled: std::sync::atomic::AtomicBool,
    /// The state endpoint re-formats data payloads while set (see `node_state`).
    pub(crate) reformat_state: std::sync::atomic::AtomicBool,
    world: Mutex<World>,
    subscribers: Mutex<Vec<Subscriber>>,
}

/// What a report POST did to the devcp.
pub(crate) enum ReportOutcome {
    Accepted,
    Rejected(String),
}

impl DevState {
    /// A world whose state response advertises `signer`'s public key and whose every
    /// change is published, signed by it, on the event stream.
    pub(crate) fn new(
        node_id: String,
        nsk: Nsk,
        token: Zeroizing<String>,
        signer: Signer,
    ) -> DevState {
        let world = World {
            signing_keys: Some(SigningKeys {
                current: signer.public_key_b64(),
                ..SigningKeys::default()
            }),
            ..World::default()
        };
        let events = Arc::new(EventHub::new(signer));
        let state = DevState {
            node_id,
            nsk,
            token,
            events: Arc::clone(&events),
            secrets_stalled: std::sync::atomic::AtomicBool::new(false),
            reformat_state: std::sync::atomic::AtomicBool::new(false),
            world: Mutex::new(world),
            subscribers: Mutex::new(Vec::new()),
        };
        state.subscribe(Box::new(move |change, node| events.on_change(change, node)));
        state
    }

    fn world(&self) -> MutexGuard<'_, World> {
        match self.world.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a change hook (for an event stream).
    pub fn subscribe(&self, f: Subscriber) {
        match self.subscribers.lock() {
            Ok(mut s) => s.push(f),
            Err(poisoned) => poisoned.into_inner().push(f),
        }
    }

    fn changed(&self, change: DevChange) {
        let state = self.state();
        let subs = match self.subscribers.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for s in subs.iter() {
            s(change, &state);
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// What `GET /v1/nodes/{id}/state` returns.
    pub fn state(&self) -> NodeState {
        let w = self.world();
        NodeState {
            metadata: Some(w.metadata.clone()),
            data: Some(w.data.values().cloned().collect()),
            secret_refs: Some(
                w.secrets
                    .iter()
                    .map(|(k, s)| SecretRef {
                        key: k.clone(),
                        version: s.version,
                    })
                    .collect(),
            ),
            signing_keys: w.signing_keys.clone(),
        }
    }

    /// What the node's `GET /v1/nodes/{id}/state` returns: `state()`, with each data
    /// payload pretty-printed, its object keys sorted and its numbers re-spelled by
    /// serde while `reformat_state` is set (the same values in other bytes).
    pub fn node_state(&self) -> NodeState {
        let mut state = self.state();
        if !self
            .reformat_state
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return state;
        }
        for entry in state.data.iter_mut().flatten() {
            let value: Result<serde_json::Value, _> = serde_json::from_str(entry.payload.get());
            let pretty = value.and_then(|v| serde_json::to_string_pretty(&v));
            if let Ok(raw) = pretty.and_then(RawValue::from_string) {
                entry.payload = raw;
            }
        }
        state
    }

    pub fn set_metadata(&self, key: &str, value: &str) {
        self.world()
            .metadata
            .insert(key.to_owned(), value.to_owned());
        self.changed(DevChange::State);
    }

    /// Returns whether the key existed.
    pub fn remove_metadata(&self, key: &str) -> bool {
        let existed = self.world().metadata.remove(key).is_some();
        if existed {
            self.changed(DevChange::State);
        }
        existed
    }

    pub fn replace_metadata(&self, metadata: Metadata) {
        self.world().metadata = metadata;
        self.changed(DevChange::State);
    }

    /// Sets a data entry; the version increases by one (1 for a new key) and
    /// `updated_at` is now. Returns the new version.
    pub fn set_data(
        &self,
        key: &str,
        content_type: &str,
        payload_json: &str,
    ) -> Result<i64, PayloadError> {
        let payload = RawValue::from_string(payload_json.trim().to_owned())?;
        let version = {
            let mut w = self.world();
            let version = w.data.get(key).map_or(1, |e| e.version + 1);
            w.data.insert(
                key.to_owned(),
                DataEntry {
                    key: key.to_owned(),
                    content_type: content_type.to_owned(),
                    payload,
                    version,
                    updated_at: format_rfc3339_utc(SystemTime::now()),
                },
            );
            version
        };
        self.changed(DevChange::State);
        Ok(version)
    }

    /// Replaces every data entry at once (one change, one event): for loading large
    /// states in tests and benchmarks without an event per entry.
    pub fn replace_data(&self, entries: Vec<DataEntry>) {
        self.world().data = entries.into_iter().map(|e| (e.key.clone(), e)).collect();
        self.changed(DevChange::State);
    }

    pub fn remove_data(&self, key: &str) -> bool {
        let existed = self.world().data.remove(key).is_some();
        if existed {
            self.changed(DevChange::State);
        }
        existed
    }

    /// Sets a secret's plaintext; the version increases by one. Returns the version.
    pub fn set_secret(&self, key: &str, plaintext: &str) -> i64 {
        let version = {
            let mut w = self.world();
            let version = w.secrets.get(key).map_or(1, |s| s.version + 1);
            w.secrets.insert(
                key.to_owned(),
                Secret {
                    plaintext: Zeroizing::new(plaintext.to_owned()),
                    version,
                },
            );
            version
        };
        self.changed(DevChange::Secrets);
        version
    }

    pub fn remove_secret(&self, key: &str) -> bool {
        let existed = self.world().secrets.remove(key).is_some();
        if existed {
            self.changed(DevChange::Secrets);
        }
        existed
    }

    pub fn set_signing_keys(&self, keys: Option<SigningKeys>) {
        self.world().signing_keys = keys;
        self.changed(DevChange::SigningKeys);
    }

    /// The reports received so far (latest state per key).
    pub fn reports(&self) -> BTreeMap<String, ReportEntry> {
        self.world().reports.clone()
    }

    /// Every accepted report POST body, in arrival order.
    pub fn report_posts(&self) -> Vec<ReportSyncRequest> {
        self.world().posts.clone()
    }

    /// Requests seen whose path starts with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.world()
            .requests
            .iter()
            .filter(|(p, _)| p.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// The next `count` requests to `route` are answered with `status` (and
    /// `Retry-After: retry_after` if given). Replaces any earlier plan.
    pub fn fail_next(&self, count: usize, status: u16, retry_after: Option<u64>, route: FailRoute) {
        self.world().fail = (count > 0).then_some(FailPlan {
            remaining: count,
            status,
            retry_after,
            route,
            body: None,
        });
    }

    /// The next `count` requests to `route` are answered with `status` and `body` as
    /// sent (`Content-Type: application/json` whatever it holds). Replaces any earlier
    /// plan.
    pub fn answer_next(&self, count: usize, status: u16, route: FailRoute, body: Vec<u8>) {
        self.world().fail = (count > 0).then_some(FailPlan {
            remaining: count,
            status,
            retry_after: None,
            route,
            body: Some(body.into()),
        });
    }

    /// Report POSTs carrying an entry or deletion for any of `keys` are answered 400
    /// (to exercise the syncer's isolation of a rejected entry).
    pub fn reject_report_keys(&self, keys: &[&str]) {
        self.world().rejected_report_keys = keys.iter().map(|k| (*k).to_owned()).collect();
    }

    pub(crate) fn count_request(&self, path: &str) {
        *self.world().requests.entry(path.to_owned()).or_default() += 1;
    }

    /// Consumes one injected failure for `route`, if one is planned.
    pub(crate) fn take_failure(&self, route: FailRoute) -> Option<FailPlan> {
        let mut w = self.world();
        let plan = w.fail.as_mut()?;
        if plan.route != FailRoute::Any && plan.route != route {
            return None;
        }
        let taken = plan.clone();
        plan.remaining -= 1;
        if plan.remaining == 0 {
            w.fail = None;
        }
        Some(taken)
    }

    /// The plaintext and version of a secret, encrypted by the caller.
    pub(crate) fn with_secret<T>(&self, key: &str, f: impl FnOnce(&str, i64) -> T) -> Option<T> {
        let w = self.world();
        w.secrets
            .get(key)
            .map(|s| f(s.plaintext.as_str(), s.version))
    }

    /// Accepted report POSTs whose body arrived gzip-compressed.
    pub fn gzipped_report_posts(&self) -> usize {
        self.world().gzipped_posts
    }

    pub(crate) fn apply_report(&self, request: ReportSyncRequest, gzipped: bool) -> ReportOutcome {
        let mut seen = std::collections::HashSet::new();
        let all_keys = request
            .entries
            .iter()
            .map(|e| e.key.as_str())
            .chain(request.deleted.iter().map(String::as_str));
        for key in all_keys {
            if !seen.insert(key) {
                return ReportOutcome::Rejected(format!("report key {key:?} appears twice"));
            }
        }
        let mut w = self.world();
        if let Some(bad) = request
            .entries
            .iter()
            .map(|e| e.key.as_str())
            .chain(request.deleted.iter().map(String::as_str))
            .find(|k| w.rejected_report_keys.iter().any(|r| r == k))
        {
            return ReportOutcome::Rejected(format!("report key {bad:?} rejected"));
        }
        for entry in &request.entries {
            w.reports.insert(entry.key.clone(), entry.clone());
        }
        for key in &request.deleted {
            w.reports.remove(key);
        }
        w.posts.push(request);
        if gzipped {
            w.gzipped_posts += 1;
        }
        ReportOutcome::Accepted
    }

    /// Metadata, data and secrets a `dev` session starts with.
    pub(crate) fn load_demo(&self) {
        {
            let mut w = self.world();
            for (k, v) in [
                ("region", "eu-central-1"),
                ("environment", "development"),
                ("role", "edge-gateway"),
            ] {
                w.metadata.insert(k.to_owned(), v.to_owned());
            }
        }
        let demo_data = [
            (
                "database-config",
                r#"{"host":"db.internal.example","port":5432,"database":"app","pool_size":10}"#,
            ),
            (
                "feature-flags",
                r#"{"new_dashboard":true,"beta_api":false,"rollout_percent":25}"#,
            ),
            (
                "service-endpoints",
                r#"{"metrics":"http://127.0.0.1:9090","logs":"http://127.0.0.1:3100"}"#,
            ),
        ];
        for (k, v) in demo_data {
            // The literals above are valid JSON.
            if let Err(e) = self.set_data(k, "application/json", v) {
                log::error!(key:% = k, error:% = e; "demo data rejected");
            }
        }
        self.set_secret("db-password", "dev-only-password");
        self.set_secret("api-token", "dev-only-api-token");
    }
}
