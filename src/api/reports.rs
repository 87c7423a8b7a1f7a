//! Report writes: parse and check a `PUT`/`DELETE` on `/v1/state/report/{key}`, then
//! hand a typed request to the store. The store answers only once the change (and what
//! the syncer needs to send it upstream) is durable.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::error::ApiError;
use crate::api::reads::with_revision;
use crate::http::{Request, Response};
use crate::keys::ReportKey;
use crate::store::{Store, StoreError};

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

pub fn put(store: &Store, key: &str, req: &Request) -> Result<Response, ApiError> {
    let put = parse_put(key, req)?;
    let stored = store
        .put_report(&put.key, put.content_type, put.payload, put.if_match)
        .map_err(store_error)?;
    Ok(with_revision(
        Response::json(200, stored.value),
        stored.mod_rev,
        stored.modified,
    ))
}

pub fn delete(store: &Store, key: &str) -> Result<Response, ApiError> {
    let key = parse_key(key)?;
    let revision = store.delete_report(&key).map_err(store_error)?;
    Ok(Response::new(204)
        .header("X-Plexd-Index", revision.to_string())
        .header("ETag", super::reads::etag(revision)))
}
