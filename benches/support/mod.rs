//! Building blocks of the `nodeapi` benchmark: the load generator, process probes, fresh
//! request probes, the daemon fixture and the subjects it can start (ours, a reference),
//! the in-process control plane (adapter), result reporting, the tiny test server, and
//! the one error type they share. Scenario logic lives in `benches/scenarios/`, not here.

pub mod daemon;
pub mod loadgen;
pub mod probe;
pub mod procstat;
pub mod report;
pub mod subject;
pub mod tinyserver;
pub mod upstream;

use std::io;

/// Why a scenario or the self-test could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("setup: {0}")]
    Setup(String),
    #[error("daemon: {0}")]
    Daemon(String),
    #[error("control plane: {0}")]
    Upstream(String),
    #[error("load: {0}")]
    Load(String),
    #[error("usage: {0}")]
    Usage(String),
    /// The subject cannot run this scenario (e.g. the reference lacks a flag).
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
