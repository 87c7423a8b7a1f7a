//! The `k8s-watch` thread: one watch stream on the node's resource (by name, through
//! a `fieldSelector`), handing each new version of the object to the mirror.
//!
//! The stream is a sequence of JSON values (`{"type", "object"}`), framed by value, not
//! by chunk or line. `ADDED`/`MODIFIED` carry the object (the mirror gets the latest
//! one, older ones are dropped); `DELETED` tells the mirror to recreate it; `BOOKMARK`
//! only moves the resourceVersion. The first watch, and any watch after an `ERROR` 410
//! ("too old resource version", sent as an event of an HTTP 200 stream, or as an HTTP
//! 410), starts without a resourceVersion, so the API server sends the current object
//! as a synthetic `ADDED` — a relist that needs no `list` permission. A stream that
//! ends cleanly (its `timeoutSeconds`, 240–300 s) is resumed from the last
//! resourceVersion; a read that waits longer than the timeout plus 30 s means a dead
//! connection. ResourceVersions are opaque: compared for equality only. This thread
//! writes nothing.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use serde_json::Value;

use crate::cp::backoff::Backoff;

use super::client::KubeClient;
use super::{meta_str, Paths};
use crate::telemetry::kubernetes::{KubeHealth, WATCH_RESTARTS};

/// What the watch tells the mirror.
#[derive(Debug, Clone, PartialEq)]
pub enum News {
    /// The resource as the API server now holds it.
    Object(Value),
    /// The resource was deleted.
    Deleted,
}

/// The mailbox between the watch and the mirror: the latest news wins.
#[derive(Default)]
pub struct Inbox {
    latest: Mutex<Option<News>>,
}

impl Inbox {
    pub fn put(&self, news: News) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(news);
    }

    pub fn take(&self) -> Option<News> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub object: Value,
}

/// Timing of the watch (tests shorten them through the environment).
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// `timeoutSeconds` is drawn from this range.
    pub timeout: (u64, u64),
    pub backoff_base: Duration,
}

impl Default for WatchOptions {
    fn default() -> WatchOptions {
        WatchOptions {
            timeout: (240, 300),
            backoff_base: Duration::from_secs(1),
        }
    }
}

/// What the watch loop shares with its owner.
pub struct WatchDeps {
    pub client: Arc<KubeClient>,
    pub health: Arc<KubeHealth>,
    pub paths: Paths,
    pub inbox: Arc<Inbox>,
    /// Wakes the mirror (a full channel is fine: it is awake already).
    pub wake: Sender<()>,
    pub stop: Receiver<()>,
    pub stopping: Arc<AtomicBool>,
}

/// How one stream ended.
enum Ended {
    /// Cleanly (timeout): resume from the resourceVersion.
    Clean,
    /// `ERROR` 410: relist.
    Expired,
    /// An `ERROR` event with another code.
    Error(String),
    /// The connection broke or a read timed out.
    Broken(String),
}

/// Runs until `stop` is signalled (checked between events and while backing off).
pub fn run(deps: WatchDeps, options: WatchOptions) {
    let mut rv: Option<String> = None;
    let mut backoff = Backoff::with_base(options.backoff_base);
    let mut rng = seed();
    while !deps.stopping.load(Ordering::Relaxed) {
        let span = options.timeout.1.saturating_sub(options.timeout.0);
        let timeout = options.timeout.0 + next(&mut rng) % (span + 1);
        let idle = Duration::from_secs(timeout + 30);
        let started = Instant::now();
        let delay = match deps
            .client
            .watch(&deps.paths.watch(rv.as_deref(), timeout), idle)
        {
            Ok(stream) => {
                deps.health.set_watch_connected(true);
                let ended = read_events(stream, &deps, &mut rv);
                deps.health.set_watch_connected(false);
                match ended {
                    Ended::Clean => {
                        deps.health.count(WATCH_RESTARTS, "timeout", "");
                        if started.elapsed() < Duration::from_secs(5) {
                            backoff.next_delay()
                        } else {
                            backoff.reset();
                            Duration::from_millis(next(&mut rng) % 1000)
                        }
                    }
                    Ended::Expired => {
                        deps.health.count(WATCH_RESTARTS, "expired", "");
                        log::info!("watch resourceVersion expired (410); relisting");
                        rv = None;
                        Duration::ZERO
                    }
                    Ended::Error(message) => {
                        deps.health.count(WATCH_RESTARTS, "error", "");
                        log::warn!(error = message.as_str(); "watch stream sent an error");
                        rv = None;
                        backoff.next_delay()
                    }
                    Ended::Broken(message) => {
                        deps.health.count(WATCH_RESTARTS, "broken", "");
                        log::info!(error = message.as_str(); "watch stream broke; resuming");
                        backoff.next_delay()
                    }
                }
            }
            Err(e) if e.is(410) => {
                deps.health.count(WATCH_RESTARTS, "expired", "");
                rv = None;
                Duration::ZERO
            }
            Err(e) => {
                deps.health.count(WATCH_RESTARTS, "error", "");
                log::debug!(error:% = e; "cannot open the watch stream");
                match e.retry_after() {
                    Some(d) => d,
                    None if e.is_refusal() => backoff.ceiling_delay(),
                    None => backoff.next_delay(),
                }
            }
        };
        if !delay.is_zero() && deps.stop.recv_timeout(delay).is_ok() {
            break;
        }
    }
}

