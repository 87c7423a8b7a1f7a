//! Request heads as they arrive on a socket: `http::parse::parse_head` and what a
//! handler reads from the parsed request (headers, percent-decoded query values).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plexd_nodeapi::http::fuzz::head(data);
});
