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
//! 7. The signer: from the given key, along the log's `signer_rotated` entries, each handed
//!    over by a checkpoint that both keys signed (`rotations/<size>`), to the key that must
//!    have signed the checkpoint.
//!
//! The first failure is reported with the entry it concerns and what is wrong.

use crate::entry::{Entry, Event, SIGNER_ROTATED};
use crate::log::ROTATIONS;
use crate::log::list_tiles;
use crate::merkle::{CompactRange, Hash, leaf_hash};
use crate::note::{Checkpoint, NoteVerifier, unverified_text};
use crate::tiles::{self, TILE_WIDTH, TileId, TileKind};
use std::path::Path;

/// What is wrong with a ledger that was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("the checkpoint's signature does not verify: {0}")]
    BadSignature(String),
    #[error("the signing key hand-over at entry {seq} does not hold: {what}")]
    Handover { seq: u64, what: String },
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
    #[error("partial tile {path} differs from the wider tile that superseded it")]
    Superseded { path: String },
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
    /// The key that signed the checkpoint: the given one, or the one the log handed the
    /// signing over to from it.
    pub signer: NoteVerifier,
    /// The entries that handed the signing over from the given key on (`signer_rotated`).
    pub handovers: Vec<u64>,
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
    // The checkpoint of a log whose signing key was never handed over must be signed by the
    // given key; otherwise the key in charge follows from the entries (step 7, at the end).
    let handed_over: Vec<u64> = crate::log::list_rotations(dir)
        .map_err(|e| VerifyError::Unreadable(format!("{}: {e}", dir.join(ROTATIONS).display())))?
        .into_iter()
        .filter_map(|(_, t)| t)
        .collect();
    if handed_over.is_empty() {
        key.open(&note)
            .map_err(|e| Tamper::BadSignature(e.to_string()))?;
    }
    let text = unverified_text(&note).map_err(|e| Tamper::BadSignature(e.to_string()))?;
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

    // 2.-4. Entries, sequence, chain and leaf tiles, in parallel over runs of bundles. The
    // fast pass keeps only one hash per full tile; at the first anomaly it gives up and the
    // diagnosing pass (which holds every leaf) names exactly what is wrong.
    let threads = threads.max(1);
    let bundles = tiles::tiles_for(TileKind::Entries, size);
    let stored = stored_bundles(dir)?;
    // Leaves kept for the roots over partial tiles: where the checkpoint's tree and the tree
    // this verifier saw end.
    let mut keep = vec![size / TILE_WIDTH];
    if let Some((s, _)) = seen {
        keep.push(s / TILE_WIDTH);
    }
    keep.extend(handed_over.iter().map(|t| t / TILE_WIDTH));
    let chunk = bundles.len().div_ceil(threads).max(1);
    let spans: Option<Vec<Span>> = par_chunks(&bundles, chunk, |part| {
        Ok(scan_span(dir, part, &stored, &keep))
    })
    .into_iter()
    .map(|r| r.ok().flatten())
    .collect();
    let (tile_roots, kept, rotations) = match spans.filter(|s| spans_link(s, size)) {
        Some(spans) => {
            let mut roots = Vec::with_capacity((size / TILE_WIDTH) as usize);
            let mut kept = std::collections::HashMap::new();
            let mut rotations = Vec::new();
            for s in spans {
                roots.extend(s.tile_roots);
                kept.extend(s.kept);
                rotations.extend(s.rotations);
            }
            (roots, kept, rotations)
        }
        None => diagnose(dir, size, &bundles, &stored, threads, &keep)?,
    };
    let mut levels: Vec<Vec<Hash>> = vec![Vec::new()];
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
        let full = n / TILE_WIDTH;
        let mut hi = CompactRange::default();
        for r in &tile_roots[..full as usize] {
            hi.push(*r);
        }
        let mut lo = CompactRange::default();
        let part = (n % TILE_WIDTH) as usize;
        for l in kept.get(&full).map_or(&[][..], |v| &v[..part.min(v.len())]) {
            lo.push(*l);
        }
        crate::merkle::fold_parts(hi.parts().iter().chain(lo.parts()))
    };
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
    check_superseded(dir, size)?;
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
    let (signer, handovers) = check_signer(dir, size, &rotations, key, &note, root_at)?;
    Ok(Verified {
        origin: cp.origin,
        size,
        root,
        checkpoint: note,
        signer,
        handovers,
    })
}

