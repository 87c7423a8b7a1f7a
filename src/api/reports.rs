//! Report writes: parse and check a `PUT`/`DELETE` on `/v1/state/report/{key}` and its
//! preconditions, then submit a typed request to the store and park until it is durable.
//!
//! Preconditions (RFC 9110 §13.1): a report's `ETag` is the store revision of its last
//! change, quoted, as every read and every PUT answer it. `If-Match` takes those tags
//! (a list; weak tags never match), `*` ("the entry exists") or, as the seed did, a bare
//! integer *version* (`0`: "the entry does not exist"). `If-None-Match` takes tags or
//! `*` ("only if it does not exist": create only). Both work on PUT and DELETE and are
//! judged by the store in commit order (`store::Preconditions`); a precondition that
//! does not hold is 409 (the seed's status for a version conflict), a header that is
//! not one of those forms is 400.
//!
//! The store decides the write at once (a refusal — conflict, not found, quota — is
//! answered without parking) and hands back a `Ticket`; the request then parks
//! (`Reply::Park`), holding no worker while the journal's group commit runs. The store's
//! completion wakes parked requests; the check answers once the ticket has a result (at
//! shutdown too: the server keeps it parked until then or its shutdown deadline). At
//! the park deadline the check answers 503 "write still in progress" without waiting:
//! that write may still complete afterwards (it was decided and queued), so a client that
//! sees 503 must read the key back before retrying with `If-Match`.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::error::ApiError;
use crate::api::reads::with_revision;
use crate::http::{HeaderValue, Park, ParkKind, Reply, Request, Response, Wake};
use crate::store::keys::ReportKey;
use crate::store::{Json, Match, Preconditions, Store, StoreError, Ticket, Versioned};

/// Longest `content_type` of a report, in characters.
pub const MAX_CONTENT_TYPE: usize = 256;

/// How long a write may stay parked before it is answered 503.
const PARK_LIMIT: Duration = Duration::from_secs(30);

/// A validated `PUT` body.
#[derive(Debug)]
pub struct PutReport {
    pub key: ReportKey,
    pub content_type: String,
    pub payload: Box<RawValue>,
    pub conditions: Preconditions,
}

#[derive(Deserialize)]
struct PutBody {
    content_type: Option<String>,
    payload: Option<Box<RawValue>>,
}

pub fn parse_key(key: &str) -> Result<ReportKey, ApiError> {
    Ok(ReportKey::parse(key)?)
}

/// The preconditions of a write: `If-Match` and `If-None-Match` (see the module doc).
pub fn parse_preconditions(req: &Request) -> Result<Preconditions, ApiError> {
    let if_match = match req.header("if-match") {
        None => None,
        Some(raw) => Some(parse_if_match(raw).ok_or_else(|| {
            ApiError::BadRequest(
                "If-Match must be *, entity tags (\"4294967302\") or a version number".into(),
            )
        })?),
    };
    let if_none_match = match req.header("if-none-match") {
        None => None,
        Some(raw) => Some(parse_tags(raw, false).ok_or_else(|| {
            ApiError::BadRequest("If-None-Match must be * or entity tags".into())
        })?),
    };
    Ok(Preconditions {
        if_match,
        if_none_match,
    })
}

/// `If-Match`: `*`, entity tags (strong comparison: weak tags never match), or the
/// seed's bare integer version. A version beyond any an entry can have matches nothing.
fn parse_if_match(raw: &str) -> Option<Match> {
    let text = raw.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match text.parse::<i64>() {
            Ok(v) => Match::Version(v),
            Err(_) => Match::Revisions(Vec::new()),
        });
    }
    parse_tags(text, true)
}

/// `*` or a comma-separated list of entity tags (`"…"` or `W/"…"`); the tags that are
/// our revisions (`"<decimal>"`) are kept, any other valid tag matches nothing. With
/// `strong`, weak tags match nothing either (RFC 9110 §8.8.3.2). `None`: malformed.
fn parse_tags(raw: &str, strong: bool) -> Option<Match> {
    let mut rest = raw.trim();
    if rest == "*" {
        return Some(Match::Any);
    }
    let mut revisions = Vec::new();
    let mut any = false;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, tagged) = match rest.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, rest),
        };
        let opaque = tagged.strip_prefix('"')?;
        let end = opaque.find('"')?;
        let tag = &opaque[..end];
        if tag.chars().any(|c| c.is_control()) {
            return None;
        }
        rest = &opaque[end + 1..];
        if !rest.is_empty() && !rest.starts_with([' ', '\t', ',']) {
            return None;
        }
        any = true;
        if weak && strong {
            continue;
        }
        if !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(revision) = tag.parse::<u64>() {
                revisions.push(revision);
            }
        }
    }
    any.then_some(Match::Revisions(revisions))
}

