//! Opening the store: folder creation, temp-file cleanup, quarantine and loading.
//!
//! Only regular files are read, never through a symbolic link and never blocking (a
//! FIFO named like a state file); anything else under a state file's name — a folder,
//! a FIFO, a socket, a device, a link — is moved aside as `<name>.corrupt` with a
//! warning, like a file that does not parse. A disk that takes no writes (full,
//! read-only) does not stop the start: the cache is loaded all the same and the store
//! starts read-only (see `disk`).
//!
//! Reads `metadata.json`, `secrets.json`, `data/*.json`, `report/*.json` and
//! `report-sync.json` as the Go agent or this store wrote them. The key of an entry comes
//! from its JSON, never from its file name, and the file it came from is remembered so a
//! later write replaces or removes exactly that file. A file that does not parse is moved
//! aside as `<name>.corrupt` and logged at error; of two files carrying the same key the
//! newer (by version, then mtime) wins and the other is moved aside as `<name>.stale`.
//! The files of a folder are read and parsed in parallel (`available_parallelism()`
//! threads over chunks of the sorted listing); quarantine and duplicate handling then run
//! in name order, as before. Then the report journal's valid prefix is replayed over the
//! report files in order and checkpointed (kept for the background checkpointer if that
//! fails), so every acknowledged write is visible and counted as pending sync.
//! Nothing here runs after `open` returns.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use super::keys::{self, ReportKey};
use crate::file_kind::describe;
use crate::model::{DataEntry, Metadata, ReportEntry, SecretRef};

use super::cache::{
    normalize_secrets, render, render_meta_item, render_report, Cache, Item, MetaItem, ReportItem,
    Stamp,
};
use super::checkpoint::{self, Checkpoints};
use super::commit::{mark_dirty, JournalState, Writes};
use super::disk::Disk;
use super::files::{
    ensure_dir, open_listed_regular, open_regular, set_aside, Folder, OpenError, CORRUPT_SUFFIX,
    STALE_SUFFIX,
};
use super::journal::{Journal, Record, JOURNAL_FILE};
use super::marks::{decode_marks, Mark, MARKS_FILE};
use super::revision::Epochs;
use super::{folders, io_err, Inner, Json, StoreError, METADATA_FILE, SECRETS_FILE};

pub fn open(state_dir: &std::path::Path) -> Result<Inner, StoreError> {
    let disk = Disk::new();
    let [state, data, report] = prepare_folders(state_dir, &disk)?;
    let (epochs, base) = Epochs::load(&state)?;
    if let Err(e) = epochs.persist(&state) {
        if disk.failed("writing the revision file", &e).is_none() {
            return Err(io_err("updating the revision file failed")(e));
        }
    }
    let now = SystemTime::now();
    let mut cache = Cache::empty(Stamp { rev: base, at: now });

    let mut last = load_state_files(&state, &mut cache, base);
    last = last.max(load_data(&data, &mut cache, base)?);
    let (report_time, journal) = load_reports(&state, &report, &mut cache, base, now)?;
    last = last.max(report_time);
    cache.marks = load_marks(&state);
    cache.rebuild_pending();
    cache.last_change = if last == SystemTime::UNIX_EPOCH {
        now
    } else {
        last
    };
    log::info!(
        "state cache loaded: {} metadata, {} data, {} secrets, {} reports ({} pending sync), revision {}",
        cache.metadata.len(),
        cache.data.len(),
        cache.secrets.len(),
        cache.reports.len(),
        cache.pending.len(),
        cache.revision
    );

    let needs_checkpoint = journal.journal.len() > 0;
    let inner = Inner {
        state,
        data,
        report,
        epochs,
        cache: RwLock::new(cache),
        apply_lock: Mutex::new(0),
        marks_lock: Mutex::new(()),
        writes: Writes::new(journal),
        checkpoints: Checkpoints::default(),
        subscribers: RwLock::new(Vec::new()),
        disk,
    };
    if needs_checkpoint {
        if let Err(e) = checkpoint::checkpoint(&inner, true) {
            log::error!(error:% = e; "checkpointing the replayed report journal failed; it is kept and retried");
            inner.checkpoints.request();
        }
    }
    Ok(inner)
}

