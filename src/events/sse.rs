//! An incremental Server-Sent Events parser following the WHATWG HTML standard's
//! "event stream interpretation".
//!
//! Bytes may arrive in any chunking, down to one byte at a time. Lines end in CRLF,
//! LF or CR (a CR at the end of one chunk followed by LF at the start of the next is
//! one line ending); one leading UTF-8 byte order mark is skipped; invalid UTF-8 is
//! replaced by U+FFFD. Fields: `event`, `data` (several lines joined by `\n`), `id`
//! (ignored if it contains NUL; kept across events and across [`SseParser::reconnect`]),
//! `retry` (ASCII digits only); `:` lines are comments, reported as [`SseItem::Comment`]
//! so the caller can count keep-alives; other fields are ignored. A blank line
//! dispatches; an event with no data is not dispatched, though its `id` still counts.
//! A single event (its data plus the line being read) larger than the configured limit
//! is an error.
//!
//! It does no I/O, knows nothing about reconnect timing or HTTP, and does not look
//! inside `data`.

use std::time::Duration;

/// Default cap on one event's size.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 10 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Something the stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event. `event_type` is `"message"` unless an `event:` field set it;
    /// `id` is the last event ID in force when it was dispatched.
    Event {
        event_type: String,
        data: String,
        id: String,
    },
    /// A valid `retry:` field: the new reconnection time.
    Retry(Duration),
    /// A `:` comment line (typically a keep-alive).
    Comment,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// The stream is unusable from here on: drop the connection, then call
    /// [`SseParser::reconnect`] before feeding a new stream.
    #[error("server-sent event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Parser state for one event stream (and its reconnections).
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The current, unterminated line (while `at_start`, the BOM bytes matched so far).
    line: Vec<u8>,
    at_start: bool,
    after_cr: bool,
    failed: bool,
    data: String,
    event_type: String,
    id_buffer: String,
    last_event_id: String,
}

impl SseParser {
    /// A parser refusing events larger than `max_event_bytes`
    /// (see [`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            at_start: true,
            after_cr: false,
            failed: false,
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
        }
    }

    /// The last event ID as of the last dispatch (blank line): what to send as
    /// `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Starts a new stream (after a reconnect): drops any partial line or event and
    /// clears an error, keeps the last event ID, and expects a possible BOM again.
    pub fn reconnect(&mut self) {
        self.line.clear();
        self.at_start = true;
        self.after_cr = false;
        self.failed = false;
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
    }

    /// Parses `bytes`, appending what they complete to `out`. Items completed before an
    /// error are still appended.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseItem>) -> Result<(), SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        let mut rest = bytes;
        while self.at_start {
            let Some((&b, tail)) = rest.split_first() else {
                return Ok(());
            };
            if BOM.get(self.line.len()) == Some(&b) {
                self.line.push(b);
                rest = tail;
                if self.line.len() == BOM.len() {
                    self.line.clear();
                    self.at_start = false;
                }
            } else {
                // Not a BOM: the bytes matched so far are ordinary line content.
                self.at_start = false;
            }
        }
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.append(rest)?;
                    break;
                }
                Some(end) => {
                    self.append(&rest[..end])?;
                    self.after_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                    self.process_line(out)?;
                }
            }
        }
        Ok(())
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    fn fail(&mut self) -> SseError {
        self.failed = true;
        self.line = Vec::new();
        self.data = String::new();
        self.event_type.clear();
        self.too_large()
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        let size = self.line.len() + bytes.len() + self.data.len() + self.event_type.len();
        if size > self.max_event_bytes {
            return Err(self.fail());
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, out: &mut Vec<SseItem>) -> Result<(), SseError> {
        let mut line = std::mem::take(&mut self.line);
        let result = self.interpret(&line, out);
        line.clear();
        if !self.failed {
            self.line = line;
        }
        result
    }

    fn interpret(&mut self, line: &[u8], out: &mut Vec<SseItem>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            out.push(SseItem::Comment);
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => self.event_type = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                if self.data.len() + self.event_type.len() > self.max_event_bytes {
                    return Err(self.fail());
                }
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer = String::from_utf8_lossy(value).into_owned();
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All ASCII digits, so only an overflow can fail; it is ignored.
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    out.push(SseItem::Retry(Duration::from_millis(ms)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event_type = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_owned(),
            t => t,
        };
        out.push(SseItem::Event {
            event_type,
            data,
            id: self.id_buffer.clone(),
        });
    }
}

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::new(DEFAULT_MAX_EVENT_BYTES)
    }
}