pub fn parse_put(key: &str, req: &Request) -> Result<PutReport, ApiError> {
    let key = parse_key(key)?;
    let conditions = parse_preconditions(req)?;
    let body: PutBody = serde_json::from_slice(req.body).map_err(|_| {
        ApiError::BadRequest(
            "invalid JSON body: expected {\"content_type\": …, \"payload\": …}".into(),
        )
    })?;
    let content_type = match body.content_type {
        Some(ct) if !ct.trim().is_empty() => ct,
        _ => return Err(ApiError::BadRequest("missing content_type".into())),
    };
    // 256 characters, as contrib/openapi.json's `maxLength` counts (and the CRD's).
    if content_type.chars().count() > MAX_CONTENT_TYPE || content_type.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest("invalid content_type".into()));
    }
    let payload = body
        .payload
        .ok_or_else(|| ApiError::BadRequest("missing payload: must be a JSON value".into()))?;
    Ok(PutReport {
        key,
        content_type,
        payload,
        conditions,
    })
}

fn put_response(result: Result<Versioned<Json>, StoreError>) -> Response {
    match result {
        Ok(stored) => with_revision(
            Response::json(200, stored.value),
            stored.mod_rev,
            stored.modified,
        ),
        Err(e) => ApiError::from(e).into(),
    }
}

/// A deletion has no representation, so no `ETag`: only the revision it got.
fn delete_response(result: Result<u64, StoreError>) -> Response {
    match result {
        Ok(revision) => Response::new(204).header("X-Plexd-Index", HeaderValue::Int(revision)),
        Err(e) => ApiError::from(e).into(),
    }
}

/// Answers at once if the ticket is already complete, else parks until it is.
fn park_on<T: Send + 'static>(
    ticket: Ticket<T>,
    respond: fn(Result<T, StoreError>) -> Response,
) -> Reply {
    if let Some(result) = ticket.try_result() {
        return Reply::Now(respond(result));
    }
    let check = move |wake: Wake| match wake {
        Wake::Changed | Wake::Shutdown => ticket.try_result().map(respond),
        Wake::TimedOut => Some(match ticket.try_result() {
            Some(result) => respond(result),
            None => {
                log::warn!(
                    "report write not durable in time; answering 503 (it may still complete)"
                );
                ApiError::Unavailable(
                    "write still in progress; read the entry back before retrying",
                )
                .into()
            }
        }),
    };
    Reply::Park(Park {
        deadline: Instant::now() + PARK_LIMIT,
        check: Box::new(check),
        kind: ParkKind::Completion,
    })
}

pub fn put(store: &Store, key: &str, req: &Request) -> Result<Reply, ApiError> {
    let put = parse_put(key, req)?;
    let ticket = store.submit_put_if(&put.key, put.content_type, put.payload, &put.conditions);
    Ok(park_on(ticket, put_response))
}

pub fn delete(store: &Store, key: &str, req: &Request) -> Result<Reply, ApiError> {
    let delete = parse_delete(key, req)?;
    Ok(park_on(
        store.submit_delete_if(&delete.key, &delete.conditions),
        delete_response,
    ))
}

/// A parsed write, made and waited for on the calling thread (at most `PARK_LIMIT`).
/// Only for the upstream pool, where a workload's write runs once its token was
/// reviewed — never on an HTTP worker.
pub fn put_blocking(store: &Store, put: PutReport) -> Response {
    let ticket = store.submit_put_if(&put.key, put.content_type, put.payload, &put.conditions);
    wait_blocking(ticket, put_response)
}

/// A parsed deletion with its preconditions (`If-Match`, `If-None-Match`).
pub struct DeleteReport {
    pub key: ReportKey,
    pub conditions: Preconditions,
}

/// Parses a deletion's key and preconditions (what `delete` does before submitting).
pub fn parse_delete(key: &str, req: &Request) -> Result<DeleteReport, ApiError> {
    Ok(DeleteReport {
        key: parse_key(key)?,
        conditions: parse_preconditions(req)?,
    })
}

/// `put_blocking` for a deletion.
pub fn delete_blocking(store: &Store, delete: DeleteReport) -> Response {
    wait_blocking(
        store.submit_delete_if(&delete.key, &delete.conditions),
        delete_response,
    )
}

