//! Arbitrary text as a pipeline spec: compile returns diagnostics, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sealtrail_spec::parse_str(s, std::path::Path::new("/fuzz/spec.yaml"));
});
