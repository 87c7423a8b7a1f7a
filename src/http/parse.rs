//! Request-head parsing (on `httparse`) and an incremental chunked-body decoder.
//!
//! Pure functions over byte slices: no sockets, no clocks. What a head means for the
//! connection (keep-alive, framing, `Expect`) is decided here; reading the body and
//! writing answers is the connection's job (`conn.rs`). Every rejection carries the
//! status the core answers with, and the connection is closed after it.

use std::mem::MaybeUninit;

use super::{Limits, Method, Span};

/// A request the core refuses; answered with `Response::error(status, message)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub status: u16,
    pub message: &'static str,
}

const fn reject(status: u16, message: &'static str) -> Reject {
    Reject { status, message }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed request head, borrowing the bytes it was parsed from. Its headers' places
/// were written to the `spans` given to `parse_head`.
#[derive(Debug)]
pub(crate) struct Head<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub http10: bool,
    pub keep_alive: bool,
    pub framing: Framing,
    pub expect_continue: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Most headers `httparse` is ever asked to hold; `Limits::max_headers` above this is capped.
const HEADER_SLOTS: usize = 128;

/// Parses a head at the start of `buf`. `Ok(None)`: incomplete, read more (the caller
/// enforces `max_head_bytes` on incomplete heads). `spans` is cleared, then holds where
/// each header sits in `buf`.
pub(crate) fn parse_head<'a>(
    buf: &'a [u8],
    limits: &Limits,
    spans: &mut Vec<Span>,
) -> Result<Option<Head<'a>>, Reject> {
    let mut slots: [MaybeUninit<httparse::Header<'a>>; HEADER_SLOTS] =
        [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    let n = limits.max_headers.clamp(1, HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..n]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(431, "too many request headers"))
        }
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => return Err(reject(400, "malformed request")),
    };
    if len > limits.max_head_bytes {
        return Err(reject(431, "request head too large"));
    }
    let http10 = req.version == Some(0);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let (path, query) = split_target(req.path.unwrap_or(""))?;

    spans.clear();
    let base = buf.as_ptr() as usize;
    let place = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        spans.push(Span {
            name: place(h.name.as_bytes()),
            value: place(h.value),
        });
        let value = h.value.trim_ascii();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(reject(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(reject(501, "unsupported Transfer-Encoding"));
            }
            transfer_encoding = Some(value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    let framing = match (transfer_encoding, content_length) {
        (Some(_), Some(_)) => return Err(reject(400, "both Content-Length and Transfer-Encoding")),
        (Some(te), None) if te.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), None) => return Err(reject(501, "unsupported Transfer-Encoding")),
        (None, Some(n)) if n > limits.max_body_bytes as u64 => {
            return Err(reject(413, "request body too large"))
        }
        // Within `max_body_bytes`, so it fits a `usize`.
        (None, Some(n)) => Framing::Length(n as usize),
        (None, None) => Framing::Length(0),
    };
    let keep_alive = !conn_close && (!http10 || conn_keep_alive);
    Ok(Some(Head {
        method,
        path,
        query,
        http10,
        keep_alive,
        framing,
        // 100 Continue is an HTTP/1.1 interim response; 1.0 clients never wait for it.
        expect_continue: expect_continue && !http10,
        len,
    }))
}

/// `httparse` says "version" both for `HTTP/3.0` and for garbage; answer 505 only when
/// the request line is otherwise well formed.
fn version_error(buf: &[u8]) -> Reject {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let mut parts = line.split(|&b| b == b' ');
    let well_formed = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(m), Some(t), Some(v), None)
            if !m.is_empty() && m.iter().all(u8::is_ascii_uppercase)
                && t.first() == Some(&b'/')
                && v.len() == 8 && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit()
    );
    if well_formed {
        reject(505, "HTTP version not supported")
    } else {
        reject(400, "malformed request")
    }
}

/// A `Content-Length` value as a `u64` on every CPU, so a length past a 32-bit `usize`
/// is still "too large" (413), not "invalid" (400).
fn parse_content_length(value: &[u8]) -> Result<u64, Reject> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(reject(400, "invalid Content-Length"));
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(reject(400, "invalid Content-Length"))
    })
}

/// Splits an origin-form (or absolute-form) target into path and query.
fn split_target(target: &str) -> Result<(&str, Option<&str>), Reject> {
    let target = if target.starts_with('/') || target == "*" {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    } else {
        return Err(reject(400, "malformed request target"));
    };
    Ok(match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    })
}

/// Longest chunk-size line extension or trailer section accepted.
const MAX_CHUNK_META: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { value: usize, digits: usize },
    Ext { value: usize },
    SizeLf { value: usize },
    Data(usize),
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    EndLf,
    Done,
}

/// Decodes a chunked body fed in pieces; keeps its state between feeds, so bytes are
/// looked at once however slowly they arrive.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    meta: usize,
    max: usize,
    pub body: Vec<u8>,
}

