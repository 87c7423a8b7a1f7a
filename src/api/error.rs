//! Every way a local API request can fail, and the one place that turns a failure into
//! a response. Messages are safe to show to any client: no paths, no internals, no
//! crypto detail.

use crate::http::Response;

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
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooManyWaiters => 429,
            ApiError::InsufficientStorage(_) => 507,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_)
            | ApiError::UpstreamTimeout
            | ApiError::UpstreamDown { .. } => 503,
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        let response = Response::error(e.status(), &e.to_string());
        match e {
            ApiError::MethodNotAllowed { allow } => response.header("Allow", allow),
            ApiError::Unauthorized => response.header("WWW-Authenticate", "Bearer"),
            ApiError::TooManyWaiters | ApiError::Unavailable(_) | ApiError::UpstreamTimeout => {
                response.header("Retry-After", "1")
            }
            ApiError::UpstreamDown { retry_after_secs } => {
                response.header("Retry-After", retry_after_secs)
            }
            _ => response,
        }
    }
}
