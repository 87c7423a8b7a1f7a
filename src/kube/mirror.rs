//! The `k8s-sync` thread: keeps the node's `PlexdNodeState` resource, its status
//! reports and its ciphertext Secrets in line with the store, level-triggered.
//!
//! Every pass (after a store change, a watch event, an error's backoff, or the periodic
//! resync, which also re-reads the resource and re-checks every Secret):
//!
//! 1. the resource: the latest seen version, else GET; 404 → create it (adopting an
//!    existing one keeps its foreign labels and annotations). A new uid (recreated)
//!    resets the merge base: the store's reports are pushed, nothing is deleted, and
//!    the Secrets are re-pointed to the new owner;
//! 2. `.status.report`: the three-way merge (`merge`); workload edits are submitted to
//!    the store (`submit_put`/`submit_delete`, journalled and durable like socket
//!    writes) and awaited; then one merge patch with the resourceVersion as
//!    precondition writes the store's reports back, and the base is saved;
//! 3. the Secrets of the secret index (`secrets`);
//! 4. `.spec`: rendered from the store; PUT with the resourceVersion when it differs
//!    semantically (this reverts foreign edits);
//! 5. the Secrets of removed refs are deleted.
//!
//! 409 → re-read and retry (at most 5 times per pass). A write the API server refuses
//! for its content (400, 413, 422, etcd's size limit) is not repeated for the same
//! store revision. And no write is repeated for the same store revision while the
//! resource still carries it (generation for spec, resourceVersion for status), so a
//! normalisation nobody foresaw cannot cause a write loop. Wake-ups are debounced
//! (250 ms), so bursts of socket writes become a handful of status writes. Errors back
//! off (1 s doubling to 60 s, `Retry-After` honoured, refusals at the ceiling) and
//! show in the health section. Nothing here parses HTTP or waits for the API server at
//! start-up; the resource is never deleted.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Map, Value};

use crate::cp::background::Background;
use crate::cp::backoff::Backoff;
use crate::cp::client::CpClient;
use crate::store::{Preconditions, Snapshot, Store, StoreError};

use super::client::{KubeClient, KubeError, FIELD_MANAGER};
use super::config::KubeConfig;
use super::merge::{self, Plan};
use super::names::{hashed_resource_name, is_label_value, secret_names, ResourceName};
use super::record::{MirrorRecord, RecordFile};
use super::render::{self, same, SpecContext};
use super::secrets::{causes, SecretMirror};
use super::watch::{self, Inbox, News, WatchDeps, WatchOptions};
use super::{
    meta_str, Paths, API_VERSION, CRD_NAME, KIND, LABEL_K8S_NODE, LABEL_MANAGED_BY, LABEL_NODE_ID,
    MANAGED_BY,
};
use crate::telemetry::kubernetes::{KubeHealth, IMPORTED, REJECTED, WRITES};

/// Conflict retries within one pass.
const MAX_CONFLICT_RETRIES: usize = 5;
/// Resource versions remembered as already processed.
const KNOWN_RVS: usize = 64;
/// Rejected workload entries remembered (each is logged once).
const MAX_REJECTED_REMEMBERED: usize = 4096;
/// The rejection reason of a valid entry the report quota refused.
const QUOTA: &str = "quota";

/// Timing of the mirror and the watch.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Quiet time after a wake-up before a pass (coalesces bursts).
    pub debounce: Duration,
    /// Full pass (re-read the resource, re-check every Secret) this often.
    pub resync: Duration,
    pub backoff_base: Duration,
    pub watch: WatchOptions,
}

