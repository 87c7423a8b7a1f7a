//! `plexd-nodeapi state watch KIND[/KEY] [-- COMMAND ARGS…]`: follow one resource with
//! blocking queries and emit every new version — as one compact JSON line on stdout, or
//! by running COMMAND with the body on stdin and `PLEXD_INDEX` in its environment (like
//! `consul watch`).
//!
//! The loop: the first request is a plain GET (the current value is emitted at once),
//! then `?index=N&wait=5m` with the last `X-Plexd-Index`. A version is emitted when its
//! body differs from the last one emitted, so a timed-out wait or a daemon restart that
//! only moved the index (revisions jump forward at each start) emits nothing. An index
//! that goes backwards (another store behind the socket) resets the loop. A missing
//! key (404) is waited for; an unreachable daemon is retried with backoff. Messages go
//! to stderr, one line each, said once per episode.
//!
//! Secret values have no revision of their own: `secrets/KEY` follows the secret
//! index and fetches the value when that key's version changes there.
//!
//! This module talks to the daemon only through `client::LocalClient`; it parses no
//! HTTP and knows nothing about the store.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::client::{ClientResponse, LocalClient};
use super::error::{CliError, Failure};
use super::json_text::compact_json;
use crate::encoding::percent_encode_segment;

/// Who reports the watch's messages and its failure.
const WHO: &str = "plexd-nodeapi state watch";

/// How long each blocking query asks the daemon to wait.
const WAIT: Duration = Duration::from_secs(300);
/// The client gives up on a response this long after the daemon should have answered.
const READ_SLACK: Duration = Duration::from_secs(60);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What `state watch` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A resource with its own revision (`/v1/state/…`), path already encoded.
    Resource { path: String, key: Option<String> },
    /// A secret's value, followed through the secret index.
    SecretValue { key: String },
}

impl Target {
    /// Parses `metadata`, `data/KEY`, `report`, `secrets/db/password`… The key is
    /// everything after the first `/` (keys may contain `/`), percent-encoded here.
    pub fn parse(spec: &str) -> Result<Target, String> {
        let (kind, key) = match spec.split_once('/') {
            Some((k, key)) if !key.is_empty() => (k, Some(key.to_owned())),
            Some((k, _)) => (k, None),
            None => (spec, None),
        };
        let kind = match kind {
            "metadata" | "data" | "report" => kind,
            "secrets" | "secret" => "secrets",
            _ => {
                return Err(format!(
                    "watch: unknown kind {kind:?}; use metadata|data|report|secrets[/KEY]"
                ))
            }
        };
        Ok(match (kind, key) {
            ("secrets", Some(key)) => Target::SecretValue { key },
            (kind, Some(key)) => Target::Resource {
                path: format!("/v1/state/{kind}/{}", percent_encode_segment(&key)),
                key: Some(key),
            },
            (kind, None) => Target::Resource {
                path: format!("/v1/state/{kind}"),
                key: None,
            },
        })
    }

    /// The path whose revision is followed.
    fn poll_path(&self) -> &str {
        match self {
            Target::Resource { path, .. } => path,
            Target::SecretValue { .. } => "/v1/state/secrets",
        }
    }
}

/// Where each new version goes.
pub enum Sink {
    Stdout,
    Command(Vec<OsString>),
}

/// Why the loop stopped.
enum Stop {
    /// Nothing more to do (stdout was closed): success.
    Finished,
    /// A permanent error.
    Failed(CliError),
}

struct Watch {
    client: LocalClient,
    target: Target,
    sink: Sink,
    index: Option<u64>,
    last_body: Option<Vec<u8>>,
    /// Secret value watch: the version last seen in the index.
    last_secret_version: Option<i64>,
    said_missing: bool,
    said_unreachable: bool,
    backoff: Duration,
}