/// Creates `state/`, `data/` and `report/` (0700) and removes stray temp files there.
/// `data/` or `report/` that cannot be created on a disk taking no writes are loaded
/// as empty and the store starts read-only.
fn prepare_folders(state_dir: &std::path::Path, disk: &Disk) -> Result<[Folder; 3], StoreError> {
    let (s, d, r) = folders(state_dir);
    for p in [&s, &d, &r] {
        if let Err(e) = ensure_dir(p) {
            let what = format!("creating folder {} failed", p.display());
            if *p == s || disk.failed(&what, &e).is_none() {
                return Err(io_err(what)(e));
            }
        }
    }
    let folders = [Folder::new(s), Folder::new(d), Folder::new(r)];
    for f in &folders {
        if let Err(e) = f.remove_temp_files() {
            log::warn!(folder:% = f.path().display(), error:% = e; "cannot clean up temp files");
        }
    }
    Ok(folders)
}

/// Loads `metadata.json` and `secrets.json` into `cache` at revision `base`; returns
/// the newer of their modification times (the epoch if neither exists). The Go agent
/// writes `null` for an empty map or list.
fn load_state_files(state: &Folder, cache: &mut Cache, base: u64) -> SystemTime {
    let at = |t: SystemTime| Stamp { rev: base, at: t };
    let mut last = SystemTime::UNIX_EPOCH;
    if let Some((m, t)) = load_json::<Option<Metadata>>(state, METADATA_FILE) {
        let items = m
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let body = render_meta_item(&k, &v);
                let item = MetaItem {
                    value: v,
                    body,
                    stamp: at(t),
                };
                (k, item)
            })
            .collect();
        cache.set_metadata(items, at(t));
        last = last.max(t);
    }
    if let Some((refs, t)) = load_json::<Option<Vec<SecretRef>>>(state, SECRETS_FILE) {
        cache.set_secrets(normalize_secrets(refs.unwrap_or_default()), at(t));
        last = last.max(t);
    }
    last
}

/// Loads `data/` into `cache` at revision `base`; returns the newest time seen.
fn load_data(data: &Folder, cache: &mut Cache, base: u64) -> Result<SystemTime, StoreError> {
    let (items, newest) = load_entries::<DataEntry>(data, base, |e| {
        (!e.key.is_empty())
            .then_some(())
            .ok_or_else(|| "empty key".to_owned())
    })?;
    cache.set_data(
        items,
        Stamp {
            rev: base,
            at: newest,
        },
    );
    Ok(newest)
}

/// Loads `report/`, replays the report journal over it and puts the result into
/// `cache` at revision `base` (replayed entries stamped `now`). Returns the newest time
/// seen and the journal with the keys whose files it made stale.
fn load_reports(
    state: &Folder,
    report: &Folder,
    cache: &mut Cache,
    base: u64,
    now: SystemTime,
) -> Result<(SystemTime, JournalState), StoreError> {
    let (mut reports, mut newest) = load_entries::<ReportEntry>(report, base, |e| {
        ReportKey::parse(&e.key)
            .map(drop)
            .map_err(|e| e.to_string())
    })?;
    let (journal, replayed) = replay_journal(state, &mut reports, Stamp { rev: base, at: now })?;
    if replayed > 0 {
        newest = newest.max(now);
    }
    for (_, item) in reports {
        cache.put_report(item);
    }
    cache.reports_stamp = Stamp {
        rev: base,
        at: newest,
    };
    Ok((newest, journal))
}

