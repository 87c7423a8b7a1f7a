//! The `serve` lifecycle: bind, load the cache, start the threads, wait for a signal,
//! shut down in order. This is the only module that knows every other one; it owns
//! the wiring and nothing else (no request handling, no file formats).
//!
//! Start: memory protection (not dumpable) → the state folder's lock (creating a
//! missing data folder) → listeners (socket activation, or bind under `<socket>.lock`)
//! → store (load the disk cache) → syncer → HTTP server → control-plane link
//! (background) → event stream → with `--kubernetes`, the Kubernetes mirror
//! (background; nothing waits for the API server) → `READY=1`.
//! Stop: `STOPPING=1` → HTTP server (in-flight and parked requests answered) →
//! event stream (signalled, not waited for while a read blocks) → Kubernetes mirror
//! (it writes to the store; the resource and its Secrets stay) → store close (report
//! journal checkpointed into the files) → link → syncer (final flush) → remove the
//! socket we created if it is still ours — all within `--shutdown-timeout`.
//!
//! Event signing keys: one shared `events::Verifier`, seeded from `--signing-key-file`
//! and updated by the link from every state response that carries `signing_keys`.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::config::{Config, ConfigError};
use super::error::CliError;
use super::sd_notify;
use crate::api::access::Access;
use crate::api::status::Status;
use crate::api::Api;
use crate::cp::client::{CpClient, CpConfig};
use crate::cp::link::{Link, LinkOptions};
use crate::cp::stream::{self, EventStreamHandle, StreamDeps, StreamOptions};
use crate::cp::syncer::{Syncer, SyncerHandle};
use crate::events::{KeySet, Verifier};
use crate::http::activation;
use crate::http::listen::{self, SocketClaim};
use crate::http::{Handler, Limits, Listener, Server, ServerConfig, ServerHandle, Waker};
use crate::kube::authn::{Authenticator, AuthnOptions};
use crate::kube::client::KubeClient;
use crate::kube::config::KubeConfig;
use crate::kube::mirror::{KubeDeps, KubeMirror, MirrorOptions};
use crate::kube::names::ResourceName;
use crate::pool::Pool;
use crate::secrets::Secrets;
use crate::store::{ChangeKind, Quota, StateLock, Store};
use crate::telemetry::health::LinkHealth;
use crate::telemetry::kubernetes::KubeHealth;
use crate::telemetry::stream::StreamMetrics;

/// A running daemon.
pub struct Daemon {
    server: ServerHandle,
    upstream: Arc<Pool>,
    store: Arc<Store>,
    syncer: SyncerHandle,
    link: Option<Link>,
    events: Option<EventStreamHandle>,
    kube: Option<KubeMirror>,
    /// The socket file we bound ourselves (removed at shutdown if it is still ours);
    /// `None` if systemd passed the socket.
    socket_claim: Option<SocketClaim>,
    /// One daemon per state folder, for as long as this one runs.
    _state_lock: StateLock,
    shutdown_timeout: Duration,
    pub socket: PathBuf,
    pub http_listen: Option<SocketAddr>,
}

