//! Store tests on real files in temp folders.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;

use super::*;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

fn rk(s: &str) -> ReportKey {
    ReportKey::parse(s).unwrap()
}

fn text(j: &Json) -> &str {
    std::str::from_utf8(j).unwrap()
}

fn parse(j: &Json) -> Value {
    serde_json::from_slice(j).unwrap()
}

fn entry(key: &str, payload: &str, version: i64) -> DataEntry {
    DataEntry {
        key: key.to_owned(),
        content_type: "application/json".to_owned(),
        payload: raw(payload),
        version,
        updated_at: "2026-03-01T12:00:00Z".to_owned(),
    }
}

fn put(
    st: &Store,
    key: &str,
    payload: &str,
    if_match: Option<i64>,
) -> Result<Versioned<Json>, StoreError> {
    st.put_report(&rk(key), "application/json".into(), raw(payload), if_match)
}

/// Every file and folder below `root`, as paths relative to it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let state = root.join("state");
    Fixture {
        _dir: dir,
        root,
        state,
    }
}

#[test]
fn creates_private_folders() {
    let f = fixture();
    let _st = Store::open(&f.state).unwrap();
    for d in ["", "data", "report"] {
        let m = fs::metadata(f.state.join(d)).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o777, 0o700, "{d}");
    }
    assert_eq!(fs::read_to_string(f.state.join("revision")).unwrap(), "1\n");
}

#[test]
fn loads_a_plexd_cache_unchanged() {
    let f = fixture();
    fs::create_dir_all(f.state.join("data")).unwrap();
    fs::create_dir_all(f.state.join("report")).unwrap();
    let files = [
        ("metadata.json", "{\"region\":\"eu-west\",\"role\":\"edge\"}"),
        (
            "secrets.json",
            "[{\"key\":\"tls\",\"version\":1},{\"key\":\"db\",\"version\":3}]",
        ),
        (
            "data/database-config.json",
            "{\n  \"key\": \"database-config\",\n  \"content_type\": \"application/json\",\n  \"payload\": {\"host\": \"db\",  \"port\": 5432},\n  \"version\": 2,\n  \"updated_at\": \"2026-03-01T12:00:00.5+01:00\"\n}",
        ),
        (
            "data/feature-flags.json",
            "{\"key\":\"feature-flags\",\"content_type\":\"application/json\",\"payload\":[1,2],\"version\":7,\"updated_at\":\"2026-03-01T12:00:00Z\"}",
        ),
        (
            "report/app-health.json",
            "{\"key\":\"app-health\",\"content_type\":\"application/json\",\"payload\":{\"status\":\"healthy\"},\"version\":4,\"updated_at\":\"2026-03-01T12:00:00Z\"}",
        ),
    ];
    for (name, content) in files {
        fs::write(f.state.join(name), content).unwrap();
    }
    let st = Store::open(&f.state).unwrap();
    assert_eq!(
        text(&st.summary().value),
        "{\"metadata\":{\"region\":\"eu-west\",\"role\":\"edge\"},\
         \"data_keys\":[{\"key\":\"database-config\",\"version\":2,\"content_type\":\"application/json\"},\
         {\"key\":\"feature-flags\",\"version\":7,\"content_type\":\"application/json\"}],\
         \"secret_keys\":[{\"key\":\"db\",\"version\":3},{\"key\":\"tls\",\"version\":1}],\
         \"report_keys\":[{\"key\":\"app-health\",\"version\":4}]}"
    );
    let d = st.data_entry("database-config").unwrap();
    assert_eq!(
        text(&d.value),
        "{\"key\":\"database-config\",\"content_type\":\"application/json\",\
         \"payload\":{\"host\": \"db\",  \"port\": 5432},\"version\":2,\
         \"updated_at\":\"2026-03-01T12:00:00.5+01:00\"}"
    );
    assert_eq!(d.mod_rev, st.revision());
    assert_eq!(
        d.modified,
        fs::metadata(f.state.join("data/database-config.json"))
            .unwrap()
            .modified()
            .unwrap()
    );
    assert_eq!(
        text(&st.metadata_value("role").unwrap().value),
        "{\"key\":\"role\",\"value\":\"edge\"}"
    );
    assert!(st.metadata_value("nope").is_none());
    let r = st.report(&rk("app-health")).unwrap();
    assert_eq!(parse(&r.value)["version"], 4);
    // No report-sync.json: everything is pending (at-least-once).
    assert_eq!(st.pending_count(), 1);
    // Loading changed no file.
    for (name, content) in files {
        assert_eq!(fs::read_to_string(f.state.join(name)).unwrap(), content);
    }
    let c = st.counts();
    assert_eq!((c.metadata, c.data, c.secrets, c.reports), (2, 2, 2, 1));
    // The next version continues from the loaded one.
    let v = put(&st, "app-health", "1", Some(4)).unwrap();
    assert_eq!(parse(&v.value)["version"], 5);
}

#[test]
fn hostile_control_plane_keys_stay_inside_the_data_folder() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    let long = "k".repeat(300);
    let hostile = [
        "..",
        ".",
        "../x",
        "a/b",
        "a\0b",
        "/etc/passwd",
        ".hidden",
        "../../../../tmp/evil",
        "\\..\\x",
    ];
    let mut entries: Vec<DataEntry> = hostile.iter().map(|k| entry(k, "1", 1)).collect();
    entries.push(entry(&long, "1", 1));
    entries.push(entry("", "1", 1));
    let out = st
        .apply_control_plane(CpUpdate {
            data: Some(entries),
            ..CpUpdate::default()
        })
        .unwrap();
    assert_eq!(out.skipped_keys, vec![String::new(), long.clone()]);
    assert_eq!(out.data_written, hostile.len());
    for path in walk(&f.root) {
        assert!(path.starts_with("state"), "{path:?} outside state/");
        let depth = path.components().count();
        assert!(depth <= 3, "{path:?}");
        if depth == 3 {
            assert!(path.starts_with("state/data"), "{path:?}");
        }
    }
    assert_eq!(names(&f.state.join("data")).len(), hostile.len());
    for k in hostile {
        let e = st.data_entry(k).unwrap();
        assert_eq!(parse(&e.value)["key"], k);
    }
    assert!(st.data_entry(&long).is_none());
    drop(st);
    let st = Store::open(&f.state).unwrap();
    for k in hostile {
        assert!(st.data_entry(k).is_some(), "{k:?} not reloaded");
    }
    assert_eq!(st.counts().data, hostile.len());
}

#[test]
fn corrupt_files_are_quarantined_and_the_rest_loads() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    put(&st, "good", "1", None).unwrap();
    st.apply_control_plane(CpUpdate {
        metadata: Some([("a".to_owned(), "b".to_owned())].into()),
        data: Some(vec![entry("d", "1", 1)]),
        ..CpUpdate::default()
    })
    .unwrap();
    drop(st);
    fs::write(f.state.join("report/bad.json"), "{\"key\": ").unwrap();
    fs::write(
        f.state.join("report/dots.json"),
        "{\"key\":\"..\",\"content_type\":\"x\",\"payload\":1,\"version\":1,\"updated_at\":\"x\"}",
    )
    .unwrap();
    fs::write(f.state.join("data/bad.json"), "[1,2").unwrap();
    fs::write(f.state.join("secrets.json"), "{}").unwrap();
    let st = Store::open(&f.state).unwrap();
    assert!(st.report(&rk("good")).is_some());
    assert!(st.data_entry("d").is_some());
    assert!(st.metadata_value("a").is_some());
    assert_eq!(text(&st.secret_list().value), "[]");
    assert_eq!(st.counts().reports, 1);
    let reports = names(&f.state.join("report"));
    assert!(reports.contains("bad.json.corrupt"), "{reports:?}");
    assert!(reports.contains("dots.json.corrupt"), "{reports:?}");
    assert!(names(&f.state.join("data")).contains("bad.json.corrupt"));
    assert!(names(&f.state).contains("secrets.json.corrupt"));
    // A second open does not trip over the quarantined files.
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(st.counts().reports, 1);
}

#[test]
fn stray_temp_files_are_removed_on_open() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    put(&st, "x.tmp-1", "1", None).unwrap();
    drop(st);
    fs::write(f.state.join("report/.a.json.tmp-99-3"), "{").unwrap();
    fs::write(f.state.join("data/b.json.tmp"), "{").unwrap();
    fs::write(f.state.join(".metadata.json.tmp-1-1"), "{").unwrap();
    let st = Store::open(&f.state).unwrap();
    assert_eq!(
        names(&f.state.join("report")),
        BTreeSet::from(["x.tmp-1.json".to_owned()])
    );
    assert!(names(&f.state.join("data")).is_empty());
    assert_eq!(
        names(&f.state),
        BTreeSet::from([
            "data".into(),
            "report".into(),
            "report.journal".into(),
            "revision".into()
        ])
    );
    assert!(st.report(&rk("x.tmp-1")).is_some());
}

