//! The `serve` lifecycle: bind, load the cache, start the threads, wait for a signal,
//! shut down in order. This is the only module that knows every other one; it owns
//! the wiring and nothing else (no request handling, no file formats).
//!
//! Start: listeners (socket activation or bind) → store (load the disk cache) →
//! syncer → HTTP server → control-plane link (background) → event stream → `READY=1`.
//! Stop: `STOPPING=1` → HTTP server (in-flight and parked requests answered) →
//! event stream (signalled, not waited for while a read blocks) → store close (report
//! journal checkpointed into the files) → link → syncer (final flush) → remove the
//! socket we created — all within `--shutdown-timeout`.
//!
//! Event signing keys: one shared `events::Verifier`, seeded from `--signing-key-file`
//! and updated by the link from every state response that carries `signing_keys`.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::api::access::Access;
use crate::api::secrets::SecretSource;
use crate::api::status::Status;
use crate::api::Api;
use crate::config::{Config, ConfigError};
use crate::cp::client::{CpClient, CpConfig};
use crate::cp::health::LinkHealth;
use crate::cp::link::{Link, LinkOptions};
use crate::cp::stream::{self, EventStreamHandle, StreamDeps, StreamOptions};
use crate::cp::stream_metrics::StreamMetrics;
use crate::cp::syncer::{Syncer, SyncerHandle};
use crate::events::{KeySet, PublicKey, Verifier};
use crate::http::{Listener, Server, ServerConfig, ServerHandle, Waker};
use crate::kube::client::KubeClient;
use crate::kube::health::KubeHealth;
use crate::kube::mirror::{KubeDeps, KubeMirror, MirrorOptions};
use crate::kube::names::{resource_name, ResourceName};
use crate::listen;
use crate::store::{ChangeKind, Store};
use crate::systemd;

