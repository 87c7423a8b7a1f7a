//! Embeds what `version` and `plexd_nodeapi_build_info` report: the git revision (when
//! built from a git checkout; "unknown" otherwise), the target triple, the cargo
//! profile and the build date (UTC; `SOURCE_DATE_EPOCH` wins, for reproducible
//! builds). And packs the shell completion scripts of `contrib/completions/` (written
//! by `make docs` from the command table) into one gzip stream for `plexd-nodeapi
//! completions`: 3.7 KB in the binary instead of their generator.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The scripts in the order of `cli::completions::Shell::ALL`, NUL-separated.
const COMPLETIONS: [&str; 3] = [
    "contrib/completions/plexd-nodeapi.bash",
    "contrib/completions/_plexd-nodeapi",
    "contrib/completions/plexd-nodeapi.fish",
];

fn pack_completions() {
    let mut packed = Vec::new();
    for path in COMPLETIONS {
        println!("cargo:rerun-if-changed={path}");
        let script = std::fs::read(path).unwrap_or_default();
        packed.extend_from_slice(&script);
        packed.push(0);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let written = gz
        .write_all(&packed)
        .and_then(|()| gz.finish())
        .and_then(|bytes| std::fs::write(Path::new(&out).join("completions.gz"), bytes));
    if let Err(e) = written {
        panic!("cannot pack the completion scripts: {e}");
    }
}

fn main() {
    pack_completions();
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=PLEXD_NODEAPI_GIT_REVISION");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    if let Ok(target) = std::env::var("TARGET") {
        println!("cargo:rustc-env=PLEXD_NODEAPI_TARGET={target}");
    }
    if let Ok(profile) = std::env::var("PROFILE") {
        println!("cargo:rustc-env=PLEXD_NODEAPI_PROFILE={profile}");
    }
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        });
    if let Some(s) = seconds {
        println!(
            "cargo:rustc-env=PLEXD_NODEAPI_BUILD_DATE={}",
            civil_date(s / 86_400)
        );
    }
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

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
