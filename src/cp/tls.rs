//! TLS for the HTTP client agents (ureq), on a rustls configuration built by the
//! caller: the system roots plus `--ca-file` for the control plane
//! (`client::trust`, built at the first connection), the cluster CA alone for the
//! Kubernetes API.
//!
//! ureq's own TLS support is not compiled in: it loads and parses the system trust
//! store when the first agent is built — even for an `http://` URL, and once more
//! beside our configuration for `https://` (about 8 ms of start-up each, and a second
//! copy of every root kept for the life of the process). An agent without a
//! configuration refuses `https://` instead of trusting anything by default.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConfigBuilder, RootCertStore, StreamOwned, WantsVerifier,
};

/// The TLS configuration of a client: ready now, or built once, at the first
/// `https://` connection — loading the system trust store takes milliseconds that
/// the start should not wait for, on a thread that talks to the remote anyway.
#[derive(Clone)]
pub enum Trust {
    Ready(Arc<ClientConfig>),
    Deferred(Arc<Deferred>),
}

/// A configuration built on first use (see [`Trust::deferred`]).
pub struct Deferred {
    config: OnceLock<Arc<ClientConfig>>,
    build: Box<dyn Fn() -> Arc<ClientConfig> + Send + Sync>,
}

impl Trust {
    /// A configuration `build` makes at the first connection that needs it; every
    /// agent sharing this `Trust` then uses that one.
    pub fn deferred(build: impl Fn() -> Arc<ClientConfig> + Send + Sync + 'static) -> Trust {
        Trust::Deferred(Arc::new(Deferred {
            config: OnceLock::new(),
            build: Box::new(build),
        }))
    }

    fn config(&self) -> Arc<ClientConfig> {
        match self {
            Trust::Ready(config) => Arc::clone(config),
            Trust::Deferred(d) => Arc::clone(d.config.get_or_init(|| (d.build)())),
        }
    }
}

/// The start of every client configuration here: ring, TLS 1.2 and 1.3; roots next.
pub fn config_builder() -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, String> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))
}

/// The certificates of a PEM text as trust roots; at least one, each usable.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut io::BufReader::new(pem)) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no PEM certificates found".into());
    }
    Ok(roots)
}

/// An agent builder whose `https://` connections use `trust` (none: `https://` fails).
pub fn agent_builder(trust: Option<&Trust>) -> ureq::AgentBuilder {
    ureq::AgentBuilder::new().tls_connector(Arc::new(Connector(trust.cloned())))
}

struct Connector(Option<Trust>);

impl ureq::TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let Some(trust) = &self.0 else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "https is not configured for this client",
            )
            .into());
        };
        // The URL's host: an IPv6 literal comes in brackets.
        let host = dns_name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(dns_name);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host} is not a TLS server name: {e}"),
            )
        })?;
        let mut conn = ClientConnection::new(trust.config(), name)
            .map_err(|e| io::Error::other(format!("TLS setup: {e}")))?;
        // The whole handshake now, so that a certificate problem is a connect error.
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}

/// A TLS session over the agent's connection.
struct TlsStream(StreamOwned<ClientConnection, Box<dyn ureq::ReadWrite>>);

impl ureq::ReadWrite for TlsStream {
    /// The TCP socket underneath, on which the agent sets its timeouts.
    fn socket(&self) -> Option<&TcpStream> {
        self.0.get_ref().socket()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsStream")
    }
}
