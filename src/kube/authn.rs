//! Callers of the TCP listener that present a Kubernetes ServiceAccount token: who
//! they are (TokenReview) and whether they may do what they ask (SubjectAccessReview).
//!
//! A decision, for a token and an `Action` (what the route does):
//!
//! 1. TokenReview with the configured audience (`spec.audiences`). Not authenticated,
//!    or `status.audiences` without our audience (an audience-unaware authenticator
//!    would accept an API-server token, replayable against the API server) → 401.
//! 2. The user must be a ServiceAccount (`system:serviceaccount:<ns>:<sa>`) → else 403;
//!    a token bound to a pod on another node (`authentication.kubernetes.io/node-name`
//!    extra) → 403.
//! 3. SubjectAccessReview for the route's attributes, with the caller's uid, groups
//!    and extras: `get` on the Secret holding the key's ciphertext (secret routes),
//!    `get` on the node's resource (reads), `patch` on its `status` (report writes).
//!    Not allowed → 403.
//!
//! The API server unreachable, answering 5xx/429, or refusing plexd's own token → 503
//! (the caller did nothing wrong), never cached. Results are cached by SHA-256 of the
//! token — never the token: allowed for at most 2 minutes (less when the token expires
//! sooner), denied for 10 seconds; 4,096 entries each. Concurrent requests with the
//! same token (and attributes) share one review (single flight), and at most
//! `max_in_flight` reviews run at once — beyond that the answer is 503 at once.
//!
//! `decide` blocks for the reviews: it must run where blocking is allowed (the
//! upstream pool), never on an HTTP worker; `cached` is the non-blocking fast path.
//! Nothing here knows routes or HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

use crate::store::Store;

use super::client::{KubeClient, KubeError};
use super::names::{secret_name_among, ResourceName};
use super::{GROUP, PLURAL};
use crate::telemetry::kubernetes::{KubeHealth, AUTH};

/// What a request asks for, in Kubernetes terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read the node's state (metadata, data, the secret list, reports).
    ReadState,
    /// Write or delete report entries.
    WriteReports,
    /// Read one secret's plaintext.
    ReadSecret { key: String },
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `caller` names the ServiceAccount (and pod) for logs.
    Allowed { caller: String },
    /// 401: the token is not valid for us.
    Unauthenticated,
    /// 403, with a short reason safe to show.
    Forbidden(&'static str),
    /// 503 with `Retry-After`: the API server cannot be asked right now.
    Unavailable { retry_after: Duration },
}

/// Limits and lifetimes.
#[derive(Debug, Clone)]
pub struct AuthnOptions {
    pub allow_ttl: Duration,
    pub deny_ttl: Duration,
    pub max_entries: usize,
    pub max_in_flight: usize,
}

impl Default for AuthnOptions {
    fn default() -> AuthnOptions {
        AuthnOptions {
            allow_ttl: Duration::from_secs(120),
            deny_ttl: Duration::from_secs(10),
            max_entries: 4096,
            max_in_flight: 4,
        }
    }
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
    /// When the token itself expires (from its unverified `exp`), if known.
    expires: Option<SystemTime>,
}

impl Identity {
    fn caller(&self) -> String {
        match self.extra.get(POD_NAME).and_then(|p| p.first()) {
            Some(pod) => format!("{} pod={pod}", self.username),
            None => self.username.clone(),
        }
    }
}

const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// A TokenReview's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenVerdict {
    Valid(Identity),
    Invalid,
    Forbidden(&'static str),
}

type TokenHash = [u8; 32];

struct Entry<V> {
    value: V,
    until: Instant,
}

