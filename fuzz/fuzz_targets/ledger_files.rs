//! A ledger folder as sealtrail writes it, damaged by the fuzzer (bytes flipped in its
//! checkpoint, entry bundles and hash tiles, a file cut short): `verify` never panics, and never
//! accepts a tree whose bytes differ from what was written.
#![no_main]

use sealtrail_ledger::entry::Event;
use sealtrail_ledger::log::{LogWriter, OpenMode};
use sealtrail_ledger::note::NoteSigner;
use sealtrail_ledger::tiles::{self, TileKind};
use sealtrail_ledger::verify::verify;
use std::path::PathBuf;
use std::sync::OnceLock;

const ORIGIN: &str = "fuzz.example/ledger";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[9; 32]).expect("valid seed")
}

/// The files of a valid tree of 600 entries (two full bundles and a partial one, full and
/// partial level-0 tiles, a partial level-1 tile), relative path and bytes.
fn valid_files() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut w = LogWriter::open(dir.path(), ORIGIN, signer(), OpenMode::FailClosed).expect("open");
    let size = 600u64;
    let mut i = 0;
    while i < size {
        let k = 37.min(size - i);
        w.append(
            (i..i + k)
                .map(|j| Event::RunEnded {
                    run_id: format!("run-{j}"),
                    rows_in: j,
                    rows_loaded: j,
                    rows_quarantined: 0,
                })
                .collect(),
        )
        .expect("append");
        i += k;
    }
    let mut rel = vec![PathBuf::from("checkpoint")];
    for kind in [TileKind::Entries, TileKind::Hashes(0), TileKind::Hashes(1)] {
        rel.extend(
            tiles::tiles_for(kind, size)
                .iter()
                .map(|t| PathBuf::from(t.rel_path())),
        );
    }
    rel.into_iter()
        .map(|r| {
            let b = std::fs::read(dir.path().join(&r)).expect("read");
            (r, b)
        })
        .collect()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static FILES: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    let valid = FILES.get_or_init(valid_files);
    // Input: a byte choosing a file to cut and two bytes for its new length (a length at or past
    // the end cuts nothing), then (file, 2-byte offset, xor) edits.
    let mut files: Vec<Vec<u8>> = valid.iter().map(|(_, b)| b.clone()).collect();
    let (cut, edits) = match data {
        [f, a, b, rest @ ..] => (Some((*f, u16::from_le_bytes([*a, *b]))), rest),
        _ => (None, data),
    };
    for e in edits.chunks_exact(4) {
        let f = &mut files[usize::from(e[0]) % valid.len()];
        if !f.is_empty() {
            let at = usize::from(u16::from_le_bytes([e[1], e[2]])) % f.len();
            f[at] ^= e[3];
        }
    }
    if let Some((f, len)) = cut {
        files[usize::from(f) % valid.len()].truncate(usize::from(len));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for ((rel, _), bytes) in valid.iter().zip(&files) {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("in the folder")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }
    let damaged = valid.iter().zip(&files).any(|((_, a), b)| a != b);
    let r = verify(dir.path(), &signer().verifier(), None, 2);
    assert!(
        !damaged || r.is_err(),
        "a damaged tree verified: {:?}",
        r.map(|v| v.size)
    );
});