impl MirrorOptions {
    /// Defaults, with `resync` as given and test overrides from the environment:
    /// `PLEXD_NODEAPI_K8S_DEBOUNCE`, `PLEXD_NODEAPI_K8S_BACKOFF` (first delay) and
    /// `PLEXD_NODEAPI_K8S_WATCH_TIMEOUT` (the watch's `timeoutSeconds`), Go durations.
    pub fn from_env(resync: Duration) -> MirrorOptions {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| crate::duration::parse(&v).ok())
        };
        let mut watch = WatchOptions::default();
        if let Some(t) = env("PLEXD_NODEAPI_K8S_WATCH_TIMEOUT") {
            let secs = t.as_secs().max(1);
            watch.timeout = (secs, secs);
        }
        let backoff_base = env("PLEXD_NODEAPI_K8S_BACKOFF").unwrap_or(Duration::from_secs(1));
        watch.backoff_base = backoff_base;
        MirrorOptions {
            debounce: env("PLEXD_NODEAPI_K8S_DEBOUNCE").unwrap_or(Duration::from_millis(250)),
            resync,
            backoff_base,
            watch,
        }
    }
}

/// What the Kubernetes mode's threads need.
pub struct KubeDeps {
    pub store: Arc<Store>,
    pub client: Arc<KubeClient>,
    /// Where the ciphertext of secrets comes from; `None`: no Secrets are written.
    pub cp: Option<Arc<CpClient>>,
    pub health: Arc<KubeHealth>,
    pub config: KubeConfig,
    /// The resource's name, shared with the authenticator (it changes on a collision).
    pub resource: ResourceName,
}

/// The running mirror and watch threads.
pub struct KubeMirror {
    stop: Option<Sender<()>>,
    stopping: Arc<AtomicBool>,
    sync: Background,
    watch: Background,
}

impl KubeMirror {
    /// Starts `k8s-sync` and `k8s-watch`. Returns at once: nothing waits for the API
    /// server.
    pub fn start(deps: KubeDeps, options: MirrorOptions) -> KubeMirror {
        let paths = Paths::new(&deps.config.namespace, deps.resource.clone());
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let stopping = Arc::new(AtomicBool::new(false));
        let inbox = Arc::new(Inbox::default());
        {
            let wake = wake_tx.clone();
            deps.store.subscribe(Box::new(move |_| {
                let _ = wake.try_send(());
            }));
        }
        let watch_deps = WatchDeps {
            client: Arc::clone(&deps.client),
            health: Arc::clone(&deps.health),
            paths: paths.clone(),
            inbox: Arc::clone(&inbox),
            wake: wake_tx,
            stop: stop_rx.clone(),
            stopping: Arc::clone(&stopping),
        };
        let watch_options = options.watch.clone();
        let watch = Background::spawn("k8s-watch", "kubernetes watch", move || {
            watch::run(watch_deps, watch_options)
        });
        let mirror = Mirror::new(deps, paths, inbox);
        let sync = Background::spawn("k8s-sync", "kubernetes mirror", move || {
            mirror.run(&wake_rx, &stop_rx, &options)
        });
        KubeMirror {
            stop: Some(stop_tx),
            stopping,
            sync,
            watch,
        }
    }

    /// Stops both threads: the mirror is waited for (up to `timeout`), the watch only
    /// if it is not blocked in a read. The resource and its Secrets stay.
    pub fn shutdown(mut self, timeout: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.stop.take());
        let deadline = Instant::now() + timeout;
        if !self.sync.wait(timeout) {
            log::warn!("the kubernetes mirror did not stop in time");
        }
        let _ = self.watch.wait(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
}

/// Writes already made for a store revision, to never repeat one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    revision: u64,
    uid: String,
    /// `metadata.generation` (spec) or `metadata.resourceVersion` (status) after it.
    marker: String,
}

struct Mirror {
    store: Arc<Store>,
    client: Arc<KubeClient>,
    health: Arc<KubeHealth>,
    cfg: KubeConfig,
    paths: Paths,
    inbox: Arc<Inbox>,
    record_file: RecordFile,
    record: MirrorRecord,
    secrets: SecretMirror,
    /// The resource as last seen (a write's answer, a GET, a watch event).
    current: Option<Value>,
    known_rvs: VecDeque<String>,
    spec_written: Option<Written>,
    status_written: Option<Written>,
    spec_refused: Option<u64>,
    status_refused: Option<u64>,
    rejected_seen: HashSet<String>,
    warned_guard: bool,
    last_error: Option<String>,
}

