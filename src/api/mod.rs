//! The local API (the routes of README's "The local API"): one exhaustive match from (method, resource) to a handler.
//!
//! Flow: the HTTP core hands a `Request` to `Api::handle` → access checks (`access`) →
//! `route::resolve` → a handler in `reads`, `reports`, `secrets` or `status` → the
//! store or the control-plane client. Every failure is an `ApiError`, turned into a
//! JSON response in one place (`error`), which also maps the other parts' errors. Nothing here parses HTTP or touches a file.

pub mod access;
pub mod error;
pub mod reads;
pub mod reports;
pub mod route;
pub mod secrets;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use crate::http::{Handler, Later, Method, Park, Reply, Request, Response};
use crate::pool::Pool;
use crate::secrets::Secrets;
use crate::store::Store;
use crate::telemetry::health::SecretOutcome;
use crate::telemetry::metrics::ApiReject;

use access::Access;
use error::ApiError;
use reads::View;
use route::{Resource, RouteError};
use status::Status;

/// The daemon's request handler.
pub struct Api {
    pub store: Arc<Store>,
    pub access: Access,
    pub secrets: Arc<Secrets>,
    /// Where calls that wait on the control plane run (never on an HTTP worker).
    pub upstream: Arc<Pool>,
    pub status: Status,
}

impl Api {
    /// `resolved` is `route::resolve(&req.path)`, computed once by `handle`.
    fn dispatch(
        &self,
        req: &Request,
        resolved: Result<Resource, RouteError>,
    ) -> Result<Reply, ApiError> {
        self.access.check_transport(req)?;
        let resource = resolved?;
        if !resource.allowed().contains(&req.method) {
            return Err(ApiError::MethodNotAllowed {
                allow: resource.allow_header(),
            });
        }
        if resource.is_secret() {
            if let Err(refused) = self.access.check_secret(req) {
                if matches!(resource, Resource::SecretKey(_)) {
                    self.status
                        .health
                        .record_secret_fetch(SecretOutcome::Forbidden);
                }
                return Err(refused);
            }
        }
        let secrets_visible = self.access.may_read_secrets(req);
        let view = if secrets_visible {
            View::Everything
        } else {
            View::WithoutSecrets
        };
        let reply = match (&req.method, resource) {
            (Method::Put, Resource::ReportKey(key)) => reports::put(&self.store, &key, req)?,
            (Method::Delete, Resource::ReportKey(key)) => reports::delete(&self.store, &key)?,
            (_, Resource::SecretKey(key)) => {
                reads::refuse_blocking_on_secret_value(req)?;
                self.secret_later(key, req)?
            }
            (_, Resource::Health) => self.status.health(req, secrets_visible)?.into(),
            (_, Resource::Metrics) => self.status.metrics(secrets_visible).into(),
            (_, resource) => reads::read(&self.store, resource, view, req)?,
        };
        Ok(reply)
    }
}

impl Handler for Api {
    fn handle(&self, req: &Request) -> Reply {
        let started = Instant::now();
        let resolved = route::resolve(req.path);
        let route = resolved.as_ref().map_or("unknown", Resource::label);
        let reply = self
            .dispatch(req, resolved)
            .unwrap_or_else(|e| Reply::Now(Response::from(e)));
        // A 507 is the report quota's, unless the disk itself is full (see `store::disk`).
        if matches!(&reply, Reply::Now(r) if r.status == 507) && self.store.disk_fault().is_none() {
            self.status.rejections.count(ApiReject::ReportQuota);
        }
        let status = match &reply {
            Reply::Now(r) => r.status,
            Reply::Park(_) | Reply::Later(_) => 0,
            Reply::Stream(s) => s.status,
        };
        if status == 0 {
            log::debug!(method = req.method.as_str(), path = req.path; "request parked");
        } else {
            log::debug!(
                method = req.method.as_str(),
                path = req.path,
                status = status,
                duration_us = started.elapsed().as_micros() as u64;
                "request"
            );
        }
        match reply {
            Reply::Park(park) => Reply::Park(self.count_when_answered(park, route, started)),
            // A later answer is counted by the work that produces it (`secret_later`).
            Reply::Later(later) => Reply::Later(later),
            reply => {
                self.status
                    .metrics
                    .record_request(route, status, started.elapsed());
                reply
            }
        }
    }
}

impl Api {
    /// A secret fetch runs on the upstream pool; the request waits parked (no worker
    /// held) for its answer, at most `--secret-timeout`. A full pool, or a control plane
    /// known to be unreachable (the breaker is open), answers 503 at once.
    fn secret_later(&self, key: String, req: &Request) -> Result<Reply, ApiError> {
        let started = Instant::now();
        let route = "/v1/state/secrets/{key}";
        if let Err(e) = self.secrets.admit(started) {
            self.status.rejections.count(ApiReject::UpstreamUnavailable);
            return Err(e.into());
        }
        let caller = secrets::caller(req);
        let source = Arc::clone(&self.secrets);
        let deadline = started + self.secrets.timeout();
        let pool = Arc::clone(&self.upstream);
        let metrics = Arc::clone(&self.status.metrics);
        let timeout_metrics = Arc::clone(&self.status.metrics);
        let rejections = Arc::clone(&self.status.rejections);
        let job_rejections = Arc::clone(&self.status.rejections);
        let timeout_rejections = Arc::clone(&self.status.rejections);
        Ok(Reply::Later(Later {
            deadline,
            start: Box::new(move |resume| {
                let job = Box::new(move || {
                    if resume.is_cancelled() {
                        return;
                    }
                    let result = secrets::get(&source, &key, &caller, deadline);
                    if matches!(result, Err(ApiError::UpstreamTimeout)) {
                        job_rejections.count(ApiReject::UpstreamTimeout);
                    }
                    let response = result.unwrap_or_else(Response::from);
                    metrics.record_request(route, response.status, started.elapsed());
                    resume.answer(response);
                });
                pool.try_submit(job).map_err(|_| {
                    rejections.count(ApiReject::UpstreamBusy);
                    ApiError::Unavailable(
                        "too many secret requests are waiting for the control plane",
                    )
                    .into()
                })
            }),
            on_timeout: Box::new(move || {
                timeout_rejections.count(ApiReject::UpstreamTimeout);
                let response = Response::from(ApiError::UpstreamTimeout);
                timeout_metrics.record_request(route, response.status, started.elapsed());
                response
            }),
        }))
    }

    /// A parked request is counted (status and whole latency) when its check produces
    /// the answer — on a change, at its deadline or at shutdown — not when it parks.
    /// One whose client goes away first is never counted.
    fn count_when_answered(&self, park: Park, route: &'static str, started: Instant) -> Park {
        let metrics = Arc::clone(&self.status.metrics);
        let mut check = park.check;
        Park {
            deadline: park.deadline,
            kind: park.kind,
            check: Box::new(move |wake| {
                let answer = check(wake);
                if let Some(resp) = &answer {
                    metrics.record_request(route, resp.status, started.elapsed());
                }
                answer
            }),
        }
    }
}
