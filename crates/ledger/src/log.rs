//! The ledger writer: group-committed appends to a tlog-tiles folder, signed checkpoints,
//! crash recovery.
//!
//! ```text
//!  append(events) ─▶ encode + chain (prev = leaf hash of the entry before)
//!                 ─▶ leaf hashes into the compact range; completed nodes at levels 0, 8, 16..
//!                    fill tiles; full tiles and bundles are written as they complete
//!                 ─▶ partial tiles and bundle of the new right edge written
//!                 ─▶ checkpoint signed and written (the commit point) ─▶ Ok(first seq)
//! ```
//! Every file is fsynced before the checkpoint names it. An I/O error poisons the writer:
//! after a failed fsync the state of the disk is unknown, so it refuses every further append
//! until reopened (which re-reads what is durable).
//!
//! On open, files beyond the checkpoint's size are a torn tail from a crash. By default the
//! open fails ([`OpenMode::FailClosed`]) and says so; [`OpenMode::Recover`] removes them and
//! appends a [`Event::Recovery`] entry that records how many entries were discarded and a
//! hash of their bytes.

use crate::entry::{Entry, Event, MAX_ENTRY_BYTES};
use crate::merkle::{CompactRange, Hash, NodeSource, leaf_hash};
use crate::note::{Checkpoint, NoteSigner, NoteVerifier};
use crate::tiles::{self, TILE_WIDTH, TileId, TileKind, TileReader};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("ledger I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the ledger writer is poisoned by an earlier I/O error; reopen the ledger")]
    Poisoned,
    #[error(
        "the ledger at {dir} has {files} file(s) beyond its checkpoint (size {size}): a crash left an unacknowledged tail; run `sealtrail ledger recover` to discard it (the discard is recorded in the ledger)"
    )]
    TornTail {
        dir: String,
        size: u64,
        files: usize,
    },
    #[error("the checkpoint is not valid: {0}")]
    Checkpoint(String),
    #[error(
        "the ledger's checkpoint is not signed by this signing key ({key}): the key was rotated (`sealtrail ledger rotate-key`) or replaced. Sign with the ledger's current key (copy `ledger.key` from where it was rotated); if a `sealtrail ledger rotate-key` was interrupted, run it again to finish it"
    )]
    NotSigner { key: String },
    #[error("an entry is {0} bytes; the limit is 65535")]
    TooLarge(usize),
    #[error("ledger database: {0}")]
    Db(String),
    #[error("reading tiles: {0}")]
    Tiles(#[from] tiles::TileError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The folder, beside `tile/`, of the checkpoints that hand the signing over from one key to
/// the next (`rotations/<tree size>`, signed by both; written once, kept for good).
pub const ROTATIONS: &str = "rotations";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Refuse to open a log with a torn tail.
    FailClosed,
    /// Discard a torn tail and record the discard as an entry.
    Recover,
}

/// What a successful append made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: u64,
    pub size: u64,
    pub root: Hash,
    pub checkpoint: String,
}

/// The right edge of a tree being built in the tlog-tiles layout: the compact range, the
/// incomplete hash tile of each level and the incomplete entry bundle. The file writer and
/// the export of the PostgreSQL backend both build tiles with it, so both lay out identical
/// bytes for identical entries.
#[derive(Debug, Default)]
pub struct TileBuilder {
    range: CompactRange,
    last_leaf: Hash,
    edge: Vec<Vec<Hash>>,
    bundle: Vec<Vec<u8>>,
}

impl TileBuilder {
    pub fn size(&self) -> u64 {
        self.range.size()
    }
    pub fn root(&self) -> Hash {
        self.range.root()
    }
    /// The leaf hash of the last entry (the `prev` of the next one); zero when empty.
    pub fn last_leaf(&self) -> Hash {
        self.last_leaf
    }

