//! TLS for the HTTP client agents (ureq), on a rustls configuration built by the
//! caller: the system roots plus `--ca-file` for the control plane
//! (`client::tls_config`), the cluster CA alone for the Kubernetes API.
//!
//! ureq's own TLS support is not compiled in: it loads and parses the system trust
//! store when the first agent is built — even for an `http://` URL, and once more
//! beside our configuration for `https://` (about 8 ms of start-up each, and a second
//! copy of every root kept for the life of the process). An agent without a
//! configuration refuses `https://` instead of trusting anything by default.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// An agent builder whose `https://` connections use `tls` (none: `https://` fails).
pub fn agent_builder(tls: Option<&Arc<ClientConfig>>) -> ureq::AgentBuilder {
    ureq::AgentBuilder::new().tls_connector(Arc::new(Connector(tls.cloned())))
}

struct Connector(Option<Arc<ClientConfig>>);

impl ureq::TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let Some(config) = &self.0 else {
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
        let mut conn = ClientConnection::new(Arc::clone(config), name)
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