/// Runs the watch until Ctrl-C (exit 0) or a permanent error.
pub fn run(client: LocalClient, target: Target, sink: Sink) -> Result<(), Failure> {
    install_exit_on_signal();
    let mut watch = Watch {
        client: client.with_timeout(Some(WAIT + READ_SLACK)),
        target,
        sink,
        index: None,
        last_body: None,
        last_secret_version: None,
        said_missing: false,
        said_unreachable: false,
        backoff: BACKOFF_START,
    };
    loop {
        match watch.step() {
            Ok(()) => {}
            Err(Stop::Finished) => return Ok(()),
            Err(Stop::Failed(e)) => return Err(e.by(WHO)),
        }
    }
}

/// Ctrl-C and SIGTERM end the watch with status 0. Output is flushed line by line, so
/// nothing is lost by leaving at once.
fn install_exit_on_signal() {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // SAFETY: `_exit` is async-signal-safe and touches no Rust state.
        let _ = unsafe { signal_hook::low_level::register(sig, || libc::_exit(0)) };
    }
}

fn warn(message: &str) {
    eprintln!("{WHO}: {message}");
}

/// The daemon refused for good (not found, denied, bad request…).
fn refused(response: &ClientResponse) -> Stop {
    Stop::Failed(CliError::Refused {
        status: response.status,
        message: response.error_message(),
    })
}

