//! Chunked request bodies: the incremental decoder fed whole and in pieces must agree.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plexd_nodeapi::http::fuzz::chunked(data);
});
