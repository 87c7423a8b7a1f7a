//! HTTP routes of the development control plane: the control-plane node API under
//! `/v1/nodes/{id}/` (bearer token required) and a small unauthenticated admin API
//! under `/admin/` (loopback peers only).
//!
//! Routing is one `match` over method and path segments; every error is the usual
//! `{"error": …}` body. This handler is for development and tests; the daemon's own
//! request paths never reach it.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::encoding::percent_decode;
use crate::http::{
    Handler, Method, Park, ParkKind, Reply, Request, Response, Stream, Transport, Wake, Waker,
};
use crate::model::{Metadata, ReportSyncRequest, SecretResponse};
use crate::secrets::cipher::encrypt_secret;

use super::state::{DevState, FailRoute, ReportOutcome};

/// Largest report body accepted after gzip decoding.
const MAX_DECODED_BODY: u64 = 16 * 1024 * 1024;

/// The `http::Handler` of the development control plane.
pub struct DevHandler {
    pub(crate) state: Arc<DevState>,
    /// The server's waker (set once it runs): ends stalls of parked secret requests.
    pub(crate) waker: Arc<std::sync::OnceLock<Waker>>,
}

/// How long a stalled secret request is held at most.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Handler for DevHandler {
    fn handle(&self, request: &Request) -> Reply {
        self.state.count_request(request.path);
        self.route(request)
    }
}

fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(status, body),
        Err(_) => Response::error(500, "encoding failed"),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method not allowed").header("Allow", allow)
}

#[derive(Deserialize)]
struct DataBody {
    content_type: String,
    payload: Box<serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct FailBody {
    count: usize,
    status: u16,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    route: Option<String>,
    /// Answer with this text as the body (status 200–599), `repeat` times over.
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    repeat: Option<usize>,
}

/// Largest injected body (`body` × `repeat`).
const MAX_INJECTED_BODY: usize = 64 << 20;

impl DevHandler {
    fn route(&self, req: &Request) -> Reply {
        let raw: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let mut segs = Vec::with_capacity(raw.len());
        for s in &raw {
            match percent_decode(s) {
                Some(d) => segs.push(d),
                None => return Response::error(400, "bad percent-encoding in path").into(),
            }
        }
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match segs.as_slice() {
            ["v1", "nodes", node, rest @ ..] => self.node_api(req, node, rest),
            ["admin", rest @ ..] => self.admin_api(req, rest).into(),
            _ => Response::error(404, "not found").into(),
        }
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(value) = req.header("authorization") else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && bool::from(token.trim().as_bytes().ct_eq(self.state.token.as_bytes()))
    }

