//! The control plane's event stream: the SSE framer fed whole and in pieces (the
//! first byte picks the piece size) yields the same items and the same last event ID;
//! no event exceeds the parser's limit.
#![no_main]
use plexd_nodeapi::events::sse::{SseItem, SseParser};

const MAX: usize = 4096;

fn run(input: &[u8], step: usize) -> (Vec<SseItem>, bool, String) {
    let mut p = SseParser::new(MAX);
    let mut items = Vec::new();
    let mut failed = false;
    for piece in input.chunks(step) {
        if p.feed(piece, &mut items).is_err() {
            failed = true;
            break;
        }
    }
    (items, failed, p.last_event_id().to_owned())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, input.len().max(1));
    let pieces = run(input, usize::from(step).max(1));
    assert_eq!(whole, pieces);
    for item in &whole.0 {
        if let SseItem::Event { data, .. } = item {
            assert!(data.len() <= MAX);
        }
    }
});
