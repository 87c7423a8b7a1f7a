//! Opening the store: folder creation, temp-file cleanup, quarantine and loading.
//!
//! Reads `metadata.json`, `secrets.json`, `data/*.json`, `report/*.json` and
//! `report-sync.json` as the Go agent or this store wrote them. The key of an entry comes
//! from its JSON, never from its file name, and the file it came from is remembered so a
//! later write replaces or removes exactly that file. A file that does not parse is moved
//! aside as `<name>.corrupt` and logged at error; of two files carrying the same key the
//! newer (by version, then mtime) wins and the other is moved aside as `<name>.stale`.
//! Nothing here runs after `open` returns.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::keys::ReportKey;
use crate::model::{DataEntry, Metadata, ReportEntry, SecretRef};

use super::apply::normalize_secrets;
use super::cache::{render, render_meta_item, Cache, DataItem, MetaItem, ReportItem, Stamp};
use super::files::{ensure_dir, Folder, CORRUPT_SUFFIX, STALE_SUFFIX};
use super::outbox::{decode_marks, MARKS_FILE};
use super::reports::KeyLocks;
use super::revision::Epochs;
use super::{folders, io_err, Store, StoreError};

pub const METADATA_FILE: &str = "metadata.json";
pub const SECRETS_FILE: &str = "secrets.json";

pub fn open(state_dir: &std::path::Path) -> Result<Store, StoreError> {
    let (s, d, r) = folders(state_dir);
    for p in [&s, &d, &r] {
        ensure_dir(p).map_err(io_err(format!("creating folder {} failed", p.display())))?;
    }
    let state = Folder::new(s);
    let data = Folder::new(d);
    let report = Folder::new(r);
    for f in [&state, &data, &report] {
        f.remove_temp_files().map_err(io_err(format!(
            "cleaning temp files in {} failed",
            f.path().display()
        )))?;
    }
    let (epochs, base) =
        Epochs::open(&state).map_err(io_err("updating the revision file failed"))?;
    let now = SystemTime::now();
    let mut cache = Cache::empty(Stamp { rev: base, at: now });
    let at = |t: SystemTime| Stamp { rev: base, at: t };
    let mut last = SystemTime::UNIX_EPOCH;

    // The Go agent writes `null` for an empty map or list.
    if let Some((m, t)) = load_json::<Option<Metadata>>(&state, METADATA_FILE) {
        let m = m.unwrap_or_default();
        let items = m
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
    if let Some((refs, t)) = load_json::<Option<Vec<SecretRef>>>(&state, SECRETS_FILE) {
        let refs = refs.unwrap_or_default();
        cache.set_secrets(normalize_secrets(refs), at(t));
        last = last.max(t);
    }

    let mut data_items: BTreeMap<String, DataItem> = BTreeMap::new();
    let mut data_time = folder_mtime(&data);
    for (name, entry, t) in load_folder::<DataEntry>(&data)? {
        if entry.key.is_empty() {
            quarantine(&data, &name, "empty key");
            continue;
        }
        data_time = data_time.max(t);
        let item = DataItem {
            body: render(&entry),
            file: name,
            stamp: at(t),
            entry,
        };
        if let Some(old) = data_items.get(&item.entry.key) {
            let keep_new = (item.entry.version, item.stamp.at) > (old.entry.version, old.stamp.at);
            let (lose, win) = if keep_new {
                (old.file.clone(), item.file.clone())
            } else {
                (item.file.clone(), old.file.clone())
            };
            set_aside_duplicate(&data, &item.entry.key, &lose, &win);
            if !keep_new {
                continue;
            }
        }
        data_items.insert(item.entry.key.clone(), item);
    }
    last = last.max(data_time);
    cache.set_data(data_items, at(data_time));

    let mut report_items: BTreeMap<String, ReportItem> = BTreeMap::new();
    let mut report_time = folder_mtime(&report);
    for (name, entry, t) in load_folder::<ReportEntry>(&report)? {
        if let Err(e) = ReportKey::parse(&entry.key) {
            quarantine(&report, &name, &e.to_string());
            continue;
        }
        report_time = report_time.max(t);
        let item = ReportItem {
            body: render(&entry),
            file: name,
            stamp: at(t),
            entry,
        };
        if let Some(old) = report_items.get(&item.entry.key) {
            let keep_new = (item.entry.version, item.stamp.at) > (old.entry.version, old.stamp.at);
            let (lose, win) = if keep_new {
                (old.file.clone(), item.file.clone())
            } else {
                (item.file.clone(), old.file.clone())
            };
            set_aside_duplicate(&report, &item.entry.key, &lose, &win);
            if !keep_new {
                continue;
            }
        }
        report_items.insert(item.entry.key.clone(), item);
    }
    last = last.max(report_time);
    for (_, item) in report_items {
        cache.put_report(item);
    }
    cache.reports_stamp = at(report_time);

    match fs::read(state.file(MARKS_FILE)) {
        Ok(bytes) => match decode_marks(&bytes) {
            Ok(marks) => cache.marks = marks,
            Err(e) => quarantine(&state, MARKS_FILE, &e.to_string()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::error!(
            "cannot read {}: {e}; every report is treated as pending",
            state.file(MARKS_FILE).display()
        ),
    }
    cache.rebuild_pending();
    cache.last_change = last.max(SystemTime::UNIX_EPOCH);
    if last == SystemTime::UNIX_EPOCH {
        cache.last_change = now;
    }
    log::info!(
        "state cache loaded: {} metadata, {} data, {} secrets, {} reports ({} pending sync), revision {}",
        cache.metadata.len(),
        cache.data.len(),
        cache.secrets.len(),
        cache.reports.len(),
        cache.pending.len(),
        cache.revision
    );

    Ok(Store {
        state,
        data,
        report,
        epochs,
        cache: RwLock::new(cache),
        apply_lock: Mutex::new(()),
        marks_lock: Mutex::new(()),
        report_locks: KeyLocks::default(),
        subscribers: RwLock::new(Vec::new()),
    })
}

fn folder_mtime(f: &Folder) -> SystemTime {
    fs::metadata(f.path())
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn quarantine(f: &Folder, name: &str, why: &str) {
    match f.move_aside(name, CORRUPT_SUFFIX) {
        Ok(to) => log::error!(
            "unusable state file {} ({why}); moved to {}",
            f.file(name).display(),
            to.display()
        ),
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

/// Reads and parses one file. `None` when it is missing (silently), unreadable
/// (logged) or unparsable (quarantined).
fn load_json<T: DeserializeOwned>(f: &Folder, name: &str) -> Option<(T, SystemTime)> {
    let path = f.file(name);
    let (bytes, mtime) = match read_with_mtime(&path) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::error!("cannot read state file {}: {e}; skipped", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some((v, mtime)),
        Err(e) => {
            quarantine(f, name, &e.to_string());
            None
        }
    }
}

fn read_with_mtime(path: &std::path::Path) -> io::Result<(Vec<u8>, SystemTime)> {
    let mut file = fs::File::open(path)?;
    let mtime = file.metadata()?.modified()?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok((bytes, mtime))
}

/// Every `*.json` file of a folder that parses as `T`, with its name and mtime, in name
/// order.
fn load_folder<T: DeserializeOwned>(
    f: &Folder,
) -> Result<Vec<(String, T, SystemTime)>, StoreError> {
    let mut names = Vec::new();
    let dir =
        fs::read_dir(f.path()).map_err(io_err(format!("listing {} failed", f.path().display())))?;
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
            _ => continue,
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some((v, t)) = load_json::<T>(f, &name) {
            out.push((name, v, t));
        }
    }
    Ok(out)
}
