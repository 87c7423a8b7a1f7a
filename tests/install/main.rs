//! Installing and running the daemon as an operator does: `make install` into a
//! temporary root (`make_install`), the `.deb` built, listed and installed into a
//! temporary root with dpkg (`deb`), and the daemon run under the restrictions of the
//! hardened systemd unit (`hardened`).
//!
//! A test binary of its own: `hardened` creates the groups `plexd` and
//! `plexd-secrets` on the host for its run (and removes what it created), which must
//! not race with the black-box tests (a `plexd` group changes every daemon's socket
//! mode). Tests that need a tool the machine lacks (dpkg, systemd-analyze, setpriv,
//! strace) say so and return; CI installs them all.

#[path = "../blackbox/common.rs"]
mod common;

mod deb;
mod hardened;
mod make_install;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` runs (`tool --version`).
pub fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("{tool} is not installed: skipping what needs it");
    }
    found
}

/// Runs a command, asserting success; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The binary cargo built for the tests (what `BIN=` installs).
pub fn built_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_plexd-nodeapi"))
}

/// `systemd-analyze security --offline=true` of a unit file: the overall exposure.
pub fn exposure(unit: &Path, root: Option<&Path>) -> f64 {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=true", "--no-pager"]);
    if let Some(r) = root {
        cmd.arg(format!("--root={}", r.display()));
        cmd.arg(unit.file_name().unwrap());
    } else {
        cmd.arg(unit);
    }
    let out = cmd.output().expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