enum Pass {
    Done,
    /// Something could not be finished (a control-plane fetch, a store write): again soon.
    Again,
}

impl Mirror {
    fn new(deps: KubeDeps, paths: Paths, inbox: Arc<Inbox>) -> Mirror {
        let record_file = RecordFile::new(deps.store.state_dir());
        let record = record_file.load();
        let secrets = SecretMirror::new(
            Arc::clone(&deps.client),
            deps.cp,
            Arc::clone(&deps.health),
            paths.clone(),
            &deps.config.node_id,
        );
        Mirror {
            store: deps.store,
            client: deps.client,
            health: deps.health,
            cfg: deps.config,
            paths,
            inbox,
            record_file,
            record,
            secrets,
            current: None,
            known_rvs: VecDeque::new(),
            spec_written: None,
            status_written: None,
            spec_refused: None,
            status_refused: None,
            rejected_seen: HashSet::new(),
            warned_guard: false,
            last_error: None,
        }
    }

    fn run(mut self, wake: &Receiver<()>, stop: &Receiver<()>, options: &MirrorOptions) {
        let mut backoff = Backoff::with_base(options.backoff_base);
        let mut next_resync = Instant::now() + options.resync;
        let mut full = true;
        loop {
            let delay = match self.pass(full) {
                Ok(Pass::Done) => {
                    full = false;
                    backoff.reset();
                    self.recovered();
                    None
                }
                Ok(Pass::Again) => {
                    full = false;
                    self.recovered();
                    Some(backoff.next_delay())
                }
                Err(e) => {
                    self.current = None;
                    full = true;
                    let delay = match e.retry_after() {
                        Some(d) => d,
                        None if e.is_refusal() => backoff.ceiling_delay(),
                        None => backoff.next_delay(),
                    };
                    self.failed(&e, delay);
                    Some(delay)
                }
            };
            if let Some(d) = delay {
                if stopped(stop.recv_timeout(d)) {
                    return;
                }
                while wake.try_recv().is_ok() {}
                continue;
            }
            let idle = next_resync.saturating_duration_since(Instant::now());
            select! {
                recv(stop) -> _ => return,
                recv(wake) -> _ => {}
                default(idle) => {
                    full = true;
                    next_resync = Instant::now() + options.resync;
                }
            }
            // Let a burst settle, then take everything it woke at once.
            if stopped(stop.recv_timeout(options.debounce)) {
                return;
            }
            while wake.try_recv().is_ok() {}
            if Instant::now() >= next_resync {
                full = true;
                next_resync = Instant::now() + options.resync;
            }
        }
    }

    fn failed(&mut self, e: &KubeError, delay: Duration) {
        let message = if e.is_type_missing() {
            format!(
                "CRD {CRD_NAME} not served, or namespace {} missing: {e}",
                self.cfg.namespace
            )
        } else {
            e.to_string()
        };
        let disconnected = match e {
            KubeError::Transport(_) => true,
            KubeError::Status(s) => e.is_refusal() || s.code == 429 || s.code >= 500,
            _ => false,
        };
        self.health.record_error(&message, disconnected);
        if self.last_error.as_deref() != Some(message.as_str()) {
            log::warn!(error = message.as_str(), retry_in_ms = delay.as_millis() as u64; "kubernetes mirror failed; retrying");
            self.last_error = Some(message);
        }
    }

    fn recovered(&mut self) {
        if self.last_error.take().is_some() {
            log::info!("kubernetes mirror recovered");
        }
    }