#[test]
fn duplicate_files_for_one_key_keep_the_newer() {
    let f = fixture();
    fs::create_dir_all(f.state.join("report")).unwrap();
    let e = |v: i64| {
        format!("{{\"key\":\"a b\",\"content_type\":\"t\",\"payload\":{v},\"version\":{v},\"updated_at\":\"2026-03-01T12:00:00Z\"}}")
    };
    fs::write(f.state.join("report/a b.json"), e(3)).unwrap();
    fs::write(f.state.join("report/a%20b.json"), e(2)).unwrap();
    let st = Store::open(&f.state).unwrap();
    assert_eq!(parse(&st.report(&rk("a b")).unwrap().value)["version"], 3);
    assert!(names(&f.state.join("report")).contains("a%20b.json.stale"));
    // Writing moves the key to its canonical file and removes the Go agent's one (at
    // the checkpoint that writes the journaled change to the files).
    put(&st, "a b", "4", Some(3)).unwrap();
    st.flush().unwrap();
    assert_eq!(
        names(&f.state.join("report")),
        BTreeSet::from(["a%20b.json".to_owned(), "a%20b.json.stale".to_owned()])
    );
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(parse(&st.report(&rk("a b")).unwrap().value)["version"], 4);
}

#[test]
fn put_get_if_match_delete_recreate() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    assert!(matches!(
        put(&st, "k", "1", Some(1)),
        Err(StoreError::Conflict { current: None })
    ));
    let v1 = put(&st, "k", "{\"a\": [1, 2]}", Some(0)).unwrap();
    let e = parse(&v1.value);
    assert_eq!(e["version"], 1);
    assert_eq!(e["key"], "k");
    assert_eq!(e["content_type"], "application/json");
    assert!(text(&v1.value).contains("\"payload\":{\"a\": [1, 2]}"));
    let ts = e["updated_at"].as_str().unwrap();
    assert!(crate::timefmt::parse_rfc3339(ts).is_some() && ts.ends_with('Z'));
    assert_eq!(st.report(&rk("k")).unwrap(), v1);
    // The file holds exactly the served body (once checkpointed from the journal).
    st.flush().unwrap();
    assert_eq!(fs::read(f.state.join("report/k.json")).unwrap(), &*v1.value);
    assert_eq!(
        fs::metadata(f.state.join("report/k.json")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(matches!(
        put(&st, "k", "2", Some(0)),
        Err(StoreError::Conflict { current: Some(1) })
    ));
    assert!(matches!(
        put(&st, "k", "2", Some(5)),
        Err(StoreError::Conflict { current: Some(1) })
    ));
    assert_eq!(
        parse(&put(&st, "k", "2", Some(1)).unwrap().value)["version"],
        2
    );
    assert_eq!(
        parse(&put(&st, "k", "3", None).unwrap().value)["version"],
        3
    );
    assert_eq!(
        text(&st.report_list().value),
        "[{\"key\":\"k\",\"version\":3}]"
    );
    let rev = st.delete_report(&rk("k")).unwrap();
    assert_eq!(rev, st.revision());
    assert!(st.report(&rk("k")).is_none());
    st.flush().unwrap();
    assert!(!f.state.join("report/k.json").exists());
    assert!(matches!(
        st.delete_report(&rk("k")),
        Err(StoreError::NotFound)
    ));
    assert_eq!(text(&st.report_list().value), "[]");
    assert_eq!(
        parse(&put(&st, "k", "4", Some(0)).unwrap().value)["version"],
        1
    );
    // Keys with reserved characters live in encoded file names.
    put(&st, "a b:c%", "1", None).unwrap();
    st.flush().unwrap();
    assert!(f.state.join("report/a%20b%3Ac%25.json").exists());
    // A valid key whose encoded name would be too long (200 bytes → 600) is stored under
    // a hashed name, and comes back after a restart, from the journal and from the file.
    let wide = "ü".repeat(100);
    put(&st, &wide, "1", None).unwrap();
    drop(st);
    let st = Store::open(&f.state).unwrap();
    let key = rk(&wide);
    assert_eq!(parse(&st.report(&key).unwrap().value)["payload"], 1);
    st.flush().unwrap();
    let file = super::keys::report_file_name(&key, None);
    assert!(file.starts_with('~'));
    assert!(f.state.join("report").join(&file).exists());
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(parse(&st.report(&key).unwrap().value)["version"], 1);
}

#[test]
fn revisions_increase_and_survive_reopen() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    let r0 = st.revision();
    let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = changes.clone();
    st.subscribe(Box::new(move |c| seen.lock().unwrap().push(*c)));
    let a = put(&st, "a", "1", None).unwrap();
    assert!(a.mod_rev > r0);
    assert_eq!(a.mod_rev, st.revision());
    assert_eq!(st.report_list().mod_rev, a.mod_rev);
    assert_eq!(st.summary().mod_rev, a.mod_rev);
    let data_rev = st.data_list().mod_rev;
    let b = put(&st, "b", "1", None).unwrap();
    assert!(b.mod_rev > a.mod_rev);
    // Untouched resources keep their revision.
    assert_eq!(st.report(&rk("a")).unwrap().mod_rev, a.mod_rev);
    assert_eq!(st.data_list().mod_rev, data_rev);
    let out = st
        .apply_control_plane(CpUpdate {
            metadata: Some([("m".to_owned(), "1".to_owned())].into()),
            data: Some(vec![entry("d", "1", 1)]),
            secret_refs: Some(vec![SecretRef {
                key: "s".into(),
                version: 1,
            }]),
        })
        .unwrap();
    assert!(out.changed());
    let rev = st.revision();
    assert_eq!(rev, b.mod_rev + 1, "one apply is one revision");
    for v in [
        st.metadata(),
        st.data_list(),
        st.secret_list(),
        st.summary(),
    ] {
        assert_eq!(v.mod_rev, rev);
    }
    assert_eq!(st.data_entry("d").unwrap().mod_rev, rev);
    assert_eq!(st.metadata_value("m").unwrap().mod_rev, rev);
    // An identical update changes nothing and takes no revision.
    let out = st
        .apply_control_plane(CpUpdate {
            metadata: Some([("m".to_owned(), "1".to_owned())].into()),
            data: Some(vec![entry("d", "1", 1)]),
            secret_refs: Some(vec![SecretRef {
                key: "s".into(),
                version: 1,
            }]),
        })
        .unwrap();
    assert!(!out.changed());
    assert_eq!(st.revision(), rev);
    let seen: Vec<Change> = changes.lock().unwrap().clone();
    let kinds: Vec<ChangeKind> = seen.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Reports,
            ChangeKind::Reports,
            ChangeKind::Metadata,
            ChangeKind::Data,
            ChangeKind::Secrets
        ]
    );
    assert_eq!(seen[1].revision, b.mod_rev);
    drop(st);
    let st = Store::open(&f.state).unwrap();
    let reopened = st.revision();
    assert!(reopened > rev, "{reopened} <= {rev}");
    assert_eq!(st.report(&rk("a")).unwrap().mod_rev, reopened);
    let c = put(&st, "c", "1", None).unwrap();
    assert!(c.mod_rev > reopened);
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert!(st.revision() > c.mod_rev);
}