/// What an entry file holds, as far as loading a folder of them is concerned.
trait Entry: DeserializeOwned + serde::Serialize + Send {
    fn key(&self) -> &str;
    fn version(&self) -> i64;
    /// The entry with its rendered body (on the loader threads too).
    fn with_body(self) -> (Self, Json)
    where
        Self: Sized,
    {
        let body = render(&self);
        (self, body)
    }
}

impl Entry for DataEntry {
    fn key(&self) -> &str {
        &self.key
    }
    fn version(&self) -> i64 {
        self.version
    }
}

impl Entry for ReportEntry {
    fn key(&self) -> &str {
        &self.key
    }
    fn version(&self) -> i64 {
        self.version
    }
    /// A report keeps its payload once: inside its body.
    fn with_body(mut self) -> (Self, Json) {
        let body = render_report(&mut self);
        (self, body)
    }
}

/// Loads a folder of entry files (`data/` or `report/`), keyed by the key inside each
/// and stamped with revision `base` and the file's mtime. A file whose entry `check`
/// refuses is quarantined with `check`'s reason; of two files carrying the same key the
/// newer (by version, then mtime) wins and the other is moved aside as `<name>.stale`.
/// Also returns the newest time seen: the folder's mtime or that of any usable file.
fn load_entries<E: Entry>(
    f: &Folder,
    base: u64,
    check: fn(&E) -> Result<(), String>,
) -> Result<(BTreeMap<String, Item<E>>, SystemTime), StoreError> {
    let mut items: BTreeMap<String, Item<E>> = BTreeMap::new();
    let mut newest = folder_mtime(f);
    for (file, (entry, body), modified) in load_folder(f, E::with_body)? {
        if let Err(why) = check(&entry) {
            quarantine(f, &file, &why);
            continue;
        }
        newest = newest.max(modified);
        let new = Item {
            entry,
            body,
            file,
            stamp: Stamp {
                rev: base,
                at: modified,
            },
        };
        if let Some(old) = items.get(new.entry.key()) {
            let keep_new =
                (new.entry.version(), new.stamp.at) > (old.entry.version(), old.stamp.at);
            let (lose, win) = if keep_new {
                (&old.file, &new.file)
            } else {
                (&new.file, &old.file)
            };
            set_aside_duplicate(f, new.entry.key(), lose, win);
            if !keep_new {
                continue;
            }
        }
        items.insert(new.entry.key().to_owned(), new);
    }
    Ok((items, newest))
}

/// Opens the report journal and replays its valid prefix over `reports` (stamped
/// `stamp`), in order. Returns the journal with the keys whose files the replay made
/// stale (for the checkpointer), and how many records were replayed.
fn replay_journal(
    state: &Folder,
    reports: &mut BTreeMap<String, ReportItem>,
    stamp: Stamp,
) -> Result<(JournalState, usize), StoreError> {
    let journal_path = state.file(JOURNAL_FILE);
    if let Ok(meta) = fs::symlink_metadata(&journal_path) {
        if !meta.file_type().is_file() {
            quarantine(state, JOURNAL_FILE, describe(meta.file_type()));
        }
    }
    let (journal, records, dropped, created) =
        Journal::open(&journal_path).map_err(io_err(format!(
            "opening the report journal {} failed",
            journal_path.display()
        )))?;
    if created {
        if let Err(e) = state.sync() {
            log::warn!(error:% = e; "cannot fsync the state folder after creating the report journal");
        }
    }
    if dropped > 0 {
        log::warn!(bytes = dropped; "report journal ended in a torn or corrupt record; ignored it");
    }
    let replayed = records.len();
    let mut dirty = BTreeMap::new();
    for record in records {
        match record {
            Record::Put(mut entry) => {
                let Ok(key) = ReportKey::parse(&entry.key) else {
                    log::error!(key:? = entry.key; "report journal record with an invalid key; skipped");
                    continue;
                };
                let old = reports.get(&entry.key).map(|i| i.file.clone());
                let file = keys::report_file_name(&key, old.clone());
                mark_dirty(
                    &mut dirty,
                    &entry.key,
                    old.as_deref().filter(|o| *o != file),
                );
                let item = ReportItem {
                    body: render_report(&mut entry),
                    file,
                    stamp,
                    entry,
                };
                reports.insert(item.entry.key.clone(), item);
            }
            Record::Delete(key) => {
                if let Some(old) = reports.remove(&key) {
                    mark_dirty(&mut dirty, &key, Some(&old.file));
                }
            }
        }
    }
    if replayed > 0 {
        log::info!(records = replayed, keys = dirty.len(); "replayed the report journal");
    }
    Ok((JournalState { journal, dirty }, replayed))
}

