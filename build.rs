//! Embeds the git revision (when built from a git checkout) for `version` and
//! `plexd_nodeapi_build_info`. Builds without git simply report "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=PLEXD_NODEAPI_GIT_REVISION");
    if std::env::var_os("PLEXD_NODEAPI_GIT_REVISION").is_some() {
        return;
    }
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(rev) = revision {
        println!("cargo:rustc-env=PLEXD_NODEAPI_GIT_REVISION={rev}");
    }
}
