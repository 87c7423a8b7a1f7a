//! The SSE parser against the WHATWG "event stream interpretation" rules, under every
//! chunking, plus a fuzz-style no-panic check.

use std::time::Duration;

use plexd_nodeapi::events::sse::{SseError, SseItem, SseParser, DEFAULT_MAX_EVENT_BYTES};

fn ev(event_type: &str, data: &str, id: &str) -> SseItem {
    SseItem::Event {
        event_type: event_type.to_owned(),
        data: data.to_owned(),
        id: id.to_owned(),
    }
}

fn msg(data: &str, id: &str) -> SseItem {
    ev("message", data, id)
}

/// Feeds the whole stream at once.
fn parse(bytes: &[u8]) -> (Vec<SseItem>, String) {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.feed(bytes, &mut out).unwrap();
    (out, p.last_event_id().to_owned())
}

/// Parses `bytes` whole, one byte at a time, and split at every position, and checks
/// all give the same items and last event ID.
fn parse_every_way(bytes: &[u8]) -> (Vec<SseItem>, String) {
    let whole = parse(bytes);
    let mut p = SseParser::default();
    let mut out = Vec::new();
    for b in bytes {
        p.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    assert_eq!((out, p.last_event_id().to_owned()), whole, "byte at a time");
    for split in 0..=bytes.len() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(&bytes[..split], &mut out).unwrap();
        p.feed(&[], &mut out).unwrap();
        p.feed(&bytes[split..], &mut out).unwrap();
        assert_eq!(
            (out, p.last_event_id().to_owned()),
            whole,
            "split at {split}"
        );
    }
    whole
}

#[test]
fn typical_stream() {
    let stream = b": keep-alive\n\nevent: node_state_updated\nid: 41\ndata: {\"a\":1}\n\n: ping\ndata: second\n\n";
    let (items, last) = parse_every_way(stream);
    assert_eq!(
        items,
        [
            SseItem::Comment,
            ev("node_state_updated", "{\"a\":1}", "41"),
            SseItem::Comment,
            msg("second", "41"),
        ]
    );
    assert_eq!(last, "41");
}

