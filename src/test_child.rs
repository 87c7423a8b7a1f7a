//! Test support (unit tests only): run one test of this test binary in a child process,
//! for tests that must set up the process environment or descriptors, which the
//! multi-threaded test harness cannot do in place.
//!
//! Under an emulator (the ARM unit tests run under `qemu-arm-static` without
//! binfmt_misc) the kernel cannot execute the test binary directly, so the child is
//! started through the runner named in `PLEXD_NODEAPI_TEST_RUNNER` (a command line
//! split on spaces), as cargo started the parent.

use std::process::Command;

const CHILD: &str = "PLEXD_NODEAPI_TEST_CHILD";
const RUNNER: &str = "PLEXD_NODEAPI_TEST_RUNNER";

/// A command that runs the test named `test` (its full path,
/// `cli::sd_notify::tests::child_notify`) alone in a child process of this test binary.
pub fn child_command(test: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let runner = std::env::var(RUNNER).unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    c
}

/// Runs `test` in a child process (see [`child_command`]) after `setup` prepared the
/// command (environment, descriptors). Fails if the child fails; returns its stdout.
pub fn run_child(test: &str, setup: impl FnOnce(&mut Command)) -> String {
    let mut c = child_command(test);
    setup(&mut c);
    let out = c.output().expect("running a child test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether this process is such a child (the child test does the checking; in the
/// parent it does nothing).
pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}
