//! A typed copy of the whole cache, taken under one read lock, for consumers that
//! mirror the state elsewhere (the Kubernetes mode renders its custom resource from
//! it). Readers of the local API use the pre-rendered bodies instead; this copies, so
//! it is meant for a few calls a second, not per request.

use crate::model::{DataEntry, Metadata, ReportEntry, SecretRef};

use super::Store;

/// The cache at one instant. Lists are sorted by key.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub metadata: Metadata,
    pub data: Vec<DataEntry>,
    pub secrets: Vec<SecretRef>,
    pub reports: Vec<ReportEntry>,
    /// The latest revision at which metadata, data or the secret index changed.
    pub spec_revision: u64,
    /// The revision at which the report set last changed.
    pub reports_revision: u64,
    /// The store-wide revision.
    pub revision: u64,
}

impl Store {
    /// The secret index alone (names and versions), sorted by key.
    pub fn secret_index(&self) -> Vec<SecretRef> {
        self.read().secrets.clone()
    }

    /// Everything in the cache, consistent (one read lock).
    pub fn snapshot(&self) -> Snapshot {
        let c = self.read();
        Snapshot {
            metadata: c
                .metadata
                .iter()
                .map(|(k, m)| (k.clone(), m.value.clone()))
                .collect(),
            data: c.data.values().map(|d| d.entry.clone()).collect(),
            secrets: c.secrets.clone(),
            reports: c.reports.values().map(|r| r.entry.clone()).collect(),
            spec_revision: c
                .metadata_stamp
                .rev
                .max(c.data_stamp.rev)
                .max(c.secrets_stamp.rev),
            reports_revision: c.reports_stamp.rev,
            revision: c.revision,
        }
    }
}