    /// One pass; `full` re-reads the resource and re-checks every Secret.
    fn pass(&mut self, full: bool) -> Result<Pass, KubeError> {
        if full {
            self.current = None;
            self.secrets.forget();
        } else {
            self.take_news();
        }
        let obj = self.ensure_resource()?;
        self.adopt(&obj);
        let mut again = self.sync_status()?;
        let uid = meta_str(self.current()?, "uid").unwrap_or("").to_owned();
        let snapshot = self.store.snapshot();
        let names = secret_names(
            &self.paths.name.node_part(),
            snapshot.secrets.iter().map(|r| r.key.as_str()),
        );
        let mut candidates = old_secret_names(self.current()?);
        candidates.extend(self.record.secrets.iter().cloned());
        let outcome = self.secrets.ensure(&snapshot.secrets, &names, &uid)?;
        again |= outcome.incomplete;
        let mut record_changed = false;
        for name in outcome.written {
            record_changed |= self.record.secrets.insert(name);
        }
        if record_changed {
            self.save_record();
        }
        self.sync_spec(&snapshot, &names)?;
        let keep: BTreeSet<String> = names.values().cloned().collect();
        let deleted = self.secrets.remove_stale(&candidates, &keep)?;
        if !deleted.is_empty() {
            self.record.secrets.retain(|n| !deleted.contains(n));
            self.save_record();
        }
        self.health.record_sync();
        Ok(if again { Pass::Again } else { Pass::Done })
    }

    fn current(&self) -> Result<&Value, KubeError> {
        self.current
            .as_ref()
            .ok_or_else(|| KubeError::Decode("the resource is gone".into()))
    }

    /// Takes the watch's latest news.
    fn take_news(&mut self) {
        match self.inbox.take() {
            Some(News::Object(obj)) => {
                let rv = meta_str(&obj, "resourceVersion").unwrap_or("");
                let ours = meta_str(&obj, "name") == Some(self.paths.name.get().as_str());
                if ours && !self.known_rvs.iter().any(|k| k == rv) {
                    self.see(obj);
                }
            }
            Some(News::Deleted) => self.current = None,
            None => {}
        }
    }

    /// Remembers `obj` as the current version.
    fn see(&mut self, obj: Value) {
        let uid = meta_str(&obj, "uid").unwrap_or("");
        let rv = meta_str(&obj, "resourceVersion").unwrap_or("");
        self.health.record_object(uid, rv);
        self.health.record_ok();
        if !self.known_rvs.iter().any(|k| k == rv) {
            self.known_rvs.push_back(rv.to_owned());
            if self.known_rvs.len() > KNOWN_RVS {
                self.known_rvs.pop_front();
            }
        }
        self.current = Some(obj);
    }

    fn refetch(&mut self) -> Result<(), KubeError> {
        let obj = self.client.get(&self.paths.resource())?;
        self.see(obj);
        Ok(())
    }

    /// The resource: the current version, else GET, else create.
    fn ensure_resource(&mut self) -> Result<Value, KubeError> {
        if let Some(obj) = &self.current {
            return Ok(obj.clone());
        }
        for _ in 0..2 {
            match self.client.get(&self.paths.resource()) {
                Ok(obj) if self.taken_by_another_node(&obj) => continue,
                Ok(obj) => {
                    self.see(obj.clone());
                    return Ok(obj);
                }
                Err(e) if e.is(404) && !e.is_type_missing() => return self.create(),
                Err(e) => return Err(e),
            }
        }
        Err(KubeError::Decode(
            "both resource names are taken by other nodes".into(),
        ))
    }