    /// Adds one entry (its bytes and leaf hash); every tile it completes is pushed to `full`.
    pub fn push(&mut self, bytes: Vec<u8>, leaf: Hash, full: &mut Vec<(TileId, Vec<u8>)>) {
        let edge = &mut self.edge;
        let mut completed: Vec<(u8, u64, Hash)> = Vec::new();
        self.range.push_visit(leaf, |level, index, h| {
            if level % 8 == 0 {
                completed.push((level / 8, index, *h));
            }
        });
        for (l, index, h) in completed {
            let l = l as usize;
            if edge.len() <= l {
                edge.resize(l + 1, Vec::new());
            }
            edge[l].push(h);
            debug_assert_eq!(index % TILE_WIDTH, edge[l].len() as u64 - 1);
            if edge[l].len() as u64 == TILE_WIDTH {
                full.push((
                    TileId {
                        kind: TileKind::Hashes(l as u8),
                        index: index / TILE_WIDTH,
                        width: TILE_WIDTH as u16,
                    },
                    tiles::encode_hashes(&edge[l]),
                ));
                edge[l].clear();
            }
        }
        self.bundle.push(bytes);
        if self.bundle.len() as u64 == TILE_WIDTH {
            let index = (self.range.size() - 1) / TILE_WIDTH;
            full.push((
                TileId {
                    kind: TileKind::Entries,
                    index,
                    width: TILE_WIDTH as u16,
                },
                tiles::encode_bundle(&self.bundle),
            ));
            self.bundle.clear();
        }
        self.last_leaf = leaf;
    }

    /// The partial tiles and bundle of the right edge.
    pub fn edge_tiles(&self, out: &mut Vec<(TileId, Vec<u8>)>) {
        let size = self.range.size();
        for (l, hashes) in self.edge.iter().enumerate() {
            if !hashes.is_empty() {
                let n = size >> (8 * l);
                out.push((
                    TileId {
                        kind: TileKind::Hashes(l as u8),
                        index: n / TILE_WIDTH,
                        width: hashes.len() as u16,
                    },
                    tiles::encode_hashes(hashes),
                ));
            }
        }
        if !self.bundle.is_empty() {
            out.push((
                TileId {
                    kind: TileKind::Entries,
                    index: size / TILE_WIDTH,
                    width: self.bundle.len() as u16,
                },
                tiles::encode_bundle(&self.bundle),
            ));
        }
    }
}

/// Encodes `events` as entries `first_seq..`, chained from `prev`, all stamped `time_micros`;
/// returns each entry's bytes and leaf hash.
pub fn encode_events(
    first_seq: u64,
    mut prev: Hash,
    time_micros: i64,
    events: Vec<Event>,
) -> Result<Vec<(Vec<u8>, Hash)>, LogError> {
    let mut encoded = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let b = Entry {
            seq: first_seq + i as u64,
            prev,
            time_micros,
            event,
        }
        .encode();
        if b.len() > MAX_ENTRY_BYTES {
            return Err(LogError::TooLarge(b.len()));
        }
        prev = leaf_hash(&b);
        encoded.push((b, prev));
    }
    Ok(encoded)
}

