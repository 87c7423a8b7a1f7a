//! The process logger: one logfmt line per record on stderr.
//!
//! `ts=… level=info component=nodeapi msg="server started" socket=/run/plexd/api.sock`.
//! Structured fields come from the `log` crate's key-values (`info!(socket = p; "…")`).
//! When stderr is the systemd journal (`JOURNAL_STREAM` names stderr's device and
//! inode, as systemd sets it) each line starts with its syslog priority (`<3>` error,
//! `<4>` warn, `<6>` info, `<7>` debug and trace), which journald strips and records,
//! so `journalctl -p err` works.
//! Callers are responsible for never passing a secret value, token or key: nothing
//! here filters content.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::timefmt;

struct Logfmt {
    level: LevelFilter,
    /// Prefix lines with their syslog priority (stderr is the journal).
    priority: bool,
}

impl Log for Logfmt {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format_record(record, SystemTime::now());
        if self.priority {
            line.insert_str(0, priority_prefix(record.level()));
        }
        // One write per line so lines from threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger; later calls only change the level.
pub fn init(level: LevelFilter) {
    let priority = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref());
    // A logger that is already installed (a second `init`) stays; only the level moves.
    let _ = log::set_boxed_logger(Box::new(Logfmt { level, priority }));
    log::set_max_level(level);
}

/// Whether `journal_stream` (`JOURNAL_STREAM`, "DEVICE:INODE") names the file stderr
/// is: systemd sets it for a service's stdout/stderr connected to the journal, and a
/// child whose stderr was redirected inherits the variable but not the stream.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // `dev_t` and `ino_t` are 32-bit on some 32-bit targets: the casts widen there.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::stat::fstat(2).is_ok_and(|st| st.st_dev as u64 == dev && st.st_ino as u64 == ino)
}

/// The syslog priority prefix journald understands (sd-daemon(3)).
pub fn priority_prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The logfmt line for `record`, newline included.
pub fn format_record(record: &Record, now: SystemTime) -> String {
    let mut out = String::with_capacity(128);
    let _ = write!(
        out,
        "ts={} level={} component=nodeapi msg=",
        timefmt::format_rfc3339_utc(now),
        level_name(record.level())
    );
    push_value(&mut out, &record.args().to_string());
    let mut visitor = KvWriter { out: &mut out };
    let _ = record.key_values().visit(&mut visitor);
    out.push('\n');
    out
}

struct KvWriter<'a> {
    out: &'a mut String,
}

impl<'kvs> log::kv::VisitSource<'kvs> for KvWriter<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.out.push(' ');
        self.out.push_str(key.as_str());
        self.out.push('=');
        push_value(self.out, &value.to_string());
        Ok(())
    }
}

/// Appends `v`, quoted when it holds spaces, quotes, `=` or control characters.
fn push_value(out: &mut String, v: &str) {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c > ' ' && c != '"' && c != '=' && c != '\\' && c != '\u{7f}');
    if plain {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_line() {
        let kvs: &[(&str, &str)] = &[("socket", "/run/plexd/api.sock"), ("note", "a b\"c")];
        let record = Record::builder()
            .level(Level::Info)
            .args(format_args!("server started"))
            .key_values(&kvs)
            .build();
        let line = format_record(&record, SystemTime::UNIX_EPOCH);
        assert_eq!(
            line,
            "ts=1970-01-01T00:00:00Z level=info component=nodeapi msg=\"server started\" socket=/run/plexd/api.sock note=\"a b\\\"c\"\n"
        );
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert_eq!(priority_prefix(Level::Error), "<3>");
        assert_eq!(priority_prefix(Level::Warn), "<4>");
        assert_eq!(priority_prefix(Level::Info), "<6>");
        assert_eq!(priority_prefix(Level::Trace), "<7>");
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:2")));
        let st = nix::sys::stat::fstat(2).unwrap();
        assert!(stderr_is_journal(Some(&format!(
            "{}:{}",
            st.st_dev, st.st_ino
        ))));
    }
}
