//! Read routes: look a resource up in the store, answer with its pre-rendered JSON and
//! its revision headers (`ETag`, `X-Plexd-Index`, `Last-Modified`), answer conditional
//! requests with 304, and park blocking queries (`?index=N&wait=DUR`) until the
//! resource's modify-revision passes `N`.
//!
//! Revisions are the store's (`store::Versioned::mod_rev`): one store-wide counter,
//! `(epoch << 32) | n`, with the epoch raised durably at every start, so an index never
//! goes backwards across restarts (it jumps forward; a waiter holding an older index is
//! answered at once). Every resource shows the revision of its own last change: a
//! key its entry's, a list the last change to any of its entries, the summary the
//! store's. `ETag` is that number in quotes (strong). A missing key answers 404 with
//! its list's `X-Plexd-Index`, so a client can wait for the key to appear. Secret
//! values are fetched live and have no revision (see `refuse_blocking_on_secret_value`).
//!
//! Blocking queries: answered at once when the resource is already past `index`, when
//! `index` is ahead of the store (another store, or a client's stale idea: it must
//! reset), or when `wait` is 0; otherwise parked in the HTTP core (no thread held) and
//! re-checked on every store change, answered when *this* resource passed `index`, or
//! at `wait` (default 5 m, at most 10 m, plus up to 1/16 jitter) with the current body.
//!
//! Reads never touch the disk or the network: everything comes from the store's cache.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::error::ApiError;
use crate::api::route::Resource;
use crate::duration;
use crate::http::{HeaderValue, Park, ParkKind, Reply, Request, Response, Wake};
use crate::store::keys::ReportKey;
use crate::store::{Json, Store, Versioned};

/// Longest `wait` a blocking query may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// `wait` when a blocking query names none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// What the store holds for a read resource right now.
pub enum Lookup {
    Found(Versioned<Json>),
    /// The key does not exist; the revision is its containing list's.
    Missing {
        mod_rev: u64,
        modified: SystemTime,
        message: &'static str,
    },
}

impl Lookup {
    fn mod_rev(&self) -> u64 {
        match self {
            Lookup::Found(v) => v.mod_rev,
            Lookup::Missing { mod_rev, .. } => *mod_rev,
        }
    }
}

fn missing(list: Versioned<Json>, message: &'static str) -> Lookup {
    Lookup::Missing {
        mod_rev: list.mod_rev,
        modified: list.modified,
        message,
    }
}

/// Which parts of the state a peer may see: everything, or everything but secrets
/// (`--secret-auth`: the summary then shows no secret names or versions, and its
/// revision does not move with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Everything,
    WithoutSecrets,
}

/// Looks a read resource up as `view` shows it. `None` for resources that are not
/// cache reads.
pub fn lookup(store: &Store, resource: &Resource, view: View) -> Result<Option<Lookup>, ApiError> {
    let found = Lookup::Found;
    Ok(Some(match resource {
        Resource::Summary if view == View::WithoutSecrets => found(store.summary_without_secrets()),
        Resource::Summary => found(store.summary()),
        Resource::Metadata => found(store.metadata()),
        Resource::MetadataKey(k) => match store.metadata_value(k) {
            Some(v) => found(v),
            None => missing(store.metadata(), "metadata key not found"),
        },
        Resource::Data => found(store.data_list()),
        Resource::DataKey(k) => match store.data_entry(k) {
            Some(v) => found(v),
            None => missing(store.data_list(), "data entry not found"),
        },
        Resource::Secrets => found(store.secret_list()),
        Resource::Reports => found(store.report_list()),
        Resource::ReportKey(k) => {
            let key = ReportKey::parse(k)?;
            match store.report(&key) {
                Some(v) => found(v),
                None => missing(store.report_list(), "report entry not found"),
            }
        }
        Resource::SecretKey(_) | Resource::Health | Resource::Metrics => return Ok(None),
    }))
}

/// The validators a client sent, kept so a parked request can be answered later.
#[derive(Clone, Default)]
struct Conditions {
    if_none_match: Option<String>,
    if_modified_since: Option<SystemTime>,
}

impl Conditions {
    fn from_request(req: &Request) -> Conditions {
        Conditions {
            if_none_match: req.header("if-none-match").map(str::to_owned),
            if_modified_since: req
                .header("if-modified-since")
                .and_then(|v| httpdate::parse_http_date(v).ok()),
        }
    }

    fn not_modified(&self, mod_rev: u64, modified: SystemTime) -> bool {
        if let Some(inm) = &self.if_none_match {
            // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
            let tag = etag(mod_rev);
            return inm.trim() == "*"
                || inm
                    .split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == tag);
        }
        match self.if_modified_since {
            Some(since) => whole_seconds(modified) <= whole_seconds(since),
            None => false,
        }
    }
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A strong entity tag for a modify-revision.
pub fn etag(mod_rev: u64) -> String {
    format!("\"{mod_rev}\"")
}

/// Adds `ETag`, `X-Plexd-Index` and `Last-Modified` for a resource at `mod_rev`. The
/// values are written by the HTTP core straight into the response head.
pub fn with_revision(response: Response, mod_rev: u64, modified: SystemTime) -> Response {
    response
        .header("ETag", HeaderValue::QuotedInt(mod_rev))
        .header("X-Plexd-Index", HeaderValue::Int(mod_rev))
        .header("Last-Modified", HeaderValue::Date(modified))
}