/// A bounded map with per-entry expiry.
struct Cache<K, V> {
    entries: HashMap<K, Entry<V>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Cache<K, V> {
    fn new(max: usize) -> Self {
        Cache {
            entries: HashMap::new(),
            max,
        }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        let now = Instant::now();
        match self.entries.get(k) {
            Some(e) if e.until > now => Some(e.value.clone()),
            Some(_) => {
                self.entries.remove(k);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, k: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&k) {
            let now = Instant::now();
            self.entries.retain(|_, e| e.until > now);
            if self.entries.len() >= self.max {
                // Still full of live entries: drop the one that expires first.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.until)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(
            k,
            Entry {
                value,
                until: Instant::now() + ttl,
            },
        );
    }
}

/// One review in flight; followers wait for its result.
struct Flight<R> {
    result: Mutex<Option<R>>,
    done: Condvar,
}

impl<R: Clone> Flight<R> {
    fn new() -> Arc<Flight<R>> {
        Arc::new(Flight {
            result: Mutex::new(None),
            done: Condvar::new(),
        })
    }

    fn finish(&self, r: R) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
        self.done.notify_all();
    }

    fn wait(&self, limit: Duration) -> Option<R> {
        let deadline = Instant::now() + limit;
        let mut guard = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = guard.as_ref() {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = self
                .done
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Result of one upstream call, as followers see it.
type Shared<T> = Result<T, Unavailable>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unavailable;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ActionKey {
    token: TokenHash,
    action: Action,
}

/// Decides TCP callers with Kubernetes tokens. Share it as `Arc<Authenticator>`.
pub struct Authenticator {
    client: Arc<KubeClient>,
    health: Arc<KubeHealth>,
    store: Arc<Store>,
    audience: String,
    namespace: String,
    node_name: String,
    resource: ResourceName,
    options: AuthnOptions,
    tokens: Mutex<Cache<TokenHash, TokenVerdict>>,
    grants: Mutex<Cache<ActionKey, bool>>,
    token_flights: Mutex<HashMap<TokenHash, Arc<Flight<Shared<TokenVerdict>>>>>,
    grant_flights: Mutex<HashMap<ActionKey, Arc<Flight<Shared<bool>>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a follower waits for a leader (the request timeout plus a little).
const FOLLOW_LIMIT: Duration = Duration::from_secs(35);

impl Authenticator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Arc<KubeClient>,
        health: Arc<KubeHealth>,
        store: Arc<Store>,
        audience: &str,
        namespace: &str,
        node_name: &str,
        resource: ResourceName,
        options: AuthnOptions,
    ) -> Authenticator {
        Authenticator {
            client,
            health,
            store,
            audience: audience.to_owned(),
            namespace: namespace.to_owned(),
            node_name: node_name.to_owned(),
            resource,
            tokens: Mutex::new(Cache::new(options.max_entries)),
            grants: Mutex::new(Cache::new(options.max_entries)),
            token_flights: Mutex::new(HashMap::new()),
            grant_flights: Mutex::new(HashMap::new()),
            options,
        }
    }

    /// The decision if both answers are cached; never blocks on the network.
    pub fn cached(&self, token: &str, action: &Action) -> Option<Decision> {
        let hash = hash(token);
        let verdict = lock(&self.tokens).get(&hash)?;
        let identity = match verdict_decision(&verdict) {
            Ok(identity) => identity,
            Err(d) => return Some(d),
        };
        let allowed = lock(&self.grants).get(&ActionKey {
            token: hash,
            action: action.clone(),
        })?;
        self.health.count(AUTH, "cache", "hit");
        Some(grant_decision(&identity, allowed))
    }

    /// The decision, asking the API server as needed. Blocks for up to about one
    /// request timeout per review; run it off the HTTP workers.
    pub fn decide(&self, token: &str, action: &Action) -> Decision {
        let hash = hash(token);
        let verdict = match self.token_verdict(token, hash) {
            Ok(v) => v,
            Err(Unavailable) => return unavailable(),
        };
        let identity = match verdict_decision(&verdict) {
            Ok(identity) => identity,
            Err(d) => return d,
        };
        let key = ActionKey {
            token: hash,
            action: action.clone(),
        };
        match self.grant(&identity, key) {
            Ok(allowed) => grant_decision(&identity, allowed),
            Err(Unavailable) => unavailable(),
        }
    }

    fn token_verdict(&self, token: &str, hash: TokenHash) -> Shared<TokenVerdict> {
        if let Some(v) = lock(&self.tokens).get(&hash) {
            self.health.count(AUTH, "cache", "hit");
            return Ok(v);
        }
        single_flight(
            &self.token_flights,
            hash,
            &self.health,
            self.options.max_in_flight,
            || {
                let verdict = self.review_token(token)?;
                let ttl = match &verdict {
                    TokenVerdict::Valid(id) => self.allow_ttl(id),
                    _ => self.options.deny_ttl,
                };
                lock(&self.tokens).put(hash, verdict.clone(), ttl);
                Ok(verdict)
            },
        )
    }

    fn grant(&self, identity: &Identity, key: ActionKey) -> Shared<bool> {
        if let Some(v) = lock(&self.grants).get(&key) {
            self.health.count(AUTH, "cache", "hit");
            return Ok(v);
        }
        let cache_key = key.clone();
        single_flight(
            &self.grant_flights,
            key.clone(),
            &self.health,
            self.options.max_in_flight,
            || {
                let allowed = self.review_action(identity, &key.action)?;
                let ttl = if allowed {
                    self.allow_ttl(identity)
                } else {
                    self.options.deny_ttl
                };
                lock(&self.grants).put(cache_key, allowed, ttl);
                Ok(allowed)
            },
        )
    }

    /// Allowed results live at most `allow_ttl`, and never past the token's expiry.
    fn allow_ttl(&self, id: &Identity) -> Duration {
        let until_expiry = id.expires.map_or(self.options.allow_ttl, |exp| {
            exp.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        self.options.allow_ttl.min(until_expiry)
    }

    fn review_token(&self, token: &str) -> Shared<TokenVerdict> {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        });
        let answer = self
            .client
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &body)
            .map_err(|e| self.upstream_failed("tokenreview", &e))?;
        let status = &answer["status"];
        let verdict = self.judge(status, token);
        let outcome = match &verdict {
            TokenVerdict::Valid(_) => "authenticated",
            TokenVerdict::Invalid => "unauthenticated",
            TokenVerdict::Forbidden(_) => "forbidden",
        };
        self.health.count(AUTH, "tokenreview", outcome);
        Ok(verdict)
    }

    /// The TokenReview status → verdict (audience, ServiceAccount, same node).
    fn judge(&self, status: &Value, token: &str) -> TokenVerdict {
        if status["authenticated"] != true {
            if let Some(e) = status["error"].as_str() {
                log::debug!(error = e; "token review: not authenticated");
            }
            return TokenVerdict::Invalid;
        }
        let audiences: Vec<&str> = status["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !audiences.contains(&self.audience.as_str()) {
            log::info!("token review: authenticated, but not for the plexd audience; refused");
            return TokenVerdict::Invalid;
        }
        let user = &status["user"];
        let username = user["username"].as_str().unwrap_or("").to_owned();
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return TokenVerdict::Forbidden("only ServiceAccount tokens are accepted");
        };
        if rest.split(':').count() != 2 || rest.split(':').any(str::is_empty) {
            return TokenVerdict::Forbidden("only ServiceAccount tokens are accepted");
        }
        let extra: BTreeMap<String, Vec<String>> = user["extra"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let values = v
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|s| s.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), values)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(nodes) = extra.get(NODE_NAME) {
            if !nodes.iter().any(|n| n == &self.node_name) {
                return TokenVerdict::Forbidden("the token belongs to a pod on another node");
            }
        }
        let groups = user["groups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        TokenVerdict::Valid(Identity {
            username,
            uid: user["uid"].as_str().unwrap_or("").to_owned(),
            groups,
            extra,
            expires: jwt_expiry(token),
        })
    }