#[test]
fn apply_rewrites_only_what_changed() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    let meta: Metadata = [("a".to_owned(), "1".to_owned())].into();
    st.apply_control_plane(CpUpdate {
        metadata: Some(meta.clone()),
        data: Some(vec![
            entry("keep", "{\"x\":1}", 1),
            entry("change", "1", 1),
            entry("gone", "1", 1),
        ]),
        secret_refs: Some(vec![SecretRef {
            key: "s".into(),
            version: 1,
        }]),
    })
    .unwrap();
    let ident = |p: &str| {
        let m = fs::metadata(f.state.join(p)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let keep = ident("data/keep.json");
    let change = ident("data/change.json");
    let metadata = ident("metadata.json");
    let secrets = ident("secrets.json");
    let keep_rev = st.data_entry("keep").unwrap().mod_rev;
    thread::sleep(Duration::from_millis(20));
    let mut changed = entry("change", "1", 1);
    changed.updated_at = "2026-03-02T00:00:00Z".into();
    let out = st
        .apply_control_plane(CpUpdate {
            metadata: Some(meta),
            data: Some(vec![
                entry("keep", "{\"x\":1}", 1),
                changed,
                entry("new", "2", 1),
            ]),
            secret_refs: Some(vec![SecretRef {
                key: "s".into(),
                version: 2,
            }]),
        })
        .unwrap();
    assert_eq!(
        out,
        ApplyOutcome {
            metadata_changed: false,
            data_written: 2,
            data_removed: 1,
            secrets_changed: true,
            skipped_keys: vec![],
        }
    );
    assert_eq!(ident("data/keep.json"), keep);
    assert_eq!(ident("metadata.json"), metadata);
    assert_ne!(ident("data/change.json"), change);
    assert_ne!(ident("secrets.json"), secrets);
    assert!(!f.state.join("data/gone.json").exists());
    assert!(st.data_entry("gone").is_none());
    assert_eq!(st.data_entry("keep").unwrap().mod_rev, keep_rev);
    assert_eq!(
        names(&f.state.join("data")),
        BTreeSet::from(["change.json".into(), "keep.json".into(), "new.json".into()])
    );
    // The same payload value in other bytes is no change: the entry keeps its file,
    // its bytes as first received and its revision.
    let keep_body = st.data_entry("keep").unwrap().value;
    let out = st
        .apply_control_plane(CpUpdate {
            data: Some(vec![
                entry("keep", "{ \"x\" : 1.0 }", 1),
                entry("change", "1e0", 1),
                entry("new", "2", 1),
            ]),
            ..CpUpdate::default()
        })
        .unwrap();
    assert_eq!((out.data_written, out.data_removed), (1, 0), "{out:?}");
    assert_eq!(ident("data/keep.json"), keep);
    assert_eq!(st.data_entry("keep").unwrap().mod_rev, keep_rev);
    assert_eq!(st.data_entry("keep").unwrap().value, keep_body);
    // Another value is a change.
    let out = st
        .apply_control_plane(CpUpdate {
            data: Some(vec![entry("keep", "{\"x\": 2}", 1)]),
            ..CpUpdate::default()
        })
        .unwrap();
    assert_eq!((out.data_written, out.data_removed), (1, 2));
    assert_eq!(parse(&st.secret_list().value)[0]["version"], 2);
    assert_eq!(text(&st.metadata().value), "{\"a\":\"1\"}");
}

#[test]
fn readers_never_see_metadata_and_data_from_different_updates() {
    let f = fixture();
    let st = std::sync::Arc::new(Store::open(&f.state).unwrap());
    let update = |gen: i64| CpUpdate {
        metadata: Some([("gen".to_owned(), gen.to_string())].into()),
        data: Some(vec![entry("gen", &gen.to_string(), gen)]),
        secret_refs: Some(vec![SecretRef {
            key: "gen".into(),
            version: gen,
        }]),
    };
    st.apply_control_plane(update(1)).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let checked = std::sync::Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (st, stop, checked) = (st.clone(), stop.clone(), checked.clone());
            thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let s = st.summary();
                    let v = parse(&s.value);
                    let m: i64 = v["metadata"]["gen"].as_str().unwrap().parse().unwrap();
                    let d = v["data_keys"][0]["version"].as_i64().unwrap();
                    let sk = v["secret_keys"][0]["version"].as_i64().unwrap();
                    assert_eq!((m, m), (d, sk), "torn summary at revision {}", s.mod_rev);
                    assert!(m >= last, "went backwards");
                    last = m;
                    // The separate resources must agree with each other too, under one revision.
                    let rev = st.revision();
                    let md = st.metadata();
                    let dl = st.data_list();
                    if md.mod_rev <= rev && dl.mod_rev <= rev && st.revision() == rev {
                        let m: i64 = parse(&md.value)["gen"].as_str().unwrap().parse().unwrap();
                        let d = parse(&dl.value)[0]["version"].as_i64().unwrap();
                        assert_eq!(m, d, "metadata and data from different updates");
                    }
                    checked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for gen in 2..=150 {
        st.apply_control_plane(update(gen)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(checked.load(Ordering::Relaxed) > 10);
}

#[test]
fn outbox_tracks_puts_deletes_and_acknowledgements() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    assert!(st.pending_batch(1000, 1 << 20).is_none());
    put(&st, "a", "1", None).unwrap();
    put(&st, "a", "2", None).unwrap();
    put(&st, "b", "1", None).unwrap();
    assert_eq!(st.pending_count(), 2);
    let batch = st.pending_batch(1000, 1 << 20).unwrap();
    assert_eq!(
        batch.request.entries.len(),
        2,
        "each key once, latest state"
    );
    assert_eq!(batch.request.entries[0].version, 2);
    assert!(batch.request.deleted.is_empty());
    st.mark_synced(&batch).unwrap();
    assert_eq!(st.pending_count(), 0);
    assert!(st.pending_batch(1000, 1 << 20).is_none());

    // Deleting a synced key is a pending deletion.
    st.delete_report(&rk("a")).unwrap();
    let batch = st.pending_batch(1000, 1 << 20).unwrap();
    assert!(batch.request.entries.is_empty());
    assert_eq!(batch.request.deleted, vec!["a".to_owned()]);
    st.mark_synced(&batch).unwrap();
    assert_eq!(st.pending_count(), 0);

    // Created and deleted before any sync: nothing to send.
    put(&st, "c", "1", None).unwrap();
    st.delete_report(&rk("c")).unwrap();
    assert_eq!(st.pending_count(), 0);

    // Deleted and recreated at version 1 again: the new entry is sent.
    st.delete_report(&rk("b")).unwrap();
    thread::sleep(Duration::from_millis(2));
    put(&st, "b", "9", None).unwrap();
    let batch = st.pending_batch(1000, 1 << 20).unwrap();
    assert_eq!(batch.request.entries.len(), 1);
    assert_eq!(batch.request.entries[0].version, 1);
    assert_eq!(batch.request.entries[0].payload.get(), "9");

    // A write that lands while the batch is in flight stays pending.
    put(&st, "b", "10", None).unwrap();
    st.mark_synced(&batch).unwrap();
    assert_eq!(st.pending_count(), 1);
    let next = st.pending_batch(1000, 1 << 20).unwrap();
    assert_eq!(next.request.entries[0].version, 2);

    // The pending set is rebuilt from disk after a restart.
    put(&st, "d", "1", None).unwrap();
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(st.pending_count(), 2);
    let batch = st.pending_batch(1000, 1 << 20).unwrap();
    let keys: Vec<&str> = batch.keys().collect();
    assert_eq!(keys, ["b", "d"]);
    st.drop_rejected(&batch).unwrap();
    assert_eq!(st.pending_count(), 0);
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(st.pending_count(), 0);
    let marks: Value =
        serde_json::from_slice(&fs::read(f.state.join("report-sync.json")).unwrap()).unwrap();
    assert_eq!(marks["b"]["version"], 2);
    assert!(marks.get("a").is_none());
}

#[test]
fn pending_deletion_survives_restart() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    put(&st, "gone", "1", None).unwrap();
    let batch = st.pending_batch(10, 1 << 20).unwrap();
    st.mark_synced(&batch).unwrap();
    st.delete_report(&rk("gone")).unwrap();
    drop(st);
    let st = Store::open(&f.state).unwrap();
    let batch = st.pending_batch(10, 1 << 20).unwrap();
    assert_eq!(batch.request.deleted, vec!["gone".to_owned()]);
}

#[test]
fn batches_are_capped_by_keys_and_bytes() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    let payload = format!("\"{}\"", "x".repeat(1000));
    for i in 0..25 {
        put(&st, &format!("k{i:02}"), &payload, None).unwrap();
    }
    let batch = st.pending_batch(10, 1 << 20).unwrap();
    assert_eq!(batch.len(), 10);
    let batch = st.pending_batch(1000, 5000).unwrap();
    let size = serde_json::to_vec(&batch.request).unwrap().len();
    assert!(size <= 5000, "{size}");
    assert!(batch.len() >= 3 && batch.len() < 5, "{}", batch.len());
    // One entry larger than the cap still goes alone.
    let batch = st.pending_batch(1000, 10).unwrap();
    assert_eq!(batch.len(), 1);
    // Draining in capped batches delivers every key exactly once.
    let mut seen = BTreeSet::new();
    while let Some(b) = st.pending_batch(7, 1 << 20) {
        for k in b.keys() {
            assert!(seen.insert(k.to_owned()));
        }
        st.mark_synced(&b).unwrap();
    }
    assert_eq!(seen.len(), 25);
}

