//! The ledger on disk: appends, reopen, recovery, and tampering of every kind caught by the
//! verifier with the right diagnosis.

use sealtrail_ledger::entry::{Entry, Event};
use sealtrail_ledger::log::{LogError, LogWriter, OpenMode};
use sealtrail_ledger::merkle::{self, NodeSource};
use sealtrail_ledger::note::NoteSigner;
use sealtrail_ledger::tiles::{self, TileId, TileKind, TileReader};
use sealtrail_ledger::verify::{Tamper, VerifyError, verify};
use std::path::Path;

const ORIGIN: &str = "test.example/ledger";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[3; 32]).unwrap()
}

fn ev(i: u64) -> Event {
    Event::RunEnded {
        run_id: format!("run-{i}"),
        rows_in: i,
        rows_loaded: i,
        rows_quarantined: 0,
    }
}

/// A log of `n` entries appended in groups of `group`.
fn build(dir: &Path, n: u64, group: u64) -> LogWriter {
    let mut w = LogWriter::open(dir, ORIGIN, signer(), OpenMode::FailClosed).unwrap();
    let mut i = 0;
    while i < n {
        let k = group.min(n - i);
        w.append((i..i + k).map(ev).collect()).unwrap();
        i += k;
    }
    w
}

fn check(dir: &Path) -> Result<u64, VerifyError> {
    verify(dir, &signer().verifier(), None, 2).map(|v| v.size)
}

fn tampered(dir: &Path) -> Tamper {
    match verify(dir, &signer().verifier(), None, 2) {
        Err(VerifyError::Tampered(t)) => t,
        other => panic!("expected tampering, got {other:?}"),
    }
}

fn bundle_path(dir: &Path, index: u64, width: u16) -> std::path::PathBuf {
    dir.join(
        TileId {
            kind: TileKind::Entries,
            index,
            width,
        }
        .rel_path(),
    )
}

/// Rewrites bundle `index` (full) through `f` over its entries.
fn edit_bundle(dir: &Path, index: u64, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let p = bundle_path(dir, index, 256);
    let b = std::fs::read(&p).unwrap();
    let mut list: Vec<Vec<u8>> = tiles::parse_bundle(&b)
        .unwrap()
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    f(&mut list);
    std::fs::write(&p, tiles::encode_bundle(&list)).unwrap();
}

#[test]
fn appends_reopen_and_verify_across_tile_boundaries() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path(), 700, 97);
    assert_eq!(w.size(), 700);
    let root = w.root();
    drop(w);
    // Reopen: the right edge is rebuilt from the tiles and appends continue the same tree.
    let mut w = LogWriter::open(d.path(), ORIGIN, signer(), OpenMode::FailClosed).unwrap();
    assert_eq!((w.size(), w.root()), (700, root));
    w.append((700..66_000).map(ev).collect()).unwrap();
    assert_eq!(check(d.path()).unwrap(), 66_000);
    // The tree on disk equals a tree built in memory from the same entry bytes.
    let r = TileReader::new(d.path(), 66_000);
    let mut leaves = Vec::new();
    for id in tiles::tiles_for(TileKind::Entries, 66_000) {
        let b = std::fs::read(d.path().join(id.rel_path())).unwrap();
        for e in tiles::parse_bundle(&b).unwrap() {
            leaves.push(merkle::leaf_hash(e));
        }
    }
    let mem = merkle::MemTree::new(leaves);
    assert_eq!(merkle::subtree(&r, 0, 66_000).unwrap(), mem.root());
    assert_eq!(w.root(), mem.root());
    for i in [0, 255, 256, 65_535, 65_536, 65_999] {
        let p = merkle::inclusion_proof(&r, i, 66_000).unwrap();
        assert_eq!(p, mem.inclusion_proof(i).unwrap());
        merkle::verify_inclusion(i, 66_000, &r.node(0, i).unwrap(), &p, &w.root()).unwrap();
    }
    // Level-1 and level-2 tiles exist (65536 entries complete a level-2 node).
    assert!(d.path().join("tile/2/000.p/1").exists());
}

