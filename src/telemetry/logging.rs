//! The process logger: one logfmt line per record on stderr.
//!
//! `ts=… level=info component=nodeapi msg="server started" socket=/run/plexd/api.sock`.
//! Structured fields come from the `log` crate's key-values (`info!(socket = p; "…")`).
//! Callers are responsible for never passing a secret value, token or key: nothing
//! here filters content.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::timefmt;

struct Logfmt {
    level: LevelFilter,
}

impl Log for Logfmt {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_record(record, SystemTime::now());
        // One write per line so lines from threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger; later calls only change the level.
pub fn init(level: LevelFilter) {
    // A logger that is already installed (a second `init`) stays; only the level moves.
    let _ = log::set_boxed_logger(Box::new(Logfmt { level }));
    log::set_max_level(level);
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
}
