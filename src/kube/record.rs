//! `state/k8s-mirror.json`: what the mirror must remember across restarts — the uid
//! of the custom resource it mirrors to, the base of the status merge (per report key,
//! the version and content digest last written to or imported from `.status.report`),
//! and the names of the Secrets it created (so a removed secret ref is cleaned up even
//! if the resource's spec was edited meanwhile; the daemon never lists Secrets).
//!
//! Written atomically (temp file, fsync, rename, folder fsync). A missing or unreadable
//! file is an empty record: the store is then authoritative — everything is pushed,
//! nothing deleted. The store's other files are not touched.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::merge::Base;

pub const FILE: &str = "k8s-mirror.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRecord {
    /// The resource the base belongs to.
    #[serde(default)]
    pub cr_uid: Option<String>,
    #[serde(default)]
    pub base: Base,
    /// Secrets this daemon created and has not deleted yet.
    #[serde(default)]
    pub secrets: BTreeSet<String>,
}

/// The record file in a state folder.
#[derive(Debug, Clone)]
pub struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    pub fn new(state_dir: &Path) -> RecordFile {
        RecordFile {
            path: state_dir.join(FILE),
        }
    }

    /// The stored record; empty (logged) when absent or unreadable.
    pub fn load(&self) -> MirrorRecord {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!(file = self.path.display().to_string(), error:% = e; "mirror record unreadable; starting from an empty base (the store wins, nothing is deleted)");
                MirrorRecord::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => MirrorRecord::default(),
            Err(e) => {
                log::warn!(file = self.path.display().to_string(), error:% = e; "cannot read the mirror record; starting from an empty base");
                MirrorRecord::default()
            }
        }
    }

    /// Replaces the file durably.
    pub fn save(&self, record: &MirrorRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{FILE}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::merge::BaseEntry;

    #[test]
    fn round_trip_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let f = RecordFile::new(d.path());
        assert_eq!(f.load(), MirrorRecord::default());
        let mut r = MirrorRecord {
            cr_uid: Some("u1".into()),
            ..MirrorRecord::default()
        };
        r.base.insert(
            "a".into(),
            BaseEntry {
                version: 2,
                digest: "ab".into(),
            },
        );
        r.secrets.insert("plexd-secret-n-x".into());
        f.save(&r).unwrap();
        assert_eq!(f.load(), r);
        fs::write(d.path().join(FILE), b"{not json").unwrap();
        assert_eq!(f.load(), MirrorRecord::default());
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