    /// Whether `obj` (found under our name) is another node's resource — two node ids
    /// that sanitise alike. Then switch to the hashed name, once.
    fn taken_by_another_node(&mut self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let owner = meta["labels"][LABEL_NODE_ID]
            .as_str()
            .or_else(|| meta["annotations"][LABEL_NODE_ID].as_str());
        match owner {
            Some(other) if other != self.cfg.node_id => {
                let taken = self.paths.name.get();
                let hashed = hashed_resource_name(&self.cfg.node_id);
                if self.paths.name.set(&hashed) {
                    log::warn!(taken = taken.as_str(), node_id = other, resource = hashed.as_str(); "the resource name is taken by another node's resource; using the hashed name");
                    self.health.record_resource(&hashed);
                    self.current = None;
                }
                true
            }
            _ => false,
        }
    }

    fn create(&mut self) -> Result<Value, KubeError> {
        let snapshot = self.store.snapshot();
        let names = secret_names(
            &self.paths.name.node_part(),
            snapshot.secrets.iter().map(|r| r.key.as_str()),
        );
        let spec = render::spec(&snapshot, &self.spec_context(&names));
        let (labels, annotations) = self.our_metadata(&Map::new(), &Map::new());
        let mut meta = json!({"name": self.paths.name.get(), "namespace": self.paths.namespace, "labels": labels});
        if !annotations.is_empty() {
            meta["annotations"] = Value::Object(annotations);
        }
        let body = json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec});
        let result = match self.client.post(&self.paths.create(), &body) {
            Err(e) if e.is_bad_content() => {
                // The spec itself is refused (too large, invalid): the resource must
                // exist anyway, for reports and Secrets.
                log::error!(error:% = e, causes:? = causes(&e); "the Kubernetes API refused the rendered spec; creating the resource with nodeId only");
                self.spec_refused = Some(snapshot.spec_revision);
                let mut minimal = body.clone();
                minimal["spec"] = json!({"nodeId": self.cfg.node_id});
                self.client.post(&self.paths.create(), &minimal)
            }
            other => other,
        };
        match result {
            Ok(obj) => {
                self.health.count(WRITES, "create", "ok");
                log::info!(resource = self.paths.name.get(), namespace = self.paths.namespace.as_str(); "created the PlexdNodeState resource");
                self.spec_written = Some(Written {
                    revision: snapshot.spec_revision,
                    uid: meta_str(&obj, "uid").unwrap_or("").to_owned(),
                    marker: generation(&obj),
                });
                self.see(obj.clone());
                Ok(obj)
            }
            Err(e) if e.is(409) => {
                // Created meanwhile: by an earlier attempt of ours, or another node.
                let obj = self.client.get(&self.paths.resource())?;
                if self.taken_by_another_node(&obj) {
                    return self.ensure_resource();
                }
                self.see(obj.clone());
                Ok(obj)
            }
            Err(e) => {
                self.health.count(WRITES, "create", "error");
                Err(e)
            }
        }
    }

    /// A new uid (first sight, or the resource was recreated): reset the base.
    fn adopt(&mut self, obj: &Value) {
        let uid = meta_str(obj, "uid").unwrap_or("");
        if self.record.cr_uid.as_deref() == Some(uid) {
            return;
        }
        if self.record.cr_uid.is_some() {
            log::warn!(resource = self.paths.name.get(), uid = uid; "the PlexdNodeState resource was recreated: pushing the store's reports and re-pointing the Secrets");
        }
        // The write guards carry the uid, so they do not match a new resource.
        self.record.cr_uid = Some(uid.to_owned());
        self.record.base.clear();
        self.secrets.forget();
        self.save_record();
    }

    fn save_record(&self) {
        if let Err(e) = self.record_file.save(&self.record) {
            log::error!(error:% = e; "cannot write the kubernetes mirror record");
        }
    }

    fn spec_context<'a>(&'a self, names: &'a BTreeMap<String, String>) -> SpecContext<'a> {
        SpecContext {
            node_id: &self.cfg.node_id,
            mesh_ip: self.cfg.mesh_ip.as_deref(),
            secret_names: names,
        }
    }

    /// `existing` labels and annotations with ours set.
    fn our_metadata(
        &self,
        labels: &Map<String, Value>,
        annotations: &Map<String, Value>,
    ) -> (Map<String, Value>, Map<String, Value>) {
        let mut labels = labels.clone();
        let mut annotations = annotations.clone();
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
        if is_label_value(&self.cfg.node_id) {
            labels.insert(LABEL_NODE_ID.into(), self.cfg.node_id.as_str().into());
        } else {
            annotations.insert(LABEL_NODE_ID.into(), self.cfg.node_id.as_str().into());
        }
        if is_label_value(&self.cfg.node_name) {
            labels.insert(LABEL_K8S_NODE.into(), self.cfg.node_name.as_str().into());
        } else {
            annotations.insert(LABEL_K8S_NODE.into(), self.cfg.node_name.as_str().into());
        }
        (labels, annotations)
    }

    // ---- status -------------------------------------------------------------------

    /// The status merge; `Ok(true)` when something must be tried again soon.
    fn sync_status(&mut self) -> Result<bool, KubeError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let obj = self.current()?.clone();
            let seen: Vec<Value> = obj["status"]["report"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let snapshot = self.store.snapshot();
            let mut plan = merge::plan(&seen, &snapshot.reports, &self.record.base);
            let (applied, failed, over_quota) = self.apply(&plan);
            for key in over_quota {
                plan.refuse(&seen, &key, QUOTA);
            }
            self.note_rejected(&plan);
            if failed {
                // Writing back now would drop the workload's change: try again later.
                return Ok(true);
            }
            let snapshot = if applied {
                self.store.snapshot()
            } else {
                snapshot
            };
            let desired = merge::desired_status(&snapshot.reports, &plan);
            let next_base = merge::next_base(&snapshot.reports, &plan, &self.record.base);
            if same(&json!({"report": desired}), &json!({"report": seen})) {
                if next_base != self.record.base {
                    self.record.base = next_base;
                    self.save_record();
                }
                return Ok(false);
            }
            if self.status_refused == Some(snapshot.reports_revision) {
                return Ok(false);
            }
            let uid = meta_str(&obj, "uid").unwrap_or("").to_owned();
            let rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_owned();
            let guard = Written {
                revision: snapshot.reports_revision,
                uid,
                marker: rv.clone(),
            };
            if self.status_written.as_ref() == Some(&guard) {
                self.warn_guard("status");
                return Ok(false);
            }
            let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"report": desired}});
            match self.client.merge_patch(&self.paths.status(), &patch) {
                Ok(new) => {
                    self.health.count(WRITES, "status", "ok");
                    self.status_written = Some(Written {
                        marker: meta_str(&new, "resourceVersion").unwrap_or("").to_owned(),
                        ..guard
                    });
                    self.see(new);
                    self.record.base = next_base;
                    self.save_record();
                    return Ok(false);
                }
                Err(e) if e.is(409) => {
                    self.health.count(WRITES, "status", "conflict");
                    self.refetch()?;
                }
                Err(e) if e.is(404) && !e.is_type_missing() => {
                    self.health.count(WRITES, "status", "error");
                    self.current = None;
                    return Err(e);
                }
                Err(e) if e.is_bad_content() => {
                    self.health.count(WRITES, "status", "rejected");
                    log::error!(error:% = e, causes:? = causes(&e); "the Kubernetes API refused the status write; not retrying it for this store revision");
                    self.status_refused = Some(snapshot.reports_revision);
                    return Ok(false);
                }
                Err(e) => {
                    self.health.count(WRITES, "status", "error");
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// Submits the plan's imports and deletions to the store and waits for them.
    /// Returns (anything changed, anything failed, keys the report quota refused —
    /// a socket PUT gets a 507 for those; here they stay in `.status.report`, and a
    /// later pass imports them once there is room).
    fn apply(&self, plan: &Plan) -> (bool, bool, Vec<String>) {
        let puts: Vec<_> = plan
            .imports
            .iter()
            .map(|i| {
                let ticket = self.store.submit_put_if(
                    &i.key,
                    i.content_type.clone(),
                    i.payload.clone(),
                    &Preconditions::version(Some(i.expected_version)),
                );
                (&i.key, ticket)
            })
            .collect();
        let deletes: Vec<_> = plan
            .deletes
            .iter()
            .map(|d| {
                let ticket = self
                    .store
                    .submit_delete_if(&d.key, &Preconditions::version(Some(d.version)));
                (&d.key, ticket)
            })
            .collect();
        let (mut changed, mut failed) = (false, false);
        let mut over_quota = Vec::new();
        for (key, ticket) in puts {
            match ticket.wait() {
                Ok(stored) => {
                    self.health.count(IMPORTED, "put", "");
                    log::info!(key = key.as_str(), revision = stored.mod_rev; "imported a report entry a workload wrote in .status.report");
                    changed = true;
                }
                Err(StoreError::QuotaExceeded { .. }) => over_quota.push(key.as_str().to_owned()),
                // A local write came in between: it wins; the next pass merges again.
                Err(StoreError::Conflict { .. }) => {
                    log::debug!(key = key.as_str(); "a local write came first; merging again");
                    changed = true;
                }
                Err(e) => {
                    log::error!(key = key.as_str(), error:% = e; "cannot store a report entry written in .status.report");
                    failed = true;
                }
            }
        }
        for (key, ticket) in deletes {
            match ticket.wait() {
                Ok(_) => {
                    self.health.count(IMPORTED, "delete", "");
                    log::info!(key = key.as_str(); "deleted a report entry a workload removed from .status.report");
                    changed = true;
                }
                Err(StoreError::NotFound) => changed = true,
                // Changed locally since the plan: the newer entry stays.
                Err(StoreError::Conflict { .. }) => {
                    log::debug!(key = key.as_str(); "a local write came first; keeping it");
                    changed = true;
                }
                Err(e) => {
                    log::error!(key = key.as_str(), error:% = e; "cannot delete a report entry removed from .status.report");
                    failed = true;
                }
            }
        }
        (changed, failed, over_quota)
    }

    fn note_rejected(&mut self, plan: &Plan) {
        for r in &plan.rejected {
            if self.rejected_seen.contains(&r.digest) {
                continue;
            }
            if self.rejected_seen.len() >= MAX_REJECTED_REMEMBERED {
                self.rejected_seen.clear();
            }
            self.rejected_seen.insert(r.digest.clone());
            let key = r.key.as_deref().unwrap_or("-");
            if r.reason == QUOTA {
                log::warn!(key = key, reason = r.reason; "entry in .status.report not imported: the report quota is full (--max-report-keys, --max-report-bytes); it stays in place and is imported once there is room");
            } else {
                log::warn!(key = key, reason = r.reason; "invalid entry in .status.report left untouched and not imported");
            }
            self.health.count(REJECTED, r.reason, "");
        }
    }

    fn warn_guard(&mut self, what: &str) {
        if !self.warned_guard {
            log::warn!(part = what; "the API server's copy still differs from what was written for this store revision; not writing it again until the store changes");
            self.warned_guard = true;
        }
    }

    // ---- spec ---------------------------------------------------------------------

    fn sync_spec(
        &mut self,
        snapshot: &Snapshot,
        names: &BTreeMap<String, String>,
    ) -> Result<(), KubeError> {
        let desired = render::spec(snapshot, &self.spec_context(names));
        for _ in 0..MAX_CONFLICT_RETRIES {
            let obj = self.current()?.clone();
            let meta = &obj["metadata"];
            let empty = Map::new();
            let (labels, annotations) = self.our_metadata(
                meta["labels"].as_object().unwrap_or(&empty),
                meta["annotations"].as_object().unwrap_or(&empty),
            );
            let metadata_ok = same(&Value::Object(labels.clone()), &meta["labels"])
                && same(&Value::Object(annotations.clone()), &meta["annotations"]);
            let refused = self.spec_refused == Some(snapshot.spec_revision);
            let spec_ok = refused || same(&desired, &obj["spec"]);
            if spec_ok && metadata_ok {
                return Ok(());
            }
            let uid = meta_str(&obj, "uid").unwrap_or("").to_owned();
            let guard = Written {
                revision: snapshot.spec_revision,
                uid,
                marker: generation(&obj),
            };
            if metadata_ok && self.spec_written.as_ref() == Some(&guard) {
                self.warn_guard("spec");
                return Ok(());
            }
            if !spec_ok {
                if let Some(w) = &self.spec_written {
                    if w.uid == guard.uid && w.marker != guard.marker {
                        log::warn!(manager = foreign_manager(&obj).as_str(); "the resource's spec was edited by someone else; reverting it (the spec is managed by plexd)");
                    }
                }
            }
            let mut body = obj.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("status");
                if !refused {
                    o.insert("spec".into(), desired.clone());
                }
            }
            if let Some(m) = body["metadata"].as_object_mut() {
                m.remove("managedFields");
                m.insert("labels".into(), Value::Object(labels));
                if annotations.is_empty() {
                    m.remove("annotations");
                } else {
                    m.insert("annotations".into(), Value::Object(annotations));
                }
            }
            match self.client.put(&self.paths.update(), &body) {
                Ok(new) => {
                    self.health.count(WRITES, "spec", "ok");
                    self.spec_written = Some(Written {
                        marker: generation(&new),
                        ..guard
                    });
                    self.see(new);
                    return Ok(());
                }
                Err(e) if e.is(409) => {
                    self.health.count(WRITES, "spec", "conflict");
                    self.refetch()?;
                }
                Err(e) if e.is(404) && !e.is_type_missing() => {
                    self.health.count(WRITES, "spec", "error");
                    self.current = None;
                    return Err(e);
                }
                Err(e) if e.is_bad_content() => {
                    self.health.count(WRITES, "spec", "rejected");
                    log::error!(error:% = e, causes:? = causes(&e); "the Kubernetes API refused the spec write; not retrying it for this store revision");
                    self.spec_refused = Some(snapshot.spec_revision);
                    return Ok(());
                }
                Err(e) => {
                    self.health.count(WRITES, "spec", "error");
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

fn stopped(r: Result<(), RecvTimeoutError>) -> bool {
    !matches!(r, Err(RecvTimeoutError::Timeout))
}

fn generation(obj: &Value) -> String {
    obj["metadata"]["generation"].to_string()
}

/// `spec.secretRefs[].secretName` of a resource.
fn old_secret_names(obj: &Value) -> BTreeSet<String> {
    obj["spec"]["secretRefs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["secretName"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The manager of the latest foreign change to the main resource (for the log).
fn foreign_manager(obj: &Value) -> String {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|fields| {
            fields
                .iter()
                .filter(|f| f["manager"] != FIELD_MANAGER && f.get("subresource").is_none())
                .filter_map(|f| f["manager"].as_str())
                .next_back()
        })
        .unwrap_or("unknown")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        let obj = json!({
            "metadata": {"generation": 3, "managedFields": [
                {"manager": "plexd-nodeapi"},
                {"manager": "kubectl-edit"},
                {"manager": "web", "subresource": "status"},
            ]},
            "spec": {"secretRefs": [{"key": "a", "secretName": "plexd-secret-n-a"}, {"key": "b"}]},
        });
        assert_eq!(generation(&obj), "3");
        assert_eq!(foreign_manager(&obj), "kubectl-edit");
        assert_eq!(
            old_secret_names(&obj),
            BTreeSet::from(["plexd-secret-n-a".to_owned()])
        );
        assert!(!stopped(Err(RecvTimeoutError::Timeout)));
        assert!(stopped(Err(RecvTimeoutError::Disconnected)));
    }
}
