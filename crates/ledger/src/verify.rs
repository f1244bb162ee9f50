//! Full verification of a ledger folder from its stored bytes, trusting nothing but the
//! verifier key and what this verifier saw before.
//!
//! 1. The checkpoint's signature, then its origin, size and root.
//! 2. Every entry bundle up to the size, in parallel: each entry decodes, its sequence number
//!    is its position, and its leaf hash is computed.
//! 3. The leaf tiles: each entry's leaf hash is the one stored (names a modified entry).
//! 4. The chain: each entry's `prev` is the leaf hash of the entry before.
//! 5. The tree: every higher tile equals the tile recomputed from the entries, and the root
//!    equals the checkpoint's.
//! 6. Consistency: the tree at the size of the last checkpoint this verifier accepted has the
//!    root it had then (kept by the verifier, in its own state file).
//!
//! The first failure is reported with the entry it concerns and what is wrong.

use crate::entry::Entry;
use crate::log::list_tiles;
use crate::merkle::{CompactRange, Hash, leaf_hash};
use crate::note::Checkpoint;
use crate::note::NoteVerifier;
use crate::tiles::{self, TILE_WIDTH, TileId, TileKind};
use std::path::Path;

/// What is wrong with a ledger that was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("the checkpoint's signature does not verify: {0}")]
    BadSignature(String),
    #[error("entry {seq} was modified: {what}")]
    Modified { seq: u64, what: String },
    #[error("an entry was inserted at position {pos} (it claims to be entry {claims})")]
    Inserted { pos: u64, claims: u64 },
    #[error("entry {seq} was deleted (position {seq} holds entry {found})")]
    Deleted { seq: u64, found: u64 },
    #[error("entries were reordered: position {pos} holds entry {found}")]
    Reordered { pos: u64, found: u64 },
    #[error("the log is truncated: the checkpoint has {want} entries, the bundles {have}")]
    Truncated { want: u64, have: u64 },
    #[error("the hash chain breaks at entry {seq}: its prev is not the hash of entry {}", seq - 1)]
    ChainBroken { seq: u64 },
    #[error("tile {path} does not match the entries")]
    TileMismatch { path: String },
    #[error(
        "the entries do not hash to the checkpoint's root (size {size}): the checkpoint or the log was rewritten"
    )]
    RootMismatch { size: u64 },
    #[error(
        "history was rewritten: this verifier accepted size {size} with root {seen}, the log now has root {now} there"
    )]
    HistoryRewritten {
        size: u64,
        seen: String,
        now: String,
    },
    #[error(
        "{rows} entries are stored beyond the checkpoint's size {size}: they were added outside sealtrail"
    )]
    BeyondCheckpoint { size: u64, rows: u64 },
    #[error("the log shrank: this verifier accepted size {seen}, the checkpoint now says {now}")]
    Shrunk { seen: u64, now: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("tampering detected: {0}")]
    Tampered(Tamper),
    #[error("cannot read the ledger: {0}")]
    Unreadable(String),
}

impl From<Tamper> for VerifyError {
    fn from(t: Tamper) -> Self {
        VerifyError::Tampered(t)
    }
}

/// A verified ledger.
#[derive(Debug, Clone)]
pub struct Verified {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub checkpoint: String,
}

/// Per position: (sequence number the entry claims, its prev, its leaf hash).
type Scanned = Vec<(u64, Hash, Hash)>;

