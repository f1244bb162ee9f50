//! Arbitrary bytes as a CSV file in a legacy encoding or UTF-16 (the first byte picks it): the
//! decoder never panics, and every record it accepts or quarantines is well-formed.
#![no_main]

#[path = "common.rs"]
mod common;

const ENCODINGS: [&str; 8] = [
    "windows-1252",
    "shift_jis",
    "gb18030",
    "big5",
    "euc-kr",
    "euc-jp",
    "utf-16le",
    "utf-16be",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use std::sync::OnceLock;
    static P: OnceLock<Vec<sealtrail_spec::Pipeline>> = OnceLock::new();
    let specs = P.get_or_init(|| {
        ENCODINGS
            .iter()
            .map(|e| {
                common::pipeline(&format!(
                    "    csv: {{ path: in.csv, header: true, encoding: {e} }}"
                ))
            })
            .collect()
    });
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    common::decode_all(&specs[first as usize % specs.len()], rest);
});