impl Daemon {
    /// The start sequence (see the module comment). A failure after the socket was
    /// bound removes it again (the claim's `Drop`); no state file is written before the
    /// state folder is locked and the listeners are bound.
    pub fn start(config: Config) -> Result<Daemon, CliError> {
        protect_memory(config.allow_core_dumps);
        let client = control_plane_client(&config)?;
        let kube = kubernetes_client(&config)?;
        raise_fd_limit(config.max_connections);
        tune_allocator();
        // The state folder's lock first: a second daemon on it stops here, untouched.
        let state_lock = lock_state_folder(&config)?;
        // Listeners next: a bind failure must leave the state files untouched.
        let mut listeners = Listeners::take_or_bind(&config)?;
        let socket_claim = listeners.claim.take();
        let http_listen = listeners.http_listen();
        let store = Store::open(&config.state_dir())
            .map(Arc::new)
            .map_err(|e| CliError::Store(e.to_string()))?;

        apply_report_quota(&config, &store);
        let kube = kube.map(|(k, kube_client)| KubeParts::new(k, kube_client, &store));
        let upstream = upstream_pool(&config)?;
        let health = Arc::new(LinkHealth::new(client.is_some()));
        let syncer = Syncer::spawn(
            Arc::clone(&store),
            client.clone(),
            config.debounce,
            Arc::clone(&health),
        );
        let waker = wake_on_changes(&store, &syncer);
        let stream_metrics = Arc::new(StreamMetrics::new());
        let api = Arc::new(local_api(
            &config,
            &store,
            &health,
            &stream_metrics,
            client.clone(),
            &upstream,
            kube.as_ref().and_then(|k| k.authn.clone()),
        ));
        let server = serve(&config, listeners, &api)?;
        let _ = waker.set(server.waker());
        let _ = api.status.server.set(server.stats());

        let kube = kube.map(|k| {
            let options = MirrorOptions::from_env(config.reconcile_interval);
            k.start(client.clone(), &store, &api.status, options)
        });
        let (link, events) = match client {
            Some(client) => {
                let (link, events) =
                    follow_control_plane(&config, client, &store, &health, &stream_metrics);
                (Some(link), Some(events))
            }
            None => {
                log::warn!("no control plane configured: serving the disk cache offline; secrets answer 503, reports stay pending");
                (None, None)
            }
        };

        if let Err(e) = sd_notify::notify("READY=1") {
            log::warn!(error:% = e; "sd_notify READY=1 failed");
        }
        log::info!(
            socket = config.socket.display().to_string(),
            http_enabled = http_listen.is_some(),
            http_listen = http_listen.map(|a| a.to_string()).unwrap_or_default(),
            node_id = config.node_id.as_str(),
            control_plane = config.control_plane.as_deref().unwrap_or("none");
            "server started"
        );
        Ok(Daemon {
            server,
            upstream,
            store,
            syncer,
            link,
            events,
            kube,
            socket_claim,
            _state_lock: state_lock,
            shutdown_timeout: config.shutdown_timeout,
            socket: config.socket.clone(),
            http_listen,
        })
    }

    /// Stops everything within the shutdown timeout.
    pub fn shutdown(self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        if let Err(e) = sd_notify::notify("STOPPING=1") {
            log::warn!(error:% = e; "sd_notify STOPPING=1 failed");
        }
        log::info!("shutting down");
        self.server.shutdown(remaining(deadline));
        self.upstream.shutdown(remaining(deadline));
        if let Some(events) = self.events {
            events.shutdown(remaining(deadline));
        }
        if let Some(kube) = self.kube {
            kube.shutdown(remaining(deadline));
        }
        // No request can write any more: checkpoint the report journal into the files.
        self.store.close();
        if let Some(link) = self.link {
            link.shutdown(remaining(deadline));
        }
        self.syncer.shutdown(remaining(deadline));
        // Removes the socket only if the path still names the one bound here.
        drop(self.socket_claim);
        log::info!("stopped");
    }
}

/// The control-plane client, if a control plane is configured. Its configuration
/// errors are configuration errors (exit 2).
fn control_plane_client(config: &Config) -> Result<Option<Arc<CpClient>>, CliError> {
    let Some(url) = &config.control_plane else {
        return Ok(None);
    };
    let token = config
        .cp_token
        .clone()
        .ok_or_else(|| ConfigError::new("--cp-token-file", "no token for the control plane"))?;
    let mut cp = CpConfig::new(url, &config.node_id, token);
    cp.ca_file = config.ca_file.clone();
    let client =
        CpClient::new(cp).map_err(|e| ConfigError::new("--control-plane", e.to_string()))?;
    Ok(Some(Arc::new(client)))
}

/// With `--kubernetes`, the Kubernetes API client. It reads its token and CA now, so
/// an unusable file is a configuration error (exit 2) before anything is bound.
fn kubernetes_client(config: &Config) -> Result<Option<(KubeConfig, Arc<KubeClient>)>, CliError> {
    let Some(k) = &config.kubernetes else {
        return Ok(None);
    };
    let client = KubeClient::new(k).map_err(|e| ConfigError::new("--kubernetes", e.to_string()))?;
    Ok(Some((k.clone(), Arc::new(client))))
}

/// The Kubernetes mode's parts, made before the API (which takes the authenticator)
/// and started after the server.
struct KubeParts {
    config: KubeConfig,
    client: Arc<KubeClient>,
    health: Arc<KubeHealth>,
    /// The resource's name, shared by the mirror and the authenticator.
    resource: ResourceName,
    /// `None` when `--k8s-token-audience` is empty (TokenReview off).
    authn: Option<Arc<Authenticator>>,
}

