//! A minimal HTTP/1.1 client for the daemon's own Unix socket, used by the `state`
//! command: one request per connection (`Connection: close`), whole response in memory.
//!
//! It is not a general HTTP client: no TLS, no redirects, no chunked uploads.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent a malformed response")]
    Malformed,
}

/// A response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` field of a JSON error body, or the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned())
    }
}

pub struct LocalClient {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl LocalClient {
    pub fn new(socket: &Path) -> LocalClient {
        LocalClient {
            socket: socket.to_owned(),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Read timeout per response (`None` waits forever, for long polls).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> LocalClient {
        self.timeout = timeout;
        self
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ClientResponse, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        stream.set_read_timeout(self.timeout)?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        stream.write_all(&bytes)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_response(&raw, method == "HEAD")
    }
}

fn parse_response(raw: &[u8], head_only: bool) -> Result<ClientResponse, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(ClientError::Malformed),
    };
    let status = resp.code.ok_or(ClientError::Malformed)?;
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let rest = &raw[head_len..];
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match length {
        _ if head_only => Vec::new(),
        Some(n) if n <= rest.len() => rest[..n].to_vec(),
        Some(_) => return Err(ClientError::Malformed),
        None => rest.to_vec(),
    };
    Ok(ClientResponse {
        status,
        headers,
        body,
    })
}
