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
use std::time::{Duration, Instant};

use crate::http::{Handler, Later, Method, Park, Reply, Request, Response};
use crate::kube::authn::{Action, Authenticator, Decision};
use crate::pool::Pool;
use crate::secrets::Secrets;
use crate::store::Store;
use crate::telemetry::health::SecretOutcome;
use crate::telemetry::metrics::{ApiReject, RequestMetrics};

use access::{Access, Caller};
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
        let caller = self.access.caller(req)?;
        let resource = resolved?;
        if !resource.allowed().contains(&req.method) {
            return Err(ApiError::MethodNotAllowed {
                allow: resource.allow_header(),
            });
        }
        if let Caller::Workload(token) = caller {
            return self.workload(token, req, resource);
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
        self.route(req, resource)
    }

    /// What the caller may see of the secrets (names, versions, counts).
    fn view(&self, req: &Request) -> View {
        if self.access.may_read_secrets(req) {
            View::Everything
        } else {
            View::WithoutSecrets
        }
    }

    /// The route itself, once the caller may make the request.
    fn route(&self, req: &Request, resource: Resource) -> Result<Reply, ApiError> {
        let secrets_visible = self.access.may_read_secrets(req);
        let view = self.view(req);
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
            Reply::Park(park) => Reply::Park(count_when_answered(
                park,
                Arc::clone(&self.status.metrics),
                route,
                started,
            )),
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

    /// A TCP request with a workload's ServiceAccount token (`kube::authn`). A cached
    /// decision applies at once: allowed requests take the ordinary route. Otherwise
    /// what has no side effect is done here on the loop — parsing a write, rendering a
    /// read — and the review (TokenReview, SubjectAccessReview) runs on the upstream
    /// pool, followed there by what the request does: the prepared answer, the report
    /// write, or the secret fetch. The status pages need the static token.
    fn workload(&self, token: &str, req: &Request, resource: Resource) -> Result<Reply, ApiError> {
        let Some(authn) = self.access.authenticator() else {
            return Err(ApiError::Unauthorized);
        };
        let action = match (&req.method, &resource) {
            (_, Resource::Health | Resource::Metrics) => {
                return Err(ApiError::Forbidden(
                    "the status pages need the static token",
                ))
            }
            (_, Resource::SecretKey(key)) => Action::ReadSecret { key: key.clone() },
            (Method::Put | Method::Delete, Resource::ReportKey(_)) => Action::WriteReports,
            _ => Action::ReadState,
        };
        match authn.cached(token, &action) {
            Some(Decision::Allowed { caller }) => {
                log::debug!(caller = caller.as_str(), path = req.path; "kubernetes caller allowed (cached)");
                return self.route(req, resource);
            }
            Some(refused) => return Err(access::refusal(refused)),
            None => {}
        }
        let route = resource.label();
        let prepared = match (&req.method, resource) {
            (Method::Put, Resource::ReportKey(key)) => {
                Prepared::Put(reports::parse_put(&key, req)?)
            }
            (Method::Delete, Resource::ReportKey(key)) => {
                Prepared::Delete(reports::parse_key(&key)?)
            }
            (_, Resource::SecretKey(key)) => {
                reads::refuse_blocking_on_secret_value(req)?;
                Prepared::Secret {
                    key,
                    peer: secrets::caller(req),
                }
            }
            (_, resource) => {
                Prepared::Read(reads::read(&self.store, resource, self.view(req), req)?)
            }
        };
        Ok(self.review_later(
            Arc::clone(authn),
            zeroize::Zeroizing::new(token.to_owned()),
            action,
            prepared,
            route,
        ))
    }

    /// The review and then the prepared request, on the upstream pool; the connection
    /// waits without a thread. A full pool answers 503 at once; a review that does not
    /// finish within `REVIEW_LIMIT` (plus the secret timeout for secrets) answers 503.
    fn review_later(
        &self,
        authn: Arc<Authenticator>,
        token: zeroize::Zeroizing<String>,
        action: Action,
        prepared: Prepared,
        route: &'static str,
    ) -> Reply {
        let started = Instant::now();
        let mut deadline = started + REVIEW_LIMIT;
        if matches!(prepared, Prepared::Secret { .. }) {
            deadline += self.secrets.timeout();
        }
        let store = Arc::clone(&self.store);
        let source = Arc::clone(&self.secrets);
        let pool = Arc::clone(&self.upstream);
        let metrics = Arc::clone(&self.status.metrics);
        let timeout_metrics = Arc::clone(&self.status.metrics);
        let rejections = Arc::clone(&self.status.rejections);
        Reply::Later(Later {
            deadline,
            start: Box::new(move |resume| {
                let job = Box::new(move || {
                    if resume.is_cancelled() {
                        return;
                    }
                    let outcome = match authn.decide(&token, &action) {
                        Decision::Allowed { caller } => {
                            prepared.run(&store, &source, &caller, deadline)
                        }
                        refused => Outcome::Answer(Response::from(access::refusal(refused))),
                    };
                    match outcome {
                        Outcome::Answer(response) => {
                            metrics.record_request(route, response.status, started.elapsed());
                            resume.answer(response);
                        }
                        // A blocking query waits for its change like any other.
                        Outcome::Park(park) => {
                            resume.park(count_when_answered(park, metrics, route, started))
                        }
                    }
                });
                pool.try_submit(job).map_err(|_| {
                    rejections.count(ApiReject::UpstreamBusy);
                    ApiError::Unavailable("too many requests are waiting for the Kubernetes API")
                        .into()
                })
            }),
            on_timeout: Box::new(move || {
                let response = Response::from(ApiError::Unavailable(
                    "cannot verify the caller: kubernetes API unavailable",
                ));
                timeout_metrics.record_request(route, response.status, started.elapsed());
                response
            }),
        })
    }
}

