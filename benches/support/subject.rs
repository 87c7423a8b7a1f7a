//! The binaries a benchmark compares: ours (`plexd-nodeapi serve …`) and, optionally, a
//! reference: either a binary that takes the same flags without the `serve` word and
//! without `--log-level` (the Go agent's harness), or another build of ours (its
//! `--help` shows a `serve` command; then it is started like ours), e.g. an older commit
//! for a before/after comparison in one run. A reference's flags are read once from its
//! `--help`, so a scenario that needs a flag the reference lacks is reported as "not run
//! on the reference" instead of failing.
//!
//! It deliberately does not build, locate or download a reference: the path comes from
//! `--reference PATH` or `$PLEXD_NODEAPI_REFERENCE`, and the benchmark works without one.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::report::Side;
use super::BenchError;

/// One binary under measurement.
#[derive(Debug, Clone)]
pub struct Subject {
    pub side: Side,
    pub bin: PathBuf,
    /// The long flags the binary accepts (`--name`); `None`: everything we pass (ours).
    known_flags: Option<BTreeSet<String>>,
    /// Arguments before the flags (`serve --log-level warn` for a build of ours).
    prefix: Vec<String>,
}

fn serve_prefix() -> Vec<String> {
    ["serve", "--log-level", "warn"].map(String::from).to_vec()
}

impl Subject {
    pub fn ours(bin: PathBuf) -> Subject {
        Subject {
            side: Side::Ours,
            bin,
            known_flags: None,
            prefix: serve_prefix(),
        }
    }

    /// A reference binary; its flags are read from `PATH --help` (bounded to 5 s).
    pub fn reference(bin: &Path) -> Result<Subject, BenchError> {
        if !bin.is_file() {
            return Err(BenchError::Usage(format!(
                "--reference {}: no such file",
                bin.display()
            )));
        }
        let help = help_text(bin, &["--help"])?;
        // A build of ours lists a `serve` command: older builds in their usage line
        // (`  plexd-nodeapi serve …`, with its flags on the same page), newer ones under
        // "Commands:" (`  serve   run the daemon`, its flags on `serve --help`).
        let ours = help.lines().any(|l| {
            let mut words = l.split_whitespace();
            let first = words.next();
            first == Some("serve") || words.next() == Some("serve")
        });
        let help = if ours {
            format!("{help}\n{}", help_text(bin, &["serve", "--help"])?)
        } else {
            help
        };
        let mut flags = parse_help_flags(&help);
        let prefix = if ours {
            let mut p = vec!["serve".to_string()];
            if flags.contains("--log-level") {
                p.extend(["--log-level".to_string(), "warn".to_string()]);
            }
            flags.remove("--help");
            p
        } else {
            Vec::new()
        };
        let basics = [
            "--data-dir",
            "--socket",
            "--node-id",
            "--control-plane",
            "--nsk-file",
        ];
        if let Some(missing) = basics.iter().find(|f| !flags.contains(**f)) {
            return Err(BenchError::Usage(format!(
                "--reference {}: its --help does not list {missing}; is it the reference harness?",
                bin.display()
            )));
        }
        Ok(Subject {
            side: Side::Reference,
            bin: bin.to_path_buf(),
            known_flags: Some(flags),
            prefix,
        })
    }

    /// A reference that is another build of ours (started with `serve`).
    pub fn is_build_of_ours(&self) -> bool {
        self.side == Side::Reference && !self.prefix.is_empty()
    }

    /// Whether the binary accepts `flag` (`--name`).
    pub fn supports(&self, flag: &str) -> bool {
        match &self.known_flags {
            None => true,
            Some(known) => known.contains(flag),
        }
    }

    /// The command that starts the daemon with `flags` (`--name`, value). Fails with
    /// `BenchError::Unsupported` when the binary lacks one of them.
    pub fn command(&self, flags: &[(&str, Option<String>)]) -> Result<Command, BenchError> {
        let lacking: Vec<&str> = flags
            .iter()
            .map(|&(f, _)| f)
            .filter(|f| !self.supports(f))
            .collect();
        if !lacking.is_empty() {
            return Err(BenchError::Unsupported(format!(
                "{} lacks {}",
                self.bin.display(),
                lacking.join(", ")
            )));
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.prefix);
        for (flag, value) in flags {
            cmd.arg(flag);
            if let Some(v) = value {
                cmd.arg(v);
            }
        }
        Ok(cmd)
    }
}

/// `bin --help`'s stdout and stderr (Go's flag package prints usage to stderr).
fn help_text(bin: &Path, args: &[&str]) -> Result<String, BenchError> {
    let shown = format!("{} {}", bin.display(), args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BenchError::io(format!("running {shown}")))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Setup(format!(
                    "{shown} did not finish within 5 s"
                )));
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    Ok(text)
}

/// The long flags a usage text lists: every line whose first word starts with `-`
/// (`  -data-dir string` in Go's style, `  --data-dir DIR` or `-h, --help` elsewhere),
/// normalized to `--name`.
pub fn parse_help_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split([' ', '\t', ',']) {
            let Some(name) = word.strip_prefix('-') else {
                if word.is_empty() {
                    continue;
                }
                break;
            };
            let name = name.trim_start_matches('-');
            let name = name.split(['=', '[']).next().unwrap_or_default();
            if name.len() > 1
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

/// Whether the ELF file at `path` has no program interpreter (`PT_INTERP`), i.e. is
/// statically linked; `None` if it cannot be read as a 64-bit little-endian ELF.
pub fn is_static_elf(path: &Path) -> Option<bool> {
    let elf = std::fs::read(path).ok()?;
    let (magic, class, endian) = (elf.get(..4)?, *elf.get(4)?, *elf.get(5)?);
    if magic != b"\x7fELF" || class != 2 || endian != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    const PT_INTERP: u32 = 3;
    let mut interp = false;
    for i in 0..phnum {
        interp |= u32_at(phoff + i * phentsize)? == PT_INTERP;
    }
    Some(!interp)
}
