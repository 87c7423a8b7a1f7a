//! Building blocks of the `nodeapi` benchmark: the load generator, process probes, the
//! daemon fixture, the in-process control plane (adapter), the tiny test server, and the
//! one error type they share. Scenario logic lives in `benches/nodeapi.rs`, not here.

pub mod daemon;
pub mod loadgen;
pub mod procstat;
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
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
