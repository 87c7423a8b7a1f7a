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

use crate::http::{Handler, Method, Park, Reply, Request, Response};
use crate::secrets::Secrets;
use crate::store::Store;

use access::Access;
use error::ApiError;
use route::{Resource, RouteError};
use status::Status;

/// The daemon's request handler.
pub struct Api {
    pub store: Arc<Store>,
    pub access: Access,
    pub secrets: Secrets,
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
            self.access.check_secret(req)?;
        }
        let reply = match (&req.method, resource) {
            (Method::Put, Resource::ReportKey(key)) => reports::put(&self.store, &key, req)?,
            (Method::Delete, Resource::ReportKey(key)) => reports::delete(&self.store, &key)?,
            (_, Resource::SecretKey(key)) => {
                reads::refuse_blocking_on_secret_value(req)?;
                secrets::get(&self.secrets, &key, req)?.into()
            }
            (_, Resource::Health) => self.status.health(req)?.into(),
            (_, Resource::Metrics) => self.status.metrics().into(),
            (_, resource) => reads::read(&self.store, resource, req)?,
        };
        Ok(reply)
    }
}

impl Handler for Api {
    /// Secret fetches go to the network. (Report writes park on the journal's group
    /// commit instead of blocking, so they hold no worker.)
    fn may_block(&self, req: &Request) -> bool {
        req.path.starts_with("/v1/state/secrets/")
    }

    fn handle(&self, req: &Request) -> Reply {
        let started = Instant::now();
        let resolved = route::resolve(&req.path);
        let route = resolved.as_ref().map_or("unknown", Resource::label);
        let reply = self
            .dispatch(req, resolved)
            .unwrap_or_else(|e| Reply::Now(Response::from(e)));
        let status = match &reply {
            Reply::Now(r) => r.status,
            Reply::Park(_) => 0,
            Reply::Stream(s) => s.status,
        };
        if status == 0 {
            log::debug!(method = req.method.as_str(), path = req.path.as_str(); "request parked");
        } else {
            log::debug!(
                method = req.method.as_str(),
                path = req.path.as_str(),
                status = status,
                duration_us = started.elapsed().as_micros() as u64;
                "request"
            );
        }
        match reply {
            Reply::Park(park) => Reply::Park(self.count_when_answered(park, route, started)),
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
