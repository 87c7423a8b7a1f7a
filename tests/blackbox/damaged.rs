//! Starting on a damaged host: a data folder that does not exist yet, FIFOs and
//! folders under state file names, a full disk, a read-only folder, a hand-edited
//! revision file. Each case ends in a clear message and loses nothing acknowledged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// A tmpfs mounted over a folder (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        }
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    fn remount(&self, mode: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "remount {mode}");
    }

    /// Fills it up; returns the filler file.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A data folder on `fs`, with the node's identity and NSK.
fn data_dir_on(fs: &Tmpfs) -> PathBuf {
    let data = fs.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("identity.json"),
        format!("{{\"node_id\":\"{NODE_ID}\"}}"),
    )
    .unwrap();
    std::fs::write(data.join("node_secret_key"), NSK_HEX).unwrap();
    data
}

fn put_report(d: &TestDaemon, key: &str, payload: &str) -> Resp {
    d.put(
        &format!("/v1/state/report/{key}"),
        &format!(r#"{{"content_type":"application/json","payload":{payload}}}"#),
    )
}

fn wait_writable(d: &TestDaemon) {
    let ok = eventually(Duration::from_secs(10), || {
        d.get("/v1/health").json()["storage"]["writable"] == true
    });
    assert!(ok, "never writable again: {}", d.get("/v1/health").text());
}

#[test]
fn a_missing_data_folder_is_created_private() {
    let node = Node::new();
    let data = node.path().join("new/deeper/data");
    let d = node
        .daemon()
        .args([
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--node-id".to_owned(),
            NODE_ID.to_owned(),
        ])
        .start();
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        node.path().join("new"),
        node.path().join("new/deeper"),
        data.clone(),
    ] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    assert_eq!(put_report(&d, "r", "1").status, 200);
    assert!(data.join("state/report.journal").is_file());
    assert_eq!(d.stop().code(), Some(0));
    // Only a missing flag is a configuration error.
    let out = command()
        .args(["serve", "--node-id", NODE_ID])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
}

#[test]
fn fifos_and_folders_under_state_file_names_are_moved_aside_at_start() {
    let node = Node::new();
    let d = node.daemon().start();
    assert_eq!(put_report(&d, "kept", r#"{"ok":true}"#).status, 200);
    assert_eq!(d.stop().code(), Some(0));
    let state = node.state();
    let fifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    };
    for name in ["metadata.json", "revision", "report-sync.json"] {
        fifo(&state.join(name));
    }
    std::fs::remove_file(state.join("report.journal")).unwrap();
    std::fs::create_dir(state.join("report.journal")).unwrap();
    std::fs::rename(state.join("report"), node.path().join("report-files")).unwrap();
    std::fs::write(state.join("report"), b"a file named report").unwrap();

    let d = node.daemon().spawn();
    d.wait_ready();
    let log = d.log_text();
    for name in [
        "metadata.json",
        "revision",
        "report-sync.json",
        "report.journal",
        "report",
    ] {
        assert!(
            std::fs::symlink_metadata(state.join(format!("{name}.corrupt"))).is_ok(),
            "{name} not moved aside; log:\n{log}"
        );
        assert!(
            log.contains(&format!("{name}.corrupt")),
            "{name}: log:\n{log}"
        );
    }
    assert_eq!(
        std::fs::read(state.join("report.corrupt")).unwrap(),
        b"a file named report"
    );
    assert_eq!(put_report(&d, "after", "1").status, 200);
    assert_eq!(d.stop().code(), Some(0));
    assert!(state.join("report/after.json").is_file());
    assert!(
        node.path().join("report-files/kept.json").is_file(),
        "kept as it was"
    );
}

#[test]
fn a_full_disk_at_start_serves_reads_refuses_writes_and_recovers() {
    let node = Node::new();
    let Some(fs) = Tmpfs::mount(&node.path().join("mnt"), "512k") else {
        return;
    };
    let data = data_dir_on(&fs);
    let daemon = || {
        node.daemon()
            .args(["--data-dir".to_owned(), data.display().to_string()])
    };
    let d = daemon().start();
    assert_eq!(put_report(&d, "r", r#"{"v":1}"#).status, 200);
    assert_eq!(d.stop().code(), Some(0));
    let filler = fs.fill();
    let revision = std::fs::read(data.join("state/revision")).unwrap();

    let d = daemon().start();
    let health = d.get("/v1/health").json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["storage"]["writable"], false);
    assert_eq!(health["storage"]["full"], true);
    assert!(health["storage"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("No space left")));
    assert_eq!(d.metric("plexd_nodeapi_state_writable"), Some(0.0));
    // Reads come from the cache.
    assert_eq!(d.get("/v1/state/report/r").json()["payload"]["v"], 1);
    // Writes are refused with a clear JSON error; nothing acknowledged changes.
    let r = put_report(&d, "r", r#"{"v":2}"#);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("full"),
        "{}",
        r.text()
    );
    assert_eq!(d.delete("/v1/state/report/r").status, 507);
    assert_eq!(d.get("/v1/state/report/r").json()["version"], 1);
    assert_eq!(
        std::fs::read(data.join("state/revision")).unwrap(),
        revision
    );

    // Space comes back: writing resumes by itself.
    std::fs::remove_file(filler).unwrap();
    wait_writable(&d);
    assert_eq!(d.get("/v1/health").json()["status"], "ok");
    let r = put_report(&d, "r", r#"{"v":2}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    assert_eq!(d.stop().code(), Some(0));
    let d = daemon().start();
    assert_eq!(d.get("/v1/state/report/r").json()["payload"]["v"], 2);
}

#[test]
fn a_read_only_folder_at_start_serves_reads_and_resumes_when_writable() {
    let node = Node::new();
    let Some(fs) = Tmpfs::mount(&node.path().join("mnt"), "4m") else {
        return;
    };
    let data = data_dir_on(&fs);
    let daemon = || {
        node.daemon()
            .args(["--data-dir".to_owned(), data.display().to_string()])
    };
    let d = daemon().start();
    assert_eq!(put_report(&d, "r", "1").status, 200);
    // SIGKILL: the write is only in the journal.
    d.kill();
    fs.remount("ro");
    let d = daemon().start();
    let health = d.get("/v1/health").json();
    assert_eq!(health["storage"]["writable"], false, "{health}");
    assert_eq!(health["storage"]["full"], false);
    assert_eq!(d.get("/v1/state/report/r").json()["version"], 1);
    let r = put_report(&d, "x", "1");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("read-only"));
    assert!(r.header("retry-after").is_some());
    fs.remount("rw");
    wait_writable(&d);
    assert_eq!(put_report(&d, "x", "1").status, 200);
    assert_eq!(d.stop().code(), Some(0));
    assert!(data.join("state/report/r.json").is_file());
    assert!(data.join("state/report/x.json").is_file());
}

#[test]
fn a_revision_epoch_that_would_wrap_stops_the_start_with_a_clear_message() {
    let node = Node::new();
    let d = node.daemon().start();
    assert_eq!(d.stop().code(), Some(0));
    let revision = node.state().join("revision");
    for epoch in ["4294967295", "18446744073709551615"] {
        std::fs::write(&revision, format!("{epoch}\n")).unwrap();
        let d = node.daemon().spawn();
        let log = d.log.clone();
        assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(1));
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains(epoch) && text.contains("revision"), "{text}");
        assert_eq!(
            std::fs::read_to_string(&revision).unwrap(),
            format!("{epoch}\n")
        );
        assert!(!node.socket().exists());
    }
}
