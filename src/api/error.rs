//! Every way a local API request can fail, and the one place that decides the HTTP
//! status of a failure (`ApiError::status_code`) and turns it into a response.
//!
//! The other parts' errors map into `ApiError` once, here: `StoreError`, `SecretError`,
//! `KeyError` and `RouteError`. Handlers return `ApiError`s and never pick an error
//! status themselves. Messages are safe to show to any client: no paths, no internals,
//! no crypto detail.

use crate::api::route::RouteError;
use crate::http::Response;
use crate::secrets::SecretError;
use crate::store::keys::KeyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("too many waiting requests")]
    TooManyWaiters,
    /// 507: a quota would be exceeded; the message names the limit and the use.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The state folder takes no writes now: 507 when the disk is full, 503 when it
    /// is read-only. Reads still work; writing resumes by itself.
    #[error("{}", if *full {
        "the disk holding the state folder is full: nothing was stored; writes resume by themselves once there is room"
    } else {
        "the state folder cannot be written (read-only): nothing was stored; writes resume by themselves once it can"
    })]
    DiskUnwritable { full: bool },
    #[error("{0}")]
    Internal(&'static str),
    /// 503, retry in a second.
    #[error("{0}")]
    Unavailable(&'static str),
    /// 503: the control plane did not answer within the request's deadline.
    #[error("the control plane did not answer in time")]
    UpstreamTimeout,
    /// 503 while the control plane is known to be unreachable.
    #[error("control plane unreachable; secrets are unavailable until it answers again")]
    UpstreamDown { retry_after_secs: u64 },
    /// The readiness probe (`/v1/health?ready`) before the daemon is ready: the answer
    /// is the health document itself, with 503.
    #[error("not ready")]
    NotReady { health: Vec<u8> },
}

impl ApiError {
    /// The HTTP status of this failure.
    pub fn status_code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooManyWaiters => 429,
            ApiError::InsufficientStorage(_) | ApiError::DiskUnwritable { full: true } => 507,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_)
            | ApiError::UpstreamTimeout
            | ApiError::UpstreamDown { .. }
            | ApiError::DiskUnwritable { full: false }
            | ApiError::NotReady { .. } => 503,
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        let status = e.status_code();
        match e {
            ApiError::NotReady { health } => {
                Response::json(status, health).header("Cache-Control", "no-store")
            }
            ApiError::MethodNotAllowed { allow } => {
                Response::error(status, &e.to_string()).header("Allow", allow)
            }
            ApiError::Unauthorized => {
                Response::error(status, &e.to_string()).header("WWW-Authenticate", "Bearer")
            }
            ApiError::TooManyWaiters | ApiError::Unavailable(_) | ApiError::UpstreamTimeout => {
                Response::error(status, &e.to_string()).header("Retry-After", "1")
            }
            ApiError::DiskUnwritable { .. } => {
                Response::error(status, &e.to_string()).header("Retry-After", "5")
            }
            ApiError::UpstreamDown { retry_after_secs } => {
                Response::error(status, &e.to_string()).header("Retry-After", retry_after_secs)
            }
            _ => Response::error(status, &e.to_string()),
        }
    }
}

/// A path that names no resource.
impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        match e {
            RouteError::NotFound => ApiError::NotFound("not found".into()),
            RouteError::BadKey => ApiError::BadRequest("invalid key: bad percent-encoding".into()),
        }
    }
}

/// A report key a client may not use.
impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

/// A report write the store refused or could not make durable. Persistence failures
/// are logged here (with their cause) and answered without detail.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { current: Some(v) } => ApiError::Conflict(format!(
                "version conflict: the entry is at version {v}; read it again for its current ETag"
            )),
            StoreError::Conflict { current: None } => {
                ApiError::Conflict("version conflict: the entry does not exist".into())
            }
            StoreError::NotFound => ApiError::NotFound("report entry not found".into()),
            StoreError::QuotaExceeded { limit, max, used } => {
                ApiError::InsufficientStorage(format!(
                    "report quota exceeded: {used} {unit} stored, the limit ({flag}) is {max}; \
                     delete reports or raise the limit",
                    unit = limit.unit(),
                    flag = limit.flag(),
                ))
            }
            StoreError::Unwritable { full, reason } => {
                log::warn!(reason = reason.as_str(); "report write refused: the state folder takes no writes");
                ApiError::DiskUnwritable { full }
            }
            other => {
                log::error!(error:% = other; "report write failed");
                ApiError::Internal("the report could not be stored; nothing was changed")
            }
        }
    }
}

/// What a failed secret fetch tells the client. Nothing about the upstream error or the
/// cipher reaches it.
impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> ApiError {
        match e {
            SecretError::NotConfigured => {
                ApiError::Unavailable("secrets are unavailable: no control plane is configured")
            }
            SecretError::NotFound => ApiError::NotFound("secret not found".into()),
            SecretError::Unavailable(_) => ApiError::Unavailable("control plane unavailable"),
            SecretError::Decrypt => ApiError::Internal("secret could not be decrypted"),
            SecretError::Timeout => ApiError::UpstreamTimeout,
            SecretError::CircuitOpen { retry_after_secs } => {
                ApiError::UpstreamDown { retry_after_secs }
            }
        }
    }
}
