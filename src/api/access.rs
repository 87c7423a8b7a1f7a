//! Who may call what (README's "Access control"): the bearer token on TCP, and `--secret-auth` on the
//! Unix socket, decided from the credentials the kernel recorded at connect time. With
//! `--kubernetes`, a TCP bearer token that is not the static one is a workload's
//! ServiceAccount token, decided by `kube::authn` (see `Api`'s `workload` path).
//!
//! Never looks at anything a client can forge on the Unix socket (headers, pid files);
//! never logs the token.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::api::error::ApiError;
use crate::http::{PeerCred, Request, Transport};
use crate::kube::authn::{Authenticator, Decision};

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'r> {
    /// On the Unix socket.
    Local,
    /// On TCP with the static `--http-token-file` token.
    Operator,
    /// On TCP with another bearer token, with the Kubernetes mode on: to be reviewed.
    Workload(&'r str),
}

/// Name of the group whose members may read secrets when `--secret-auth` is on.
pub const SECRETS_GROUP: &str = "plexd-secrets";

pub struct Access {
    http_token: Option<Zeroizing<String>>,
    secret_auth: bool,
    /// gid of `plexd-secrets`, if that group exists; otherwise only root may read secrets.
    secrets_gid: Option<u32>,
    /// With `--kubernetes` (and a token audience): reviews workload tokens.
    kube: Option<Arc<Authenticator>>,
}

impl Access {
    pub fn new(
        http_token: Option<Zeroizing<String>>,
        secret_auth: bool,
        secrets_gid: Option<u32>,
    ) -> Access {
        Access {
            http_token,
            secret_auth,
            secrets_gid,
            kube: None,
        }
    }

    /// Accepts workload ServiceAccount tokens on TCP, reviewed by `authn`.
    pub fn with_kubernetes(mut self, authn: Option<Arc<Authenticator>>) -> Access {
        self.kube = authn;
        self
    }

    pub fn authenticator(&self) -> Option<&Arc<Authenticator>> {
        self.kube.as_ref()
    }

    /// Unix requests are `Local`; TCP requests need `Authorization: Bearer <token>`:
    /// the static token (`Operator`), or with the Kubernetes mode any other token
    /// (`Workload`, still to be reviewed). Otherwise 401.
    pub fn caller<'r>(&self, req: &Request<'r>) -> Result<Caller<'r>, ApiError> {
        if !matches!(*req.transport, Transport::Tcp(_)) {
            return Ok(Caller::Local);
        }
        let presented = req
            .header("authorization")
            .and_then(bearer_token)
            .unwrap_or("");
        if presented.is_empty() {
            return Err(ApiError::Unauthorized);
        }
        if let Some(expected) = &self.http_token {
            if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
                return Ok(Caller::Operator);
            }
        }
        if self.kube.is_some() {
            return Ok(Caller::Workload(presented));
        }
        Err(ApiError::Unauthorized)
    }

    /// Looks up the `plexd-secrets` group's gid.
    pub fn lookup_secrets_gid() -> Option<u32> {
        nix::unistd::Group::from_name(SECRETS_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }

    pub fn secret_auth(&self) -> bool {
        self.secret_auth
    }

    /// Whether this request's peer may see secrets — their values, names, versions
    /// and how many there are: always without `--secret-auth` and on TCP (the token
    /// holder may); on the Unix socket uid 0 or membership (effective or supplementary
    /// gid) in `plexd-secrets`, as the kernel recorded it.
    pub fn may_read_secrets(&self, req: &Request) -> bool {
        if !self.secret_auth {
            return true;
        }
        match req.transport {
            Transport::Tcp(_) => true,
            Transport::Unix(Some(peer)) => self.peer_may_read_secrets(peer),
            Transport::Unix(None) => false,
        }
    }

    /// With `--secret-auth`, secret routes on the Unix socket need `may_read_secrets`;
    /// a refusal is logged with the peer's uid and pid.
    pub fn check_secret(&self, req: &Request) -> Result<(), ApiError> {
        if self.may_read_secrets(req) {
            return Ok(());
        }
        match req.transport {
            Transport::Tcp(_) => Ok(()),
            Transport::Unix(peer) => {
                let (uid, pid) = peer
                    .as_ref()
                    .map_or((None, None), |p| (Some(p.uid), Some(p.pid)));
                log::warn!(uid:? = uid, pid:? = pid; "secret access denied");
                Err(ApiError::Forbidden("not in the plexd-secrets group"))
            }
        }
    }

    fn peer_may_read_secrets(&self, peer: &PeerCred) -> bool {
        if peer.uid == 0 {
            return true;
        }
        match self.secrets_gid {
            Some(gid) => peer.gid == gid || peer.groups.contains(&gid),
            None => false,
        }
    }
}

/// The answer for a workload whose token review did not allow the request.
pub fn refusal(decision: Decision) -> ApiError {
    match decision {
        Decision::Allowed { .. } => ApiError::Internal("an allowed caller was refused"),
        Decision::Unauthenticated => ApiError::Unauthorized,
        Decision::Forbidden(why) => ApiError::Forbidden(why),
        Decision::Unavailable { .. } => {
            ApiError::Unavailable("cannot verify the caller: kubernetes API unavailable")
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bEaReR   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn secret_rules() {
        let a = Access::new(None, true, Some(1234));
        let peer = |uid, gid, groups: Vec<u32>| PeerCred {
            pid: 1,
            uid,
            gid,
            groups,
        };
        assert!(a.peer_may_read_secrets(&peer(0, 0, vec![])));
        assert!(a.peer_may_read_secrets(&peer(1000, 1234, vec![])));
        assert!(a.peer_may_read_secrets(&peer(1000, 1000, vec![5, 1234])));
        assert!(!a.peer_may_read_secrets(&peer(1000, 1000, vec![5])));
        let no_group = Access::new(None, true, None);
        assert!(!no_group.peer_may_read_secrets(&peer(1000, 1000, vec![1234])));
    }
}
