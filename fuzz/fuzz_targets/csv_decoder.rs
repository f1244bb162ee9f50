//! Arbitrary bytes as a CSV file: the decoder never panics, and every record it accepts or
//! quarantines is well-formed.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use std::sync::OnceLock;
    static P: OnceLock<sealtrail_spec::Pipeline> = OnceLock::new();
    let p = P.get_or_init(|| common::pipeline("    csv: { path: in.csv, header: true }"));
    common::decode_all(p, data);
});