/// The last checkpoint a verifier accepted: (size, root).
pub type Seen = (u64, Hash);

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies the ledger in `dir` (see the module docs). `threads` workers decode and hash.
pub fn verify(
    dir: &Path,
    key: &NoteVerifier,
    seen: Option<Seen>,
    threads: usize,
) -> Result<Verified, VerifyError> {
    let note_path = dir.join("checkpoint");
    let note = std::fs::read_to_string(&note_path)
        .map_err(|e| VerifyError::Unreadable(format!("{}: {e}", note_path.display())))?;
    let text = key
        .open(&note)
        .map_err(|e| Tamper::BadSignature(e.to_string()))?;
    // Signed but not a checkpoint: whoever holds the key wrote something else there.
    let cp = Checkpoint::parse(text).map_err(|e| {
        VerifyError::Unreadable(format!("the signed checkpoint does not parse: {e}"))
    })?;
    let size = cp.size;
    if let Some((seen_size, _)) = seen
        && seen_size > size
    {
        return Err(Tamper::Shrunk {
            seen: seen_size,
            now: size,
        }
        .into());
    }

    // 2. Bundles in parallel.
    let bundles = tiles::tiles_for(TileKind::Entries, size);
    let stored = stored_bundles(dir)?;
    let threads = threads.max(1);
    let chunk = bundles.len().div_ceil(threads).max(1);
    let results = par_chunks(&bundles, chunk, |part| read_bundles(dir, part, &stored));
    // (seq claimed, prev, leaf hash) per position.
    let mut entries: Vec<(u64, Hash, Hash)> = Vec::with_capacity(size as usize);
    for r in results {
        entries.extend(r?);
    }
    classify_sequence(&entries, size)?;

    // 4. Tree and tiles, 5. consistency with what this verifier saw. The roots of full
    // 256-leaf tiles (the level-8 nodes) are computed in parallel; the levels above from them.
    let leaves: Vec<Hash> = entries.iter().map(|e| e.2).collect();
    // The leaf tiles, compared in parallel: the first difference names a modified entry.
    let leaf_tiles = tiles::tiles_for(TileKind::Hashes(0), size);
    let per = leaf_tiles.len().div_ceil(threads).max(1);
    for f in par_chunks(&leaf_tiles, per, |ids| compare_tiles(dir, ids, &leaves)) {
        f?;
    }
    let tile_roots: Vec<Hash> = std::thread::scope(|s| {
        let full = &leaves[..leaves.len() - leaves.len() % TILE_WIDTH as usize];
        let per = full
            .len()
            .div_ceil(threads)
            .div_ceil(TILE_WIDTH as usize)
            .max(1)
            * TILE_WIDTH as usize;
        let handles: Vec<_> = full
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.chunks(TILE_WIDTH as usize)
                        .map(crate::merkle::root)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut levels: Vec<Vec<Hash>> = vec![leaves];
    let mut upper = CompactRange::default();
    for r in &tile_roots {
        upper.push_visit(*r, |level, _, h| {
            if level % 8 == 0 {
                let l = 1 + usize::from(level / 8);
                if levels.len() <= l {
                    levels.resize(l + 1, Vec::new());
                }
                levels[l].push(*h);
            }
        });
    }
    // The root of the first `n` leaves: complete subtrees of >= 256 leaves from the tile roots,
    // then those of the remaining leaves.
    let root_at = |n: u64| -> Hash {
        let full = (n / TILE_WIDTH) as usize;
        let mut hi = CompactRange::default();
        for r in &tile_roots[..full] {
            hi.push(*r);
        }
        let mut lo = CompactRange::default();
        for l in &levels[0][full * TILE_WIDTH as usize..n as usize] {
            lo.push(*l);
        }
        crate::merkle::fold_parts(hi.parts().iter().chain(lo.parts()))
    };
    check_chain(&entries)?;
    for (l, hashes) in levels.iter().enumerate().skip(1) {
        for id in tiles::tiles_for(TileKind::Hashes(l as u8), size) {
            let start = (id.index * TILE_WIDTH) as usize;
            let want = tiles::encode_hashes(&hashes[start..start + usize::from(id.width)]);
            let p = dir.join(id.rel_path());
            let have = std::fs::read(&p).or_else(|_| {
                // A partial tile may have been superseded by the full one.
                std::fs::read(
                    dir.join(
                        TileId {
                            width: TILE_WIDTH as u16,
                            ..id
                        }
                        .rel_path(),
                    ),
                )
                .map(|b| b[..want.len().min(b.len())].to_vec())
            });
            match have {
                Ok(b) if b == want => {}
                Ok(_) => {
                    return Err(Tamper::TileMismatch {
                        path: id.rel_path(),
                    }
                    .into());
                }
                Err(e) => return Err(VerifyError::Unreadable(format!("{}: {e}", id.rel_path()))),
            }
        }
    }
    let root = root_at(size);
    if root != cp.root {
        return Err(Tamper::RootMismatch { size }.into());
    }
    if let Some((s, r)) = seen {
        let now = root_at(s);
        if s > 0 && now != r {
            return Err(Tamper::HistoryRewritten {
                size: s,
                seen: hex(&r),
                now: hex(&now),
            }
            .into());
        }
    }
    Ok(Verified {
        origin: cp.origin,
        size,
        root,
        checkpoint: note,
    })
}

/// Runs `f` on chunks of `items` (`per` each) on scoped threads; results in chunk order.
fn par_chunks<T: Sync, R: Send>(
    items: &[T],
    per: usize,
    f: impl Fn(&[T]) -> Result<R, VerifyError> + Sync,
) -> Vec<Result<R, VerifyError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(per.max(1)).map(|c| s.spawn(|| f(c))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(VerifyError::Unreadable("a verify worker panicked".into()))
                })
            })
            .collect()
    })
}