#[test]
fn entries_are_chained_and_numbered() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), 300, 300);
    let b = std::fs::read(bundle_path(d.path(), 1, 44)).unwrap();
    let list = tiles::parse_bundle(&b).unwrap();
    let e0 = Entry::decode(list[0]).unwrap();
    let e1 = Entry::decode(list[1]).unwrap();
    assert_eq!((e0.seq, e1.seq), (256, 257));
    assert_eq!(e1.prev, merkle::leaf_hash(list[0]));
}

#[test]
fn a_modified_entry_is_named() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), 600, 600);
    edit_bundle(d.path(), 1, |l| {
        let last = l[10].len() - 1;
        l[10][last] ^= 1; // the last byte of run_id... still decodes, different bytes
    });
    assert_eq!(
        tampered(d.path()),
        Tamper::Modified {
            seq: 266,
            what: "its bytes no longer hash to the leaf hash in the tree tiles".into()
        }
    );
}

#[test]
fn a_modified_entry_with_rewritten_tiles_breaks_the_chain_or_the_root() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), 600, 600);
    edit_bundle(d.path(), 0, |l| {
        let last = l[5].len() - 1;
        l[5][last] ^= 1;
    });
    // The attacker also fixes the leaf tile: the next entry's prev no longer matches.
    let b = std::fs::read(bundle_path(d.path(), 0, 256)).unwrap();
    let leaves: Vec<_> = tiles::parse_bundle(&b)
        .unwrap()
        .into_iter()
        .map(merkle::leaf_hash)
        .collect();
    std::fs::write(d.path().join("tile/0/000"), tiles::encode_hashes(&leaves)).unwrap();
    assert_eq!(tampered(d.path()), Tamper::ChainBroken { seq: 6 });
}

#[test]
fn deleted_inserted_reordered_and_truncated_entries_are_told_apart() {
    type Mangle = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Mangle, Tamper)> = vec![
        (
            "delete",
            Box::new(|p: &Path| {
                edit_bundle(p, 0, |l| {
                    l.remove(7);
                })
            }),
            Tamper::Deleted { seq: 7, found: 8 },
        ),
        (
            "duplicate",
            Box::new(|p: &Path| {
                edit_bundle(p, 0, |l| {
                    let x = l[3].clone();
                    l.insert(4, x);
                })
            }),
            Tamper::Inserted { pos: 4, claims: 3 },
        ),
        (
            "swap",
            Box::new(|p: &Path| edit_bundle(p, 1, |l| l.swap(2, 9))),
            Tamper::Reordered {
                pos: 258,
                found: 265,
            },
        ),
        (
            "truncate",
            Box::new(|p: &Path| std::fs::remove_file(bundle_path(p, 2, 88)).unwrap()),
            Tamper::Truncated {
                want: 600,
                have: 512,
            },
        ),
        (
            "tile",
            Box::new(|p: &Path| {
                let t = p.join("tile/1/000.p/2");
                let mut b = std::fs::read(&t).unwrap();
                b[0] ^= 0x80;
                std::fs::write(t, b).unwrap();
            }),
            Tamper::TileMismatch {
                path: "tile/1/000.p/2".into(),
            },
        ),
    ];
    for (name, mangle, want) in cases {
        let d = tempfile::tempdir().unwrap();
        build(d.path(), 600, 600);
        assert_eq!(check(d.path()).unwrap(), 600);
        mangle(d.path());
        assert_eq!(tampered(d.path()), want, "{name}");
    }
}