/// The sync marks from `report-sync.json`; none if it is missing, unreadable (logged:
/// every report is then pending) or unparsable (quarantined).
fn load_marks(state: &Folder) -> HashMap<String, Mark> {
    match read_with_mtime(&state.file(MARKS_FILE), open_regular) {
        Ok((bytes, _)) => match decode_marks(&bytes) {
            Ok(marks) => return marks,
            Err(e) => quarantine(state, MARKS_FILE, &e.to_string()),
        },
        Err(OpenError::Missing) => {}
        Err(OpenError::NotRegular(kind)) => quarantine(state, MARKS_FILE, kind),
        Err(OpenError::Io(e)) => log::error!(
            "cannot read {}: {e}; every report is treated as pending",
            state.file(MARKS_FILE).display()
        ),
    }
    HashMap::new()
}

fn folder_mtime(f: &Folder) -> SystemTime {
    fs::metadata(f.path())
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn quarantine(f: &Folder, name: &str, why: &str) {
    match set_aside(&f.file(name), CORRUPT_SUFFIX) {
        Ok(to) => {
            log::error!(
                "unusable state file {} ({why}); moved to {}",
                f.file(name).display(),
                to.display()
            );
            // A lost rename only repeats the quarantine at the next start.
            if let Err(e) = f.sync() {
                log::warn!(folder:% = f.path().display(), error:% = e; "cannot fsync the folder after a quarantine");
            }
        }
        Err(e) => log::error!(
            "unusable state file {} ({why}); could not move it aside: {e}",
            f.file(name).display()
        ),
    }
}

fn set_aside_duplicate(f: &Folder, key: &str, lose: &str, win: &str) {
    match f.move_aside(lose, STALE_SUFFIX) {
        Ok(to) => log::warn!(
            "two files carry key {key:?}: keeping {win}, moved the older {lose} to {}",
            to.display()
        ),
        Err(e) => log::error!(
            "two files carry key {key:?}: keeping {win}, could not move {lose} aside: {e}"
        ),
    }
}

/// What reading and parsing one file gave.
enum Parsed<T> {
    Ok(T, SystemTime),
    Missing,
    Unreadable(io::Error),
    /// Unparsable, or not a regular file: moved aside.
    Invalid(String),
}

/// Reads and parses one file; touches nothing (safe to run on any thread).
fn read_parse<T: DeserializeOwned>(f: &Folder, name: &str, open: Opener) -> Parsed<T> {
    let (bytes, mtime) = match read_with_mtime(&f.file(name), open) {
        Ok(x) => x,
        Err(OpenError::Missing) => return Parsed::Missing,
        Err(OpenError::NotRegular(kind)) => return Parsed::Invalid(format!("it is {kind}")),
        Err(OpenError::Io(e)) => return Parsed::Unreadable(e),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Parsed::Ok(v, mtime),
        Err(e) => Parsed::Invalid(e.to_string()),
    }
}

/// Acts on a parse result: `None` when the file is missing (silently), unreadable
/// (logged) or unparsable (quarantined).
fn settle<T>(f: &Folder, name: &str, parsed: Parsed<T>) -> Option<(T, SystemTime)> {
    match parsed {
        Parsed::Ok(v, t) => Some((v, t)),
        Parsed::Missing => None,
        Parsed::Unreadable(e) => {
            log::error!(
                "cannot read state file {}: {e}; skipped",
                f.file(name).display()
            );
            None
        }
        Parsed::Invalid(why) => {
            quarantine(f, name, &why);
            None
        }
    }
}

/// Reads and parses one file. `None` when it is missing (silently), unreadable
/// (logged) or unparsable (quarantined).
fn load_json<T: DeserializeOwned>(f: &Folder, name: &str) -> Option<(T, SystemTime)> {
    settle(f, name, read_parse(f, name, open_regular))
}

/// How a state file is opened: `open_regular`, or `open_listed_regular` for a name a
/// folder listing showed as a regular file.
type Opener = fn(&std::path::Path) -> Result<(fs::File, fs::Metadata), OpenError>;

/// Reads a regular file whole, with its mtime: open, one `fstat` (its type, size and
/// mtime), the reads, close.
fn read_with_mtime(
    path: &std::path::Path,
    open: Opener,
) -> Result<(Vec<u8>, SystemTime), OpenError> {
    let (file, meta) = open(path)?;
    let read = (|| {
        let mtime = meta.modified()?;
        // Sized from the fstat already made, and read through `Take` so that std does
        // not ask the kernel for the size again (an fstat and an lseek per file).
        let size = usize::try_from(meta.len()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(size.saturating_add(1));
        io::Read::read_to_end(&mut io::Read::take(file, u64::MAX), &mut bytes)?;
        Ok((bytes, mtime))
    })();
    read.map_err(OpenError::Io)
}

/// Files per loader thread below which fewer threads are used.
const MIN_FILES_PER_THREAD: usize = 64;

/// Every `*.json` file of a folder that parses as `T`, turned into `U` by `prepare`,
/// with its name and mtime, in name order. Files are read, parsed and prepared in
/// parallel; quarantining runs afterwards, in order.
fn load_folder<T: DeserializeOwned, U: Send>(
    f: &Folder,
    prepare: fn(T) -> U,
) -> Result<Vec<(String, U, SystemTime)>, StoreError> {
    let mut names = Vec::new();
    let dir = match fs::read_dir(f.path()) {
        Ok(d) => d,
        // Not created: a disk that took no writes at start (see `prepare_folders`).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {} failed", f.path().display()))(e)),
    };
    for entry in dir {
        let entry = entry.map_err(io_err(format!("listing {} failed", f.path().display())))?;
        let Ok(name) = entry.file_name().into_string() else {
            log::warn!(
                "ignoring state file with a non-UTF-8 name in {}",
                f.path().display()
            );
            continue;
        };
        if !name.ends_with(".json") || name.starts_with(".") && name.contains(".tmp") {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_file() => names.push(name),
            Ok(t) => quarantine(f, &name, describe(t)),
            Err(e) => {
                log::warn!(file:% = entry.path().display(), error:% = e; "cannot tell what this is; skipped")
            }
        }
    }
    names.sort();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(names.len().div_ceil(MIN_FILES_PER_THREAD))
        .max(1);
    let chunk = names.len().div_ceil(threads).max(1);
    let parsed: Vec<Vec<Parsed<U>>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|n| match read_parse::<T>(f, n, open_listed_regular) {
                            Parsed::Ok(v, t) => Parsed::Ok(prepare(v), t),
                            Parsed::Missing => Parsed::Missing,
                            Parsed::Unreadable(e) => Parsed::Unreadable(e),
                            Parsed::Invalid(why) => Parsed::Invalid(why),
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().map_err(|_| {
                    io_err("loading state files")(io::Error::other("loader thread panicked"))
                })
            })
            .collect::<Result<_, _>>()
    })?;
    let mut out = Vec::with_capacity(names.len());
    for (name, p) in names.into_iter().zip(parsed.into_iter().flatten()) {
        if let Some((v, t)) = settle(f, &name, p) {
            out.push((name, v, t));
        }
    }
    Ok(out)
}