impl KubeParts {
    fn new(config: KubeConfig, client: Arc<KubeClient>, store: &Arc<Store>) -> KubeParts {
        let resource = ResourceName::for_node(&config.node_id);
        let health = Arc::new(KubeHealth::new(&config.namespace, &resource.get()));
        let authn = config.token_audience.as_ref().map(|audience| {
            Arc::new(Authenticator::new(
                Arc::clone(&client),
                Arc::clone(&health),
                Arc::clone(store),
                audience,
                &config.namespace,
                &config.node_name,
                resource.clone(),
                AuthnOptions::default(),
            ))
        });
        KubeParts {
            config,
            client,
            health,
            resource,
            authn,
        }
    }

    /// Starts the mirror (and its watch); shows its health on the status pages. The
    /// secrets' ciphertext comes from the control plane, when there is one.
    fn start(
        self,
        cp: Option<Arc<CpClient>>,
        store: &Arc<Store>,
        status: &Status,
        options: MirrorOptions,
    ) -> KubeMirror {
        let _ = status.kube.set(Arc::clone(&self.health));
        let deps = KubeDeps {
            store: Arc::clone(store),
            client: self.client,
            cp,
            health: self.health,
            config: self.config,
            resource: self.resource,
        };
        KubeMirror::start(deps, options)
    }
}

/// The daemon's listeners: passed by systemd (socket activation) or bound here.
struct Listeners {
    unix: UnixListener,
    tcp: Option<TcpListener>,
    /// The socket file bound here (removed at shutdown); `None` if it was passed.
    claim: Option<SocketClaim>,
}

impl Listeners {
    /// A passed Unix socket replaces binding `--socket`, a passed TCP socket replaces
    /// `--http-listen`; extra passed sockets are ignored (with a warning).
    fn take_or_bind(config: &Config) -> Result<Listeners, CliError> {
        let mut unix = None;
        let mut tcp = None;
        for l in activation::listen_fds() {
            match l {
                Listener::Unix(u) if unix.is_none() => unix = Some(u),
                Listener::Tcp(t) if tcp.is_none() => tcp = Some(t),
                _ => log::warn!("ignoring an extra socket-activated listener"),
            }
        }
        let (unix, claim) = match unix {
            Some(u) => (u, None),
            None => {
                let (u, claim) =
                    listen::bind_unix(&config.socket).map_err(|e| CliError::Bind(e.to_string()))?;
                (u, Some(claim))
            }
        };
        // A TCP bind failure drops `claim`, which removes the socket bound just now.
        let tcp = match (tcp, config.http_listen) {
            (Some(t), _) => Some(t),
            (None, Some(addr)) => Some(
                listen::bind_tcp(&addr.to_string()).map_err(|e| CliError::Bind(e.to_string()))?,
            ),
            (None, None) => None,
        };
        Ok(Listeners { unix, tcp, claim })
    }

    /// The TCP listener's address, if there is one.
    fn http_listen(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }
}

/// Every published store change wakes the parked requests and, for reports, the
/// syncer. The server's waker exists only once it runs: the caller fills it in.
fn wake_on_changes(store: &Store, syncer: &SyncerHandle) -> Arc<OnceLock<Waker>> {
    let waker: Arc<OnceLock<Waker>> = Arc::new(OnceLock::new());
    let wake = Arc::clone(&waker);
    let notify = syncer.notifier();
    store.subscribe(Box::new(move |change| {
        if change.kind == ChangeKind::Reports {
            notify();
        }
        if let Some(w) = wake.get() {
            w.wake();
        }
    }));
    waker
}

/// The report quota from the flags; a cache already over it keeps every entry.
fn apply_report_quota(config: &Config, store: &Store) {
    store.set_report_quota(Quota {
        max_keys: config.max_report_keys,
        max_bytes: config.max_report_bytes,
    });
    let (keys, bytes, _) = store.report_usage();
    if keys > config.max_report_keys as u64 || bytes > config.max_report_bytes {
        log::warn!(keys = keys, bytes = bytes, max_keys = config.max_report_keys, max_bytes = config.max_report_bytes;
            "stored reports exceed the report quota: every entry is kept, new growth is refused");
    }
}