    fn attributes(&self, action: &Action) -> Value {
        match action {
            Action::ReadSecret { key } => {
                let index = self.store.secret_index();
                let name = secret_name_among(
                    &self.resource.node_part(),
                    key,
                    index.iter().map(|r| r.key.as_str()),
                );
                json!({"namespace": self.namespace, "verb": "get", "group": "", "resource": "secrets", "name": name})
            }
            Action::ReadState => {
                json!({"namespace": self.namespace, "verb": "get", "group": GROUP, "resource": PLURAL, "name": self.resource.get()})
            }
            Action::WriteReports => json!({
                "namespace": self.namespace, "verb": "patch", "group": GROUP, "resource": PLURAL,
                "subresource": "status", "name": self.resource.get(),
            }),
        }
    }

    fn review_action(&self, id: &Identity, action: &Action) -> Shared<bool> {
        let body = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": id.username,
                "uid": id.uid,
                "groups": id.groups,
                "extra": id.extra,
                "resourceAttributes": self.attributes(action),
            },
        });
        let answer = self
            .client
            .post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &body)
            .map_err(|e| self.upstream_failed("subjectaccessreview", &e))?;
        let allowed = answer["status"]["allowed"] == true;
        self.health.count(
            AUTH,
            "subjectaccessreview",
            if allowed { "allowed" } else { "denied" },
        );
        Ok(allowed)
    }

    fn upstream_failed(&self, step: &'static str, e: &KubeError) -> Unavailable {
        self.health.count(AUTH, step, "unavailable");
        if e.is_refusal() {
            // plexd's own token or RBAC: an operator must fix it.
            self.health.record_error(&format!("{step}: {e}"), false);
            log::error!(step = step, error:% = e; "the Kubernetes API refuses plexd's review requests (RBAC: bind system:auth-delegator)");
        } else {
            log::warn!(step = step, error:% = e; "cannot review a caller: Kubernetes API unavailable");
        }
        Unavailable
    }
}