/// Compares stored leaf tiles with the leaf hashes; names the first entry that differs.
fn compare_tiles(dir: &Path, ids: &[TileId], leaves: &[Hash]) -> Result<(), VerifyError> {
    for id in ids {
        let start = (id.index * TILE_WIDTH) as usize;
        let want = &leaves[start..start + usize::from(id.width)];
        let bytes = std::fs::read(dir.join(id.rel_path()))
            .or_else(|_| {
                // A partial tile may have been superseded by the full one.
                std::fs::read(
                    dir.join(
                        TileId {
                            width: TILE_WIDTH as u16,
                            ..*id
                        }
                        .rel_path(),
                    ),
                )
            })
            .map_err(|e| VerifyError::Unreadable(format!("{}: {e}", id.rel_path())))?;
        let stored = tiles::parse_hashes(&bytes).unwrap_or_default();
        if stored.len() < want.len() {
            return Err(Tamper::TileMismatch {
                path: id.rel_path(),
            }
            .into());
        }
        if let Some(k) = stored.iter().zip(want).position(|(a, b)| a != b) {
            return Err(Tamper::Modified {
                seq: (start + k) as u64,
                what: "its bytes no longer hash to the leaf hash in the tree tiles".into(),
            }
            .into());
        }
        if stored.len() > want.len() && u64::from(id.width) == TILE_WIDTH {
            return Err(Tamper::TileMismatch {
                path: id.rel_path(),
            }
            .into());
        }
    }
    Ok(())
}

/// Each entry's `prev` is the leaf hash of the entry before (zeros for the first).
fn check_chain(entries: &[(u64, Hash, Hash)]) -> Result<(), Tamper> {
    let mut prev = [0u8; 32];
    for (i, (_, p, leaf)) in entries.iter().enumerate() {
        if *p != prev {
            return Err(Tamper::ChainBroken { seq: i as u64 });
        }
        prev = *leaf;
    }
    Ok(())
}

/// Widths of the stored bundle files, by bundle index (to tell a deleted file from a short one).
fn stored_bundles(dir: &Path) -> Result<std::collections::HashMap<u64, Vec<u16>>, VerifyError> {
    let mut out: std::collections::HashMap<u64, Vec<u16>> = Default::default();
    for (_, id) in list_tiles(dir).map_err(|e| VerifyError::Unreadable(e.to_string()))? {
        if let Some(id) = id
            && id.kind == TileKind::Entries
        {
            out.entry(id.index).or_default().push(id.width);
        }
    }
    Ok(out)
}

fn read_bundles(
    dir: &Path,
    ids: &[TileId],
    stored: &std::collections::HashMap<u64, Vec<u16>>,
) -> Result<Scanned, VerifyError> {
    let mut out = Vec::with_capacity(ids.len() * TILE_WIDTH as usize);
    for id in ids {
        // The exact width, or the full bundle (a partial one may be superseded).
        let widths = stored.get(&id.index).cloned().unwrap_or_default();
        let path = if widths.contains(&id.width) {
            dir.join(id.rel_path())
        } else if widths.contains(&(TILE_WIDTH as u16)) {
            dir.join(
                TileId {
                    width: TILE_WIDTH as u16,
                    ..*id
                }
                .rel_path(),
            )
        } else {
            // No bundle at all where the checkpoint says entries are.
            return Err(Tamper::Truncated {
                want: id.index * TILE_WIDTH + u64::from(id.width),
                have: id.index * TILE_WIDTH,
            }
            .into());
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| VerifyError::Unreadable(format!("{}: {e}", path.display())))?;
        let first = id.index * TILE_WIDTH;
        let Some(list) = tiles::parse_bundle(&bytes) else {
            return Err(Tamper::Modified {
                seq: first,
                what: format!(
                    "bundle {} is not a sequence of length-prefixed entries",
                    id.rel_path()
                ),
            }
            .into());
        };
        let take = if path.ends_with(id.rel_path()) {
            list.len()
        } else {
            usize::from(id.width).min(list.len())
        };
        for (k, e) in list.iter().take(take).enumerate() {
            let pos = first + k as u64;
            match Entry::check(e) {
                Ok((seq, prev)) => out.push((seq, prev, leaf_hash(e))),
                Err(err) => {
                    return Err(Tamper::Modified {
                        seq: pos,
                        what: format!("it no longer decodes ({err})"),
                    }
                    .into());
                }
            }
        }
    }
    Ok(out)
}

/// Names the first position whose entry is not the expected one.
fn classify_sequence(entries: &[(u64, Hash, Hash)], size: u64) -> Result<(), Tamper> {
    for (pos, (seq, _, _)) in entries.iter().enumerate() {
        let pos = pos as u64;
        if *seq == pos {
            continue;
        }
        if *seq < pos {
            return Err(Tamper::Inserted { pos, claims: *seq });
        }
        // seq > pos: entry `pos` is missing here; later (reordered) or nowhere (deleted).
        let later = entries[pos as usize..].iter().any(|(s, _, _)| *s == pos);
        return Err(if later {
            Tamper::Reordered { pos, found: *seq }
        } else {
            Tamper::Deleted {
                seq: pos,
                found: *seq,
            }
        });
    }
    let have = entries.len() as u64;
    if have < size {
        return Err(Tamper::Truncated { want: size, have });
    }
    if have > size {
        return Err(Tamper::Inserted {
            pos: size,
            claims: entries[size as usize].0,
        });
    }
    Ok(())
}
