//! The node's state store: metadata, data entries and the secret index pushed by the
//! control plane, and reports written by local workloads, cached in memory and on disk
//! under `{data_dir}/state/`.
//!
//! Readers get pre-rendered JSON bodies (`Json`, shared `Arc<[u8]>`) with the store
//! revision and wall time of the resource's last change, and never wait for disk I/O:
//! no write, fsync or rename happens while the cache lock is held. Writers make their
//! change durable first, then publish it under a brief write lock, then notify
//! subscribers outside every lock. The store does not talk to the network, know about
//! HTTP, or decide when to sync: the syncer drives `pending_batch`/`mark_synced`.
//!
//! Files under `state_dir` (= `{data_dir}/state`): `metadata.json`, `secrets.json`,
//! `data/{key}.json`, `report/{key}.json` (the Go agent's formats, key names encoded by
//! `keys::file_name_for`), plus `revision` (see `revision`), `report-sync.json` (see
//! `marks`) and `report.journal` (see `journal`). Report writes go through the journal
//! with group commit (`commit`); the report files are written from it in the background
//! (`checkpoint`) and at `close`. Two threads run per store: `report-commit` and
//! `report-checkpoint`. Lock order: checkpoint serial lock, then journal state, then
//! commit queue, then the apply mutex or the marks mutex, then the cache `RwLock`;
//! callbacks run after all are released.
//!
//! Invariants: a failed write leaves memory and disk as they were; a control-plane update
//! is published in one write-lock section (never new metadata with old data); the
//! revision never goes backwards, across restarts included; nothing acknowledged to a
//! client is lost from the outbox; a report write is visible only once it is durable.

mod apply;
mod cache;
mod checkpoint;
mod commit;
mod disk;
mod files;
mod journal;
pub mod keys;
mod load;
mod lock;
mod marks;
mod outbox;
mod reports;
mod revision;
mod snapshot;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;
use std::{fmt, io};

use crate::model::{DataEntry, Metadata, SecretRef};

use cache::{Cache, Stamp};
use checkpoint::Checkpoints;
use commit::Writes;
use disk::Disk;
use files::Folder;
use keys::ReportKey;
use revision::Epochs;

pub use commit::{Quota, Ticket};
pub use disk::Fault as DiskFault;
pub use lock::{LockError, StateLock};
pub use outbox::SyncBatch;
pub use reports::{Match, Preconditions};
pub use revision::EpochError;
pub use snapshot::Snapshot;

/// A JSON body rendered once and served many times.
pub type Json = Arc<[u8]>;

/// A value with the store revision (`mod_rev`) and wall time (`modified`) of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_rev: u64,
    pub modified: SystemTime,
}

impl<T> Versioned<T> {
    fn new(value: T, stamp: Stamp) -> Versioned<T> {
        Versioned {
            value,
            mod_rev: stamp.rev,
            modified: stamp.at,
        }
    }
}

/// Sizes of the cached collections, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub metadata: usize,
    pub data: usize,
    pub secrets: usize,
    pub reports: usize,
    pub last_change: SystemTime,
}

/// A state update from the control plane; `None` leaves that part as it is.
#[derive(Debug, Clone, Default)]
pub struct CpUpdate {
    pub metadata: Option<Metadata>,
    pub data: Option<Vec<DataEntry>>,
    pub secret_refs: Option<Vec<SecretRef>>,
}

/// What `apply_control_plane` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub metadata_changed: bool,
    pub data_written: usize,
    pub data_removed: usize,
    pub secrets_changed: bool,
    /// Data keys that could not be stored (empty, or a file name that would be too long).
    pub skipped_keys: Vec<String>,
}

impl ApplyOutcome {
    pub fn changed(&self) -> bool {
        self.metadata_changed
            || self.data_written > 0
            || self.data_removed > 0
            || self.secrets_changed
    }
}

/// A published change: the store revision it got and what kind of state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Metadata,
    Data,
    Secrets,
    Reports,
}