impl ChunkedDecoder {
    pub fn new(max_body: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
            meta: 0,
            max: max_body,
            body: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes from `input`; returns how many it used (fewer than given only
    /// when the body ended).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Reject> {
        const BAD: Reject = reject(400, "malformed chunked body");
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data(n) => {
                    let take = n.min(input.len() - i);
                    self.body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.state = if take == n {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(n - take)
                    };
                    continue;
                }
                ChunkState::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) => {
                        let value = value
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(d as usize))
                            .ok_or(reject(413, "request body too large"))?;
                        if value > self.max.saturating_sub(self.body.len()) {
                            return Err(reject(413, "request body too large"));
                        }
                        ChunkState::Size {
                            value,
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(BAD),
                    None if b == b';' || b == b' ' || b == b'\t' => ChunkState::Ext { value },
                    None if b == b'\r' => ChunkState::SizeLf { value },
                    None => return Err(BAD),
                },
                ChunkState::Ext { value } => {
                    self.meta += 1;
                    if self.meta > MAX_CHUNK_META || b == b'\n' {
                        return Err(BAD);
                    }
                    if b == b'\r' {
                        ChunkState::SizeLf { value }
                    } else {
                        ChunkState::Ext { value }
                    }
                }
                ChunkState::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => ChunkState::TrailerLineStart,
                    (b'\n', n) => ChunkState::Data(n),
                    _ => return Err(BAD),
                },
                ChunkState::DataCr if b == b'\r' => ChunkState::DataLf,
                ChunkState::DataLf if b == b'\n' => ChunkState::Size {
                    value: 0,
                    digits: 0,
                },
                ChunkState::DataCr | ChunkState::DataLf => return Err(BAD),
                ChunkState::TrailerLineStart if b == b'\r' => ChunkState::EndLf,
                ChunkState::TrailerLineStart | ChunkState::TrailerLine => {
                    self.meta += 1;
                    if self.meta > MAX_CHUNK_META {
                        return Err(reject(431, "chunked trailer too large"));
                    }
                    if b == b'\n' {
                        ChunkState::TrailerLineStart
                    } else {
                        ChunkState::TrailerLine
                    }
                }
                ChunkState::EndLf if b == b'\n' => ChunkState::Done,
                ChunkState::EndLf => return Err(BAD),
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head<'_>>, Reject> {
        parse_head(raw.as_bytes(), &Limits::default(), &mut Vec::new())
    }

    #[test]
    fn parses_target_headers_and_keep_alive() {
        let raw = "GET /v1/x?a=1&b=2 HTTP/1.1\r\nHost: h\r\nX-Y:  v  \r\n\r\nrest";
        let mut spans = Vec::new();
        let h = parse_head(raw.as_bytes(), &Limits::default(), &mut spans)
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/v1/x");
        assert_eq!(h.query, Some("a=1&b=2"));
        let headers = crate::http::Headers {
            head: raw.as_bytes(),
            spans: &spans,
        };
        assert_eq!(headers.get("x-y"), Some("v"));
        assert_eq!(headers.get("HOST"), Some("h"));
        assert_eq!(headers.len(), 2);
        assert!(h.keep_alive && !h.http10);
        assert_eq!(h.framing, Framing::Length(0));
        assert_eq!(
            h.len,
            "GET /v1/x?a=1&b=2 HTTP/1.1\r\nHost: h\r\nX-Y:  v  \r\n\r\n".len()
        );
    }

    #[test]
    fn connection_rules() {
        let h = |r: &str| head(r).unwrap().unwrap().keep_alive;
        assert!(!h("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!h("GET / HTTP/1.0\r\n\r\n"));
        assert!(h("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!h(
            "GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn partial_and_errors() {
        assert!(head("GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert_eq!(head("GET / HTTP/3.0\r\n\r\n").unwrap_err().status, 505);
        assert_eq!(head("PRI * HTTP/2.0\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            head("\x00\x01\x02 garbage\r\n\r\n").unwrap_err().status,
            400
        );
        assert_eq!(head("GET nope HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        let e = |r: &str| head(r).unwrap_err().status;
        assert_eq!(
            e("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(e("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), 400);
        assert_eq!(
            e("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(e("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"), 413);
        // Past a 32-bit usize: still too large, not malformed, on every CPU.
        assert_eq!(
            e("POST / HTTP/1.1\r\nContent-Length: 5000000000\r\n\r\n"),
            413
        );
        assert_eq!(
            e("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            e("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        let same = head("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(same.unwrap().unwrap().framing, Framing::Length(2));
    }

    #[test]
    fn absolute_form_target() {
        let h = head("GET http://host:8080/a/b?c HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.path, h.query), ("/a/b", Some("c")));
    }

    #[test]
    fn too_many_headers() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let raw = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_head(raw, &limits, &mut Vec::new())
                .unwrap_err()
                .status,
            431
        );
    }

    #[test]
    fn chunked_byte_by_byte_and_whole() {
        let wire = b"4\r\nWiki\r\n5;name=val\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut whole = ChunkedDecoder::new(1024);
        let used = whole.feed(wire).unwrap();
        assert!(whole.is_done());
        assert_eq!(&wire[used..], b"NEXT");
        assert_eq!(whole.body, b"Wikipedia in\r\n\r\nchunks.");

        let mut slow = ChunkedDecoder::new(1024);
        let mut i = 0;
        while !slow.is_done() {
            i += slow.feed(&wire[i..i + 1]).unwrap();
        }
        assert_eq!(i, used);
        assert_eq!(slow.body, whole.body);
    }

    #[test]
    fn chunked_errors() {
        let bad = |w: &[u8]| ChunkedDecoder::new(16).feed(w).unwrap_err().status;
        assert_eq!(bad(b"x\r\n"), 400);
        assert_eq!(bad(b"\r\n"), 400);
        assert_eq!(bad(b"3\r\nabcX"), 400);
        assert_eq!(bad(b"3\nabc"), 400);
        assert_eq!(bad(b"11\r\n"), 413);
        assert_eq!(bad(b"8\r\n12345678\r\n9\r\n"), 413);
        assert_eq!(bad(b"fffffffffffffffffffff\r\n"), 413);
    }
}
