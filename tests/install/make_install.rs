//! `make install` as the README has it, into a temporary root (`DESTDIR`): every file
//! where it belongs with its mode, a unit that runs the installed binary and scores
//! 3.0 or better with `systemd-analyze security`, an example config the daemon accepts,
//! the groups and a random token created in that root (never on this host), and a
//! second install that keeps an edited config and the token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use plexd_nodeapi::cli::config::Settings;

use super::{built_binary, exposure, have, repo, run_ok};

fn make_install(root: &Path) {
    run_ok(
        Command::new("make")
            .arg("-C")
            .arg(repo())
            .arg("--no-print-directory")
            .arg("install")
            .arg(format!("DESTDIR={}", root.display()))
            .arg(format!("BIN={}", built_binary().display())),
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn make_install_into_a_temporary_root() {
    if !have("make") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_install(root);
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    for (path, expected_mode) in [
        ("/usr/local/bin/plexd-nodeapi", 0o755),
        ("/usr/local/lib/systemd/system/plexd-nodeapi.service", 0o644),
        ("/usr/local/lib/systemd/system/plexd-nodeapi.socket", 0o644),
        ("/usr/local/lib/sysusers.d/plexd-nodeapi.conf", 0o644),
        ("/usr/local/lib/plexd-nodeapi/plexd-nodeapi-setup", 0o755),
        ("/usr/local/share/man/man1/plexd-nodeapi.1.gz", 0o644),
        (
            "/usr/local/share/bash-completion/completions/plexd-nodeapi",
            0o644,
        ),
        ("/usr/local/share/zsh/site-functions/_plexd-nodeapi", 0o644),
        (
            "/usr/local/share/fish/vendor_completions.d/plexd-nodeapi.fish",
            0o644,
        ),
        ("/usr/local/share/doc/plexd-nodeapi/README.md", 0o644),
        ("/usr/local/share/doc/plexd-nodeapi/openapi.json", 0o644),
        ("/etc/plexd/nodeapi.json", 0o600),
        ("/etc/plexd/http-token", 0o600),
    ] {
        assert_eq!(mode(&at(path)), expected_mode, "{path}");
    }
    assert_eq!(mode(&at("/etc/plexd")), 0o755);

    // The unit runs the installed binary with the installed config.
    let unit = read(&at("/usr/local/lib/systemd/system/plexd-nodeapi.service"));
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/bin/plexd-nodeapi serve --config /etc/plexd/nodeapi.json\n"
        ),
        "{unit}"
    );
    assert!(unit.contains("file:///usr/local/share/doc/plexd-nodeapi/README.md"));
    let installed = at("/usr/local/bin/plexd-nodeapi");
    let version = run_ok(Command::new(&installed).arg("version"));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("plexd-nodeapi "));
    run_ok(Command::new(&installed).args(["serve", "--help"]));

    // The man page is the generated one, compressed.
    let gz = std::fs::read(at("/usr/local/share/man/man1/plexd-nodeapi.1.gz")).unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut page).unwrap();
    assert_eq!(page, plexd_nodeapi::cli::docs::man_page());

    // The example config is accepted and agrees with the units and the token.
    let config = Settings::from_file(&at("/etc/plexd/nodeapi.json")).expect("the example config");
    assert_eq!(
        config.http_token_file.as_deref(),
        Some(Path::new("/etc/plexd/http-token"))
    );
    let socket_unit = read(&at("/usr/local/lib/systemd/system/plexd-nodeapi.socket"));
    let listen = socket_unit
        .lines()
        .find_map(|l| l.strip_prefix("ListenStream="))
        .expect("ListenStream");
    let config_socket = config
        .socket
        .as_deref()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(config_socket.replacen("/var/run/", "/run/", 1), listen);

    // A random token, and the groups, in the temporary root.
    let token = read(&at("/etc/plexd/http-token"));
    assert_eq!(token.len(), 65, "{token:?}");
    assert!(token.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    if Command::new("systemd-sysusers")
        .arg("--version")
        .output()
        .is_ok()
    {
        let group = read(&at("/etc/group"));
        for g in ["plexd:", "plexd-secrets:"] {
            assert!(group.lines().any(|l| l.starts_with(g)), "{g} in {group}");
        }
    }

    // Installing again keeps what the operator has: an edited config and the token.
    let edited = read(&at("/etc/plexd/nodeapi.json")).replace("cp.example.com", "cp.example.org");
    std::fs::write(at("/etc/plexd/nodeapi.json"), &edited).unwrap();
    make_install(root);
    assert_eq!(read(&at("/etc/plexd/nodeapi.json")), edited);
    assert_eq!(read(&at("/etc/plexd/http-token")), token);

    if have("systemd-analyze") {
        let score = exposure(
            Path::new("/usr/local/lib/systemd/system/plexd-nodeapi.service"),
            Some(root),
        );
        assert!(
            score <= 3.0,
            "systemd-analyze security: {score} (at most 3.0)"
        );
    }
}

#[test]
fn install_without_a_binary_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .arg("-C")
        .arg(repo())
        .args(["--no-print-directory", "install-files"])
        .arg(format!("DESTDIR={}", dir.path().display()))
        .arg("BIN=/nonexistent/plexd-nodeapi")
        .output()
        .expect("make");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run make static"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_shipped_unit_scores_3_or_better() {
    if !have("systemd-analyze") {
        return;
    }
    let score = exposure(&repo().join("contrib/plexd-nodeapi.service"), None);
    assert!(score <= 3.0, "contrib/plexd-nodeapi.service: {score}");
}