#[test]
fn swapped_or_foreign_checkpoints_and_rewritten_history_are_caught() {
    let d = tempfile::tempdir().unwrap();
    let mut w = build(d.path(), 300, 300);
    let old_note = std::fs::read(d.path().join("checkpoint")).unwrap();
    let seen = verify(d.path(), &signer().verifier(), None, 2).unwrap();
    w.append((300..400).map(ev).collect()).unwrap();
    drop(w);
    // An older checkpoint put back: the log shrank from the verifier's point of view.
    let new_note = std::fs::read(d.path().join("checkpoint")).unwrap();
    let seen_new = verify(d.path(), &signer().verifier(), None, 2).unwrap();
    std::fs::write(d.path().join("checkpoint"), &old_note).unwrap();
    match verify(
        d.path(),
        &signer().verifier(),
        Some((seen_new.size, seen_new.root)),
        2,
    ) {
        Err(VerifyError::Tampered(Tamper::Shrunk {
            seen: 400,
            now: 300,
        })) => {}
        other => panic!("{other:?}"),
    }
    std::fs::write(d.path().join("checkpoint"), &new_note).unwrap();
    // A checkpoint signed by another key.
    let other = NoteSigner::from_seed(ORIGIN, &[4; 32]).unwrap();
    let text = signer()
        .verifier()
        .open(std::str::from_utf8(&new_note).unwrap())
        .unwrap()
        .to_string();
    std::fs::write(d.path().join("checkpoint"), other.sign(&text).unwrap()).unwrap();
    assert!(matches!(tampered(d.path()), Tamper::BadSignature(_)));
    // History rewritten by someone holding the key: a whole new log of the same size.
    let d2 = tempfile::tempdir().unwrap();
    let mut w2 = LogWriter::open(d2.path(), ORIGIN, signer(), OpenMode::FailClosed).unwrap();
    w2.append((0..400).map(|i| ev(i + 1)).collect()).unwrap();
    match verify(
        d2.path(),
        &signer().verifier(),
        Some((seen.size, seen.root)),
        2,
    ) {
        Err(VerifyError::Tampered(Tamper::HistoryRewritten { size: 300, .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_torn_tail_fails_closed_and_recovery_is_recorded() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path(), 300, 300);
    drop(w);
    // Simulate a crash after the data files of an append but before its checkpoint.
    let cp = std::fs::read(d.path().join("checkpoint")).unwrap();
    let mut w = LogWriter::open(d.path(), ORIGIN, signer(), OpenMode::FailClosed).unwrap();
    w.append((300..320).map(ev).collect()).unwrap();
    drop(w);
    std::fs::write(d.path().join("checkpoint"), cp).unwrap();
    match LogWriter::open(d.path(), ORIGIN, signer(), OpenMode::FailClosed) {
        Err(LogError::TornTail { size: 300, .. }) => {}
        other => panic!("{other:?}"),
    }
    let w = LogWriter::open(d.path(), ORIGIN, signer(), OpenMode::Recover).unwrap();
    assert_eq!(w.size(), 301);
    drop(w);
    assert_eq!(check(d.path()).unwrap(), 301);
    let b = std::fs::read(bundle_path(d.path(), 1, 45)).unwrap();
    let last = Entry::decode(tiles::parse_bundle(&b).unwrap()[44]).unwrap();
    match last.event {
        Event::Recovery {
            discarded_entries: 20,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

/// Two writers of one folder (two runs sharing a home, or `ledger sign --every` beside a run)
/// take turns through the folder lock and catch up with each other: one log, no fork.
#[test]
fn two_writers_of_one_folder_extend_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    LogWriter::open(&d, ORIGIN, signer(), OpenMode::FailClosed).unwrap();
    let handles: Vec<_> = (0..2u64)
        .map(|w| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut l = LogWriter::open(&d, ORIGIN, signer(), OpenMode::FailClosed).unwrap();
                let mut acked = Vec::new();
                for i in 0..30u64 {
                    let a = l
                        .append(vec![ev(w * 1000 + i), ev(w * 1000 + i + 500)])
                        .unwrap();
                    acked.push((a.size, a.root));
                    if i % 10 == 0 {
                        l.sign_checkpoint().unwrap();
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(u64, [u8; 32])> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(check(&d).unwrap(), 120);
    let r = TileReader::new(&d, 120);
    for (size, root) in acked {
        assert_eq!(merkle::subtree(&r, 0, size).unwrap(), root, "size {size}");
    }
    let mut runs: Vec<String> = Vec::new();
    for i in 0..120 {
        let id = TileId {
            kind: TileKind::Entries,
            index: 0,
            width: 120,
        };
        let b = std::fs::read(d.join(id.rel_path())).unwrap();
        let e = Entry::decode(tiles::parse_bundle(&b).unwrap()[i]).unwrap();
        if let Event::RunEnded { run_id, .. } = e.event {
            runs.push(run_id);
        }
    }
    runs.sort();
    runs.dedup();
    assert_eq!(
        runs.len(),
        120,
        "every acknowledged entry is in the log once"
    );
}

/// Any byte of any file of the tree changed (two bit patterns per byte; every byte of small
/// files, about 100 spread over each larger one, first and last included): `verify` refuses
/// the ledger, as tampered or unreadable, and never passes or panics. (Partial tiles that a full
/// one superseded may remain and are not part of the tree; nor is the empty `lock` file.)
#[test]
fn every_changed_byte_of_every_file_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    // Two full bundles and a partial one (after superseded partials of earlier sizes); level-0
    // tiles full and partial; a partial level-1 tile.
    let size = 600;
    build(dir.path(), size, 37);
    // Every file in the folder: the checkpoint's tiles, and the partial tiles of the rightmost
    // tiles that earlier sizes left (superseded, kept until their tile fills).
    let mut files = vec![dir.path().join("checkpoint")];
    let listed = sealtrail_ledger::log::list_tiles(dir.path()).unwrap();
    files.extend(listed.iter().map(|(rel, _)| dir.path().join(rel)));
    let current = [TileKind::Entries, TileKind::Hashes(0), TileKind::Hashes(1)]
        .iter()
        .map(|&k| tiles::tiles_for(k, size).len())
        .sum::<usize>();
    assert_eq!(current, 3 + 3 + 1);
    // Sizes 518, 555 and 592 left partial bundles and leaf tiles of tile 2 (widths 6, 43, 80);
    // sizes 256-511 a level-1 tile of width 1.
    assert_eq!(files.len(), 1 + current + 3 + 3 + 1, "{files:?}");
    let mut tried = 0;
    for f in &files {
        let name = f.strip_prefix(dir.path()).unwrap().display().to_string();
        let original = std::fs::read(f).unwrap();
        let n = original.len();
        let step = (n / 100).max(1);
        let positions = (0..n).step_by(step).chain(n.checked_sub(1));
        for at in positions {
            for x in [0x01u8, 0xa4] {
                let mut b = original.clone();
                b[at] ^= x;
                std::fs::write(f, &b).unwrap();
                let r = std::panic::catch_unwind(|| check(dir.path()));
                assert!(
                    matches!(r, Ok(Err(_))),
                    "{name}: byte {at} of {n} ^ {x:#04x} gave {r:?}"
                );
                tried += 1;
            }
        }
        std::fs::write(f, &original).unwrap();
    }
    assert!(tried > 1000, "{tried}");
    assert_eq!(check(dir.path()).unwrap(), size);
}

/// Once a tile fills, the partial tiles it supersedes are deleted (a log appended one entry at
/// a time grew with the square of each tile's entries); those of the rightmost tile stay until
/// it fills and are verified as prefixes of it, like any a crash leaves behind, which the next
/// writer to open the log prunes.
#[test]
fn superseded_partial_tiles_are_pruned_once_their_tile_fills_and_verified_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let size = 600;
    drop(build(dir.path(), size, 1));
    let listed = sealtrail_ledger::log::list_tiles(dir.path()).unwrap();
    let partial_of = |kind: TileKind, index: u64| {
        listed
            .iter()
            .filter(|(_, id)| {
                id.is_some_and(|t| t.kind == kind && t.index == index && t.width < 256)
            })
            .count()
    };
    for kind in [TileKind::Entries, TileKind::Hashes(0)] {
        assert_eq!(
            (partial_of(kind, 0), partial_of(kind, 1)),
            (0, 0),
            "{kind:?}"
        );
        // Widths 1..=88 of the rightmost tile: the checkpoint's and the 87 before it.
        assert_eq!(partial_of(kind, 2), 88, "{kind:?}");
    }
    // Level 1 holds 2 hashes: its partial tile of width 1 is superseded, not yet pruned.
    assert_eq!(partial_of(TileKind::Hashes(1), 0), 2);
    assert_eq!(check(dir.path()).unwrap(), size);

    // A superseded partial bundle of the rightmost tile that no longer matches is named.
    let p = bundle_path(dir.path(), 2, 40);
    let original = std::fs::read(&p).unwrap();
    let mut b = original.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    std::fs::write(&p, &b).unwrap();
    assert!(
        matches!(tampered(dir.path()), Tamper::Superseded { ref path } if path.ends_with("002.p/40")),
        "{:?}",
        check(dir.path())
    );
    std::fs::write(&p, &original).unwrap();

    // A leftover partial of a full tile (a crash between commit and pruning): verified...
    let full = std::fs::read(bundle_path(dir.path(), 0, 256)).unwrap();
    let five: Vec<Vec<u8>> = tiles::parse_bundle(&full).unwrap()[..5]
        .iter()
        .map(|e| e.to_vec())
        .collect();
    let left = bundle_path(dir.path(), 0, 5);
    std::fs::create_dir_all(left.parent().unwrap()).unwrap();
    std::fs::write(&left, tiles::encode_bundle(&five)).unwrap();
    assert_eq!(check(dir.path()).unwrap(), size);
    let mut other = five.clone();
    other[4][0] ^= 1;
    std::fs::write(&left, tiles::encode_bundle(&other)).unwrap();
    assert!(matches!(tampered(dir.path()), Tamper::Superseded { .. }));
    std::fs::write(&left, tiles::encode_bundle(&five)).unwrap();
    // ...and pruned by the next writer to open the log, which goes on appending.
    let mut w = LogWriter::open(dir.path(), ORIGIN, signer(), OpenMode::FailClosed).unwrap();
    assert!(!left.parent().unwrap().exists());
    w.append((600..700).map(ev).collect()).unwrap();
    assert_eq!(check(dir.path()).unwrap(), 700);
    // 768 > 700: tile 2 is still the rightmost; nothing of tiles 0 and 1 is partial.
    let listed = sealtrail_ledger::log::list_tiles(dir.path()).unwrap();
    assert!(
        listed.iter().all(|(_, id)| id
            .is_some_and(|t| t.width == 256 || t.index >= 2 || t.kind == TileKind::Hashes(1))),
        "{listed:?}"
    );
}

fn key(seed: u8) -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[seed; 32]).unwrap()
}

fn verify_with(dir: &Path, seed: u8) -> Result<sealtrail_ledger::verify::Verified, VerifyError> {
    verify(dir, &key(seed).verifier(), None, 2)
}

/// `ledger rotate-key`: the signing is handed over twice (keys 3 -> 4 -> 5) between appends
/// that span tiles. A verifier holding any of the three keys follows the hand-overs to the
/// key in charge; a checkpoint signed by a retired key (a leaked one), a missing or altered
/// hand-over, and a key the log never had are each caught; the retired key can no longer
/// append; and a hand-over torn by a crash is discarded by recovery, its note with it.
#[test]
fn the_signing_key_is_handed_over_and_verifiers_of_every_key_follow() {
    let d = tempfile::tempdir().unwrap();
    let mut w = build(d.path(), 300, 100);
    let a = w.rotate_signer(key(4), [1; 32]).unwrap();
    assert_eq!((a.first_seq, a.size), (300, 301));
    w.append((301..600).map(ev).collect()).unwrap();
    w.rotate_signer(key(5), [2; 32]).unwrap();
    w.append((601..700).map(ev).collect()).unwrap();
    drop(w);
    let kept: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(d.path().join("rotations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(kept, ["301", "601"]);
    for (seed, followed) in [(3, vec![300, 600]), (4, vec![600]), (5, vec![])] {
        let ok = verify_with(d.path(), seed).unwrap();
        assert_eq!(ok.size, 700);
        assert_eq!(ok.signer, key(5).verifier(), "from key {seed}");
        assert_eq!(ok.handovers, followed, "from key {seed}");
    }
    let bad = |seed| match verify_with(d.path(), seed) {
        Err(VerifyError::Tampered(t)) => t,
        other => panic!("expected tampering, got {other:?}"),
    };
    // A key the log never had.
    assert!(matches!(bad(9), Tamper::BadSignature(m) if m.contains("never signed")));

    // A retired key signs the tree: refused by every verifier, whatever key it holds.
    let good = std::fs::read_to_string(d.path().join("checkpoint")).unwrap();
    let text = sealtrail_ledger::note::unverified_text(&good).unwrap();
    std::fs::write(d.path().join("checkpoint"), key(4).sign(text).unwrap()).unwrap();
    for seed in [3, 4, 5] {
        assert!(
            matches!(bad(seed), Tamper::BadSignature(ref m) if m.contains("since the hand-over at entry 600")),
            "{seed}"
        );
    }
    // ... and the retired key cannot append.
    assert!(matches!(
        LogWriter::open(d.path(), ORIGIN, key(4), OpenMode::FailClosed),
        Err(LogError::NotSigner { .. })
    ));
    std::fs::write(d.path().join("checkpoint"), &good).unwrap();
    assert!(matches!(
        LogWriter::open(d.path(), ORIGIN, key(3), OpenMode::FailClosed),
        Err(LogError::NotSigner { .. })
    ));

    // A hand-over note missing or signed by one key only: caught even with the newest key.
    let note = d.path().join("rotations/301");
    let handover = std::fs::read_to_string(&note).unwrap();
    std::fs::remove_file(&note).unwrap();
    for seed in [3, 5] {
        assert!(
            matches!(bad(seed), Tamper::Handover { seq: 300, ref what } if what.contains("missing")),
            "{seed}"
        );
    }
    let text = sealtrail_ledger::note::unverified_text(&handover).unwrap();
    std::fs::write(&note, key(3).sign(text).unwrap()).unwrap();
    assert!(matches!(bad(5), Tamper::Handover { seq: 300, .. }));
    // A note of another tree, signed by both keys: not this hand-over's.
    let other = key(4)
        .cosign(
            &key(3)
                .sign(&sealtrail_ledger::log::stamped_checkpoint(ORIGIN, 301, [0; 32]).to_text())
                .unwrap(),
        )
        .unwrap();
    std::fs::write(&note, other).unwrap();
    assert!(
        matches!(bad(3), Tamper::Handover { seq: 300, ref what } if what.contains("not the checkpoint"))
    );
    std::fs::write(&note, &handover).unwrap();
    assert_eq!(verify_with(d.path(), 3).unwrap().size, 700);

    // A crash after the hand-over's files but before its checkpoint: a torn tail, which
    // recovery discards together with the hand-over note.
    let mut w = LogWriter::open(d.path(), ORIGIN, key(5), OpenMode::FailClosed).unwrap();
    w.rotate_signer(key(6), [3; 32]).unwrap();
    drop(w);
    std::fs::write(d.path().join("checkpoint"), &good).unwrap();
    assert!(matches!(
        LogWriter::open(d.path(), ORIGIN, key(5), OpenMode::FailClosed),
        Err(LogError::TornTail { size: 700, .. })
    ));
    let w = LogWriter::open(d.path(), ORIGIN, key(5), OpenMode::Recover).unwrap();
    assert_eq!(w.size(), 701);
    drop(w);
    assert!(!d.path().join("rotations/701").exists());
    let ok = verify_with(d.path(), 3).unwrap();
    assert_eq!((ok.size, ok.signer), (701, key(5).verifier()));
}

/// Every changed byte of a kept hand-over note is caught, whichever key the verifier holds.
#[test]
fn every_changed_byte_of_a_handover_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let mut w = build(d.path(), 40, 40);
    w.rotate_signer(key(4), [1; 32]).unwrap();
    w.append((41..50).map(ev).collect()).unwrap();
    drop(w);
    let f = d.path().join("rotations/41");
    let original = std::fs::read(&f).unwrap();
    for at in 0..original.len() {
        let mut b = original.clone();
        b[at] ^= 0x01;
        std::fs::write(&f, &b).unwrap();
        for seed in [3, 4] {
            let r = std::panic::catch_unwind(|| verify_with(d.path(), seed));
            assert!(matches!(r, Ok(Err(_))), "byte {at} from key {seed}: {r:?}");
        }
    }
    std::fs::write(&f, &original).unwrap();
    assert_eq!(verify_with(d.path(), 3).unwrap().size, 50);
}
