//! Report journal replay (`state/report.journal` after a crash or a hostile edit).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plexd_nodeapi::store::fuzz::journal(data);
});