/// A tmpfs of 256 KiB mounted over a folder, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> Option<SmallFs> {
        SmallFs::mount_sized(dir, "256k")
    }

    fn mount_sized(dir: &Path, size: &str) -> Option<SmallFs> {
        fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| SmallFs(dir.to_owned()))
    }

    /// Fills the file system up, leaving `keep` bytes free at most.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = fs::File::create(&p).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    walk(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file())
        .map(|p| {
            let content = fs::read(dir.join(&p)).unwrap();
            (p, content)
        })
        .collect()
}

/// A store at `state` holding a report `r` (with `report_payload`), metadata `m` and a
/// data entry `d`.
fn store_with_one_of_each(state: &Path, report_payload: &str) -> Store {
    let st = Store::open(state).unwrap();
    put(&st, "r", report_payload, None).unwrap();
    st.apply_control_plane(CpUpdate {
        metadata: Some([("m".to_owned(), "1".to_owned())].into()),
        data: Some(vec![entry("d", "1", 1)]),
        ..CpUpdate::default()
    })
    .unwrap();
    st
}

#[test]
fn failed_writes_on_a_full_disk_leave_memory_and_disk_unchanged() {
    let f = fixture();
    let Some(small) = SmallFs::mount(&f.root.join("mnt")) else {
        eprintln!("SKIP: cannot mount a tmpfs here; covered by the RLIMIT_FSIZE test");
        return;
    };
    let state = small.0.join("state");
    let st = store_with_one_of_each(&state, "1");
    st.flush().unwrap();
    let filler = small.fill();
    let disk = snapshot(&state);
    let summary = st.summary();
    let report = st.report(&rk("r")).unwrap();
    let big = format!("\"{}\"", "x".repeat(64 * 1024));
    let err = put(&st, "r", &big, None).unwrap_err();
    assert!(
        matches!(err, StoreError::Unwritable { full: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(st.disk_fault().is_some_and(|f| f.full));
    // From now on writes are refused at once, without touching the disk.
    let err = put(&st, "new", &big, None).unwrap_err();
    assert!(
        matches!(err, StoreError::Unwritable { full: true, .. }),
        "{err}"
    );
    let err = st
        .apply_control_plane(CpUpdate {
            metadata: Some([("m".to_owned(), "2".to_owned())].into()),
            data: Some(vec![entry("d", &big, 2)]),
            ..CpUpdate::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unwritable { full: true, .. }),
        "{err}"
    );
    assert_eq!(st.summary(), summary);
    assert_eq!(st.report(&rk("r")).unwrap(), report);
    assert!(st.report(&rk("new")).is_none());
    assert_eq!(snapshot(&state), disk, "disk changed by a failed write");
    // With space again, writing resumes by itself (the checkpointer probes the disk)
    // and the state is consistent after reopen.
    fs::remove_file(filler).unwrap();
    let t = std::time::Instant::now();
    while st.disk_fault().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the store never took writes again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    put(&st, "r", &big, Some(1)).unwrap();
    drop(st);
    let st = Store::open(&state).unwrap();
    assert_eq!(parse(&st.report(&rk("r")).unwrap().value)["version"], 2);
    drop(st);
}

/// Runs in a child process (see below) with a 16 KiB file-size limit, where writes of
/// larger files fail with EFBIG.
#[test]
fn fsize_limit_child() {
    let Some(state) = std::env::var_os("PLEXD_STORE_FSIZE_CHILD") else {
        return;
    };
    let state = PathBuf::from(state);
    let st = Store::open(&state).unwrap();
    put(&st, "r", "1", None).unwrap();
    st.flush().unwrap();
    let disk = snapshot(&state);
    let before = st.summary();
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 16 * 1024,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let big = format!("\"{}\"", "x".repeat(32 * 1024));
    let err = put(&st, "r", &big, None).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(put(&st, "other", &big, None).is_err());
    assert!(st
        .apply_control_plane(CpUpdate {
            data: Some(vec![entry("d", &big, 1)]),
            metadata: Some([("m".to_owned(), "x".to_owned())].into()),
            ..CpUpdate::default()
        })
        .is_err());
    // Data files fit, metadata.json does not: the data files must not land either.
    assert!(st
        .apply_control_plane(CpUpdate {
            data: Some(vec![entry("small", "1", 1)]),
            metadata: Some([("m".to_owned(), "y".repeat(32 * 1024))].into()),
            ..CpUpdate::default()
        })
        .is_err());
    assert_eq!(st.summary(), before);
    assert_eq!(snapshot(&state), disk);
    assert_eq!(st.pending_count(), 1);
    // Under the limit everything still works.
    st.apply_control_plane(CpUpdate {
        data: Some(vec![entry("small", "1", 1)]),
        ..CpUpdate::default()
    })
    .unwrap();
    assert!(state.join("data/small.json").exists());
    println!("FSIZE-CHILD-OK");
}

#[test]
fn failed_writes_over_the_file_size_limit_leave_memory_and_disk_unchanged() {
    let f = fixture();
    let out = crate::test_child::child_command("store::tests::fsize_limit_child")
        .env("PLEXD_STORE_FSIZE_CHILD", &f.state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("FSIZE-CHILD-OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn concurrent_puts_then_reopen_match() {
    let f = fixture();
    let st = std::sync::Arc::new(Store::open(&f.state).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let st = st.clone();
            thread::spawn(move || {
                let mut last_shared = 0;
                for i in 0..200 {
                    let key = if i % 2 == 0 {
                        format!("own-{t}-{}", i % 10)
                    } else {
                        format!("shared-{}", i % 3)
                    };
                    let v = put(&st, &key, &format!("{{\"t\":{t},\"i\":{i}}}"), None).unwrap();
                    assert!(v.mod_rev > last_shared);
                    last_shared = v.mod_rev;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let list = parse(&st.report_list().value);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 8 * 5 + 3);
    let total: i64 = rows.iter().map(|r| r["version"].as_i64().unwrap()).sum();
    assert_eq!(total, 8 * 200, "every put got its own version");
    for r in rows
        .iter()
        .filter(|r| r["key"].as_str().unwrap().starts_with("own-"))
    {
        assert_eq!(r["version"], 20);
    }
    let before: Vec<(String, Json)> = rows
        .iter()
        .map(|r| {
            let k = r["key"].as_str().unwrap().to_owned();
            let body = st.report(&rk(&k)).unwrap().value;
            (k, body)
        })
        .collect();
    let summary = st.summary().value;
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(st.summary().value, summary);
    for (k, body) in before {
        assert_eq!(st.report(&rk(&k)).unwrap().value, body, "{k}");
    }
    assert_eq!(st.pending_count(), 8 * 5 + 3);
    assert_eq!(names(&f.state.join("report")).len(), 8 * 5 + 3);
}

fn put_throughput(state: &Path, what: &str) {
    let st = std::sync::Arc::new(Store::open(state).unwrap());
    let per_thread = 250;
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let st = st.clone();
            thread::spawn(move || {
                for i in 0..per_thread {
                    put(&st, &format!("t{t}-{i}"), "{\"status\":\"ok\"}", None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "store PUT throughput ({what}): 8 threads, distinct keys: {:.0} ops/s ({} puts in {:.3}s)",
        f64::from(8 * per_thread) / secs,
        8 * per_thread,
        secs
    );
    assert_eq!(st.counts().reports, 8 * per_thread as usize);
    println!(
        "  report folder fsyncs: {} for {} puts",
        st.report.syncs_started(),
        8 * per_thread
    );
}

#[test]
fn measure_put_throughput() {
    let f = fixture();
    put_throughput(&f.state, "disk");
    if let Some(small) = SmallFs::mount_sized(&f.root.join("mnt"), "64m") {
        put_throughput(&small.0.join("state"), "tmpfs, no fsync cost");
    }
}

#[test]
fn large_lists_are_rendered_once_per_change() {
    let f = fixture();
    // Written directly (no fsyncs) to keep the test fast; the store loads them.
    fs::create_dir_all(f.state.join("data")).unwrap();
    for i in 0..10_000 {
        let e = entry(&format!("d{i:05}"), "1", 1);
        fs::write(
            f.state.join(format!("data/d{i:05}.json")),
            serde_json::to_vec(&e).unwrap(),
        )
        .unwrap();
    }
    let st = Store::open(&f.state).unwrap();
    assert_eq!(st.counts().data, 10_000);
    let t = Instant::now();
    let a = st.summary().value;
    let first = t.elapsed();
    let t = Instant::now();
    for _ in 0..1000 {
        let b = st.summary().value;
        assert!(std::sync::Arc::ptr_eq(&a, &b), "summary re-rendered");
    }
    println!(
        "summary of 10,000 data entries ({} bytes): first render {first:?}, cached {:?} per call",
        a.len(),
        t.elapsed() / 1000
    );
    let l1 = st.data_list().value;
    assert!(std::sync::Arc::ptr_eq(&l1, &st.data_list().value));
    put(&st, "r", "1", None).unwrap();
    let c = st.summary().value;
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert!(
        std::sync::Arc::ptr_eq(&l1, &st.data_list().value),
        "data list survives a report change"
    );
    assert_eq!(parse(&c)["data_keys"].as_array().unwrap().len(), 10_000);
}

/// Runs in a child process that the test below kills with SIGKILL mid-write.
#[test]
fn kill_child() {
    use std::io::Write;
    let Some(state) = std::env::var_os("PLEXD_STORE_KILL_CHILD") else {
        return;
    };
    let st = Store::open(Path::new(&state)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let key = format!("k{}", i % 16);
        if i % 7 == 3 {
            match st.delete_report(&rk(&key)) {
                Ok(_) => writeln!(out, "DEL {key}").unwrap(),
                Err(StoreError::NotFound) => {}
                Err(e) => panic!("{e}"),
            }
        } else {
            let v = put(&st, &key, &format!("{{\"i\":{i}}}"), None).unwrap();
            writeln!(out, "ACK {key} {}", parse(&v.value)["version"]).unwrap();
        }
        out.flush().unwrap();
        if i % 50 == 0 {
            if let Some(b) = st.pending_batch(5, 1 << 20) {
                st.mark_synced(&b).unwrap();
            }
        }
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    let f = fixture();
    for round in 0..3 {
        let mut child = crate::test_child::child_command("store::tests::kill_child")
            .env("PLEXD_STORE_KILL_CHILD", &f.state)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            let mut last: HashMap<String, Option<i64>> = HashMap::new();
            for (n, line) in BufReader::new(stdout).lines().enumerate() {
                let Ok(line) = line else { break };
                if n == 20 {
                    let _ = started_tx.send(());
                }
                let parts: Vec<&str> = line.split(' ').collect();
                match parts.as_slice() {
                    ["ACK", k, v] => {
                        if let Ok(v) = v.parse() {
                            last.insert(k.to_string(), Some(v));
                        }
                    }
                    ["DEL", k] => {
                        last.insert(k.to_string(), None);
                    }
                    _ => {}
                }
            }
            last
        });
        // Kill mid-stream: only once the child is writing (start-up time varies with load).
        let _ = started_rx.recv_timeout(Duration::from_secs(30));
        thread::sleep(Duration::from_millis(100 + 150 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(!acked.is_empty(), "child acknowledged nothing");
        let st = Store::open(&f.state).unwrap();
        // Every key holds its acknowledged state, except at most one key whose next
        // write or delete was in flight when the child died (done, not acknowledged).
        let mut in_flight = 0;
        for (k, want) in &acked {
            let have = st
                .report(&rk(k))
                .map(|v| parse(&v.value)["version"].as_i64().unwrap());
            match (*want, have) {
                (w, h) if w == h => {}
                (Some(w), Some(h)) if h == w + 1 => in_flight += 1,
                (Some(_), None) | (None, Some(1)) => in_flight += 1,
                _ => panic!("{k}: acknowledged {want:?}, found {have:?}"),
            }
        }
        assert!(
            in_flight <= 1,
            "{in_flight} keys differ from what was acknowledged"
        );
        for name in walk(&f.state) {
            let n = name.to_string_lossy();
            assert!(!n.ends_with(".corrupt") && !n.contains(".tmp"), "{n}");
        }
        // Every report that is not acknowledged upstream is pending.
        let pending = st.pending_count();
        let mut drained = 0;
        while let Some(b) = st.pending_batch(3, 1 << 20) {
            drained += b.len();
            st.mark_synced(&b).unwrap();
        }
        assert_eq!(pending, drained);
    }
}

#[test]
fn go_agent_null_collections_load_as_empty() {
    let f = fixture();
    fs::create_dir_all(&f.state).unwrap();
    fs::write(f.state.join("metadata.json"), "null").unwrap();
    fs::write(f.state.join("secrets.json"), "null").unwrap();
    let st = Store::open(&f.state).unwrap();
    assert_eq!(
        text(&st.summary().value),
        "{\"metadata\":{},\"data_keys\":[],\"secret_keys\":[],\"report_keys\":[]}"
    );
    assert!(!f.state.join("metadata.json.corrupt").exists());
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
    check::<SyncBatch>();
    check::<StoreError>();
}

#[test]
fn syncing_while_writing_never_marks_an_unsent_state() {
    let f = fixture();
    let st = std::sync::Arc::new(Store::open(&f.state).unwrap());
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (st, stop) = (st.clone(), stop.clone());
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = ["a", "b", "c"][i % 3];
                if i % 11 == 5 {
                    let _ = st.delete_report(&rk(key));
                } else {
                    put(&st, key, &i.to_string(), None).unwrap();
                }
                i += 1;
            }
        })
    };
    let mut sent = 0;
    let mut sent_states = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        if let Some(b) = st.pending_batch(2, 1 << 20) {
            sent += b.len();
            for e in &b.request.entries {
                sent_states.insert((e.key.clone(), e.version, e.updated_at.clone()));
            }
            // Let writes land while the batch is "in flight".
            thread::sleep(Duration::from_millis(2));
            st.mark_synced(&b).unwrap();
            let c = st.read();
            for (k, m) in &c.marks {
                assert!(
                    sent_states.contains(&(k.clone(), m.version, m.updated_at.clone())),
                    "{k} marked at a state that was never sent"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(sent > 0);
    // Whatever is not pending now must be exactly what was acknowledged last.
    let c = st.read();
    for key in ["a", "b", "c"] {
        let mark = c.marks.get(key);
        let report = c.reports.get(key).map(|r| &r.entry);
        let in_sync = match (mark, report) {
            (Some(m), Some(r)) => m.matches(r),
            (None, None) => true,
            _ => false,
        };
        assert_eq!(!in_sync, c.pending.contains(key), "{key}");
    }
    drop(c);
    // Draining sends every remaining state; afterwards the marks match the reports.
    while let Some(b) = st.pending_batch(2, 1 << 20) {
        st.mark_synced(&b).unwrap();
    }
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert_eq!(st.pending_count(), 0);
}

#[test]
fn go_agent_keys_too_long_to_encode_stay_in_their_plain_files() {
    let f = fixture();
    fs::create_dir_all(f.state.join("data")).unwrap();
    let key = "é".repeat(100);
    assert!(super::keys::file_name_for(&key).is_none());
    let plain = format!("{key}.json");
    fs::write(
        f.state.join("data").join(&plain),
        serde_json::to_vec(&entry(&key, "1", 1)).unwrap(),
    )
    .unwrap();
    let st = Store::open(&f.state).unwrap();
    assert!(st.data_entry(&key).is_some());
    let out = st
        .apply_control_plane(CpUpdate {
            data: Some(vec![entry(&key, "2", 2)]),
            ..CpUpdate::default()
        })
        .unwrap();
    assert_eq!((out.data_written, out.skipped_keys.len()), (1, 0));
    assert_eq!(
        names(&f.state.join("data")),
        BTreeSet::from([plain.clone()])
    );
    assert_eq!(parse(&st.data_entry(&key).unwrap().value)["version"], 2);
    let out = st
        .apply_control_plane(CpUpdate {
            data: Some(vec![]),
            ..CpUpdate::default()
        })
        .unwrap();
    assert_eq!(out.data_removed, 1);
    assert!(names(&f.state.join("data")).is_empty());
    // Without a file to reuse, such a key is skipped.
    let out = st
        .apply_control_plane(CpUpdate {
            data: Some(vec![entry(&key, "3", 3)]),
            ..CpUpdate::default()
        })
        .unwrap();
    assert_eq!(out.skipped_keys, vec![key]);
    assert!(names(&f.state.join("data")).is_empty());
}

// ---- the report journal ------------------------------------------------------------

fn journal_len(state: &Path) -> u64 {
    fs::metadata(state.join("report.journal")).unwrap().len()
}

#[test]
fn group_commit_acknowledges_many_writers_with_fewer_fsyncs() {
    let f = fixture();
    let st = std::sync::Arc::new(Store::open(&f.state).unwrap());
    let before = st.journal_syncs();
    // One thread submitting without waiting: the committer takes them in groups.
    let tickets: Vec<_> = (0..64)
        .map(|i| st.submit_put(&rk(&format!("k{}", i % 8)), "t".into(), raw("1"), None))
        .collect();
    let mut versions = std::collections::HashMap::new();
    for (i, t) in tickets.iter().enumerate() {
        let v = parse(&t.wait().unwrap().value)["version"].as_i64().unwrap();
        versions.insert(i % 8, v);
        assert_eq!(v, (i / 8 + 1) as i64, "same-key writes keep their order");
    }
    let one_thread = st.journal_syncs() - before;
    assert!(one_thread < 64, "{one_thread} fsyncs for 64 writes");
    // Eight threads waiting for each write.
    let before = st.journal_syncs();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let st = st.clone();
            thread::spawn(move || {
                for i in 0..25 {
                    put(&st, &format!("t{t}-{i}"), "1", None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = st.journal_syncs() - before;
    println!(
        "group commit: 64 queued writes in {one_thread} fsyncs, 200 writes by 8 threads in {syncs}"
    );
    assert!(syncs < 200, "{syncs} fsyncs for 200 writes");
    assert_eq!(st.counts().reports, 8 + 200);
}

#[test]
fn etag_preconditions_are_judged_in_commit_order_on_puts_and_deletes() {
    use crate::store::{Match, Preconditions};
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    let tag = |r: u64| Preconditions {
        if_match: Some(Match::Revisions(vec![r])),
        if_none_match: None,
    };
    let create_only = Preconditions {
        if_match: None,
        if_none_match: Some(Match::Any),
    };
    let put_if =
        |c: &Preconditions, p: &str| st.submit_put_if(&rk("lock"), "t".into(), raw(p), c).wait();
    let first = put_if(&create_only, "\"a\"").unwrap();
    assert!(matches!(
        put_if(&create_only, "\"b\""),
        Err(StoreError::Conflict { current: Some(1) })
    ));
    // The tag a write answered with is the one the next write must name.
    let second = put_if(&tag(first.mod_rev), "\"c\"").unwrap();
    assert!(second.mod_rev > first.mod_rev);
    assert!(matches!(
        put_if(&tag(first.mod_rev), "\"d\""),
        Err(StoreError::Conflict { current: Some(2) })
    ));
    // A queued, unpublished state has no tag yet: nobody can name it.
    st.slow_commits(Duration::from_millis(50));
    let queued = st.submit_put_if(&rk("lock"), "t".into(), raw("\"e\""), &tag(second.mod_rev));
    let behind = st.submit_delete_if(&rk("lock"), &tag(second.mod_rev));
    assert!(matches!(
        behind.try_result(),
        Some(Err(StoreError::Conflict { current: Some(3) }))
    ));
    let third = queued.wait().unwrap();
    st.slow_commits(Duration::ZERO);
    // DELETE honours the same conditions; a stale tag changes nothing.
    assert!(matches!(
        st.submit_delete_if(&rk("lock"), &tag(second.mod_rev))
            .wait(),
        Err(StoreError::Conflict { current: Some(3) })
    ));
    assert!(st.report(&rk("lock")).is_some());
    st.submit_delete_if(&rk("lock"), &tag(third.mod_rev))
        .wait()
        .unwrap();
    assert!(st.report(&rk("lock")).is_none());
    // Re-created at version 1, the old tags still name nothing.
    let again = put_if(&create_only, "\"f\"").unwrap();
    assert_eq!(parse(&again.value)["version"], 1);
    assert!(matches!(
        st.submit_delete_if(&rk("lock"), &tag(first.mod_rev)).wait(),
        Err(StoreError::Conflict { current: Some(1) })
    ));
    // On a missing key a condition that holds leaves the answer to the deletion.
    let absent = Preconditions::version(Some(0));
    assert!(matches!(
        st.submit_delete_if(&rk("never"), &absent).wait(),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        st.submit_delete_if(&rk("never"), &tag(again.mod_rev))
            .wait(),
        Err(StoreError::Conflict { current: None })
    ));
}

#[test]
fn concurrent_if_match_on_one_key_lets_exactly_one_win() {
    let f = fixture();
    let st = std::sync::Arc::new(Store::open(&f.state).unwrap());
    for v in 0..3 {
        put(&st, "k", "1", Some(v)).unwrap();
    }
    // Queued back to back: the second is judged against the first, uncommitted one.
    st.slow_commits(Duration::from_millis(50));
    let a = st.submit_put(&rk("k"), "t".into(), raw("\"a\""), Some(3));
    let b = st.submit_put(&rk("k"), "t".into(), raw("\"b\""), Some(3));
    assert!(matches!(
        b.try_result(),
        Some(Err(StoreError::Conflict { current: Some(4) }))
    ));
    assert_eq!(parse(&a.wait().unwrap().value)["version"], 4);
    st.slow_commits(Duration::ZERO);
    // From two threads at once, many times.
    for round in 0..20 {
        let base = 4 + round;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (st, barrier) = (st.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    put(&st, "k", "1", Some(base)).is_ok()
                })
            })
            .collect();
        let wins = threads
            .into_iter()
            .filter(|_| true)
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(parse(&st.report(&rk("k")).unwrap().value)["version"], 24);
}

fn entry_body(key: &str, v: i64) -> Vec<u8> {
    format!(
        "{{\"key\":\"{key}\",\"content_type\":\"t\",\"payload\":{{\"v\":{v}}},\"version\":{v},\"updated_at\":\"2026-03-01T12:00:00Z\"}}"
    )
    .into_bytes()
}

/// `a` put then deleted, `b` put, then `c` put as the last record.
fn sample_journal() -> (Vec<u8>, usize) {
    let mut bytes = journal::encode_put(&std::sync::Arc::from(entry_body("a", 1))).to_bytes();
    bytes.extend(journal::encode_put(&std::sync::Arc::from(entry_body("b", 1))).to_bytes());
    bytes.extend(journal::encode_delete("a").to_bytes());
    bytes.extend(journal::encode_put(&std::sync::Arc::from(entry_body("b", 2))).to_bytes());
    let before_last = bytes.len();
    bytes.extend(journal::encode_put(&std::sync::Arc::from(entry_body("c", 1))).to_bytes());
    (bytes, before_last)
}

fn report_versions(st: &Store) -> Vec<(String, i64)> {
    parse(&st.report_list().value)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn torn_journal_tail_is_ignored_at_every_offset() {
    let (bytes, before_last) = sample_journal();
    let dir = tempfile::tempdir().unwrap();
    for cut in before_last..=bytes.len() {
        let state = dir.path().join(format!("s{cut}"));
        fs::create_dir_all(state.join("report")).unwrap();
        // An older file for `a` that the journal's deletion must remove.
        fs::write(state.join("report/a.json"), entry_body("a", 9)).unwrap();
        // ...which the control plane had taken: its deletion must be sent.
        fs::write(
            state.join("report-sync.json"),
            r#"{"a":{"version":9,"updated_at":"2026-03-01T12:00:00Z"}}"#,
        )
        .unwrap();
        fs::write(state.join("report.journal"), &bytes[..cut]).unwrap();
        let st = Store::open(&state).unwrap();
        let mut want = vec![("b".to_owned(), 2)];
        if cut == bytes.len() {
            want.push(("c".to_owned(), 1));
        }
        assert_eq!(report_versions(&st), want, "cut at {cut}");
        // Replayed changes are pending sync and already checkpointed into files.
        assert_eq!(
            st.pending_count(),
            want.len() + 1,
            "a's deletion is pending too"
        );
        assert_eq!(journal_len(&state), 0);
        let files = names(&state.join("report"));
        assert!(!files.contains("a.json"), "cut at {cut}: {files:?}");
        assert_eq!(files.len(), want.len(), "cut at {cut}: {files:?}");
        // New writes after a torn tail replay too.
        put(&st, "d", "1", None).unwrap();
        drop(st);
        let st = Store::open(&state).unwrap();
        assert!(st.report(&rk("d")).is_some());
    }
}

#[test]
fn journal_crc_mismatch_stops_replay_at_that_record() {
    let f = fixture();
    let (mut bytes, _) = sample_journal();
    let first = journal::encode_put(&std::sync::Arc::from(entry_body("a", 1)))
        .to_bytes()
        .len();
    let second = journal::encode_put(&std::sync::Arc::from(entry_body("b", 1)))
        .to_bytes()
        .len();
    // Flip a payload byte of the second record: it and everything after are ignored.
    bytes[first + second - 3] ^= 0x20;
    fs::create_dir_all(&f.state).unwrap();
    fs::write(f.state.join("report.journal"), &bytes).unwrap();
    let st = Store::open(&f.state).unwrap();
    assert_eq!(report_versions(&st), vec![("a".to_owned(), 1)]);
    assert_eq!(journal_len(&f.state), 0);
}

#[test]
fn checkpoint_empties_the_journal_and_leaves_plexd_files() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    // A Go agent file under a non-canonical name moves to its canonical one.
    put(&st, "x", "1", None).unwrap();
    put(&st, "a b", "{\"ok\":true}", None).unwrap();
    put(&st, "gone", "1", None).unwrap();
    st.delete_report(&rk("gone")).unwrap();
    assert!(journal_len(&f.state) > 0);
    st.flush().unwrap();
    assert_eq!(journal_len(&f.state), 0);
    assert_eq!(
        names(&f.state.join("report")),
        BTreeSet::from(["a%20b.json".to_owned(), "x.json".to_owned()])
    );
    for (key, file) in [("x", "x.json"), ("a b", "a%20b.json")] {
        let bytes = fs::read(f.state.join("report").join(file)).unwrap();
        assert_eq!(bytes, &*st.report(&rk(key)).unwrap().value);
        let e: crate::model::ReportEntry = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((e.key.as_str(), e.version), (key, 1));
        assert_eq!(
            fs::metadata(f.state.join("report").join(file))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
    }
    // The background checkpointer gets there by itself too.
    put(&st, "x", "2", None).unwrap();
    let t = Instant::now();
    while journal_len(&f.state) > 0 && t.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(journal_len(&f.state), 0);
    let e: Value =
        serde_json::from_slice(&fs::read(f.state.join("report/x.json")).unwrap()).unwrap();
    assert_eq!(e["version"], 2);
    // Closing leaves an empty journal.
    put(&st, "y", "1", None).unwrap();
    drop(st);
    assert_eq!(journal_len(&f.state), 0);
    assert!(f.state.join("report/y.json").exists());
}

#[test]
fn a_failed_group_fails_every_writer_and_changes_nothing() {
    let f = fixture();
    let Some(small) = SmallFs::mount(&f.root.join("mnt")) else {
        eprintln!("SKIP: cannot mount a tmpfs here");
        return;
    };
    let state = small.0.join("state");
    let st = Store::open(&state).unwrap();
    put(&st, "r", "1", None).unwrap();
    st.flush().unwrap();
    let filler = small.fill();
    let disk = snapshot(&state);
    let summary = st.summary();
    let big = format!("\"{}\"", "x".repeat(64 * 1024));
    st.slow_commits(Duration::from_millis(30));
    let tickets: Vec<_> = (0..4)
        .map(|i| st.submit_put(&rk(&format!("n{i}")), "t".into(), raw(&big), None))
        .chain([st.submit_put(&rk("r"), "t".into(), raw("2"), Some(1))])
        // Decided on top of the write before it, which fails: fails as well.
        .chain([st.submit_put(&rk("r"), "t".into(), raw("3"), Some(2))])
        .collect();
    for t in &tickets {
        let err = t.wait().unwrap_err();
        assert!(
            matches!(err, StoreError::Unwritable { full: true, .. }),
            "{err}"
        );
    }
    assert_eq!(st.summary(), summary);
    assert_eq!(snapshot(&state), disk, "disk changed by a failed group");
    st.slow_commits(Duration::ZERO);
    fs::remove_file(filler).unwrap();
    let t = std::time::Instant::now();
    while st.disk_fault().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the store never took writes again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        parse(&put(&st, "r", "2", Some(1)).unwrap().value)["version"],
        2
    );
}

/// Runs in a child process that the test below kills with SIGKILL mid-group-commit.
#[test]
fn group_kill_child() {
    use std::io::Write;
    let Some(state) = std::env::var_os("PLEXD_STORE_GROUP_KILL_CHILD") else {
        return;
    };
    let st = std::sync::Arc::new(Store::open(Path::new(&state)).unwrap());
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (st, out) = (st.clone(), out.clone());
            thread::spawn(move || {
                for i in 0u64.. {
                    let key = format!("t{t}-{}", i % 4);
                    let line = if i % 5 == 4 {
                        match st.delete_report(&rk(&key)) {
                            Ok(_) => format!("DEL {key}"),
                            Err(StoreError::NotFound) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        let v = put(&st, &key, &format!("{{\"i\":{i}}}"), None).unwrap();
                        format!("ACK {key} {}", parse(&v.value)["version"])
                    };
                    let mut o = out.lock().unwrap();
                    writeln!(o, "{line}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigkill_mid_group_commit_loses_nothing_acknowledged() {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    let f = fixture();
    let mut last: HashMap<String, Option<i64>> = HashMap::new();
    for round in 0..8 {
        let mut child = crate::test_child::child_command("store::tests::group_kill_child")
            .env("PLEXD_STORE_GROUP_KILL_CHILD", &f.state)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_ack, acked) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            let mut acks = 0;
            let mut seen: Vec<(String, Option<i64>)> = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.split(' ').collect::<Vec<_>>().as_slice() {
                    ["ACK", k, v] => {
                        if let Ok(v) = v.parse() {
                            seen.push((k.to_string(), Some(v)));
                            acks += 1;
                            if acks == 1 {
                                let _ = first_ack.send(());
                            }
                        }
                    }
                    ["DEL", k] => seen.push((k.to_string(), None)),
                    _ => {}
                }
            }
            (acks, seen)
        });
        // Wait for the first acknowledgement (a loaded machine may take a while to
        // start the child), then kill at a varying moment.
        let _ = acked.recv_timeout(Duration::from_secs(20));
        thread::sleep(Duration::from_millis(50 + 37 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let (acks, seen) = reader.join().unwrap();
        for (k, v) in seen {
            last.insert(k, v);
        }
        assert!(acks > 0 || round > 0, "child acknowledged nothing");
        let st = Store::open(&f.state).unwrap();
        // Each of the 8 writer threads had at most one write in flight (done, maybe not
        // acknowledged): its key may be one step ahead, never behind.
        let mut in_flight = 0;
        for (k, want) in &last {
            let have = st
                .report(&rk(k))
                .map(|v| parse(&v.value)["version"].as_i64().unwrap());
            match (*want, have) {
                (w, h) if w == h => {}
                (Some(w), Some(h)) if h == w + 1 => in_flight += 1,
                (Some(_), None) | (None, Some(1)) => in_flight += 1,
                _ => panic!("round {round}: {k}: acknowledged {want:?}, found {have:?}"),
            }
        }
        assert!(
            in_flight <= 8,
            "{in_flight} keys ahead of their acknowledgement"
        );
        for name in walk(&f.state) {
            let n = name.to_string_lossy();
            assert!(!n.ends_with(".corrupt") && !n.contains(".tmp"), "{n}");
        }
        assert_eq!(
            journal_len(&f.state),
            0,
            "replayed journal was checkpointed"
        );
        // What the next child starts from is what the store now shows.
        for (k, want) in last.iter_mut() {
            *want = st
                .report(&rk(k))
                .map(|v| parse(&v.value)["version"].as_i64().unwrap());
        }
    }
}

#[test]
fn a_full_state_fetched_before_an_event_does_not_step_back_over_it() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    let mut meta = Metadata::new();
    meta.insert("region".into(), "old".into());
    st.apply_control_plane(CpUpdate {
        metadata: Some(meta.clone()),
        ..CpUpdate::default()
    })
    .unwrap();
    // The reconciler starts its fetch …
    let seen = st.control_plane_applies();
    // … an event lands meanwhile …
    let mut newer = Metadata::new();
    newer.insert("region".into(), "new".into());
    st.apply_control_plane(CpUpdate {
        metadata: Some(newer),
        ..CpUpdate::default()
    })
    .unwrap();
    // … so the (older) fetched state is refused and the event's state stays.
    let stale = CpUpdate {
        metadata: Some(meta),
        ..CpUpdate::default()
    };
    assert!(st.apply_control_plane_since(stale, seen).unwrap().is_none());
    assert_eq!(
        parse(&st.metadata_value("region").unwrap().value)["value"],
        "new"
    );
    // With nothing in between, the conditional apply goes through.
    let seen = st.control_plane_applies();
    let mut fresh = Metadata::new();
    fresh.insert("region".into(), "fresh".into());
    let applied = st.apply_control_plane_since(
        CpUpdate {
            metadata: Some(fresh),
            ..CpUpdate::default()
        },
        seen,
    );
    assert!(applied.unwrap().is_some());
    assert_eq!(
        parse(&st.metadata_value("region").unwrap().value)["value"],
        "fresh"
    );
}

// ---- a damaged state folder -------------------------------------------------------

/// Opens the store on another thread; fails the test instead of hanging if opening
/// blocks (a FIFO opened for reading waits for a writer forever).
fn open_within(state: &Path, limit: Duration) -> Result<Store, StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = state.to_owned();
    thread::spawn(move || {
        let _ = tx.send(Store::open(&path));
    });
    rx.recv_timeout(limit)
        .expect("opening the store blocked on the state folder")
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn fifos_folders_and_links_under_state_file_names_are_moved_aside() {
    let f = fixture();
    let st = Store::open(&f.state).unwrap();
    put(&st, "kept", "{\"ok\":true}", None).unwrap();
    st.apply_control_plane(CpUpdate {
        metadata: Some([("m".to_owned(), "1".to_owned())].into()),
        data: Some(vec![entry("d", "1", 1)]),
        ..CpUpdate::default()
    })
    .unwrap();
    drop(st);
    // Every state file name gets something that is not a regular file.
    for name in ["metadata.json", "revision", "report-sync.json"] {
        fs::remove_file(f.state.join(name)).unwrap_or(());
        mkfifo(&f.state.join(name));
    }
    fs::remove_file(f.state.join("report.journal")).unwrap();
    fs::create_dir(f.state.join("report.journal")).unwrap();
    fs::write(f.state.join("report.journal/inside"), b"x").unwrap();
    fs::create_dir(f.state.join("data/folder.json")).unwrap();
    mkfifo(&f.state.join("data/fifo.json"));
    std::os::unix::fs::symlink("/etc/passwd", f.state.join("report/link.json")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", f.state.join("secrets.json")).unwrap();

    let st = open_within(&f.state, Duration::from_secs(10)).unwrap();
    // What could be read still is: data and reports from their files.
    assert_eq!(parse(&st.data_entry("d").unwrap().value)["payload"], 1);
    assert_eq!(
        parse(&st.report(&rk("kept")).unwrap().value)["payload"]["ok"],
        true
    );
    assert!(st.report(&rk("link")).is_none());
    for name in [
        "metadata.json",
        "revision",
        "report-sync.json",
        "report.journal",
        "secrets.json",
        "data/folder.json",
        "data/fifo.json",
        "report/link.json",
    ] {
        let aside = f.state.join(format!("{name}.corrupt"));
        assert!(
            fs::symlink_metadata(&aside).is_ok(),
            "{name} was not moved aside"
        );
    }
    assert_eq!(
        fs::read(f.state.join("report.journal.corrupt/inside")).unwrap(),
        b"x",
        "what was moved aside is kept as it was"
    );
    // The store works: new files are regular files, writes land.
    put(&st, "after", "2", None).unwrap();
    st.flush().unwrap();
    assert!(fs::metadata(f.state.join("report.journal"))
        .unwrap()
        .is_file());
    assert!(fs::metadata(f.state.join("revision")).unwrap().is_file());
    assert!(f.state.join("report/after.json").is_file());
    drop(st);
    let st = Store::open(&f.state).unwrap();
    assert!(st.report(&rk("after")).is_some() && st.report(&rk("kept")).is_some());
}

#[test]
fn a_file_where_a_folder_belongs_is_moved_aside() {
    let f = fixture();
    fs::create_dir_all(&f.state).unwrap();
    fs::write(f.state.join("report"), b"not a folder").unwrap();
    mkfifo(&f.state.join("data"));
    let st = open_within(&f.state, Duration::from_secs(10)).unwrap();
    assert!(f.state.join("report").is_dir() && f.state.join("data").is_dir());
    assert_eq!(
        fs::read(f.state.join("report.corrupt")).unwrap(),
        b"not a folder"
    );
    assert!(fs::symlink_metadata(f.state.join("data.corrupt")).is_ok());
    put(&st, "r", "1", None).unwrap();
    st.flush().unwrap();
    assert!(f.state.join("report/r.json").is_file());
}

/// A tmpfs mounted over a folder, made read-only and writable again at will.
fn remount(dir: &Path, mode: &str) {
    let ok = std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "remount {mode} failed");
}

#[test]
fn a_full_disk_at_start_serves_the_cache_and_resumes_writing_with_space() {
    let f = fixture();
    let Some(small) = SmallFs::mount(&f.root.join("mnt")) else {
        eprintln!("SKIP: cannot mount a tmpfs here");
        return;
    };
    let state = small.0.join("state");
    let st = store_with_one_of_each(&state, "{\"v\":1}");
    drop(st);
    let before_rev = fs::read_to_string(state.join("revision")).unwrap();
    let filler = small.fill();
    let disk = snapshot(&state);

    // The revision file cannot be rewritten: the store starts read-only.
    let st = open_within(&state, Duration::from_secs(10)).unwrap();
    let fault = st.disk_fault().expect("starts read-only");
    assert!(fault.full && fault.reason.contains("revision"), "{fault:?}");
    assert_eq!(
        parse(&st.report(&rk("r")).unwrap().value)["payload"]["v"],
        1
    );
    assert_eq!(text(&st.metadata().value), "{\"m\":\"1\"}");
    assert!(st.data_entry("d").is_some());
    let rev = st.revision();
    let err = put(&st, "r", "{\"v\":2}", Some(1)).unwrap_err();
    assert!(
        matches!(err, StoreError::Unwritable { full: true, .. }),
        "{err}"
    );
    let err = st.delete_report(&rk("r")).unwrap_err();
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err}");
    let err = st
        .apply_control_plane(CpUpdate {
            metadata: Some([("m".to_owned(), "2".to_owned())].into()),
            ..CpUpdate::default()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err}");
    assert_eq!(st.revision(), rev, "nothing was published");
    assert_eq!(
        snapshot(&state),
        disk,
        "nothing acknowledged was deleted or rewritten"
    );

    // Space returns: the store notices by itself and writes again.
    fs::remove_file(filler).unwrap();
    let t = Instant::now();
    while st.disk_fault().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never took writes again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(
        fs::read_to_string(state.join("revision")).unwrap(),
        before_rev,
        "the epoch of this run is on disk before anything is published"
    );
    let v = put(&st, "r", "{\"v\":2}", Some(1)).unwrap();
    assert!(v.mod_rev > rev);
    drop(st);
    let st = Store::open(&state).unwrap();
    assert_eq!(parse(&st.report(&rk("r")).unwrap().value)["version"], 2);
    assert!(st.revision() > v.mod_rev);
}

#[test]
fn a_read_only_folder_at_start_replays_the_journal_and_resumes_when_writable() {
    let f = fixture();
    let Some(small) = SmallFs::mount_sized(&f.root.join("mnt"), "4m") else {
        eprintln!("SKIP: cannot mount a tmpfs here");
        return;
    };
    let state = small.0.join("state");
    let st = Store::open(&state).unwrap();
    put(&st, "r", "1", None).unwrap();
    drop(st);
    // An acknowledged write still only in the journal (as after SIGKILL), plus a torn
    // record behind it.
    let (mut journal, _, _, _) = journal::Journal::open(&state.join("report.journal")).unwrap();
    let body: Json = Arc::from(
        &br#"{"key":"j","content_type":"t","payload":7,"version":1,"updated_at":"2026-03-01T12:00:00Z"}"#[..],
    );
    journal.append(&[&journal::encode_put(&body)]).unwrap();
    drop(journal);
    {
        use std::io::Write;
        let mut j = fs::OpenOptions::new()
            .append(true)
            .open(state.join("report.journal"))
            .unwrap();
        j.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
    }
    remount(&small.0, "ro");
    let st = open_within(&state, Duration::from_secs(10)).unwrap();
    let fault = st.disk_fault().expect("starts read-only");
    assert!(!fault.full, "{fault:?}");
    assert_eq!(parse(&st.report(&rk("j")).unwrap().value)["payload"], 7);
    assert!(st.report(&rk("r")).is_some());
    let err = put(&st, "x", "1", None).unwrap_err();
    assert!(
        matches!(err, StoreError::Unwritable { full: false, .. }),
        "{err}"
    );
    remount(&small.0, "rw");
    let t = Instant::now();
    while st.disk_fault().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never took writes again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    put(&st, "x", "1", None).unwrap();
    // The torn tail was cut before anything was appended behind it.
    let bytes = fs::read(state.join("report.journal")).unwrap();
    assert_eq!(
        journal::decode(&bytes).1,
        bytes.len(),
        "records behind a torn tail"
    );
    drop(st);
    let st = Store::open(&state).unwrap();
    assert_eq!(parse(&st.report(&rk("j")).unwrap().value)["payload"], 7);
    assert!(
        state.join("report/j.json").is_file(),
        "the replayed write reached its file"
    );
    assert!(st.report(&rk("x")).is_some());
    drop(st);
}
