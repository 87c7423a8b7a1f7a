//! Report writes: parse and check a `PUT`/`DELETE` on `/v1/state/report/{key}`, then
//! submit a typed request to the store and park until it is durable.
//!
//! The store decides the write at once (a refusal — conflict, not found — is answered
//! without parking) and hands back a `Ticket`; the request then parks (`Reply::Park`),
//! holding no worker while the journal's group commit runs. The store's completion
//! wakes parked requests; the check answers once the ticket has a result. At the park
//! deadline or at shutdown the check waits up to `LAST_WAIT` for the ticket and then
//! answers 503 "write still in progress": that write may still complete afterwards (it
//! was decided and queued), so a client that sees 503 must read the key back before
//! retrying with `If-Match`.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::error::ApiError;
use crate::api::reads::with_revision;
use crate::http::{Park, Reply, Request, Response, Wake};
use crate::keys::ReportKey;
use crate::store::{Json, Store, StoreError, Ticket, Versioned};

/// How long a write may stay parked before it is answered 503.
const PARK_LIMIT: Duration = Duration::from_secs(30);
/// How long a timed-out or shutting-down check still waits for its ticket.
const LAST_WAIT: Duration = Duration::from_secs(3);

/// A validated `PUT` body.
#[derive(Debug)]
pub struct PutReport {
    pub key: ReportKey,
    pub content_type: String,
    pub payload: Box<RawValue>,
    pub if_match: Option<i64>,
}

#[derive(Deserialize)]
struct PutBody {
    content_type: Option<String>,
    payload: Option<Box<RawValue>>,
}

pub fn parse_key(key: &str) -> Result<ReportKey, ApiError> {
    ReportKey::parse(key).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `If-Match: N` — a plain non-negative integer (quotes tolerated).
pub fn parse_if_match(req: &Request) -> Result<Option<i64>, ApiError> {
    let Some(raw) = req.header("if-match") else {
        return Ok(None);
    };
    let text = raw.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    match text.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(ApiError::BadRequest(
            "If-Match must be a non-negative integer version".into(),
        )),
    }
}

pub fn parse_put(key: &str, req: &Request) -> Result<PutReport, ApiError> {
    let key = parse_key(key)?;
    let if_match = parse_if_match(req)?;
    let body: PutBody = serde_json::from_slice(&req.body).map_err(|_| {
        ApiError::BadRequest(
            "invalid JSON body: expected {\"content_type\": …, \"payload\": …}".into(),
        )
    })?;
    let content_type = match body.content_type {
        Some(ct) if !ct.trim().is_empty() => ct,
        _ => return Err(ApiError::BadRequest("missing content_type".into())),
    };
    if content_type.len() > 256 || content_type.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("invalid content_type".into()));
    }
    let payload = body
        .payload
        .ok_or_else(|| ApiError::BadRequest("missing payload: must be a JSON value".into()))?;
    Ok(PutReport {
        key,
        content_type,
        payload,
        if_match,
    })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { current: Some(v) } => {
            ApiError::Conflict(format!("version conflict: current version is {v}"))
        }
        StoreError::Conflict { current: None } => ApiError::Conflict(
            "version conflict: the entry does not exist (use If-Match: 0)".into(),
        ),
        StoreError::NotFound => ApiError::NotFound("report entry not found".into()),
        StoreError::KeyNotStorable => {
            ApiError::BadRequest("invalid key: too long once encoded as a file name".into())
        }
        other => {
            log::error!(error:% = other; "report write failed");
            ApiError::Internal("the report could not be stored; nothing was changed")
        }
    }
}

fn put_response(result: Result<Versioned<Json>, StoreError>) -> Response {
    match result {
        Ok(stored) => with_revision(
            Response::json(200, stored.value),
            stored.mod_rev,
            stored.modified,
        ),
        Err(e) => Response::from(store_error(e)),
    }
}

fn delete_response(result: Result<u64, StoreError>) -> Response {
    match result {
        Ok(revision) => Response::new(204)
            .header("X-Plexd-Index", revision.to_string())
            .header("ETag", super::reads::etag(revision)),
        Err(e) => Response::from(store_error(e)),
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
        Wake::Changed => ticket.try_result().map(respond),
        Wake::TimedOut | Wake::Shutdown => Some(match ticket.wait_timeout(LAST_WAIT) {
            Some(result) => respond(result),
            None => {
                log::warn!(
                    "report write not durable in time; answering 503 (it may still complete)"
                );
                Response::error(
                    503,
                    "write still in progress; read the entry back before retrying",
                )
            }
        }),
    };
    Reply::Park(Park {
        deadline: Instant::now() + PARK_LIMIT,
        check: Box::new(check),
    })
}

pub fn put(store: &Store, key: &str, req: &Request) -> Result<Reply, ApiError> {
    let put = parse_put(key, req)?;
    let ticket = store.submit_put(&put.key, put.content_type, put.payload, put.if_match);
    Ok(park_on(ticket, put_response))
}

pub fn delete(store: &Store, key: &str) -> Result<Reply, ApiError> {
    let key = parse_key(key)?;
    Ok(park_on(store.submit_delete(&key), delete_response))
}
