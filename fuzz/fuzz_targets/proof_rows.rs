//! Arbitrary bytes as what a proof bundle carries: a row in row format 2 under columns taken
//! from the input, and the whole bundle as JSON checked against a key. Refused or verified,
//! never a panic.
#![no_main]

use sealtrail_ledger::{custody, note::NoteSigner, row};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks how many columns; the next ones their types.
    const TYPES: [&str; 8] = [
        "bool",
        "int",
        "string",
        "binary",
        "date",
        "decimal(2)",
        "list<string>",
        "float",
    ];
    let n = data.first().map_or(0, |b| (b % 5) as usize);
    let cols: Vec<(String, String)> = (0..n)
        .map(|i| {
            let t = data.get(1 + i).map_or(0, |b| *b as usize % TYPES.len());
            (format!("c{i}"), TYPES[t].to_string())
        })
        .collect();
    let rest = data.get(1 + n..).unwrap_or_default();
    let mut bytes = row::ROW_TAG.to_vec();
    bytes.extend_from_slice(&row::schema_digest(
        cols.iter().map(|(a, b)| (a.as_str(), b.as_str())),
    ));
    bytes.extend_from_slice(rest);
    if let Ok(values) = row::parse(&bytes, &cols) {
        for v in values {
            let _ = (row::string(v), row::strings(v));
        }
    }
    let _ = row::parse(data, &cols);
    if let Ok(b) = serde_json::from_slice::<custody::Bundle>(data) {
        if let Ok(signer) = NoteSigner::from_seed("fuzz", &[7; 32]) {
            let _ = custody::verify(&b, &signer.verifier());
        }
    }
});
