//! Shared by the decoder targets: a small spec and a reader over the bytes as a file.

use sealtrail_connectors::{Decoded, open_source, open_source_skipping};
use sealtrail_spec::Pipeline;
use std::io::Write;

pub fn pipeline(source_yaml: &str) -> Pipeline {
    let text = format!(
        "version: 1\npipeline: fuzz\nsources:\n  s:\n{source_yaml}\n    columns:\n      - {{ name: a, required: true }}\n      - {{ name: b, type: int64 }}\n      - {{ name: c, type: timestamp }}\n      - {{ name: d, type: \"decimal(20,4)\" }}\nsinks:\n  o: {{ from: s, audience: internal, parquet: {{ path: out }} }}\nquarantine:\n  parquet: {{ path: q }}\n"
    );
    sealtrail_spec::parse_str(&text, std::path::Path::new("/fuzz/spec.yaml"))
        .expect("the fuzz spec compiles")
}

/// Decodes `data` fully; every record must be accounted for and every batch well-formed.
#[allow(dead_code)] // not every target decodes bytes of its own
pub fn decode_all(p: &Pipeline, data: &[u8]) {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(data).expect("write");
    let source = &p.sources[0];
    let r = open_source(source, vec![f.path().display().to_string()], 7).expect("open");
    drain(r);
    // Half the inputs again as a file that grew: the records of a prefix ending with a line
    // break (where the first byte points) read past, as a run reads a grown file.
    if data.first().is_some_and(|b| b % 2 == 1) {
        let at = usize::from(data[0]) * data.len() / 256;
        if let Some(nl) = data[at..].iter().position(|&b| b == b'\n') {
            let skip = (at + nl + 1) as u64;
            let skips = sealtrail_connectors::SkipLoaded::from([(f.path().to_path_buf(), skip)]);
            let r = open_source_skipping(source, vec![f.path().display().to_string()], skips, 7)
                .expect("open");
            drain(r);
        }
    }
}

/// Decodes the file at `path` fully, as [`decode_all`] does, except that the file may fail to
/// open (a damaged Parquet footer is a clean failure).
#[allow(dead_code)] // not every target reads a file of its own
pub fn decode_file(p: &Pipeline, path: &std::path::Path) {
    if let Ok(r) = open_source(&p.sources[0], vec![path.display().to_string()], 7) {
        drain(r);
    }
}

fn drain(mut r: Box<dyn sealtrail_connectors::SourceReader>) {
    loop {
        match r.next_batch() {
            Ok(Some(Decoded { batch, malformed })) => {
                for row in 0..batch.len() {
                    for col in 0..batch.ncols() {
                        let _ = batch.get(row, col);
                    }
                }
                for q in &malformed {
                    assert!(
                        !q.reasons.is_empty(),
                        "a quarantined record without a reason"
                    );
                }
            }
            Ok(None) => break,
            // A file-level error (e.g. a header that does not fit) is a clean failure.
            Err(_) => break,
        }
    }
}