/// Calls that wait on the control plane run here, never on an HTTP worker. The queue
/// holds what the threads can finish within a couple of secret timeouts.
fn upstream_pool(config: &Config) -> Result<Arc<Pool>, CliError> {
    Pool::start(
        "upstream",
        config.upstream_workers,
        config.upstream_workers * 16,
    )
    .map(Arc::new)
    .map_err(|e| CliError::Start(format!("upstream pool: {e}")))
}

/// The request handler: routes, access rules, live secrets and the status pages.
fn local_api(
    config: &Config,
    store: &Arc<Store>,
    health: &Arc<LinkHealth>,
    stream_metrics: &Arc<StreamMetrics>,
    client: Option<Arc<CpClient>>,
    upstream: &Arc<Pool>,
    kube: Option<Arc<Authenticator>>,
) -> Api {
    let secrets_gid = Access::lookup_secrets_gid();
    if config.secret_auth && secrets_gid.is_none() {
        log::warn!("group plexd-secrets does not exist: only root may read secrets");
    }
    let secrets = Arc::new(Secrets::new(
        client,
        config.nsk.clone(),
        Arc::clone(health),
        config.secret_timeout,
    ));
    let mut status = Status::new(
        Arc::clone(store),
        Arc::clone(health),
        Arc::clone(stream_metrics),
        config.secret_auth,
    );
    status.max_connections = config.max_connections;
    let _ = status.upstream.set(upstream.stats());
    let _ = status.secrets.set(Arc::clone(&secrets));
    Api {
        store: Arc::clone(store),
        access: Access::new(config.http_token.clone(), config.secret_auth, secrets_gid)
            .with_kubernetes(kube),
        secrets,
        upstream: Arc::clone(upstream),
        status,
    }
}

/// Starts the HTTP server on the listeners with `api` as its handler.
fn serve(config: &Config, listeners: Listeners, api: &Arc<Api>) -> Result<ServerHandle, CliError> {
    let mut all = vec![Listener::Unix(listeners.unix)];
    all.extend(listeners.tcp.map(Listener::Tcp));
    let server_config = ServerConfig {
        workers: config.workers,
        max_connections: config.max_connections,
        max_body_memory: config.max_body_memory,
        limits: Limits {
            head_timeout: config.head_timeout,
            body_timeout: config.body_timeout,
            idle_timeout: config.idle_timeout,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    Server::start(server_config, all, Arc::clone(api) as Arc<dyn Handler>)
        .map_err(|e| CliError::Start(format!("HTTP server: {e}")))
}

/// Starts the state link (fetch and reconcile) and the event stream, sharing one
/// verifier seeded with the signing key file's key.
fn follow_control_plane(
    config: &Config,
    client: Arc<CpClient>,
    store: &Arc<Store>,
    health: &Arc<LinkHealth>,
    stream_metrics: &Arc<StreamMetrics>,
) -> (Link, EventStreamHandle) {
    let verifier = Arc::new(Verifier::new(config.signing_key.map(KeySet::new)));
    if config.signing_key.is_none() {
        log::warn!("no signing key file: events are rejected until the control plane's state response supplies signing keys; state arrives by reconciliation meanwhile");
    }
    let options = LinkOptions {
        reconcile_interval: Some(config.reconcile_interval),
        verifier: Some(Arc::clone(&verifier)),
        metrics: Some(Arc::clone(stream_metrics)),
        ..LinkOptions::default()
    };
    let link = Link::start(
        Arc::clone(store),
        Arc::clone(&client),
        Arc::clone(health),
        options,
    );
    let deps = StreamDeps {
        store: Arc::clone(store),
        client,
        verifier,
        health: Arc::clone(health),
        metrics: Arc::clone(stream_metrics),
        reconcile_now: Box::new(link.reconcile_trigger()),
    };
    let events = stream::start(deps, StreamOptions::from_env());
    (link, events)
}

/// Makes large buffers (request bodies, rendered reports) go back to the kernel when
/// they are freed. glibc raises its mmap threshold every time a large mapped block is
/// freed; after that, blocks of that size come from the heap arenas and their pages stay
/// in RSS. Fixing the threshold keeps every allocation of 128 KiB or more in a mapping
/// of its own, unmapped on free. (musl maps large allocations by itself.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Keeps secrets out of core files and away from debuggers of the same user: the
/// process is made non-dumpable (`PR_SET_DUMPABLE` 0: no core file, and no ptrace or
/// `/proc/PID/mem` for anyone but root) and its core size limit is 0 — unless
/// `--allow-core-dumps` asks to keep it debuggable.
pub fn protect_memory(allow_core_dumps: bool) {
    use nix::sys::resource::{setrlimit, Resource};
    if allow_core_dumps {
        log::warn!("--allow-core-dumps: the process stays dumpable; a core file or a debugger may see secret values, tokens and the node secret key");
        return;
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log::warn!(error:% = e; "cannot make the process non-dumpable");
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        log::warn!(error:% = e; "cannot set the core size limit to 0");
    }
}

/// Raises the soft open-file limit (up to the hard limit) so `max_connections` fits.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // `rlim_t` is 32 bits wide on 32-bit glibc (armv7 gnueabihf) and 64 bits elsewhere.
    let want =
        libc::rlim_t::try_from(max_connections.saturating_add(128)).unwrap_or(libc::rlim_t::MAX);
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = want.min(hard);
        if soft < target {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                log::warn!(error:% = e; "cannot raise the open-file limit");
            }
        }
        if hard < want {
            log::warn!(hard_limit = hard, max_connections = max_connections; "open-file hard limit is below --max-connections");
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Creates a missing `--data-dir` (and its parents, 0700, as plexd does) and locks its
/// state folder: one daemon per state folder, checked before anything in it is written.
fn lock_state_folder(config: &Config) -> Result<StateLock, CliError> {
    let dir = &config.data_dir;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CliError::Start(format!(
                "--data-dir {} exists and is not a folder",
                dir.display()
            )))
        }
        Err(_) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    CliError::Start(format!(
                        "cannot create the data folder {}: {e}",
                        dir.display()
                    ))
                })?;
            log::info!(data_dir:% = dir.display(); "created the data folder (0700)");
        }
    }
    StateLock::acquire(&config.state_dir()).map_err(|e| CliError::Start(e.to_string()))
}

