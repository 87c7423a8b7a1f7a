//! The documents generated from the command table agree with it and with the code:
//! the README's flag table, the man page and the shell completions in `contrib/` are
//! exactly what `make docs` writes; the table's `serve` flags are exactly the settings
//! the config parser knows; the completion scripts complete in a real shell; the man
//! page renders without warnings.

use std::path::{Path, PathBuf};
use std::process::Command;

use plexd_nodeapi::cli::commands::{self, PROGRAM};
use plexd_nodeapi::cli::completions::Shell;
use plexd_nodeapi::cli::config::Settings;
use plexd_nodeapi::cli::docs;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

const STALE: &str = "out of date: run `make docs` and commit the result";

#[test]
fn readme_flag_table_is_the_generated_one() {
    let readme = read("README.md");
    let table = docs::flag_table_in(&readme).expect("README.md has the flag table markers");
    assert_eq!(
        table,
        docs::readme_flag_table(),
        "README.md flag table {STALE}"
    );
}

#[test]
fn man_page_is_the_generated_one_and_renders() {
    assert_eq!(
        read(docs::MAN_PAGE_FILE),
        docs::man_page(),
        "{} {STALE}",
        docs::MAN_PAGE_FILE
    );
    let Ok(out) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(repo(docs::MAN_PAGE_FILE))
        .output()
    else {
        eprintln!("groff not installed: the man page's rendering is not checked");
        return;
    };
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "groff warnings");
}

#[test]
fn completion_scripts_are_the_generated_ones() {
    for shell in Shell::ALL {
        let path = format!("contrib/{}", shell.contrib_file());
        assert_eq!(read(&path), shell.script(), "{path} {STALE}");
    }
}

/// The fields `Settings` (the config file's schema) knows, from serde's own list:
/// deserializing an unknown key names every known one.
fn settings_fields() -> Vec<String> {
    let err = serde_json::from_str::<Settings>(r#"{"__probe__": 1}"#)
        .expect_err("an unknown key is refused")
        .to_string();
    let list = err
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected serde message: {err}"));
    list.split(", ")
        .map(|f| {
            f.trim_matches(|c: char| c == '`' || c.is_whitespace())
                .to_owned()
        })
        .filter(|f| !f.is_empty())
        .map(|f| f.split('`').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn serve_flags_are_exactly_the_settings() {
    let mut fields = settings_fields();
    fields.sort();
    let mut flags: Vec<String> = commands::serve_flags()
        .filter(|o| !matches!(o.long, "config" | "help"))
        .map(|o| o.long.replace('-', "_"))
        .collect();
    flags.sort();
    assert_eq!(
        flags, fields,
        "the serve flags of src/cli/commands.rs and the keys of cli::config::Settings differ"
    );
    // Each flag is one the settings take, with a value exactly when the table says so.
    for o in commands::serve_flags().filter(|o| !matches!(o.long, "config" | "help")) {
        let mut s = Settings::default();
        let value = o.value.map(|_| "1".to_owned());
        if let Err(e) = s.set_flag(o.long, value) {
            assert!(
                !e.message.contains("unknown flag") && !e.message.contains("missing value"),
                "--{}: {e}",
                o.long
            );
        }
    }
}

#[test]
fn every_command_has_options_and_help() {
    for c in PROGRAM.subcommands {
        for page in std::iter::once(c).chain(c.subcommands.iter()) {
            assert!(!page.about.is_empty(), "{}", page.name);
            if page.name != "help" {
                assert!(page.opt("help").is_some(), "{} lacks --help", page.name);
            }
        }
    }
}

/// Completes `line` (the words so far, the last one being completed) with the bash
/// script, in bash.
fn bash_complete(line: &[&str]) -> Option<Vec<String>> {
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_plexd_nodeapi\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        repo("contrib/completions/plexd-nodeapi.bash").display(),
        words.join(" "),
        line.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &script])
        .output()
        .ok()?;
    assert!(out.status.success(), "{out:?}");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn bash_completes_commands_options_and_kinds() {
    let Some(top) = bash_complete(&["plexd-nodeapi", "s"]) else {
        eprintln!("bash not installed");
        return;
    };
    assert_eq!(top, ["serve", "state"]);
    assert_eq!(
        bash_complete(&["plexd-nodeapi", "serve", "--data-d"]).unwrap(),
        ["--data-dir"]
    );
    assert_eq!(
        bash_complete(&["plexd-nodeapi", "state", "--socket", "/x", "g"]).unwrap(),
        ["get"]
    );
    let kinds = bash_complete(&["plexd-nodeapi", "state", "get", ""]).unwrap();
    for k in ["metadata", "data", "report", "secret", "--raw"] {
        assert!(kinds.iter().any(|w| w == k), "{k} in {kinds:?}");
    }
    assert_eq!(
        bash_complete(&["plexd-nodeapi", "serve", "--log-level", "de"]).unwrap(),
        ["debug"]
    );
    assert_eq!(
        bash_complete(&["plexd-nodeapi", "completions", "z"]).unwrap(),
        ["zsh"]
    );
}

#[test]
fn zsh_and_fish_scripts_parse() {
    for (shell, args) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"][..])] {
        let path = repo(&format!(
            "contrib/{}",
            Shell::parse(shell).unwrap().contrib_file()
        ));
        match Command::new(shell).args(args).arg(&path).output() {
            Ok(out) => assert!(
                out.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => eprintln!("{shell} not installed: its script is not checked"),
        }
    }
}