    fn node_api(&self, req: &Request, node: &str, rest: &[&str]) -> Reply {
        if !self.authorized(req) {
            return Response::error(401, "unauthorized").into();
        }
        if node != self.state.node_id {
            return Response::error(404, "unknown node").into();
        }
        let route = match rest {
            ["state"] => FailRoute::State,
            ["secrets", _] => FailRoute::Secrets,
            ["report"] => FailRoute::Report,
            ["events"] => FailRoute::Events,
            _ => return Response::error(404, "not found").into(),
        };
        if let Some(plan) = self.state.take_failure(route) {
            if let Some(body) = plan.body {
                return Response::json(plan.status, body).into();
            }
            let mut resp = Response::error(plan.status, "injected failure");
            if let Some(secs) = plan.retry_after {
                resp = resp.header("Retry-After", secs.to_string());
            }
            return resp.into();
        }
        if let (["secrets", key], Method::Get) = (rest, &req.method) {
            if self.state.secrets_stalled.load(Ordering::Acquire) {
                return self.stalled_secret(key);
            }
        }
        if let (["events"], Method::Get) = (rest, &req.method) {
            let body = self.state.events.subscribe(req.header("last-event-id"));
            return Reply::Stream(Stream {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), "text/event-stream".into()),
                    ("Cache-Control".into(), "no-cache".into()),
                ],
                body: Box::new(body),
            });
        }
        self.node_response(req, rest).into()
    }

    fn node_response(&self, req: &Request, rest: &[&str]) -> Response {
        match (rest, &req.method) {
            (["state"], Method::Get | Method::Head) => json(200, &self.state.node_state()),
            (["state"], _) => method_not_allowed("GET, HEAD"),
            (["secrets", key], Method::Get | Method::Head) => self.secret(key),
            (["secrets", _], _) => method_not_allowed("GET, HEAD"),
            (["report"], Method::Post) => self.report(req),
            (["report"], _) => method_not_allowed("POST"),
            (["events"], _) => method_not_allowed("GET"),
            _ => Response::error(404, "not found"),
        }
    }

    /// Holds a secret request (parked, no thread) until the stall ends, then answers it.
    fn stalled_secret(&self, key: &str) -> Reply {
        let me = DevHandler {
            state: Arc::clone(&self.state),
            waker: Arc::clone(&self.waker),
        };
        let key = key.to_owned();
        Reply::Park(Park {
            deadline: std::time::Instant::now() + STALL_LIMIT,
            kind: ParkKind::Completion,
            check: Box::new(move |wake| {
                let stalled = me.state.secrets_stalled.load(Ordering::Acquire);
                match wake {
                    Wake::Changed | Wake::Shutdown if stalled => None,
                    _ => Some(me.secret(&key)),
                }
            }),
        })
    }

    fn secret(&self, key: &str) -> Response {
        let nsk = &self.state.nsk;
        let sealed = self.state.with_secret(key, |plaintext, version| {
            encrypt_secret(nsk, plaintext).map(|(ciphertext, nonce)| SecretResponse {
                key: key.to_owned(),
                ciphertext,
                nonce,
                version,
            })
        });
        match sealed {
            None => Response::error(404, "secret not found"),
            Some(Ok(resp)) => json(200, &resp),
            Some(Err(_)) => Response::error(500, "encryption failed"),
        }
    }

    fn report(&self, req: &Request) -> Response {
        let encoding = req.header("content-encoding").map(str::trim);
        let gzipped = encoding.is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
        let body: std::borrow::Cow<[u8]> = match encoding {
            None | Some("identity") => req.body.into(),
            Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
                let mut out = Vec::new();
                let decoder = flate2::read::GzDecoder::new(req.body);
                match decoder.take(MAX_DECODED_BODY + 1).read_to_end(&mut out) {
                    Ok(_) if out.len() as u64 <= MAX_DECODED_BODY => out.into(),
                    Ok(_) => return Response::error(413, "decoded body too large"),
                    Err(_) => return Response::error(400, "invalid gzip body"),
                }
            }
            Some(_) => return Response::error(415, "unsupported content encoding"),
        };
        let request: ReportSyncRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return Response::error(400, &format!("invalid report body: {e}")),
        };
        match self.state.apply_report(request, gzipped) {
            ReportOutcome::Accepted => Response::new(204),
            ReportOutcome::Rejected(why) => Response::error(400, &why),
        }
    }

    fn admin_api(&self, req: &Request, rest: &[&str]) -> Response {
        let loopback = match req.transport {
            Transport::Tcp(addr) => addr.ip().is_loopback(),
            Transport::Unix(_) => true,
        };
        if !loopback {
            return Response::error(403, "admin API is for loopback clients only");
        }
        let s = &self.state;
        match (rest, &req.method) {
            (["state"], Method::Get | Method::Head) => json(200, &s.state()),
            (["reports"], Method::Get | Method::Head) => json(200, &s.reports()),
            (["report-posts"], Method::Get | Method::Head) => json(200, &s.report_posts()),
            (["metadata"], Method::Put) => match serde_json::from_slice::<Metadata>(req.body) {
                Ok(map) => {
                    s.replace_metadata(map);
                    Response::new(204)
                }
                Err(e) => {
                    Response::error(400, &format!("body must be a JSON object of strings: {e}"))
                }
            },
            (["metadata", key], Method::Put) => match serde_json::from_slice::<String>(req.body) {
                Ok(value) => {
                    s.set_metadata(key, &value);
                    Response::new(204)
                }
                Err(_) => Response::error(400, "body must be a JSON string"),
            },
            (["metadata", key], Method::Delete) => found(s.remove_metadata(key)),
            (["data", key], Method::Put) => match serde_json::from_slice::<DataBody>(req.body) {
                Ok(body) => match s.set_data(key, &body.content_type, body.payload.get()) {
                    Ok(version) => {
                        json(200, &serde_json::json!({ "key": key, "version": version }))
                    }
                    Err(e) => Response::error(400, &e.to_string()),
                },
                Err(_) => {
                    Response::error(400, "body must be {\"content_type\": …, \"payload\": …}")
                }
            },
            (["data", key], Method::Delete) => found(s.remove_data(key)),
            (["secrets", key], Method::Put) => match serde_json::from_slice::<String>(req.body) {
                Ok(value) => {
                    let value = zeroize::Zeroizing::new(value);
                    let version = s.set_secret(key, &value);
                    json(200, &serde_json::json!({ "key": key, "version": version }))
                }
                Err(_) => Response::error(400, "body must be a JSON string"),
            },
            (["secrets", key], Method::Delete) => found(s.remove_secret(key)),
            (["fail"], Method::Post) => match serde_json::from_slice::<FailBody>(req.body) {
                Ok(body) => {
                    let route = match body.route.as_deref() {
                        None => FailRoute::Any,
                        Some(r) => match FailRoute::parse(r) {
                            Some(route) => route,
                            None => {
                                return Response::error(
                                    400,
                                    "route must be report, state, secrets, events or any",
                                )
                            }
                        },
                    };
                    if let Some(text) = &body.body {
                        if !(200..=599).contains(&body.status) {
                            return Response::error(400, "status must be 200 to 599");
                        }
                        let repeat = body.repeat.unwrap_or(1);
                        if text.len().saturating_mul(repeat) > MAX_INJECTED_BODY {
                            return Response::error(400, "body × repeat must be at most 64 MiB");
                        }
                        let bytes = text.as_bytes().repeat(repeat);
                        s.answer_next(body.count, body.status, route, bytes);
                        return Response::new(204);
                    }
                    if !(400..=599).contains(&body.status) {
                        return Response::error(400, "status must be 400 to 599");
                    }
                    s.fail_next(body.count, body.status, body.retry_after, route);
                    Response::new(204)
                }
                Err(e) => Response::error(400, &format!("invalid fail body: {e}")),
            },
            (["drop-streams"], Method::Post) => {
                s.events.drop_streams();
                Response::new(204)
            }
            (["stall-streams"], Method::Post) => match serde_json::from_slice::<bool>(req.body) {
                Ok(stalled) => {
                    s.events.stall_streams(stalled);
                    Response::new(204)
                }
                Err(_) => Response::error(400, "body must be true or false"),
            },
            (["reformat-state"], Method::Post) => match serde_json::from_slice::<bool>(req.body) {
                Ok(on) => {
                    s.reformat_state.store(on, Ordering::Release);
                    Response::new(204)
                }
                Err(_) => Response::error(400, "body must be true or false"),
            },
            (["stall-secrets"], Method::Post) => match serde_json::from_slice::<bool>(req.body) {
                Ok(stalled) => {
                    s.secrets_stalled.store(stalled, Ordering::Release);
                    if let Some(w) = self.waker.get() {
                        w.wake();
                    }
                    Response::new(204)
                }
                Err(_) => Response::error(400, "body must be true or false"),
            },
            (["events"], Method::Post) => self.publish_raw(req),
            (
                ["drop-streams" | "stall-streams" | "stall-secrets" | "reformat-state" | "events"],
                _,
            ) => method_not_allowed("POST"),
            (["state" | "reports" | "report-posts"], _) => method_not_allowed("GET, HEAD"),
            (["metadata"], _) => method_not_allowed("PUT"),
            (["metadata" | "data" | "secrets", _], _) => method_not_allowed("PUT, DELETE"),
            (["fail"], _) => method_not_allowed("POST"),
            _ => Response::error(404, "not found"),
        }
    }
}

#[derive(Deserialize)]
struct EventTypeOnly {
    #[serde(default)]
    event_type: Option<String>,
}

impl DevHandler {
    /// `POST /admin/events`: the body is sent verbatim as one event's data; its SSE
    /// event type is the body's `event_type` field if it has one, else `message`.
    fn publish_raw(&self, req: &Request) -> Response {
        let Ok(text) = std::str::from_utf8(req.body) else {
            return Response::error(400, "body must be UTF-8");
        };
        let event_type = serde_json::from_str::<EventTypeOnly>(text)
            .ok()
            .and_then(|e| e.event_type)
            .filter(|t| !t.is_empty() && !t.contains(['\r', '\n']))
            .unwrap_or_else(|| "message".to_owned());
        let id = self.state.events.publish_raw(&event_type, text);
        json(200, &serde_json::json!({ "id": id.to_string() }))
    }
}

fn found(existed: bool) -> Response {
    if existed {
        Response::new(204)
    } else {
        Response::error(404, "not found")
    }
}
