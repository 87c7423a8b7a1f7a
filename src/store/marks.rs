//! The control plane's acknowledgements: per report key, the state it last took.
//!
//! `state/report-sync.json` maps each report key to the `(version, updated_at)` the
//! control plane last acknowledged, keys sorted:
//! `{"app-health":{"version":3,"updated_at":"2026-03-01T12:00:00.5Z"}}`. This module is
//! the mark and the file's format; what is pending because of it is `outbox`'s.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::ReportEntry;

pub const MARKS_FILE: &str = "report-sync.json";

/// The state of one report key the control plane acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: i64,
    pub updated_at: String,
}

impl Mark {
    pub fn of(entry: &ReportEntry) -> Mark {
        Mark {
            version: entry.version,
            updated_at: entry.updated_at.clone(),
        }
    }

    pub fn matches(&self, entry: &ReportEntry) -> bool {
        self.version == entry.version && self.updated_at == entry.updated_at
    }
}

/// The marks file's content: keys sorted, so the file is stable and diffable.
pub fn encode_marks(marks: &HashMap<String, Mark>) -> Result<Vec<u8>, serde_json::Error> {
    let sorted: BTreeMap<&String, &Mark> = marks.iter().collect();
    serde_json::to_vec(&sorted)
}

pub fn decode_marks(bytes: &[u8]) -> Result<HashMap<String, Mark>, serde_json::Error> {
    serde_json::from_slice(bytes)
}