/// Where a verifier given `key` joins a chain of hand-overs (old key, new key), in order: 0 when
/// the key is the first one (or there is no hand-over), the hand-over after the one that gave
/// it charge when it is a later one, `None` when the chain never names it as in charge.
pub(crate) fn taking_charge<'a>(
    mut links: impl Iterator<Item = (&'a NoteVerifier, &'a NoteVerifier)>,
    key: &NoteVerifier,
) -> Option<usize> {
    let Some((first_old, first_new)) = links.next() else {
        return Some(0);
    };
    if first_old == key {
        return Some(0);
    }
    if first_new == key {
        return Some(1);
    }
    links.position(|(_, new)| new == key).map(|j| j + 2)
}

/// Step 7. Each `signer_rotated` entry hands the signing over from its old key to its new one:
/// the next entry's old key, and the checkpoint of the tree ending with it, kept as
/// `rotations/<size>`, must be signed by both and be of that tree. The given key must be one
/// of the chain's keys, and the checkpoint must be signed by the last one: whoever holds a
/// retired key (a leaked one, say) can no longer sign for the log. Returns the key in charge
/// and the hand-overs from the given key on.
fn check_signer(
    dir: &Path,
    size: u64,
    rotations: &[u64],
    key: &NoteVerifier,
    note: &str,
    root_at: impl Fn(u64) -> Hash,
) -> Result<(NoteVerifier, Vec<u64>), VerifyError> {
    let mut links: Vec<(u64, NoteVerifier, NoteVerifier)> = Vec::with_capacity(rotations.len());
    for &seq in rotations {
        let bad = |what: String| Tamper::Handover { seq, what };
        let bytes = tiles::read_entry(dir, size, seq)
            .map_err(|e| VerifyError::Unreadable(format!("entry {seq}: {e}")))?;
        let Ok(Entry {
            event: Event::SignerRotated {
                old_key, new_key, ..
            },
            ..
        }) = Entry::decode(&bytes)
        else {
            return Err(bad("it does not decode as a signer_rotated entry".into()).into());
        };
        let parse = |k: &str| {
            NoteVerifier::parse(k).map_err(|e| bad(format!("a key it names does not parse: {e}")))
        };
        let (old, new) = (parse(&old_key)?, parse(&new_key)?);
        if old.name() != new.name() {
            return Err(
                bad("the new key has another name (origin) than the old one".into()).into(),
            );
        }
        if let Some((_, _, in_charge)) = links.last()
            && *in_charge != old
        {
            return Err(bad(format!(
                "it hands the signing over from key {}, but the key in charge was {}",
                old.who(),
                in_charge.who()
            ))
            .into());
        }
        let rel = format!("{ROTATIONS}/{}", seq + 1);
        let handover = match std::fs::read_to_string(dir.join(&rel)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(format!(
                    "its checkpoint signed by both keys ({rel}) is missing"
                ))
                .into());
            }
            Err(e) => return Err(VerifyError::Unreadable(format!("{rel}: {e}"))),
        };
        let mut text = "";
        for k in [&old, &new] {
            text = k.open(&handover).map_err(|e| bad(format!("{rel}: {e}")))?;
        }
        let cp = Checkpoint::parse(text).map_err(|e| bad(format!("{rel}: {e}")))?;
        if cp.size != seq + 1 || cp.root != root_at(seq + 1) {
            return Err(bad(format!(
                "{rel} is not the checkpoint of the tree ending with it"
            ))
            .into());
        }
        links.push((seq, old, new));
    }
    // The hand-overs after the given key took charge.
    let Some(from) = taking_charge(links.iter().map(|(_, old, new)| (old, new)), key) else {
        return Err(Tamper::BadSignature(format!(
            "key {} never signed this log (its first signing key is {})",
            key.who(),
            links[0].1.who()
        ))
        .into());
    };
    let in_charge = links.last().map_or(key, |(_, _, new)| new).clone();
    if let Err(e) = in_charge.open(note) {
        return Err(Tamper::BadSignature(match links.last() {
            Some((seq, _, _)) => format!(
                "{e}; since the hand-over at entry {seq}, key {} signs this log",
                in_charge.who()
            ),
            None => e.to_string(),
        })
        .into());
    }
    Ok((
        in_charge,
        links[from..].iter().map(|(seq, _, _)| *seq).collect(),
    ))
}

