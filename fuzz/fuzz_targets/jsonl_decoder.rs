//! Arbitrary bytes as a JSON Lines file: the decoder never panics.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use std::sync::OnceLock;
    static P: OnceLock<sealtrail_spec::Pipeline> = OnceLock::new();
    let p = P.get_or_init(|| common::pipeline("    jsonl: { path: in.jsonl }"));
    common::decode_all(p, data);
});