#[test]
fn whatwg_examples() {
    let (items, _) = parse_every_way(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(items, [msg("YHOO\n+2\n10", "")]);

    let (items, last) = parse_every_way(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n",
    );
    assert_eq!(
        items,
        [
            SseItem::Comment,
            msg("first event", "1"),
            msg("second event", "")
        ]
    );
    assert_eq!(last, "", "a bare `id` resets the last event ID");

    let (items, _) = parse_every_way(b"data\n\ndata\ndata\n\ndata:");
    assert_eq!(items, [msg("", ""), msg("\n", "")]);

    let (items, _) = parse_every_way(b"data:test\n\ndata: test\n\n");
    assert_eq!(items, [msg("test", ""), msg("test", "")]);
}

#[test]
fn line_endings_crlf_cr_lf_are_equivalent() {
    let lf = b"event: a\ndata: 1\ndata: 2\n\ndata: x\n\n".to_vec();
    let crlf: Vec<u8> = String::from_utf8(lf.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    let cr: Vec<u8> = String::from_utf8(lf.clone())
        .unwrap()
        .replace('\n', "\r")
        .into_bytes();
    let mixed = b"event: a\r\ndata: 1\rdata: 2\n\r\ndata: x\r\r".to_vec();
    let want = vec![ev("a", "1\n2", ""), msg("x", "")];
    for stream in [lf, crlf, cr, mixed] {
        assert_eq!(
            parse_every_way(&stream).0,
            want,
            "{:?}",
            String::from_utf8_lossy(&stream)
        );
    }
    // CR LF split across chunks is one line ending, not two (which would dispatch).
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.feed(b"data: a\r", &mut out).unwrap();
    p.feed(b"\ndata: b\r", &mut out).unwrap();
    p.feed(b"\n\r", &mut out).unwrap();
    p.feed(b"\n", &mut out).unwrap();
    assert_eq!(out, [msg("a\nb", "")]);
    // CR CR is a blank line.
    assert_eq!(parse(b"data: a\r\r").0, [msg("a", "")]);
}

#[test]
fn field_parsing_rules() {
    let (items, _) = parse_every_way(
        b"data:no space\ndata:  two spaces\ndata\ndata:\nunknown: x\nDATA: upper\ndata : spaced name\n\n",
    );
    assert_eq!(items, [msg("no space\n two spaces\n\n", "")]);
    // Event type applies to one event only; an empty `event:` means "message".
    let (items, _) = parse_every_way(b"event: a\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n");
    assert_eq!(items, [ev("a", "1", ""), msg("2", ""), msg("3", "")]);
    // The value keeps everything after the first colon.
    let (items, _) = parse_every_way(b"data: a:b: c\n\n");
    assert_eq!(items, [msg("a:b: c", "")]);
    // Event type without data is dropped with the event.
    let (items, _) = parse_every_way(b"event: lonely\n\ndata: d\n\n");
    assert_eq!(items, [msg("d", "")]);
}

#[test]
fn comments_are_reported() {
    let (items, _) = parse_every_way(b":\n: ping\n:x:y\ndata: a\n:mid-event\n\n");
    assert_eq!(
        items,
        [
            SseItem::Comment,
            SseItem::Comment,
            SseItem::Comment,
            SseItem::Comment,
            msg("a", "")
        ]
    );
}

#[test]
fn retry_only_with_ascii_digits() {
    let (items, _) = parse_every_way(
        b"retry: 1500\nretry: 12a\nretry:\nretry:  5\nretry: -1\nretry: 1.5\nretry: \xd9\xa3\nretry:0\nretry: 99999999999999999999999\n",
    );
    assert_eq!(
        items,
        [
            SseItem::Retry(Duration::from_millis(1500)),
            SseItem::Retry(Duration::ZERO)
        ]
    );
}

#[test]
fn id_persists_across_events_and_updates_without_data() {
    let (items, last) = parse_every_way(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\n");
    assert_eq!(items, [msg("a", "1"), msg("b", "1")]);
    assert_eq!(
        last, "2",
        "an id with no data still updates the last event ID"
    );

    // The last event ID only changes when the event is dispatched.
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.feed(b"id: 7\ndata: a\n\nid: 8\ndata: b\n", &mut out)
        .unwrap();
    assert_eq!(p.last_event_id(), "7");
    // A reconnect drops the half-received event, keeps "7", and the next stream's
    // events carry it until a new id arrives.
    p.reconnect();
    p.feed(b"data: c\n\nid: 9\ndata: d\n\n", &mut out).unwrap();
    assert_eq!(out, [msg("a", "7"), msg("c", "7"), msg("d", "9")]);
    assert_eq!(p.last_event_id(), "9");
}

#[test]
fn id_containing_nul_is_ignored() {
    let (items, last) = parse_every_way(b"id: good\ndata: a\n\nid: b\0d\ndata: b\n\n");
    assert_eq!(items, [msg("a", "good"), msg("b", "good")]);
    assert_eq!(last, "good");
    // NUL elsewhere is ordinary data.
    let (items, _) = parse_every_way(b"data: x\0y\n\n");
    assert_eq!(items, [msg("x\0y", "")]);
}

#[test]
fn leading_bom_stripped_once() {
    let (items, _) = parse_every_way(b"\xEF\xBB\xBFdata: a\n\n");
    assert_eq!(items, [msg("a", "")]);
    // A second BOM is part of the line, so the field name is not `data`.
    let (items, _) = parse_every_way(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n");
    assert_eq!(items, [msg("b", "")]);
    // A BOM later in the stream is not stripped either.
    let (items, _) = parse_every_way(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n");
    assert_eq!(items, [msg("a", "")]);
    // A partial BOM is ordinary (invalid UTF-8) content.
    let (items, _) = parse_every_way(b"\xEF\xBBdata: a\n\ndata: \xEF\xBB\n\n");
    assert_eq!(items, [msg("\u{FFFD}", "")]);
    // An immediately blank stream, and a BOM then a blank line.
    assert_eq!(parse_every_way(b"\n").0, []);
    assert_eq!(
        parse_every_way(b"\xEF\xBB\xBF\ndata: z\n\n").0,
        [msg("z", "")]
    );
    // After a reconnect the new stream may start with a BOM again.
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.feed(b"\xEF\xBB\xBFdata: 1\n\n", &mut out).unwrap();
    p.reconnect();
    p.feed(b"\xEF\xBB", &mut out).unwrap();
    p.feed(b"\xBFdata: 2\n\n", &mut out).unwrap();
    assert_eq!(out, [msg("1", ""), msg("2", "")]);
}

#[test]
fn invalid_utf8_is_replaced() {
    let (items, _) = parse_every_way(b"data: a\xffb\xe2\x98\n\ndata: \xe2\x98\x83\n\n");
    assert_eq!(items, [msg("a\u{FFFD}b\u{FFFD}", ""), msg("☃", "")]);
}

#[test]
fn unterminated_event_is_not_dispatched() {
    assert_eq!(parse(b"data: a\n").0, []);
    assert_eq!(parse(b"data: a").0, []);
}

#[test]
fn oversize_event_is_an_error() {
    let limit = 64;
    // Many data lines adding up past the limit.
    let mut p = SseParser::new(limit);
    let mut out = Vec::new();
    p.feed(b"data: ok\n\n", &mut out).unwrap();
    let mut big = Vec::new();
    for _ in 0..10 {
        big.extend_from_slice(b"data: 0123456789\n");
    }
    assert_eq!(
        p.feed(&big, &mut out),
        Err(SseError::EventTooLarge { limit })
    );
    assert_eq!(out, [msg("ok", "")], "items before the error are kept");
    // The parser stays failed until reconnect.
    assert!(p.feed(b"\n", &mut out).is_err());
    p.reconnect();
    p.feed(b"data: fine\n\n", &mut out).unwrap();
    assert_eq!(out.last(), Some(&msg("fine", "")));

    // One endless line, fed a byte at a time: `limit` bytes are buffered, the next
    // one is refused.
    let mut p = SseParser::new(limit);
    for _ in 0..limit {
        p.feed(b"x", &mut Vec::new()).unwrap();
    }
    assert_eq!(
        p.feed(b"x", &mut Vec::new()),
        Err(SseError::EventTooLarge { limit })
    );

    // An event under the limit passes: a 63-byte line, then 58 bytes of data.
    let mut p = SseParser::new(limit);
    let mut out = Vec::new();
    let line = format!("data: {}\n\n", "y".repeat(57));
    p.feed(line.as_bytes(), &mut out).unwrap();
    assert_eq!(out, [msg(&"y".repeat(57), "")]);
    assert_eq!(DEFAULT_MAX_EVENT_BYTES, 10 * 1024 * 1024);
    assert!(SseError::EventTooLarge { limit }.to_string().contains("64"));
}

#[test]
fn fuzz_random_bytes_never_panic() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let alphabet = b"data:event:id:retry: \r\n\n\n:0123\xEF\xBB\xBF\0\xff";
    for _ in 0..2_000 {
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 3 == 0 {
                    r as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        let whole = {
            let mut p = SseParser::new(128);
            let mut out = Vec::new();
            let r = p.feed(&bytes, &mut out);
            (out, r.is_ok())
        };
        let mut p = SseParser::new(128);
        let mut out = Vec::new();
        let mut ok = true;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = 1 + (next() % 7) as usize;
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            if p.feed(chunk, &mut out).is_err() {
                ok = false;
                break;
            }
        }
        if whole.1 && ok {
            assert_eq!(out, whole.0, "{bytes:?}");
        }
    }
}