/// Step 6: partial tiles that a wider tile of the checkpoint's tree supersedes (the rightmost
/// tile's, kept until it fills, and any a crash left before pruning) must hold what the wider
/// tile holds: its first W hashes, or its first W entries byte for byte.
fn check_superseded(dir: &Path, size: u64) -> Result<(), VerifyError> {
    let listed = list_tiles(dir).map_err(|e| VerifyError::Unreadable(e.to_string()))?;
    // The rightmost tile may have up to 255 partials: read each wider tile once.
    let mut wider_tiles: std::collections::HashMap<TileId, Vec<u8>> = Default::default();
    for (rel, id) in listed {
        let Some(id) = id else { continue };
        if u64::from(id.width) == TILE_WIDTH || !id.within(size) {
            continue; // full tiles are checked above; beyond the checkpoint is a torn tail
        }
        let n = match id.kind {
            TileKind::Hashes(l) => size
                .checked_shr(u32::from(l) * u32::from(tiles::TILE_HEIGHT))
                .unwrap_or(0),
            TileKind::Entries => size,
        };
        let current = TileId {
            width: (n - id.index * TILE_WIDTH).min(TILE_WIDTH) as u16,
            ..id
        };
        if current.width == id.width {
            continue; // the checkpoint's own tile, checked above
        }
        let Ok(mine) = std::fs::read(dir.join(&rel)) else {
            continue; // pruned by a writer since the listing
        };
        let full = TileId {
            width: TILE_WIDTH as u16,
            ..id
        };
        let wider = match wider_tiles.entry(current) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                std::fs::read(dir.join(current.rel_path()))
                    .or_else(|_| std::fs::read(dir.join(full.rel_path())))
                    .map_err(|e| VerifyError::Unreadable(format!("{}: {e}", current.rel_path())))?,
            ),
        };
        let len = match id.kind {
            TileKind::Hashes(_) => Some(32 * usize::from(id.width)),
            TileKind::Entries => bundle_prefix_len(wider, id.width),
        };
        if len != Some(mine.len()) || !wider.starts_with(&mine) {
            return Err(Tamper::Superseded { path: rel }.into());
        }
    }
    Ok(())
}

/// Bytes of the first `w` entries of a bundle; None when it holds fewer.
fn bundle_prefix_len(b: &[u8], w: u16) -> Option<usize> {
    let mut at = 0usize;
    for _ in 0..w {
        let n = usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
        at += 2 + n;
        if at > b.len() {
            return None;
        }
    }
    Some(at)
}

/// What the fast pass learned from a run of consecutive bundles in which all was well.
struct Span {
    /// `prev` of the first entry, and the leaf hash of the last: to link spans.
    first_prev: Hash,
    last_leaf: Hash,
    entries: u64,
    /// The root of each full tile of 256 leaves (the level-8 nodes).
    tile_roots: Vec<Hash>,
    /// The leaves of the asked-for tiles.
    kept: Vec<(u64, Vec<Hash>)>,
    /// The numbers of the `signer_rotated` entries.
    rotations: Vec<u64>,
}