/// Why the daemon could not start. `exit_code` is what the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Bind(String),
    #[error("cannot load the state cache: {0}")]
    Store(String),
    #[error("cannot start: {0}")]
    Start(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// A running daemon.
pub struct Daemon {
    server: ServerHandle,
    store: Arc<Store>,
    syncer: SyncerHandle,
    link: Option<Link>,
    events: Option<EventStreamHandle>,
    kube: Option<KubeMirror>,
    /// The socket file we bound ourselves (removed at shutdown); `None` if inherited.
    own_socket: Option<PathBuf>,
    shutdown_timeout: Duration,
    pub socket: PathBuf,
    pub http_listen: Option<std::net::SocketAddr>,
}

impl Daemon {
    pub fn start(config: Config) -> Result<Daemon, DaemonError> {
        let client = match &config.control_plane {
            Some(url) => {
                let token = config.cp_token.clone().ok_or_else(|| {
                    ConfigError::new("--cp-token-file", "no token for the control plane")
                })?;
                let mut cp = CpConfig::new(url, &config.node_id, token);
                cp.ca_file = config.ca_file.clone();
                let client = CpClient::new(cp)
                    .map_err(|e| ConfigError::new("--control-plane", e.to_string()))?;
                Some(Arc::new(client))
            }
            None => None,
        };

        // The Kubernetes client reads its token and CA now: a bad file is a
        // configuration error, before anything is bound.
        let kube_client = match &config.kubernetes {
            Some(k) => {
                Some(Arc::new(KubeClient::new(k).map_err(|e| {
                    ConfigError::new("--kubernetes", e.to_string())
                })?))
            }
            None => None,
        };

        raise_fd_limit(config.max_connections);

        // Listeners first: a bind failure must leave the disk untouched.
        let mut unix = None;
        let mut tcp = None;
        for l in systemd::listen_fds() {
            match l {
                Listener::Unix(u) if unix.is_none() => unix = Some(u),
                Listener::Tcp(t) if tcp.is_none() => tcp = Some(t),
                _ => log::warn!("ignoring an extra socket-activated listener"),
            }
        }
        let own_socket = unix.is_none().then(|| config.socket.clone());
        let unix = match unix {
            Some(u) => u,
            None => {
                listen::bind_unix(&config.socket).map_err(|e| DaemonError::Bind(e.to_string()))?
            }
        };
        let tcp = match (tcp, config.http_listen) {
            (Some(t), _) => Some(t),
            (None, Some(addr)) => Some(listen::bind_tcp(&addr.to_string()).map_err(|e| {
                remove_socket(own_socket.as_ref());
                DaemonError::Bind(e.to_string())
            })?),
            (None, None) => None,
        };
        let http_listen = tcp.as_ref().and_then(|t| t.local_addr().ok());

        let store = match Store::open(&config.state_dir()) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                remove_socket(own_socket.as_ref());
                return Err(DaemonError::Store(e.to_string()));
            }
        };

        let health = Arc::new(LinkHealth::new(client.is_some()));
        let syncer = Syncer::spawn(
            Arc::clone(&store),
            client.clone(),
            config.debounce,
            Arc::clone(&health),
        );

        // Changes wake parked requests and, for reports, the syncer. The waker exists
        // only once the server runs, so it is filled in below.
        let waker: Arc<OnceLock<Waker>> = Arc::new(OnceLock::new());
        {
            let waker = Arc::clone(&waker);
            let notify = syncer.notifier();
            store.subscribe(Box::new(move |change| {
                if change.kind == ChangeKind::Reports {
                    notify();
                }
                if let Some(w) = waker.get() {
                    w.wake();
                }
            }));
        }

        let status = Status::new(Arc::clone(&store), Arc::clone(&health), config.secret_auth);
        let api = Arc::new(Api {
            store: Arc::clone(&store),
            access: Access::new(
                config.http_token.clone(),
                config.secret_auth,
                Access::lookup_secrets_gid(),
            ),
            secrets: SecretSource {
                client: client.clone(),
                nsk: config.nsk.clone(),
                health: Arc::clone(&health),
            },
            status,
        });
        if config.secret_auth && Access::lookup_secrets_gid().is_none() {
            log::warn!("group plexd-secrets does not exist: only root may read secrets");
        }

        let mut listeners = vec![Listener::Unix(unix)];
        listeners.extend(tcp.map(Listener::Tcp));
        let server_config = ServerConfig {
            workers: config.workers,
            max_connections: config.max_connections,
            ..ServerConfig::default()
        };
        let server = Server::start(
            server_config,
            listeners,
            Arc::clone(&api) as Arc<dyn crate::http::Handler>,
        )
        .map_err(|e| {
            remove_socket(own_socket.as_ref());
            DaemonError::Start(format!("HTTP server: {e}"))
        })?;
        let _ = waker.set(server.waker());
        let _ = api.status.server.set(server.stats());

        let verifier = Arc::new(Verifier::new(file_keys(config.signing_key.as_deref())));
        let stream_metrics = Arc::new(StreamMetrics::new());
        let _ = api
            .status
            .extra
            .set(Arc::clone(&stream_metrics) as Arc<dyn crate::api::status::ExtraMetrics>);
        if client.is_some() && config.signing_key.is_none() {
            log::warn!("no signing key file: events are rejected until the control plane's state response supplies signing keys; state arrives by reconciliation meanwhile");
        }
        let kube = match (&config.kubernetes, kube_client) {
            (Some(k), Some(kube_client)) => {
                let health = Arc::new(KubeHealth::new(&k.namespace, &resource_name(&k.node_id)));
                let _ = api.status.kube.set(Arc::clone(&health));
                let deps = KubeDeps {
                    store: Arc::clone(&store),
                    client: kube_client,
                    cp: client.clone(),
                    health,
                    config: k.clone(),
                    resource: ResourceName::for_node(&k.node_id),
                };
                Some(KubeMirror::start(
                    deps,
                    MirrorOptions::from_env(config.reconcile_interval),
                ))
            }
            _ => None,
        };
        let mut events = None;
        let link = client.map(|c| {
            let options = LinkOptions {
                reconcile_interval: Some(config.reconcile_interval),
                verifier: Some(Arc::clone(&verifier)),
                metrics: Some(Arc::clone(&stream_metrics)),
                ..LinkOptions::default()
            };
            let link = Link::start(
                Arc::clone(&store),
                Arc::clone(&c),
                Arc::clone(&health),
                options,
            );
            let deps = StreamDeps {
                store: Arc::clone(&store),
                client: c,
                verifier: Arc::clone(&verifier),
                health: Arc::clone(&health),
                metrics: Arc::clone(&stream_metrics),
                reconcile_now: Box::new(link.reconcile_trigger()),
            };
            events = Some(stream::start(deps, StreamOptions::from_env()));
            link
        });
        if config.control_plane.is_none() {
            log::warn!("no control plane configured: serving the disk cache offline; secrets answer 503, reports stay pending");
        }

        if let Err(e) = systemd::notify("READY=1") {
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
            store,
            syncer,
            link,
            events,
            kube,
            own_socket,
            shutdown_timeout: config.shutdown_timeout,
            socket: config.socket.clone(),
            http_listen,
        })
    }

    /// Stops everything within the shutdown timeout.
    pub fn shutdown(self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        if let Err(e) = systemd::notify("STOPPING=1") {
            log::warn!(error:% = e; "sd_notify STOPPING=1 failed");
        }
        log::info!("shutting down");
        self.server.shutdown(remaining(deadline));
        if let Some(events) = self.events {
            events.shutdown(remaining(deadline));
        }
        // The mirror writes to the store (imports): stop it before the store closes.
        // The resource and its Secrets stay.
        if let Some(kube) = self.kube {
            kube.shutdown(remaining(deadline));
        }
        // No request can write any more: checkpoint the report journal into the files.
        self.store.close();
        if let Some(link) = self.link {
            link.shutdown(remaining(deadline));
        }
        self.syncer.shutdown(remaining(deadline));
        remove_socket(self.own_socket.as_ref());
        log::info!("stopped");
    }
}

/// The signing key file's key, if one was configured and it parses.
fn file_keys(key: Option<&str>) -> Option<KeySet> {
    let key = key?;
    match PublicKey::from_base64(key) {
        Ok(k) => Some(KeySet::new(k)),
        Err(e) => {
            log::warn!(error:% = e; "signing key file unusable; events are accepted only once the control plane supplies keys");
            None
        }
    }
}

/// Raises the soft open-file limit (up to the hard limit) so `max_connections` fits.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = max_connections as u64 + 128;
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

fn remove_socket(path: Option<&PathBuf>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
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
pub fn run(config: Config) -> Result<(), DaemonError> {
    let signals =
        SignalWait::install().map_err(|e| DaemonError::Start(format!("signal handling: {e}")))?;
    let daemon = Daemon::start(config)?;
    signals
        .wait()
        .map_err(|e| DaemonError::Start(format!("signal handling: {e}")))?;
    daemon.shutdown();
    Ok(())
}
