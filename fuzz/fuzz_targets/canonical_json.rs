//! The bytes an event signature covers (Go's `json.Marshal`): for any text serde_json
//! accepts, the compacted payload is valid JSON with the same value, has no white space
//! outside strings and no raw `<`, `>`, `&`, U+2028, U+2029; Go-escaped strings read
//! back as themselves.
#![no_main]
use plexd_nodeapi::events::canonical::{compact_go, write_go_string};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut escaped = Vec::new();
    write_go_string(&mut escaped, text);
    let back: String = serde_json::from_slice(&escaped).expect("a Go-escaped string is JSON");
    assert_eq!(back, text);
    assert!(!escaped.iter().any(|b| matches!(b, b'<' | b'>' | b'&')));

    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return;
    }
    let mut out = Vec::new();
    compact_go(&mut out, text);
    let compact = std::str::from_utf8(&out).expect("compacted JSON is UTF-8");
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let again: serde_json::Value = serde_json::from_str(compact).expect("compacted JSON parses");
    assert_eq!(value, again);
    assert!(!compact.contains(['<', '>', '&', '\u{2028}', '\u{2029}']));
});