fn render(lookup: Lookup, conditions: &Conditions) -> Response {
    match lookup {
        Lookup::Found(v) => {
            if conditions.not_modified(v.mod_rev, v.modified) {
                with_revision(Response::new(304), v.mod_rev, v.modified)
            } else {
                with_revision(Response::json(200, v.value), v.mod_rev, v.modified)
            }
        }
        Lookup::Missing {
            mod_rev,
            modified,
            message,
        } => Response::from(ApiError::NotFound(message.into()))
            .header("X-Plexd-Index", HeaderValue::Int(mod_rev))
            .header("Last-Modified", HeaderValue::Date(modified)),
    }
}

/// A blocking query's parameters.
struct Blocking {
    index: u64,
    wait: Duration,
}

/// `?index=N&wait=DUR`. `wait` is checked even without `index` (a typo must not turn
/// into a silent immediate answer); alone it means nothing. Any well-formed `wait`
/// longer than `MAX_WAIT` is `MAX_WAIT` (however long: `99999999999h` too); `index` is
/// any unsigned 64-bit decimal (revisions pass 2^63). contrib/openapi.json states both
/// as patterns and bounds.
fn blocking_params(req: &Request) -> Result<Option<Blocking>, ApiError> {
    let wait = match req.query_param("wait") {
        Some(w) => duration::parse_at_most(&w, MAX_WAIT)
            .map_err(|e| ApiError::BadRequest(format!("invalid wait: {e}")))?,
        None => DEFAULT_WAIT,
    };
    let Some(index) = req.query_param("index") else {
        return Ok(None);
    };
    // Decimal digits only (`u64::from_str` would also take a leading `+`).
    let index: u64 = Some(&*index)
        .filter(|i| i.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| {
            ApiError::BadRequest("index must be an unsigned 64-bit integer in decimal".into())
        })?;
    Ok(Some(Blocking { index, wait }))
}

/// Secret values are fetched live from the control plane and have no revision in the
/// store, so they carry no `ETag`/`X-Plexd-Index` and cannot be waited on: a blocking
/// query there is refused (400) rather than silently answered at once. Clients wait on
/// the secret index (`/v1/state/secrets`), whose revision changes with every secret's
/// version, and then fetch the value.
pub fn refuse_blocking_on_secret_value(req: &Request) -> Result<(), ApiError> {
    if req.query_param("index").is_some() || req.query_param("wait").is_some() {
        return Err(ApiError::BadRequest(
            "secret values cannot be waited on: use ?index= on /v1/state/secrets, then fetch the value".into(),
        ));
    }
    Ok(())
}

/// Up to 1/16 of `wait` extra, so many clients woken together do not return together.
fn jitter(wait: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = wait.as_millis() as u64 / 16;
    if spread == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from(nanos) % spread)
}

/// Answers a read resource as `view` shows it: now, or — for a blocking query whose
/// resource has not changed past `index` — later, without holding a worker.
pub fn read(
    store: &Arc<Store>,
    resource: Resource,
    view: View,
    req: &Request,
) -> Result<Reply, ApiError> {
    let conditions = Conditions::from_request(req);
    let Some(current) = lookup(store, &resource, view)? else {
        return Err(ApiError::NotFound("not found".into()));
    };
    let Some(blocking) = blocking_params(req)? else {
        return Ok(Reply::Now(render(current, &conditions)));
    };
    // An index ahead of the store means the client saw another store (or an older
    // daemon's counter): answer at once so it resets.
    if current.mod_rev() > blocking.index
        || blocking.index > store.revision()
        || blocking.wait.is_zero()
    {
        return Ok(Reply::Now(render(current, &conditions)));
    }
    let store = Arc::clone(store);
    let index = blocking.index;
    let deadline = Instant::now() + blocking.wait + jitter(blocking.wait);
    // A request waiting for a missing key follows its list's revision, but only the
    // key appearing answers it early: other keys coming and going are not its news.
    let was_missing = matches!(current, Lookup::Missing { .. });
    let check = move |wake: Wake| -> Option<Response> {
        let now = match lookup(&store, &resource, view) {
            Ok(Some(l)) => l,
            _ => return Some(ApiError::Internal("resource vanished").into()),
        };
        let still_missing = was_missing && matches!(now, Lookup::Missing { .. });
        match wake {
            Wake::Changed if now.mod_rev() <= index || still_missing => None,
            _ => Some(render(now, &conditions)),
        }
    };
    Ok(Reply::Park(Park {
        deadline,
        check: Box::new(check),
        kind: ParkKind::Change,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_matching() {
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        let c = Conditions {
            if_none_match: Some("\"7\", \"9\"".into()),
            if_modified_since: None,
        };
        assert!(c.not_modified(9, t));
        assert!(!c.not_modified(8, t));
        let c = Conditions {
            if_none_match: None,
            if_modified_since: Some(t),
        };
        assert!(c.not_modified(1, t));
        assert!(!c.not_modified(1, t + Duration::from_secs(1)));
    }
}
