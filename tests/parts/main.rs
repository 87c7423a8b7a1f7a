//! The library's parts in process, over real sockets and files: the router and handlers
//! byte for byte over `UnixStream::pair()` (`api_wire`), the HTTP core
//! (`http_core`, `http_idle`, with `http_common`), the control-plane link against the
//! development control plane (`cp_link`, `cp_logs`, `cp_tls`, `devcp`), event framing
//! and verification (`events_sse`, `events_verify`), the shipped contrib files
//! (`contrib`), and the Kubernetes mode's caller authentication against the fake API
//! server (`kube_authn`, with `kube_common`) and that fake's own self-tests
//! (`kube_fake`).
//!
//! One test binary for all of them. A test that needs the whole process to itself (a
//! global logger, a thread count) runs in a child process of this binary (`alone`).

mod http_common;
#[path = "../kube_common/mod.rs"]
mod kube_common;

mod api_wire;
mod contrib;
mod cp_link;
mod cp_logs;
mod cp_tls;
mod devcp;
mod events_sse;
mod events_verify;
mod http_core;
mod http_idle;
mod kube_authn;
mod kube_fake;

use std::process::Command;

/// Set in the child process that `alone` starts.
const ALONE: &str = "PLEXD_NODEAPI_TEST_ALONE";

/// Runs `body` as the only test of a child process of this test binary: for tests that
/// install process-wide state (a logger) or measure the process (its threads). `module`
/// is the caller's `module_path!()` and `test` its function name.
pub fn alone(module: &str, test: &str, body: impl FnOnce()) {
    if std::env::var_os(ALONE).is_some() {
        body();
        return;
    }
    let name = match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("running the test alone in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed alone: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