fn wait_blocking<T>(ticket: Ticket<T>, respond: fn(Result<T, StoreError>) -> Response) -> Response {
    match ticket.wait_timeout(PARK_LIMIT) {
        Some(result) => respond(result),
        None => {
            ApiError::Unavailable("write still in progress; read the entry back before retrying")
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::http::{Handler, Listener, Method, Server, ServerConfig};

    /// Just the report routes and one read, over a real server.
    struct Reports(Arc<Store>);

    impl Handler for Reports {
        fn handle(&self, req: &Request<'_>) -> Reply {
            let key = req.path.trim_start_matches("/r/");
            let reply = match req.method {
                Method::Put => put(&self.0, key, req),
                Method::Delete => delete(&self.0, key, req),
                _ => Ok(Reply::Now(match self.0.report(&parse_key(key).unwrap()) {
                    Some(v) => Response::json(200, v.value),
                    None => Response::error(404, "not found"),
                })),
            };
            reply.unwrap_or_else(|e| Reply::Now(Response::from(e)))
        }
    }

    fn send(path: &std::path::Path, head: &str, body: &str) -> UnixStream {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let req = format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        s
    }

    /// No response byte has arrived on `s` yet.
    fn unanswered(s: &UnixStream) -> bool {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let silent =
            matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        silent
    }

    fn status(mut s: UnixStream) -> u16 {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("reading an answer: {e}"));
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got[9..12]).parse().unwrap()
    }

    #[test]
    fn gets_are_served_while_puts_wait_for_a_slow_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let sock = dir.path().join("api.sock");
        let config = ServerConfig {
            workers: 1,
            ..ServerConfig::default()
        };
        let server = Server::start(
            config,
            vec![Listener::Unix(UnixListener::bind(&sock).unwrap())],
            Arc::new(Reports(Arc::clone(&store))),
        )
        .unwrap();
        let waker = server.waker();
        store.subscribe(Box::new(move |_| waker.wake()));
        let body = r#"{"content_type":"application/json","payload":{"ok":true}}"#;
        assert_eq!(
            status(send(&sock, "PUT /r/seen HTTP/1.1\r\nHost: x", body)),
            200
        );
        // Each group commit now takes 1.5 s: the PUTs park on their tickets.
        store.slow_commits(Duration::from_millis(1500));
        let syncs = store.journal_syncs();
        let puts: Vec<UnixStream> = (0..8)
            .map(|i| send(&sock, &format!("PUT /r/k{i} HTTP/1.1\r\nHost: x"), body))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        // The one worker answers a GET while every PUT is still waiting for the disk.
        assert_eq!(
            status(send(&sock, "GET /r/seen HTTP/1.1\r\nHost: x", "")),
            200
        );
        for s in &puts {
            assert!(unanswered(s), "a PUT was answered before the GET");
        }
        for s in puts {
            assert_eq!(status(s), 200);
        }
        // Group commit: the eight writes took at most two appends (the group running
        // when they arrived and one more).
        assert!(store.journal_syncs() - syncs <= 2);
        // A conflict is answered without parking; a conditional DELETE path works too.
        store.slow_commits(Duration::ZERO);
        let conflict = send(&sock, "PUT /r/k0 HTTP/1.1\r\nHost: x\r\nIf-Match: 7", body);
        assert_eq!(status(conflict), 409);
        assert_eq!(
            status(send(&sock, "DELETE /r/k0 HTTP/1.1\r\nHost: x", "")),
            204
        );
        assert_eq!(
            status(send(&sock, "DELETE /r/k0 HTTP/1.1\r\nHost: x", "")),
            404
        );
        server.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn precondition_headers() {
        let tags = |r: &[u64]| Some(Match::Revisions(r.to_vec()));
        assert_eq!(parse_if_match("*"), Some(Match::Any));
        assert_eq!(parse_if_match(" 3 "), Some(Match::Version(3)));
        assert_eq!(parse_if_match("0"), Some(Match::Version(0)));
        assert_eq!(parse_if_match("99999999999999999999"), tags(&[]));
        assert_eq!(parse_if_match("\"4294967302\""), tags(&[4294967302]));
        assert_eq!(parse_if_match("\"1\", \"2\",\"x,y\""), tags(&[1, 2]));
        assert_eq!(parse_if_match("W/\"5\""), tags(&[]));
        assert_eq!(parse_tags("W/\"5\", \"6\"", false), tags(&[5, 6]));
        assert_eq!(parse_tags("\"\"", false), tags(&[]));
        for bad in [
            "", " ", "two", "-1", "3.0", "\"5", "\"5\"x", "5, 6", "W/5", "*, \"1\"",
        ] {
            assert_eq!(parse_if_match(bad), None, "If-Match: {bad}");
        }
        for bad in ["", "7", "* ,*"] {
            assert_eq!(parse_tags(bad, false), None, "If-None-Match: {bad}");
        }
    }
}
