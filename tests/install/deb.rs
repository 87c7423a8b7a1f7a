//! `make deb`'s package (`scripts/deb`), built from the test binary: exactly the
//! expected files with their modes (`dpkg-deb -c`), the control fields, the config file
//! as a conffile and maintainer scripts that parse; installed into a temporary root
//! with dpkg, whose postinst creates the groups and a token there (never on this host)
//! and enables nothing; purged, which removes the token and the config.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::{built_binary, have, repo, run_ok};

fn build(out: &Path) -> std::path::PathBuf {
    let o = run_ok(
        Command::new(repo().join("scripts/deb"))
            .env("BIN", built_binary())
            .env("TARGET", "x86_64-unknown-linux-musl")
            .env("OUT", out)
            .env("DEB_COMPRESS", "none"),
    );
    let last = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .expect("the package's path")
        .to_owned();
    std::path::PathBuf::from(last)
}

/// `dpkg-deb -c`: path → (mode string, owner).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let o = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.last().unwrap().trim_start_matches('.').to_owned();
            (path, (f[0].to_owned(), f[1].to_owned()))
        })
        .collect()
}

fn dpkg(root: &Path, args: &[&str], deb: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            "--log=/dev/null",
        ])
        .args(args);
    if let Some(d) = deb {
        cmd.arg(d);
    }
    run_ok(&mut cmd)
}

#[test]
fn deb_contents_scripts_install_and_purge() {
    if !have("dpkg-deb") || !have("make") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build(dir.path());
    assert!(
        deb.ends_with("plexd-nodeapi_0.1.0_amd64.deb"),
        "{}",
        deb.display()
    );

    let files = contents(&deb);
    let regular: BTreeMap<&str, &str> = files
        .iter()
        .filter(|(_, (m, _))| m.starts_with('-'))
        .map(|(p, (m, _))| (p.as_str(), m.as_str()))
        .collect();
    let expected: BTreeMap<&str, &str> = [
        ("/etc/plexd/nodeapi.json", "-rw-------"),
        ("/usr/bin/plexd-nodeapi", "-rwxr-xr-x"),
        ("/usr/lib/plexd-nodeapi/plexd-nodeapi-setup", "-rwxr-xr-x"),
        (
            "/usr/lib/systemd/system/plexd-nodeapi.service",
            "-rw-r--r--",
        ),
        ("/usr/lib/systemd/system/plexd-nodeapi.socket", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/plexd-nodeapi.conf", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/plexd-nodeapi",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/plexd-nodeapi/README.md", "-rw-r--r--"),
        ("/usr/share/doc/plexd-nodeapi/copyright", "-rw-r--r--"),
        ("/usr/share/doc/plexd-nodeapi/openapi.json", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/plexd-nodeapi.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/man/man1/plexd-nodeapi.1.gz", "-rw-r--r--"),
        (
            "/usr/share/zsh/vendor-completions/_plexd-nodeapi",
            "-rw-r--r--",
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(regular, expected, "dpkg-deb -c");
    assert!(files.values().all(|(_, owner)| owner == "root/root"));
    // No token in the package: every host makes its own.
    assert!(!files.contains_key("/etc/plexd/http-token"));

    let field = |name: &str| {
        let o = run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "plexd-nodeapi");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Depends"), "");
    let control = dir.path().join("control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/plexd/nodeapi.json\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        run_ok(Command::new("sh").arg("-n").arg(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(
            !code
                .iter()
                .any(|l| l.contains("systemctl enable") || l.contains("systemctl start")),
            "{script} enables or starts nothing"
        );
    }

    // Installed into a temporary root: the postinst prepares that root, not this host.
    let host_had_plexd = nix::unistd::Group::from_name("plexd")
        .ok()
        .flatten()
        .is_some();
    let root = dir.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.join(f), "").unwrap();
    }
    dpkg(&root, &["-i"], Some(&deb));
    let token = std::fs::read_to_string(root.join("etc/plexd/http-token")).unwrap();
    assert_eq!(token.trim_end().len(), 64);
    if Command::new("systemd-sysusers")
        .arg("--version")
        .output()
        .is_ok()
    {
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(
            group.contains("plexd:") && group.contains("plexd-secrets:"),
            "{group}"
        );
    }
    assert_eq!(
        nix::unistd::Group::from_name("plexd")
            .ok()
            .flatten()
            .is_some(),
        host_had_plexd,
        "the host's groups are untouched"
    );
    assert!(
        !root
            .join("etc/systemd/system/multi-user.target.wants")
            .exists(),
        "nothing enabled"
    );
    run_ok(Command::new(root.join("usr/bin/plexd-nodeapi")).arg("version"));
    // Reinstalling keeps the token.
    dpkg(&root, &["-i"], Some(&deb));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/plexd/http-token")).unwrap(),
        token
    );
    // Purged: the token and the config go, the binary too.
    dpkg(&root, &["--purge", "plexd-nodeapi"], None);
    for gone in [
        "etc/plexd/http-token",
        "etc/plexd/nodeapi.json",
        "usr/bin/plexd-nodeapi",
    ] {
        assert!(!root.join(gone).exists(), "{gone} after purge");
    }
}