/// The fast pass over `ids`: every entry decodes and has its position as number, chains to the
/// one before, and hashes to the stored leaf tile. None at the first anomaly of any kind.
fn scan_span(
    dir: &Path,
    ids: &[TileId],
    stored: &std::collections::HashMap<u64, Vec<u16>>,
    keep: &[u64],
) -> Option<Span> {
    let mut span = Span {
        first_prev: [0; 32],
        last_leaf: [0; 32],
        entries: 0,
        tile_roots: Vec::with_capacity(ids.len()),
        kept: Vec::new(),
        rotations: Vec::new(),
    };
    let mut leaves: Vec<Hash> = Vec::with_capacity(TILE_WIDTH as usize);
    for id in ids {
        let widths = stored.get(&id.index)?;
        let full = TileId {
            width: TILE_WIDTH as u16,
            ..*id
        };
        let exact = widths.contains(&id.width);
        if !exact && !widths.contains(&(TILE_WIDTH as u16)) {
            return None;
        }
        let bytes = std::fs::read(dir.join(if exact { *id } else { full }.rel_path())).ok()?;
        let list = tiles::parse_bundle(&bytes)?;
        let width = usize::from(id.width);
        if list.len() < width || (exact && list.len() != width) {
            return None;
        }
        leaves.clear();
        let first = id.index * TILE_WIDTH;
        for (k, e) in list[..width].iter().enumerate() {
            let (seq, prev) = Entry::check(e).ok()?;
            if seq != first + k as u64 {
                return None;
            }
            if span.entries == 0 {
                span.first_prev = prev;
            } else if prev != span.last_leaf {
                return None;
            }
            if e[1] == SIGNER_ROTATED {
                span.rotations.push(seq);
            }
            span.last_leaf = leaf_hash(e);
            span.entries += 1;
            leaves.push(span.last_leaf);
        }
        // The leaf tile (a partial one may have been superseded by the full one).
        let own = TileId {
            kind: TileKind::Hashes(0),
            ..*id
        };
        let tile = std::fs::read(dir.join(own.rel_path()))
            .or_else(|_| {
                std::fs::read(
                    dir.join(
                        TileId {
                            width: TILE_WIDTH as u16,
                            ..own
                        }
                        .rel_path(),
                    ),
                )
            })
            .ok()?;
        let hashes = tiles::parse_hashes(&tile)?;
        if hashes.len() < width
            || hashes[..width] != leaves[..]
            || (hashes.len() > width && id.width as u64 == TILE_WIDTH)
        {
            return None;
        }
        if id.width as u64 == TILE_WIDTH {
            span.tile_roots.push(crate::merkle::root(&leaves));
        }
        if keep.contains(&id.index) {
            span.kept.push((id.index, leaves.clone()));
        }
    }
    Some(span)
}

/// Spans cover exactly `size` entries and chain into each other from the zero hash.
fn spans_link(spans: &[Span], size: u64) -> bool {
    let mut prev = [0u8; 32];
    let mut n = 0;
    for s in spans.iter().filter(|s| s.entries > 0) {
        if s.first_prev != prev {
            return false;
        }
        prev = s.last_leaf;
        n += s.entries;
    }
    n == size
}

/// The diagnosing pass: holds every leaf, names the first problem exactly. When it finds
/// none, returns what the fast pass would have.
#[allow(clippy::type_complexity)]
fn diagnose(
    dir: &Path,
    size: u64,
    bundles: &[TileId],
    stored: &std::collections::HashMap<u64, Vec<u16>>,
    threads: usize,
    keep: &[u64],
) -> Result<
    (
        Vec<Hash>,
        std::collections::HashMap<u64, Vec<Hash>>,
        Vec<u64>,
    ),
    VerifyError,