/// The checkpoint for a tree, stamped with the signing time as a `time` extension line, so a
/// re-signed idle log yields a fresh note (see `docs/ledger-format.md` section 4).
pub fn stamped_checkpoint(origin: &str, size: u64, root: Hash) -> Checkpoint {
    Checkpoint {
        origin: origin.to_string(),
        size,
        root,
        extensions: vec![format!(
            "time {}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )],
    }
}

/// What every ledger backend does for the engine: append a group of events durably and
/// signed, and re-sign the current tree (for idle logs).
pub trait LedgerLog: Send + std::fmt::Debug {
    /// Appends `events` as one group commit: durable and signed when this returns Ok.
    fn append(&mut self, events: Vec<Event>) -> Result<Appended, LogError>;
    /// Signs a fresh checkpoint of the current tree; returns the note.
    fn resign(&mut self) -> Result<String, LogError>;
}

/// A writer of a ledger folder. Several processes on one machine may hold one each (two runs
/// sharing a home folder, or `ledger sign --every` beside them): every append and re-sign
/// takes an exclusive lock on `<dir>/lock` and first catches up with what the others made
/// durable, so they extend one log instead of forking it.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    origin: String,
    signer: NoteSigner,
    tb: TileBuilder,
    poisoned: bool,
}

/// Reads and verifies the checkpoint of the ledger in `dir`; None when there is none.
pub fn read_checkpoint(
    dir: &Path,
    verifier: &NoteVerifier,
) -> Result<Option<(Checkpoint, String)>, LogError> {
    let path = dir.join("checkpoint");
    let note = match std::fs::read_to_string(&path) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let text = verifier
        .open(&note)
        .map_err(|e| LogError::Checkpoint(e.to_string()))?;
    let cp = Checkpoint::parse(text).map_err(|e| LogError::Checkpoint(e.to_string()))?;
    Ok(Some((cp, note)))
}

/// The checkpoint of `dir` for a writer signing with `verifier`'s key: the key must have signed
/// it last (after a hand-over the old key's signature is still on the hand-over checkpoint,
/// but it no longer signs for the log).
fn read_own_checkpoint(
    dir: &Path,
    verifier: &NoteVerifier,
) -> Result<Option<Checkpoint>, LogError> {
    let path = dir.join("checkpoint");
    match std::fs::read_to_string(&path) {
        Ok(note) if !verifier.signed_last(&note) => Err(LogError::NotSigner {
            key: verifier.who(),
        }),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => match read_checkpoint(dir, verifier)? {
            Some((cp, _)) if handed_over(dir, verifier, cp.size)? => Err(LogError::NotSigner {
                key: verifier.who(),
            }),
            cp => Ok(cp.map(|(cp, _)| cp)),
        },
    }
}

/// The files of `<dir>/rotations/`: each name, and the tree size it names (`None`: not a
/// number, such as a temporary file). Empty when the folder does not exist.
pub fn list_rotations(dir: &Path) -> std::io::Result<Vec<(String, Option<u64>)>> {
    let rd = match std::fs::read_dir(dir.join(ROTATIONS)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    rd.map(|e| {
        let name = e?.file_name().to_string_lossy().into_owned();
        let size = name.parse().ok();
        Ok((name, size))
    })
    .collect()
}

/// Whether a hand-over kept in `rotations/` retired `verifier`'s key (it signed the hand-over
/// first, not last) within the tree of `size` entries (one beyond it is a torn tail's, not yet
/// the log's): a checkpoint it signs since is not the log's, even when it is the one on disk
/// (signed with a copy of the key).
fn handed_over(dir: &Path, verifier: &NoteVerifier, size: u64) -> Result<bool, LogError> {
    let d = dir.join(ROTATIONS);
    for (name, t) in list_rotations(dir).map_err(io(&d))? {
        if t.is_some_and(|t| t <= size) {
            let note = std::fs::read_to_string(d.join(name)).unwrap_or_default();
            if verifier.open(&note).is_ok() && !verifier.signed_last(&note) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Files of `rotations/` that the checkpoint of size `size` does not cover: hand-over notes of
/// a torn tail, and temporary files.
fn torn_rotations(dir: &Path, size: u64) -> Result<Vec<(String, Option<TileId>)>, LogError> {
    Ok(list_rotations(dir)
        .map_err(io(&dir.join(ROTATIONS)))?
        .into_iter()
        .filter(|(_, t)| t.is_none_or(|t| t > size))
        .map(|(name, _)| (format!("{ROTATIONS}/{name}"), None))
        .collect())
}

/// Every tile file under `dir`, with its path; stray temporary files are reported as `None`.
pub fn list_tiles(dir: &Path) -> Result<Vec<(String, Option<TileId>)>, LogError> {
    let mut out = Vec::new();
    let root = dir.join("tile");
    if !root.exists() {
        return Ok(out);
    }
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            if e.file_type().map_err(io(&p))?.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('\\', "/");
                let id = TileId::parse(&rel);
                out.push((rel, id));
            }
        }
    }
    Ok(out)
}

impl LogWriter {
    /// Opens (creating when empty) the ledger in `dir`, signing checkpoints with `signer`
    /// under the checkpoint origin `origin`.
    pub fn open(
        dir: &Path,
        origin: &str,
        signer: NoteSigner,
        mode: OpenMode,
    ) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Held while the tail is judged: another process's append in flight is not torn.
        let _lock = lock(dir)?;
        let verifier = signer.verifier();
        let (size, root) = match read_own_checkpoint(dir, &verifier)? {
            Some(cp) => {
                if cp.origin != origin {
                    return Err(LogError::Checkpoint(format!(
                        "origin is `{}`, expected `{origin}`",
                        cp.origin
                    )));
                }
                (cp.size, Some(cp.root))
            }
            None => (0, None),
        };
        // Files beyond the checkpoint: a torn tail.
        let listed = list_tiles(dir)?;
        let mut torn: Vec<(String, Option<TileId>)> = listed
            .iter()
            .filter(|(_, id)| !id.is_some_and(|id| id.within(size)))
            .cloned()
            .collect();
        torn.extend(torn_rotations(dir, size)?);
        let mut discarded = (0u64, Sha256::new());
        if !torn.is_empty() {
            if mode == OpenMode::FailClosed {
                return Err(LogError::TornTail {
                    dir: dir.display().to_string(),
                    size,
                    files: torn.len(),
                });
            }
            // Count and hash the discarded entries (the widest torn bundle of each index).
            let mut widest: std::collections::BTreeMap<u64, (u16, String)> = Default::default();
            for (rel, id) in &torn {
                if let Some(id) = id
                    && id.kind == TileKind::Entries
                    && widest.get(&id.index).is_none_or(|(w, _)| *w < id.width)
                {
                    widest.insert(id.index, (id.width, rel.clone()));
                }
            }
            for (index, (_, rel)) in &widest {
                let b = std::fs::read(dir.join(rel)).unwrap_or_default();
                if let Some(entries) = tiles::parse_bundle(&b) {
                    for (i, e) in entries.iter().enumerate() {
                        if index * TILE_WIDTH + i as u64 >= size {
                            discarded.0 += 1;
                            discarded.1.update(e);
                        }
                    }
                }
            }
            for (rel, _) in &torn {
                let p = dir.join(rel);
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        // Partial tiles superseded by a full tile of the checkpoint's tree (left by a crash
        // between a commit and its pruning, or by versions that kept them). The listing is
        // from before the torn tail went, which only held tiles beyond the checkpoint.
        let full: std::collections::HashSet<TileId> = listed
            .iter()
            .filter_map(|(_, id)| *id)
            .filter(|id| u64::from(id.width) == TILE_WIDTH && id.within(size))
            .collect();
        let superseded: std::collections::HashSet<TileId> = listed
            .iter()
            .filter_map(|(_, id)| *id)
            .filter(|id| u64::from(id.width) < TILE_WIDTH)
            .map(|id| TileId {
                width: TILE_WIDTH as u16,
                ..id
            })
            .filter(|f| full.contains(f))
            .collect();
        for f in &superseded {
            tiles::prune_partials(dir, f).map_err(io(dir))?;
        }
        let mut w = Self {
            dir: dir.to_path_buf(),
            origin: origin.to_string(),
            signer,
            tb: TileBuilder::default(),
            poisoned: false,
        };
        if size > 0 {
            w.load_edge(size)?;
            if Some(w.tb.root()) != root {
                return Err(LogError::Checkpoint(
                    "the tiles do not hash to the checkpoint's root; run `sealtrail ledger verify`"
                        .into(),
                ));
            }
        }
        if !torn.is_empty() {
            let digest: Hash = discarded.1.finalize().into();
            w.append_locked(
                vec![Event::Recovery {
                    discarded_entries: discarded.0,
                    discarded_sha256: digest,
                    note: format!(
                        "removed {} file(s) beyond checkpoint size {size}",
                        torn.len()
                    ),
                }],
                None,
            )?;
        }
        Ok(w)
    }

    /// Rebuilds the right edge (compact range, incomplete tiles and bundle) of the tree of
    /// `size` entries from the tiles on disk.
    fn load_edge(&mut self, size: u64) -> Result<(), LogError> {
        let r = TileReader::new(&self.dir, size);
        // Compact range: one complete subtree per set bit of size, largest first.
        let mut stack = Vec::new();
        let mut start = 0u64;
        for bit in (0..64u8).rev() {
            if size & (1 << bit) != 0 {
                stack.push(r.node(bit, start >> bit)?);
                start += 1 << bit;
            }
        }
        self.tb.range = CompactRange::from_parts(size, stack);
        self.tb.last_leaf = r.node(0, size - 1)?;
        let mut level = 0u8;
        loop {
            let n = size.checked_shr(u32::from(level) * 8).unwrap_or(0);
            if n == 0 {
                break;
            }
            let part = n % TILE_WIDTH;
            let hashes = if part > 0 {
                r.tile(level, n / TILE_WIDTH)?.as_ref().clone()
            } else {
                Vec::new()
            };
            self.tb.edge.push(hashes);
            level += 1;
        }
        let part = size % TILE_WIDTH;
        if part > 0 {
            let id = TileId {
                kind: TileKind::Entries,
                index: size / TILE_WIDTH,
                width: part as u16,
            };
            let p = self.dir.join(id.rel_path());
            let b = std::fs::read(&p).map_err(io(&p))?;
            let entries = tiles::parse_bundle(&b)
                .filter(|e| e.len() == part as usize)
                .ok_or_else(|| {
                    LogError::Checkpoint(format!("{} is not a valid bundle", id.rel_path()))
                })?;
            self.tb.bundle = entries.into_iter().map(<[u8]>::to_vec).collect();
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.tb.size()
    }
    pub fn root(&self) -> Hash {
        self.tb.root()
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `events` as one group commit: durable and signed when this returns Ok.
    pub fn append(&mut self, events: Vec<Event>) -> Result<Appended, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let r = self.append_inner(events);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn append_inner(&mut self, events: Vec<Event>) -> Result<Appended, LogError> {
        let _lock = lock(&self.dir)?;
        self.catch_up()?;
        self.append_locked(events, None)
    }

    /// Hands the signing over to `new` (`sealtrail ledger rotate-key`): appends a
    /// `signer_rotated` entry naming both keys (and `actor`), signs the checkpoint of the tree
    /// ending with it with the current key, then `new`, keeps that note as
    /// `rotations/<size>` before it becomes the checkpoint, and signs with `new` from then on.
    /// Until the checkpoint is written the entry is a torn tail (`ledger recover` discards it);
    /// once it is, a writer holding the old key can no longer append.
    pub fn rotate_signer(&mut self, new: NoteSigner, actor: Hash) -> Result<Appended, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let r = (|| {
            let _lock = lock(&self.dir)?;
            self.catch_up()?;
            let event = Event::SignerRotated {
                old_key: self.signer.verifier().to_key_string(),
                new_key: new.verifier().to_key_string(),
                actor,
            };
            self.append_locked(vec![event], Some(&new))
        })();
        match r {
            Ok(a) => {
                self.signer = new;
                Ok(a)
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Reloads the right edge when another writer moved the checkpoint since this one last
    /// wrote. Called with the lock held.
    fn catch_up(&mut self) -> Result<(), LogError> {
        let Some(cp) = read_own_checkpoint(&self.dir, &self.signer.verifier())? else {
            return Ok(());
        };
        if cp.size == self.size() && cp.root == self.root() {
            return Ok(());
        }
        if cp.size < self.size() {
            return Err(LogError::Checkpoint(format!(
                "the checkpoint went back from size {} to {}; run `sealtrail ledger verify`",
                self.size(),
                cp.size
            )));
        }
        self.tb = TileBuilder::default();
        self.load_edge(cp.size)?;
        if self.root() != cp.root {
            return Err(LogError::Checkpoint(
                "the tiles do not hash to the checkpoint's root; run `sealtrail ledger verify`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Appends with the lock held and the edge current.
    /// With `cosigner`, the checkpoint is a hand-over (see [`LogWriter::rotate_signer`]).
    fn append_locked(
        &mut self,
        events: Vec<Event>,
        cosigner: Option<&NoteSigner>,
    ) -> Result<Appended, LogError> {
        let first_seq = self.size();
        let encoded = encode_events(first_seq, self.tb.last_leaf, now_micros(), events)?;
        let mut files: Vec<(TileId, Vec<u8>)> = Vec::new();
        for (bytes, leaf) in encoded {
            self.tb.push(bytes, leaf, &mut files);
        }
        self.tb.edge_tiles(&mut files);
        let named: Vec<(PathBuf, &[u8])> = files
            .iter()
            .map(|(id, bytes)| (self.dir.join(id.rel_path()), bytes.as_slice()))
            .collect();
        tiles::write_all_once(&named).map_err(io(&self.dir))?;
        let paths: Vec<PathBuf> = named.into_iter().map(|(p, _)| p).collect();
        // Every new name durable before the checkpoint refers to it.
        tiles::sync_dirs(&self.dir, paths.iter().map(PathBuf::as_path)).map_err(io(&self.dir))?;
        let checkpoint = self.sign_locked(cosigner)?;
        // Committed: the partial tiles that this append's full tiles replace can go. A failure
        // here does not undo the append; what is left is pruned when a writer next opens.
        for (id, _) in &files {
            if u64::from(id.width) == TILE_WIDTH {
                let _ = tiles::prune_partials(&self.dir, id);
            }
        }
        Ok(Appended {
            first_seq,
            size: self.size(),
            root: self.root(),
            checkpoint,
        })
    }

    /// Signs and writes a fresh checkpoint of the current tree (the newest on disk, whoever
    /// wrote it): re-signing an idle log.
    pub fn sign_checkpoint(&mut self) -> Result<String, LogError> {
        let _lock = lock(&self.dir)?;
        self.catch_up()?;
        self.sign_locked(None)
    }

    fn sign_locked(&mut self, cosigner: Option<&NoteSigner>) -> Result<String, LogError> {
        let cp = stamped_checkpoint(&self.origin, self.size(), self.root());
        let bad = |e: crate::note::NoteError| LogError::Checkpoint(e.to_string());
        let mut note = self.signer.sign(&cp.to_text()).map_err(bad)?;
        if let Some(new) = cosigner {
            note = new.cosign(&note).map_err(bad)?;
            // Kept for good, and durable before the checkpoint makes the entry part of the log.
            let p = self.dir.join(ROTATIONS).join(self.size().to_string());
            std::fs::create_dir_all(self.dir.join(ROTATIONS))
                .and_then(|()| tiles::write_once(&p, note.as_bytes()))
                .and_then(|()| tiles::sync_dirs(&self.dir, [p.as_path()]))
                .map_err(io(&p))?;
        }
        let p = self.dir.join("checkpoint");
        tiles::write_replace(&p, note.as_bytes()).map_err(|e| {
            self.poisoned = true;
            io(&p)(e)
        })?;
        Ok(note)
    }
}

impl LedgerLog for LogWriter {
    fn append(&mut self, events: Vec<Event>) -> Result<Appended, LogError> {
        LogWriter::append(self, events)
    }
    fn resign(&mut self) -> Result<String, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.sign_checkpoint()
    }
}

/// Takes the exclusive lock of the ledger folder (blocking until other writers release it).
fn lock(dir: &Path) -> Result<std::fs::File, LogError> {
    let p = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io(&p))?;
    f.lock().map_err(io(&p))?;
    Ok(f)
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