/// Store errors. `Display` is safe to log; it is not meant for HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `If-Match` did not match; `current` is the stored version (`None`: no such key).
    #[error("version conflict (current version {})", DisplayOpt(.current))]
    Conflict { current: Option<i64> },
    #[error("not found")]
    NotFound,
    /// The write would grow report use beyond the quota.
    #[error("report quota exceeded: {used} {unit} stored, limit {max}", unit = limit.unit())]
    QuotaExceeded {
        limit: QuotaLimit,
        max: u64,
        used: u64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The state folder takes no writes now (`full`: no space left or over quota;
    /// otherwise read-only). Reads go on from the cache; writing resumes by itself.
    #[error("the state folder cannot be written now ({reason}); writes resume by themselves once it can")]
    Unwritable { full: bool, reason: String },
    /// The revision epoch cannot be used (see `revision`).
    #[error(transparent)]
    Epoch(#[from] EpochError),
}

/// Which report quota a write ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLimit {
    Keys,
    Bytes,
}

impl QuotaLimit {
    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            QuotaLimit::Keys => "--max-report-keys",
            QuotaLimit::Bytes => "--max-report-bytes",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            QuotaLimit::Keys => "report keys",
            QuotaLimit::Bytes => "payload bytes",
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(source: io::Error) -> StoreError {
        StoreError::Io {
            context: "state store I/O failed".to_owned(),
            source,
        }
    }
}

struct DisplayOpt<'a>(&'a Option<i64>);

impl fmt::Display for DisplayOpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("none"),
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io {
        context: context.into(),
        source,
    }
}

type Subscriber = Arc<dyn Fn(&Change) + Send + Sync>;