/// SIGTERM/SIGINT delivered through a self-pipe, installed before start so an early
/// signal is not lost (it ends the wait as soon as the daemon is up).
pub struct SignalWait {
    read: UnixStream,
}

impl SignalWait {
    pub fn install() -> std::io::Result<SignalWait> {
        let (read, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write.try_clone()?)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write)?;
        Ok(SignalWait { read })
    }

    /// Blocks until a signal arrives.
    pub fn wait(mut self) -> std::io::Result<()> {
        use std::io::Read;
        let mut byte = [0u8; 1];
        loop {
            match self.read.read(&mut byte) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// `serve`: start, wait for a signal, stop.
pub fn run(config: Config) -> Result<(), CliError> {
    let signals =
        SignalWait::install().map_err(|e| CliError::Start(format!("signal handling: {e}")))?;
    let daemon = Daemon::start(config)?;
    // Reading the key files and starting moved the NSK and the tokens through frames
    // that are dead now: wipe them.
    crate::secrets::scrub_stack();
    signals
        .wait()
        .map_err(|e| CliError::Start(format!("signal handling: {e}")))?;
    daemon.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::test_child::{is_child, run_child};

    /// Runs alone in a child process: it changes the process's own attributes.
    #[test]
    fn child_protect_memory() {
        if !is_child() {
            return;
        }
        use nix::sys::resource::{getrlimit, Resource};
        let allow = std::env::var_os("ALLOW").is_some();
        super::protect_memory(allow);
        let dumpable = nix::sys::prctl::get_dumpable().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_CORE).unwrap();
        println!("dumpable={dumpable} core={soft}/{hard}");
    }

    #[test]
    fn the_process_is_not_dumpable_unless_core_dumps_are_allowed() {
        let out = run_child("cli::daemon::tests::child_protect_memory", |_| {});
        assert!(out.contains("dumpable=false core=0/0"), "{out}");
        let out = run_child("cli::daemon::tests::child_protect_memory", |c| {
            c.env("ALLOW", "1");
        });
        assert!(out.contains("dumpable=true"), "{out}");
    }
}
