//! Black-box tests: the real `plexd-nodeapi` binary, started with `serve` flags on
//! temporary data folders, driven over its Unix socket and loopback TCP, with the
//! crate's development control plane as its upstream (`common`).
//!
//! One test binary for all of them: each file is a module named after what it covers.

mod common;
#[path = "../kube_common/mod.rs"]
mod kube_common;

mod access;
mod api_routes;
mod cli;
mod damaged;
mod dev;
mod durability;
mod events_stream;
mod hostile;
mod kube;
mod memory;
mod notify;
mod observability;
mod overload;
mod readme;
mod reconcile;
mod usage;
mod watch;