/// The state store. `Send + Sync`; share it as `Arc<Store>`. Dropping it closes it
/// (`close`).
pub struct Store {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The store's shared state, used by the caller's threads, the committer and the
/// checkpointer. Not an API of its own: everything public is on `Store`.
pub struct Inner {
    state: Folder,
    data: Folder,
    report: Folder,
    epochs: Epochs,
    cache: RwLock<Cache>,
    /// Serializes control-plane applies.
    /// Serializes control-plane applies and counts them (see `apply_control_plane_since`).
    apply_lock: Mutex<u64>,
    /// Serializes writers of the marks file.
    marks_lock: Mutex<()>,
    writes: Writes,
    checkpoints: Checkpoints,
    subscribers: RwLock<Vec<Subscriber>>,
    /// Whether the folder takes writes now (see `disk`).
    disk: Disk,
}

impl Deref for Store {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Starts the committer and checkpointer threads over a loaded store.
    fn start(inner: Inner) -> Result<Store, StoreError> {
        let inner = Arc::new(inner);
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(Arc<Inner>)| {
            let i = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || f(i))
                .map_err(io_err(format!("starting the {name} thread failed")))
        };
        threads.push(spawn("report-commit", commit::run)?);
        match spawn("report-checkpoint", checkpoint::run) {
            Ok(t) => threads.push(t),
            Err(e) => {
                inner.writes.close();
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
        Ok(Store {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// Finishes queued report writes, stops the background threads and writes every
    /// journaled change to the report files, emptying the journal. Later report writes
    /// fail. Idempotent; `Drop` calls it too.
    pub fn close(&self) {
        self.writes.close();
        self.checkpoints.stop();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            if t.join().is_err() {
                log::error!("a store thread panicked");
            }
        }
        if let Err(e) = checkpoint::checkpoint(&self.inner, true) {
            log::error!(error:% = e; "final report checkpoint failed; the journal keeps the changes");
        }
    }

    /// Writes every journaled change to the report files now and empties the journal.
    pub fn flush(&self) -> Result<(), StoreError> {
        checkpoint::checkpoint(&self.inner, true)
    }

    /// Journal appends so far (each one `fdatasync`), to observe group commit.
    #[cfg(test)]
    pub(crate) fn journal_syncs(&self) -> u64 {
        self.writes.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tests: makes every group commit take `d` longer (a slow disk).
    #[cfg(test)]
    pub(crate) fn slow_commits(&self, d: std::time::Duration) {
        *lock(&self.writes.delay) = d;
    }

    /// Opens the cache folder `state_dir` (that is `{data_dir}/state`): creates it and
    /// its `data/` and `report/` folders (0700), removes stray temp files, moves files
    /// that do not parse aside as `<name>.corrupt` (logged at error), loads the rest,
    /// replays the report journal over them and checkpoints it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::start(load::open(state_dir)?)
    }

    /// The folder this store keeps its files in.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Why the store refuses writes now (a full or read-only disk), if it does.
    pub fn disk_fault(&self) -> Option<DiskFault> {
        self.disk.fault()
    }

    /// `{"metadata":{…},"data_keys":[…],"secret_keys":[…],"report_keys":[…]}`.
    pub fn summary(&self) -> Versioned<Json> {
        let c = self.read();
        Versioned::new(c.summary_json(), c.summary_stamp())
    }

    /// The summary as a peer that may not read secrets sees it: `secret_keys` empty,
    /// and the revision of the latest change to anything else, so a secret rotation
    /// does not show in it either.
    pub fn summary_without_secrets(&self) -> Versioned<Json> {
        let c = self.read();
        Versioned::new(
            c.summary_without_secrets_json(),
            c.summary_without_secrets_stamp(),
        )
    }

    /// The metadata map.
    pub fn metadata(&self) -> Versioned<Json> {
        let c = self.read();
        Versioned::new(c.metadata_json(), c.metadata_stamp)
    }

    /// `{"key":…,"value":…}` for one metadata key.
    pub fn metadata_value(&self, key: &str) -> Option<Versioned<Json>> {
        let c = self.read();
        c.metadata
            .get(key)
            .map(|m| Versioned::new(m.body.clone(), m.stamp))
    }

    /// `[{key,version,content_type}]`, sorted by key.
    pub fn data_list(&self) -> Versioned<Json> {
        let c = self.read();
        Versioned::new(c.data_list_json(), c.data_stamp)
    }

    /// One DataEntry, payload verbatim.
    pub fn data_entry(&self, key: &str) -> Option<Versioned<Json>> {
        let c = self.read();
        c.data
            .get(key)
            .map(|d| Versioned::new(d.body.clone(), d.stamp))
    }

    /// `[{key,version}]` of the secret index, sorted by key.
    pub fn secret_list(&self) -> Versioned<Json> {
        let c = self.read();
        Versioned::new(c.secret_list_json(), c.secrets_stamp)
    }

    /// `[{key,version}]` of the reports, sorted by key.
    pub fn report_list(&self) -> Versioned<Json> {
        let c = self.read();
        Versioned::new(c.report_list_json(), c.reports_stamp)
    }

    /// One ReportEntry.
    pub fn report(&self, key: &ReportKey) -> Option<Versioned<Json>> {
        let c = self.read();
        c.reports
            .get(key.as_str())
            .map(|r| Versioned::new(r.body.clone(), r.stamp))
    }

    pub fn counts(&self) -> Counts {
        let c = self.read();
        Counts {
            metadata: c.metadata.len(),
            data: c.data.len(),
            secrets: c.secrets.len(),
            reports: c.reports.len(),
            last_change: c.last_change,
        }
    }

    /// Registers `f`, called after every published change in the writer's thread,
    /// outside every store lock. Keep it cheap (e.g. wake a thread).
    pub fn subscribe(&self, f: Box<dyn Fn(&Change) + Send + Sync>) {
        self.subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::from(f));
    }

    // ---- outbox ----------------------------------------------------------------

    /// The next batch of report changes to send upstream, or `None` when nothing is
    /// pending. Each key appears once with its latest state.
    pub fn pending_batch(&self, max_keys: usize, max_bytes: usize) -> Option<SyncBatch> {
        outbox::build_batch(&self.read(), max_keys, max_bytes)
    }

    /// Records that the control plane took `batch`: exactly the states it carried are
    /// marked as synced (a write that landed meanwhile stays pending). Durable.
    pub fn mark_synced(&self, batch: &SyncBatch) -> Result<(), StoreError> {
        let _serial = lock(&self.marks_lock);
        let next = outbox::acknowledge(&self.read().marks, batch);
        let bytes = marks::encode_marks(&next).map_err(|source| StoreError::Encode {
            what: "report sync marks",
            source,
        })?;
        self.ready_to_write()?;
        self.state
            .replace(marks::MARKS_FILE, &bytes)
            .map_err(|e| self.write_failed("writing report sync marks failed", e))?;
        let mut c = self.write();
        c.marks = next;
        for key in batch.keys() {
            c.refresh_pending(key);
        }
        Ok(())
    }

    /// Treats `batch` as delivered although the control plane rejected it (the caller
    /// logs); the same bookkeeping as `mark_synced`.
    pub fn drop_rejected(&self, batch: &SyncBatch) -> Result<(), StoreError> {
        self.mark_synced(batch)
    }

    /// Number of report keys waiting to be synced upstream.
    pub fn pending_count(&self) -> usize {
        self.read().pending.len()
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store-wide revision: increases with every change, never goes backwards.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    fn notify(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let subs: Vec<Subscriber> = self
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for change in changes {
            for s in &subs {
                s(change);
            }
        }
    }

    /// Asks the epoch allocator whether a jump to a freshly reserved epoch is due.
    /// Called outside the cache lock, before publishing.
    fn epoch_jump(&self) -> Result<Option<u64>, StoreError> {
        let current = self.revision();
        self.epochs
            .reserve_ahead(&self.state, current)
            .map_err(|e| self.write_failed("reserving the next revision epoch failed", e))
    }

    /// `Ok` when a write may go ahead: the disk takes writes, or a probe (rewriting
    /// the revision file) just showed that it does again. Otherwise the refusal
    /// (`StoreError::Unwritable`), at once and without touching the disk.
    fn ready_to_write(&self) -> Result<(), StoreError> {
        if self.disk.writable() {
            return Ok(());
        }
        self.probe_disk();
        match self.disk.refusal() {
            None => Ok(()),
            Some(refused) => Err(refused),
        }
    }

    /// Probes a disk that took no writes, at most once per `disk::PROBE_EVERY`: the
    /// revision epoch is written first (a start on a full disk could not), so no change
    /// is published under an epoch that is not on disk.
    fn probe_disk(&self) {
        if !self.disk.probe_due() {
            return;
        }
        match self.epochs.persist(&self.state) {
            Ok(()) => {
                self.disk.recovered();
                self.checkpoint_soon();
            }
            Err(e) => {
                if self.disk.failed("writing the revision file", &e).is_none() {
                    log::warn!(error:% = e; "probing the state folder failed");
                }
            }
        }
    }

    /// The error for a failed write of `what`: a full or read-only disk turns the store
    /// read-only (`StoreError::Unwritable`); anything else is an I/O error.
    fn write_failed(&self, what: &str, e: io::Error) -> StoreError {
        match self.disk.failed(what, &e) {
            Some(refused) => {
                self.checkpoints.nudge();
                refused
            }
            None => io_err(what)(e),
        }
    }

    /// Asks the checkpointer to write changed report files soon.
    fn checkpoint_soon(&self) {
        self.checkpoints.request();
    }
}

/// The metadata map's file in `state_dir`.
const METADATA_FILE: &str = "metadata.json";
/// The secret index's file in `state_dir`.
const SECRETS_FILE: &str = "secrets.json";

/// Paths of the three folders under `state_dir`.
fn folders(state_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        state_dir.to_owned(),
        state_dir.join("data"),
        state_dir.join("report"),
    )
}

#[cfg(test)]
mod tests;

/// Entry points for the coverage-guided fuzz targets (`fuzz/`), compiled only there
/// (`--cfg fuzzing`). The state files themselves are fuzzed through `Store::open`.
#[cfg(fuzzing)]
pub mod fuzz {
    use super::cache::render;
    use super::journal::{decode, encode_delete, encode_put, Record};

    /// Journal replay: the valid prefix lies within the input and replays to the same
    /// records again, and the records re-encoded replay to equal records.
    pub fn journal(bytes: &[u8]) {
        let (records, valid) = decode(bytes);
        assert!(valid <= bytes.len());
        let (again, valid_again) = decode(&bytes[..valid]);
        assert_eq!(valid_again, valid);
        assert_eq!(again.len(), records.len());
        let mut encoded = Vec::new();
        for r in &records {
            let frame = match r {
                Record::Put(entry) => encode_put(&render(entry)),
                Record::Delete(key) => encode_delete(key),
            };
            for part in frame.parts() {
                encoded.extend_from_slice(part);
            }
        }
        let (round, len) = decode(&encoded);
        assert_eq!(len, encoded.len());
        assert_eq!(round.len(), records.len());
        for (a, b) in records.iter().zip(&round) {
            match (a, b) {
                (Record::Put(x), Record::Put(y)) => assert_eq!(x, y),
                (Record::Delete(x), Record::Delete(y)) => assert_eq!(x, y),
                _ => panic!("record kind changed in a round trip"),
            }
        }
    }
}