impl Watch {
    fn step(&mut self) -> Result<(), Stop> {
        let path = match self.index {
            None => self.target.poll_path().to_owned(),
            Some(i) => format!(
                "{}?index={i}&wait={}s",
                self.target.poll_path(),
                WAIT.as_secs()
            ),
        };
        let response = match self.client.request("GET", &path, &[], None) {
            Ok(r) => r,
            Err(e) => {
                self.unreachable(&e.to_string());
                return Ok(());
            }
        };
        if self.said_unreachable {
            warn("daemon reachable again");
            self.said_unreachable = false;
        }
        self.backoff = BACKOFF_START;
        let index = response
            .header("x-plexd-index")
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(old), Some(new)) = (self.index, index) {
            if new < old {
                warn("the index went backwards (the daemon restarted with another store); starting over");
                self.index = None;
                self.last_body = None;
                self.last_secret_version = None;
                return Ok(());
            }
        }
        match response.status {
            200 => {
                self.index = index;
                match &self.target {
                    Target::Resource { .. } => {
                        self.said_missing = false;
                        self.emit(response.body, index)
                    }
                    Target::SecretValue { key } => {
                        let key = key.clone();
                        self.secret_changed(&key, &response, index)
                    }
                }
            }
            404 => {
                self.index = index;
                self.missing();
                Ok(())
            }
            429 | 500..=599 => {
                let retry = response
                    .header("retry-after")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                self.retry_later(
                    &format!(
                        "daemon answered {}: {}",
                        response.status,
                        response.error_message()
                    ),
                    retry,
                );
                Ok(())
            }
            _ => Err(refused(&response)),
        }
    }

    fn missing(&mut self) {
        if !self.said_missing {
            let what = match &self.target {
                Target::Resource { key: Some(k), .. } | Target::SecretValue { key: k } => {
                    format!("{k:?}")
                }
                Target::Resource { path, .. } => path.clone(),
            };
            warn(&format!(
                "{what} does not exist (yet); waiting for it to appear"
            ));
            self.said_missing = true;
        }
        // A later reappearance with the same body is a change for the consumer.
        self.last_body = None;
        self.last_secret_version = None;
    }

    /// The secret index changed: fetch the value if this key's version moved.
    fn secret_changed(
        &mut self,
        key: &str,
        list: &ClientResponse,
        index: Option<u64>,
    ) -> Result<(), Stop> {
        let version = serde_json::from_slice::<Vec<serde_json::Value>>(&list.body)
            .ok()
            .and_then(|refs| {
                refs.into_iter().find_map(|r| {
                    (r.get("key")?.as_str()? == key).then(|| r.get("version")?.as_i64())?
                })
            });
        let Some(version) = version else {
            self.missing();
            return Ok(());
        };
        self.said_missing = false;
        if self.last_secret_version == Some(version) {
            return Ok(());
        }
        let path = format!("/v1/state/secrets/{}", percent_encode_segment(key));
        match self.client.request("GET", &path, &[], None) {
            Ok(r) if r.status == 200 => {
                self.last_secret_version = Some(version);
                self.emit(r.body, index)
            }
            Ok(r) if r.status == 404 => {
                self.missing();
                Ok(())
            }
            Ok(r) if matches!(r.status, 401 | 403) => Err(refused(&r)),
            Ok(r) => {
                // Control plane down: try again, without waiting for another change.
                self.index = None;
                self.retry_later(
                    &format!(
                        "secret fetch failed: {} (HTTP {})",
                        r.error_message(),
                        r.status
                    ),
                    None,
                );
                Ok(())
            }
            Err(e) => {
                self.index = None;
                self.unreachable(&e.to_string());
                Ok(())
            }
        }
    }

    fn emit(&mut self, body: Vec<u8>, index: Option<u64>) -> Result<(), Stop> {
        if self.last_body.as_deref() == Some(body.as_slice()) {
            return Ok(());
        }
        let index_text = index.map(|i| i.to_string()).unwrap_or_default();
        match &self.sink {
            Sink::Stdout => {
                let line = compact(&body);
                let mut out = std::io::stdout().lock();
                // A closed stdout (`| head -1`) ends the watch normally.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Err(Stop::Finished);
                }
            }
            Sink::Command(argv) => run_command(argv, &body, &index_text)?,
        }
        self.last_body = Some(body);
        Ok(())
    }

    fn unreachable(&mut self, error: &str) {
        if !self.said_unreachable {
            warn(&format!("daemon unreachable ({error}); retrying"));
            self.said_unreachable = true;
        }
        self.sleep_backoff(None);
    }

    fn retry_later(&mut self, message: &str, at_least: Option<Duration>) {
        warn(&format!("{message}; retrying"));
        self.sleep_backoff(at_least);
    }

    fn sleep_backoff(&mut self, at_least: Option<Duration>) {
        let wait = self.backoff.max(at_least.unwrap_or_default());
        std::thread::sleep(wait);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// The body as one line of compact JSON (numbers and strings kept as sent).
fn compact(body: &[u8]) -> String {
    match serde_json::from_slice::<&serde_json::value::RawValue>(body) {
        Ok(_) => {
            let text = String::from_utf8_lossy(body);
            compact_json(&text)
        }
        Err(_) => String::from_utf8_lossy(body).replace('\n', " "),
    }
}

/// Runs `argv` with `body` on stdin and `PLEXD_INDEX` set; waits for it. A failing
/// command is reported and the watch goes on; one that cannot start ends it.
fn run_command(argv: &[OsString], body: &[u8], index: &str) -> Result<(), Stop> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Stop::Failed(CliError::Usage("watch: no command".into())));
    };
    let mut child = match Command::new(program)
        .args(args)
        .env("PLEXD_INDEX", index)
        .stdin(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Err(Stop::Failed(CliError::Failed(format!(
                "cannot run {}: {e}",
                program.to_string_lossy()
            ))))
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine (EPIPE ignored).
        let _ = stdin.write_all(body);
    }
    match child.wait() {
        Ok(status) if status.success() => {}
        Ok(status) => warn(&format!(
            "{} exited with {status}",
            program.to_string_lossy()
        )),
        Err(e) => warn(&format!("waiting for {}: {e}", program.to_string_lossy())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("metadata"),
            Ok(Target::Resource {
                path: "/v1/state/metadata".into(),
                key: None
            })
        );
        assert_eq!(
            Target::parse("data/tls/server.key"),
            Ok(Target::Resource {
                path: "/v1/state/data/tls%2Fserver.key".into(),
                key: Some("tls/server.key".into())
            })
        );
        assert_eq!(
            Target::parse("secret/db/password"),
            Ok(Target::SecretValue {
                key: "db/password".into()
            })
        );
        assert_eq!(
            Target::parse("secrets").map(|t| t.poll_path().to_owned()),
            Ok("/v1/state/secrets".to_owned())
        );
        assert!(Target::parse("nope").is_err());
    }
}
