//! Shared by the decoder targets: a small spec and a reader over the bytes as a file.

use sealtrail_connectors::{Decoded, open_source};
use sealtrail_spec::Pipeline;
use std::io::Write;

pub fn pipeline(source_yaml: &str) -> Pipeline {
    let text = format!(
        "version: 1\npipeline: fuzz\nsources:\n  s:\n{source_yaml}\n    columns:\n      - {{ name: a, required: true }}\n      - {{ name: b, type: int64 }}\n      - {{ name: c, type: timestamp }}\nsinks:\n  o: {{ from: s, audience: internal, parquet: {{ path: out }} }}\nquarantine:\n  parquet: {{ path: q }}\n"
    );
    sealtrail_spec::parse_str(&text, std::path::Path::new("/fuzz/spec.yaml"))
        .expect("the fuzz spec compiles")
}

/// Decodes `data` fully; every record must be accounted for and every batch well-formed.
pub fn decode_all(p: &Pipeline, data: &[u8]) {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(data).expect("write");
    let path = f.path().display().to_string();
    let source = &p.sources[0];
    let mut r = open_source(source, vec![path], 7).expect("open");
    loop {
        match r.next_batch() {
            Ok(Some(Decoded { batch, malformed })) => {
                for row in 0..batch.len() {
                    for col in 0..batch.ncols() {
                        let _ = batch.get(row, col);
                    }
                }
                for q in &malformed {
                    assert!(!q.reasons.is_empty(), "a quarantined record without a reason");
                }
            }
            Ok(None) => break,
            // A file-level error (e.g. a header that does not fit) is a clean failure.
            Err(_) => break,
        }
    }
}
