//! Every way a local API request can fail, and the one place that turns a failure into
//! a response. Messages are safe to show to any client: no paths, no internals, no
//! crypto detail.

use crate::http::Response;
use crate::secrets::SecretError;

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
    #[error("{0}")]
    Internal(&'static str),
    #[error("{0}")]
    Unavailable(&'static str),
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
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        let response = Response::error(e.status(), &e.to_string());
        match e {
            ApiError::MethodNotAllowed { allow } => response.header("Allow", allow),
            ApiError::Unauthorized => response.header("WWW-Authenticate", "Bearer"),
            ApiError::TooManyWaiters => response.header("Retry-After", "1"),
            _ => response,
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
        }
    }
}
