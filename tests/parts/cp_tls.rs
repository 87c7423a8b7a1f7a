//! The control-plane client over TLS: `--ca-file` trust, refusal of an unknown CA.
//!
//! `tests/fixtures/test-ca.pem` is a throwaway test CA and `test-server.{pem,key}` a
//! certificate it signed for `localhost` and `127.0.0.1`; they protect nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use plexd_nodeapi::cp::client::{CpClient, CpConfig};
use zeroize::Zeroizing;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An HTTPS server answering every request with a small node state.
fn tls_server() -> SocketAddr {
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut &std::fs::read(fixture("test-server.pem")).unwrap()[..])
            .collect::<Result<_, _>>()
            .unwrap();
    let key =
        rustls_pemfile::private_key(&mut &std::fs::read(fixture("test-server.key")).unwrap()[..])
            .unwrap()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = br#"{"metadata":{"tls":"yes"}}"#;
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(body);
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

fn config(url: &str, ca: Option<PathBuf>) -> CpConfig {
    let mut cfg = CpConfig::new(url, "node-1", Zeroizing::new("t0ken".to_owned()));
    cfg.ca_file = ca;
    cfg
}

#[test]
fn ca_file_is_trusted() {
    let addr = tls_server();
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{}", addr.port());
        let client = CpClient::new(config(&url, Some(fixture("test-ca.pem")))).unwrap();
        let state = client.fetch_state().unwrap();
        assert_eq!(state.metadata.unwrap()["tls"], "yes");
    }
}

#[test]
fn unknown_ca_is_refused() {
    let addr = tls_server();
    let url = format!("https://localhost:{}", addr.port());
    let client = CpClient::new(config(&url, None)).unwrap();
    let err = client.fetch_state().unwrap_err();
    assert!(err.is_transport(), "{err:?}");
}

#[test]
fn an_agent_without_a_tls_configuration_refuses_https_and_trusts_nothing() {
    // The connector never falls back to a default trust store: without a
    // configuration an `https://` URL fails before a byte of TLS is sent.
    let addr = tls_server();
    let agent = plexd_nodeapi::cp::tls::agent_builder(None).build();
    let err = agent
        .get(&format!("https://127.0.0.1:{}/", addr.port()))
        .call()
        .unwrap_err();
    assert!(err.to_string().contains("https is not configured"), "{err}");
}

#[test]
fn an_unusable_ca_file_is_refused_when_the_client_is_made() {
    // The system roots wait for the first connection; `--ca-file` is checked at once,
    // so a bad one stops the start instead of the first fetch.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"no certificates here\n").unwrap();
    let url = "https://localhost:1";
    for (ca, says) in [
        (empty, "no PEM certificates found"),
        (dir.path().join("missing.pem"), "No such file"),
    ] {
        let err = CpClient::new(config(url, Some(ca))).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
}
