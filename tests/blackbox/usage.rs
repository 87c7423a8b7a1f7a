//! The command line as a newcomer meets it: `--help`/`-h` on every command and
//! subcommand (its own page, status 0), `help COMMAND`, unknown flags and commands
//! named as unknown (status 2, one line), `completions`, `version`, and the log's
//! journald priorities and the warning for a TCP listener beyond loopback.

use crate::common::*;
use plexd_nodeapi::cli::commands;
use plexd_nodeapi::cli::completions::Shell;
use plexd_nodeapi::cli::help;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    command()
        .args(args)
        .env_remove("PLEXD_NODEAPI_SOCKET")
        .output()
        .expect("run binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_on_every_command_prints_its_own_page_and_exits_0() {
    let mut pages = std::collections::BTreeSet::new();
    for path in commands::paths() {
        let expected = help::page(&path).expect("a page");
        for flag in ["--help", "-h"] {
            let mut args = path.clone();
            args.push(flag);
            let o = run(&args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
            assert_eq!(stdout(&o), expected, "{args:?}");
            assert_eq!(stderr(&o), "", "{args:?}");
        }
        // `help PATH` is the same page.
        let mut args = vec!["help"];
        args.extend(&path);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert_eq!(stdout(&o), expected, "{args:?}");
        assert!(pages.insert(expected), "{path:?} shares its page");
    }
    // --help wins wherever it is, even after other arguments.
    let o = run(&["state", "put", "k", "--data", "1", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), help::page(&["state", "put"]).unwrap());
    let o = run(&["serve", "--data-dir", "/nonexistent", "-h"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--max-report-bytes SIZE"));
    assert!(stdout(&o).contains("[default: 64MiB]"));
    // No arguments at all: the program's page.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), help::page(&[]).unwrap());
}

#[test]
fn unknown_flags_and_commands_are_named_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--frobnicate"], "unknown flag --frobnicate"),
        (&["bogus"], "unknown command \"bogus\""),
        (&["serve", "--frobnicate"], "--frobnicate: unknown flag"),
        (
            &["serve", "--frobnicate", "x"],
            "--frobnicate: unknown flag",
        ),
        (&["serve", "-x"], "unknown flag -x"),
        (&["serve", "--data-dir"], "--data-dir: missing value DIR"),
        (&["state", "--json"], "unknown flag --json"),
        (
            &["state", "get", "--data", "x", "metadata"],
            "unknown flag --data",
        ),
        (&["state", "delete", "k", "--raw"], "unknown flag --raw"),
        (&["state", "frob"], "unknown subcommand \"frob\""),
        (&["state", "get", "nope"], "unknown kind \"nope\""),
        (&["state", "put", "k"], "--data VALUE is required"),
        (
            &["state", "watch", "metadata", "--raw"],
            "--raw needs a KEY",
        ),
        (&["dev", "--nope"], "unknown flag --nope"),
        (&["dev", "--http", "not-an-address"], "is not an address"),
        (&["version", "--long"], "unknown flag --long"),
        (&["completions", "tcsh"], "unknown shell \"tcsh\""),
        (&["completions"], "which shell?"),
        (&["help", "nope"], "no such command"),
    ];
    for (args, message) in cases {
        let o = run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err:?} lacks {message:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(!err.contains("Long(") && !err.contains("Short("), "{err}");
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
}

#[test]
fn completions_print_the_shell_scripts() {
    for shell in Shell::ALL {
        let o = run(&["completions", shell.name()]);
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(stdout(&o), shell.script());
    }
}

#[test]
fn version_names_revision_target_profile_and_build_date() {
    let o = run(&["version"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.starts_with(&format!("plexd-nodeapi {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for field in ["revision:", "target:", "profile:", "built:", "features:"] {
        assert!(text.contains(field), "{field} in {text}");
    }
    let target = text
        .lines()
        .find_map(|l| l.strip_prefix("target:"))
        .unwrap()
        .trim();
    assert!(
        target.ends_with("-linux-gnu")
            || target.contains("-linux-musl")
            || target.ends_with("-linux-gnueabihf"),
        "{target}"
    );
    let built = text
        .lines()
        .find_map(|l| l.strip_prefix("built:"))
        .unwrap()
        .trim();
    assert!(
        built.len() == 10 && built.as_bytes()[4] == b'-' && built.as_bytes()[7] == b'-',
        "{built}"
    );
    assert_eq!(stdout(&run(&["--version"])), text);
    assert_eq!(stdout(&run(&["-V"])), text);
}

#[test]
fn log_lines_carry_journald_priorities_when_stderr_is_the_journal() {
    let node = Node::new();
    let token = node.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    // No control plane (a warning) and a TCP listener on every address (a warning).
    let d = node
        .daemon()
        .journal_stream()
        .args([
            "--log-level",
            "info",
            "--http-listen",
            "0.0.0.0:0",
            "--http-token-file",
            token.to_str().unwrap(),
        ])
        .start();
    // The listener warning may be written a moment after the socket answers.
    eventually(std::time::Duration::from_secs(5), || {
        d.log_text().contains("not on a loopback address")
    });
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let expected = if line.contains(" level=warn ") {
            "<4>ts="
        } else if line.contains(" level=error ") {
            "<3>ts="
        } else {
            "<6>ts="
        };
        assert!(line.starts_with(expected), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not on a loopback address") && l.contains("http_listen=0.0.0.0:")),
        "{log}"
    );
    drop(d);
    // Without JOURNAL_STREAM (or with one naming another file): plain logfmt, and no
    // warning for a loopback listener.
    let d = node
        .daemon()
        .env("JOURNAL_STREAM", "1:1")
        .args(["--log-level", "info"])
        .http_with_token("t0ken")
        .start();
    let log = d.log_text();
    assert!(log.lines().all(|l| l.starts_with("ts=")), "{log}");
    assert!(!log.contains("not on a loopback address"), "{log}");
}