/// Runs `call` once per `key` at a time: the first caller (the leader) runs it, others
/// wait for its result. Leaders are capped at `max_in_flight` (beyond: unavailable).
fn single_flight<K, T>(
    flights: &Mutex<HashMap<K, Arc<Flight<Shared<T>>>>>,
    key: K,
    health: &KubeHealth,
    max_in_flight: usize,
    call: impl FnOnce() -> Shared<T>,
) -> Shared<T>
where
    K: std::hash::Hash + Eq + Clone,
    T: Clone,
{
    let (flight, leader) = {
        let mut map = lock(flights);
        match map.get(&key) {
            Some(f) => (Arc::clone(f), false),
            None => {
                let gauge = health.auth_in_flight();
                if gauge.load(Ordering::Relaxed) as usize >= max_in_flight {
                    health.count(AUTH, "review", "busy");
                    return Err(Unavailable);
                }
                gauge.fetch_add(1, Ordering::Relaxed);
                let f = Flight::new();
                map.insert(key.clone(), Arc::clone(&f));
                (f, true)
            }
        }
    };
    if !leader {
        health.count(AUTH, "review", "shared");
        return flight.wait(FOLLOW_LIMIT).unwrap_or(Err(Unavailable));
    }
    // The leader always finishes the flight, even if `call` panics.
    struct Finish<'a, K: std::hash::Hash + Eq, T: Clone> {
        flights: &'a Mutex<HashMap<K, Arc<Flight<Shared<T>>>>>,
        key: Option<K>,
        flight: Arc<Flight<Shared<T>>>,
        health: &'a KubeHealth,
        result: Option<Shared<T>>,
    }
    impl<K: std::hash::Hash + Eq, T: Clone> Drop for Finish<'_, K, T> {
        fn drop(&mut self) {
            if let Some(k) = self.key.take() {
                lock(self.flights).remove(&k);
            }
            self.health.auth_in_flight().fetch_sub(1, Ordering::Relaxed);
            self.flight
                .finish(self.result.take().unwrap_or(Err(Unavailable)));
        }
    }
    let mut finish = Finish {
        flights,
        key: Some(key),
        flight,
        health,
        result: None,
    };
    let result = call();
    finish.result = Some(result.clone());
    drop(finish);
    result
}

fn verdict_decision(v: &TokenVerdict) -> Result<Identity, Decision> {
    match v {
        TokenVerdict::Valid(id) => Ok(id.clone()),
        TokenVerdict::Invalid => Err(Decision::Unauthenticated),
        TokenVerdict::Forbidden(why) => Err(Decision::Forbidden(why)),
    }
}

fn grant_decision(id: &Identity, allowed: bool) -> Decision {
    if allowed {
        Decision::Allowed {
            caller: id.caller(),
        }
    } else {
        Decision::Forbidden("the caller's ServiceAccount is not granted this by RBAC")
    }
}

fn unavailable() -> Decision {
    Decision::Unavailable {
        retry_after: Duration::from_secs(1),
    }
}

fn hash(token: &str) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `exp` of a JWT's payload, unverified: used only to shorten cache lifetimes.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims["exp"].as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_expire_and_stay_bounded() {
        let mut c: Cache<u32, bool> = Cache::new(2);
        c.put(1, true, Duration::from_secs(60));
        c.put(2, false, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get(&2), None, "expired");
        c.put(3, true, Duration::from_secs(30));
        c.put(4, true, Duration::from_secs(90));
        assert!(c.entries.len() <= 2);
        assert_eq!(c.get(&3), None, "the entry expiring first made room");
        assert_eq!(c.get(&4), Some(true));
        c.put(5, true, Duration::ZERO);
        assert_eq!(c.get(&5), None, "zero lifetime is not cached");
    }

    #[test]
    fn jwt_expiry_is_read_unverified() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":2000000000}"#);
        let t = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig");
        assert_eq!(
            jwt_expiry(&t),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }

    #[test]
    fn single_flight_shares_and_caps() {
        let health = KubeHealth::new("ns", "r");
        let flights: Mutex<HashMap<u8, Arc<Flight<Shared<u32>>>>> = Mutex::new(HashMap::new());
        let calls = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        single_flight(&flights, 1, &health, 4, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            Ok(7)
                        })
                    })
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), Ok(7));
            }
        });
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one review for eight requests"
        );
        assert_eq!(health.auth_in_flight().load(Ordering::SeqCst), 0);
        // The cap: with `max_in_flight` leaders running, a new key is refused at once.
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                single_flight(&flights, 2, &health, 1, || {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                    Ok(1)
                })
            });
            started_rx.recv().unwrap();
            assert_eq!(
                single_flight(&flights, 3, &health, 1, || Ok(2)),
                Err(Unavailable)
            );
            release_tx.send(()).unwrap();
            assert_eq!(leader.join().unwrap(), Ok(1));
        });
        assert_eq!(health.counter(AUTH, "review", "busy"), 1);
    }
}
