//! Which resource a request path names, and which methods that resource allows.
//!
//! Pure string work: no state, no I/O. Keys in paths are percent-decoded here
//! (`db%2Fpassword` → `db/password`); whether a key is *valid* for its resource
//! (report key rules) is the handler's business.

use crate::encoding::percent_decode;
use crate::http::Method;

/// A resource of the local API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Summary,
    Metadata,
    MetadataKey(String),
    Data,
    DataKey(String),
    Secrets,
    SecretKey(String),
    Reports,
    ReportKey(String),
    Health,
    Metrics,
}

/// Why a path names no resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The key segment has a broken `%` escape or decodes to invalid UTF-8.
    BadKey,
}

const READ: &[Method] = &[Method::Get, Method::Head];
const READ_WRITE: &[Method] = &[Method::Get, Method::Head, Method::Put, Method::Delete];

impl Resource {
    /// Methods this resource answers.
    pub fn allowed(&self) -> &'static [Method] {
        match self {
            Resource::ReportKey(_) => READ_WRITE,
            _ => READ,
        }
    }

    /// The `Allow` header value for a 405.
    pub fn allow_header(&self) -> &'static str {
        match self {
            Resource::ReportKey(_) => "GET, HEAD, PUT, DELETE",
            _ => "GET, HEAD",
        }
    }

    /// A short stable name for logs and metrics (`/v1/state/report/{key}`).
    pub fn label(&self) -> &'static str {
        match self {
            Resource::Summary => "/v1/state",
            Resource::Metadata => "/v1/state/metadata",
            Resource::MetadataKey(_) => "/v1/state/metadata/{key}",
            Resource::Data => "/v1/state/data",
            Resource::DataKey(_) => "/v1/state/data/{key}",
            Resource::Secrets => "/v1/state/secrets",
            Resource::SecretKey(_) => "/v1/state/secrets/{key}",
            Resource::Reports => "/v1/state/report",
            Resource::ReportKey(_) => "/v1/state/report/{key}",
            Resource::Health => "/v1/health",
            Resource::Metrics => "/metrics",
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Resource::Secrets | Resource::SecretKey(_))
    }
}

/// Resolves a raw (still percent-encoded) request path.
pub fn resolve(path: &str) -> Result<Resource, RouteError> {
    match path {
        "/v1/state" => return Ok(Resource::Summary),
        "/v1/state/metadata" => return Ok(Resource::Metadata),
        "/v1/state/data" => return Ok(Resource::Data),
        "/v1/state/secrets" => return Ok(Resource::Secrets),
        "/v1/state/report" => return Ok(Resource::Reports),
        "/v1/health" => return Ok(Resource::Health),
        "/metrics" => return Ok(Resource::Metrics),
        _ => {}
    }
    type MakeKeyed = fn(String) -> Resource;
    let keyed: [(&str, MakeKeyed); 4] = [
        ("/v1/state/metadata/", Resource::MetadataKey),
        ("/v1/state/data/", Resource::DataKey),
        ("/v1/state/secrets/", Resource::SecretKey),
        ("/v1/state/report/", Resource::ReportKey),
    ];
    for (prefix, make) in keyed {
        if let Some(raw) = path.strip_prefix(prefix) {
            // One path segment: a literal '/' means another, unknown path, and dot
            // segments are path syntax, not keys (such keys are addressed as %2E%2E).
            if raw.is_empty() || raw.contains('/') || raw == "." || raw == ".." {
                return Err(RouteError::NotFound);
            }
            let key = percent_decode(raw).ok_or(RouteError::BadKey)?;
            return Ok(make(key));
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_route() {
        assert_eq!(resolve("/v1/state"), Ok(Resource::Summary));
        assert_eq!(
            resolve("/v1/state/metadata/region"),
            Ok(Resource::MetadataKey("region".into()))
        );
        assert_eq!(
            resolve("/v1/state/secrets/db%2Fpassword"),
            Ok(Resource::SecretKey("db/password".into()))
        );
        assert_eq!(
            resolve("/v1/state/report/a%20b"),
            Ok(Resource::ReportKey("a b".into()))
        );
        assert_eq!(
            resolve("/v1/state/report/%2E%2E"),
            Ok(Resource::ReportKey("..".into()))
        );
        assert_eq!(resolve("/v1/state/report/"), Err(RouteError::NotFound));
        assert_eq!(resolve("/v1/state/data/a/b"), Err(RouteError::NotFound));
        assert_eq!(resolve("/v1/state/data/.."), Err(RouteError::NotFound));
        assert_eq!(resolve("/v1/state/data/."), Err(RouteError::NotFound));
        assert_eq!(resolve("/v1/state/"), Err(RouteError::NotFound));
        assert_eq!(resolve("/v1/nope"), Err(RouteError::NotFound));
        assert_eq!(resolve("/v1/state/report/%zz"), Err(RouteError::BadKey));
        assert_eq!(resolve("/v1/health"), Ok(Resource::Health));
    }
}
