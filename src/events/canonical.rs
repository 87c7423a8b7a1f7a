//! The exact bytes an event signature covers: what Go's `json.Marshal` produces for
//! `{"event_type":…,"event_id":…,"issued_at":…,"nonce":…,"payload":…}`.
//!
//! Go (1.22+) escapes strings with `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\u00xx`
//! for other control characters, and — HTML-safe mode, the default — `<`, `>`, `&`,
//! U+2028 and U+2029 as `\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029`. A
//! `time.Time` marshals as RFC3339Nano in its own offset (`Z` for UTC, fraction
//! without trailing zeros). A `json.RawMessage` payload is compacted (white space
//! outside strings removed) with the same HTML escaping applied, and otherwise kept
//! byte for byte: numbers, key order and existing escapes are never re-written, which
//! is why this is a hand-written state machine and not a round trip through
//! `serde_json::Value`. This module neither parses nor validates JSON: callers pass
//! text that `serde_json` already accepted (see [`crate::events::verify::Envelope`]).

use crate::timefmt::Timestamp;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The canonical bytes for the five signed fields. `issued_at` is the parsed
/// timestamp (its offset is kept); `payload` is valid JSON text.
pub fn canonical_bytes(
    event_type: &str,
    event_id: &str,
    issued_at: Timestamp,
    nonce: &str,
    payload: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + event_type.len() + event_id.len() + payload.len());
    out.extend_from_slice(b"{\"event_type\":");
    write_go_string(&mut out, event_type);
    out.extend_from_slice(b",\"event_id\":");
    write_go_string(&mut out, event_id);
    out.extend_from_slice(b",\"issued_at\":");
    write_go_string(&mut out, &issued_at.to_rfc3339_nano());
    out.extend_from_slice(b",\"nonce\":");
    write_go_string(&mut out, nonce);
    out.extend_from_slice(b",\"payload\":");
    compact_go(&mut out, payload);
    out.push(b'}');
    out
}

fn push_u00(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(b"\\u00");
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xf)]);
}

/// Appends `s` as a JSON string literal escaped exactly as Go's `encoding/json` does
/// in its default (HTML-safe) mode.
pub fn write_go_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut buf = [0u8; 4];
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            // Control characters, and the HTML-sensitive ones; all are ASCII.
            '\u{0}'..='\u{1f}' | '<' | '>' | '&' => push_u00(out, c as u8),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            _ => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
    out.push(b'"');
}

/// Appends valid JSON text `json` compacted as Go's `json.Compact` + HTML escaping
/// does when it marshals a `json.RawMessage`: space, tab, CR and LF outside strings
/// are dropped; `<`, `>`, `&`, U+2028 and U+2029 become `\u003c`, `\u003e`, `\u0026`,
/// `\u2028`, `\u2029` wherever they occur; every other byte is copied unchanged.
pub fn compact_go(out: &mut Vec<u8>, json: &str) {
    let mut in_string = false;
    let mut escaped = false;
    let mut buf = [0u8; 4];
    for c in json.chars() {
        match c {
            '<' | '>' | '&' => {
                push_u00(out, c as u8);
                escaped = false;
                continue;
            }
            '\u{2028}' => {
                out.extend_from_slice(b"\\u2028");
                escaped = false;
                continue;
            }
            '\u{2029}' => {
                out.extend_from_slice(b"\\u2029");
                escaped = false;
                continue;
            }
            _ => {}
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        } else if c == '"' {
            in_string = true;
        }
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::parse_rfc3339;

    fn go_string(s: &str) -> String {
        let mut out = Vec::new();
        write_go_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    fn compact(s: &str) -> String {
        let mut out = Vec::new();
        compact_go(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_like_go() {
        assert_eq!(go_string("plain"), r#""plain""#);
        assert_eq!(go_string("q\"b\\s"), r#""q\"b\\s""#);
        assert_eq!(go_string("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#);
        assert_eq!(
            go_string("\u{0}\u{1}\u{1f}\u{7f}"),
            "\"\\u0000\\u0001\\u001f\u{7f}\""
        );
        assert_eq!(go_string("<a&b>"), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(go_string("x\u{2028}y\u{2029}"), r#""x\u2028y\u2029""#);
        assert_eq!(
            go_string("Zürich ☃ 😀 \u{fffd}"),
            "\"Zürich ☃ 😀 \u{fffd}\""
        );
        assert_eq!(go_string("\u{1b}"), r#""\u001b""#);
    }

    #[test]
    fn compaction_keeps_text_but_not_space() {
        assert_eq!(
            compact(" { \"a b\" : [ 1 , 2.50 ,\n\t-0e+3 ] }\r\n"),
            r#"{"a b":[1,2.50,-0e+3]}"#
        );
        assert_eq!(
            compact(r#"{"k":"\" <x> \\"}"#),
            r#"{"k":"\" \u003cx\u003e \\"}"#
        );
        assert_eq!(compact(r#""\\" "#), r#""\\""#);
        assert_eq!(compact(r#""\u00e9\n\/""#), r#""\u00e9\n\/""#);
        assert_eq!(
            compact("\"a\u{2028}\u{2029} &\""),
            r#""a\u2028\u2029 \u0026""#
        );
        assert_eq!(
            compact("12345678901234567890123456789e-999"),
            "12345678901234567890123456789e-999"
        );
        assert_eq!(compact("null"), "null");
    }

    #[test]
    fn whole_canonical_form() {
        let t = parse_rfc3339("2026-03-01T13:59:30.500+02:00").unwrap();
        let got = canonical_bytes("t", "i<", t, "n\t", "[ 1 ]");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            r#"{"event_type":"t","event_id":"i\u003c","issued_at":"2026-03-01T13:59:30.5+02:00","nonce":"n\t","payload":[1]}"#
        );
    }
}