/// A parked request is counted (status and whole latency) when its check produces the
/// answer — on a change, at its deadline or at shutdown — not when it parks. One whose
/// client goes away first is never counted.
fn count_when_answered(
    park: Park,
    metrics: Arc<RequestMetrics>,
    route: &'static str,
    started: Instant,
) -> Park {
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

/// How long a workload's request may wait for its token review (the reviews' own
/// request timeout is 30 s; a healthy API server answers in milliseconds).
const REVIEW_LIMIT: Duration = Duration::from_secs(10);

/// What a workload's request does once its review allows it, prepared on the loop.
enum Prepared {
    /// A read, already rendered, or a blocking query's park (it waits for its change
    /// once the review allowed it: `Resume::park`).
    Read(Reply),
    Put(reports::PutReport),
    Delete(crate::store::keys::ReportKey),
    Secret {
        key: String,
        peer: String,
    },
}

/// What an allowed workload request comes to: an answer, or a blocking query's park.
enum Outcome {
    Answer(Response),
    Park(Park),
}

impl Prepared {
    /// Runs on the upstream pool: may wait for the journal or the control plane.
    fn run(self, store: &Store, secrets: &Secrets, caller: &str, deadline: Instant) -> Outcome {
        Outcome::Answer(match self {
            Prepared::Read(Reply::Now(response)) => response,
            Prepared::Read(Reply::Park(park)) => return Outcome::Park(park),
            Prepared::Read(_) => ApiError::Internal("unexpected reply").into(),
            Prepared::Put(put) => reports::put_blocking(store, put),
            Prepared::Delete(key) => reports::delete_blocking(store, &key),
            Prepared::Secret { key, peer } => {
                let who = format!("{peer} {caller}");
                match secrets.admit(Instant::now()) {
                    Ok(()) => {
                        secrets::get(secrets, &key, &who, deadline).unwrap_or_else(Response::from)
                    }
                    Err(e) => ApiError::from(e).into(),
                }
            }
        })
    }
}