/// Reads one stream to its end, updating `rv` and the inbox.
fn read_events(stream: Box<dyn Read + Send>, deps: &WatchDeps, rv: &mut Option<String>) -> Ended {
    let name = deps.paths.name.get();
    let reader = std::io::BufReader::new(stream);
    for item in serde_json::Deserializer::from_reader(reader).into_iter::<WatchEvent>() {
        if deps.stopping.load(Ordering::Relaxed) {
            return Ended::Clean;
        }
        if deps.paths.name.get() != name {
            // The mirror moved to the hashed name (a collision): watch that one.
            *rv = None;
            return Ended::Clean;
        }
        let event = match item {
            Ok(e) => e,
            Err(e) if e.is_eof() => return Ended::Broken(e.to_string()),
            Err(e) if e.is_io() => return Ended::Broken(e.to_string()),
            Err(e) => return Ended::Broken(format!("undecodable event: {e}")),
        };
        if let Some(ended) = handle(event, deps, rv) {
            return ended;
        }
    }
    Ended::Clean
}

/// Applies one event; `Some` ends the stream.
fn handle(event: WatchEvent, deps: &WatchDeps, rv: &mut Option<String>) -> Option<Ended> {
    let event_rv = meta_str(&event.object, "resourceVersion").map(str::to_owned);
    log::debug!(kind = event.kind.as_str(), resource_version = event_rv.as_deref().unwrap_or("-"); "watch event");
    match event.kind.as_str() {
        "ADDED" | "MODIFIED" => {
            *rv = event_rv.or(rv.take());
            deps.inbox.put(News::Object(event.object));
            let _ = deps.wake.try_send(());
        }
        "DELETED" => {
            *rv = event_rv.or(rv.take());
            deps.inbox.put(News::Deleted);
            let _ = deps.wake.try_send(());
        }
        "BOOKMARK" => {
            *rv = event_rv.or(rv.take());
        }
        "ERROR" => {
            let code = event.object["code"].as_u64();
            return Some(if code == Some(410) {
                Ended::Expired
            } else {
                Ended::Error(
                    event.object["message"]
                        .as_str()
                        .unwrap_or("unknown watch error")
                        .to_owned(),
                )
            });
        }
        other => log::debug!(kind = other; "ignoring an unknown watch event type"),
    }
    None
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<WatchEvent> {
        serde_json::Deserializer::from_str(text)
            .into_iter::<WatchEvent>()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn framing_by_value() {
        // Concatenated without newlines, split across lines, and newline-separated.
        let text = concat!(
            r#"{"type":"ADDED","object":{"metadata":{"resourceVersion":"1"}}}"#,
            r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"5"}}}"#,
            "\n{\"type\":\n\"MODIFIED\",\"object\":{\"metadata\":{\"resourceVersion\":\"7\"}}}\n",
        );
        let kinds: Vec<String> = events(text).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["ADDED", "BOOKMARK", "MODIFIED"]);
    }

    #[test]
    fn events_move_the_resource_version_and_fill_the_inbox() {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let (_stop_tx, stop) = crossbeam_channel::bounded(1);
        let cfg = super::super::config::KubeConfig {
            api_server: "http://127.0.0.1:1".into(),
            token_file: {
                let d = tempfile::tempdir().unwrap().keep();
                std::fs::write(d.join("t"), "t").unwrap();
                d.join("t")
            },
            ca_file: None,
            namespace: "ns".into(),
            node_name: "n".into(),
            node_id: "n".into(),
            mesh_ip: None,
            token_audience: None,
        };
        let deps = WatchDeps {
            client: Arc::new(KubeClient::new(&cfg).unwrap()),
            health: Arc::new(KubeHealth::new("ns", "node-n")),
            paths: Paths::new("ns", super::super::names::ResourceName::for_node("n")),
            inbox: Arc::new(Inbox::default()),
            wake,
            stop,
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let mut rv = None;
        let text = concat!(
            r#"{"type":"ADDED","object":{"metadata":{"resourceVersion":"1"}}}"#,
            r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"5"}}}"#,
        );
        for e in events(text) {
            assert!(handle(e, &deps, &mut rv).is_none());
        }
        assert_eq!(rv.as_deref(), Some("5"));
        assert!(woken.try_recv().is_ok());
        assert!(matches!(deps.inbox.take(), Some(News::Object(_))));
        assert!(deps.inbox.take().is_none());
        let deleted = r#"{"type":"DELETED","object":{"metadata":{"resourceVersion":"9"}}}"#;
        for e in events(deleted) {
            assert!(handle(e, &deps, &mut rv).is_none());
        }
        assert_eq!(deps.inbox.take(), Some(News::Deleted));
        let expired =
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#;
        let ended = handle(events(expired).pop().unwrap(), &deps, &mut rv);
        assert!(matches!(ended, Some(Ended::Expired)));
        let other = r#"{"type":"ERROR","object":{"kind":"Status","code":500,"message":"boom"}}"#;
        let ended = handle(events(other).pop().unwrap(), &deps, &mut rv);
        assert!(matches!(ended, Some(Ended::Error(m)) if m == "boom"));
    }
}