> {
    let chunk = bundles.len().div_ceil(threads).max(1);
    let results = par_chunks(bundles, chunk, |part| read_bundles(dir, part, stored));
    // (seq claimed, prev, leaf hash) per position.
    let mut entries: Vec<(u64, Hash, Hash)> = Vec::with_capacity(size as usize);
    let mut rotations = Vec::new();
    for r in results {
        let (scanned, rotated) = r?;
        entries.extend(scanned);
        rotations.extend(rotated);
    }
    classify_sequence(&entries, size)?;
    let leaves: Vec<Hash> = entries.iter().map(|e| e.2).collect();
    // The leaf tiles: the first difference names a modified entry.
    let leaf_tiles = tiles::tiles_for(TileKind::Hashes(0), size);
    let per = leaf_tiles.len().div_ceil(threads).max(1);
    for f in par_chunks(&leaf_tiles, per, |ids| compare_tiles(dir, ids, &leaves)) {
        f?;
    }
    check_chain(&entries)?;
    let tile_roots = leaves
        .chunks_exact(TILE_WIDTH as usize)
        .map(crate::merkle::root)
        .collect();
    let kept = keep
        .iter()
        .map(|&t| {
            let start = ((t * TILE_WIDTH) as usize).min(leaves.len());
            let end = (start + TILE_WIDTH as usize).min(leaves.len());
            (t, leaves[start..end].to_vec())
        })
        .collect();
    Ok((tile_roots, kept, rotations))
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
) -> Result<(Scanned, Vec<u64>), VerifyError> {
    let mut out = Vec::with_capacity(ids.len() * TILE_WIDTH as usize);
    let mut rotations = Vec::new();
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
        let full = dir.join(
            TileId {
                width: TILE_WIDTH as u16,
                ..*id
            }
            .rel_path(),
        );
        let (path, bytes) = match std::fs::read(&path) {
            Ok(b) => (path, b),
            // Superseded and pruned by a writer since the listing: the full bundle holds it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != full => {
                let b = std::fs::read(&full)
                    .map_err(|e| VerifyError::Unreadable(format!("{}: {e}", full.display())))?;
                (full, b)
            }
            Err(e) => return Err(VerifyError::Unreadable(format!("{}: {e}", path.display()))),
        };
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
                Ok((seq, prev)) => {
                    if e[1] == SIGNER_ROTATED {
                        rotations.push(seq);
                    }
                    out.push((seq, prev, leaf_hash(e)));
                }
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
    Ok((out, rotations))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Event;
    use crate::log::{LogWriter, OpenMode};
    use crate::note::NoteSigner;

    /// The fast pass must find on a sound log exactly what the reference (diagnosing) pass
    /// finds: the same tile roots and the same kept leaves, for sizes around tile boundaries.
    #[test]
    fn the_fast_pass_and_the_diagnosing_pass_agree_on_a_sound_log() {
        for n in [1u64, 255, 256, 257, 513, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let signer = NoteSigner::from_seed("t.example/l", &[5; 32]).unwrap();
            let mut w =
                LogWriter::open(dir.path(), "t.example/l", signer, OpenMode::FailClosed).unwrap();
            let mut i = 0;
            while i < n {
                let k = 97.min(n - i);
                w.append(
                    (i..i + k)
                        .map(|j| Event::RunFailed {
                            run_id: format!("r{j}"),
                            error: "x".repeat((j % 50) as usize),
                        })
                        .collect(),
                )
                .unwrap();
                i += k;
            }
            let bundles = tiles::tiles_for(TileKind::Entries, n);
            let stored = stored_bundles(dir.path()).unwrap();
            let keep = [n / TILE_WIDTH, 1];
            for threads in [1, 2, 3] {
                let chunk = bundles.len().div_ceil(threads).max(1);
                let spans: Vec<Span> = bundles
                    .chunks(chunk)
                    .map(|c| scan_span(dir.path(), c, &stored, &keep).expect("sound"))
                    .collect();
                assert!(spans_link(&spans, n), "n={n}");
                let (roots, kept, _) =
                    diagnose(dir.path(), n, &bundles, &stored, threads, &keep).unwrap();
                let fast_roots: Vec<Hash> =
                    spans.iter().flat_map(|s| s.tile_roots.clone()).collect();
                assert_eq!(fast_roots, roots, "n={n}");
                for (t, leaves) in spans.into_iter().flat_map(|s| s.kept) {
                    assert_eq!(kept[&t], leaves, "n={n} tile {t}");
                }
            }
            assert_eq!(
                verify(dir.path(), &w_verifier(), None, 2).unwrap().root,
                w.root()
            );
        }
    }

    fn w_verifier() -> NoteVerifier {
        NoteSigner::from_seed("t.example/l", &[5; 32])
            .unwrap()
            .verifier()
    }
}
