//! The C2SP tlog-tiles layout on local disk (<https://c2sp.org/tlog-tiles>).
//!
//! ```text
//!  <dir>/checkpoint                    signed note: origin, size, root
//!  <dir>/tile/<L>/<N>[.p/<W>]          Merkle tile: W (<= 256) hashes at tree level 8L
//!  <dir>/tile/entries/<N>[.p/<W>]      entry bundle: W entries, each u16 length + bytes
//! ```
//! `<N>` is the tile index in groups of three decimal digits, all but the last prefixed with
//! `x` (`1234067` -> `x001/x234/067`). A full tile has 256 hashes (or entries); the rightmost
//! incomplete one is written as a partial tile of width W; once the full tile is committed,
//! the partial tiles it supersedes are deleted. Files are written once, under a
//! temporary name, fsynced and renamed; the checkpoint is written last and is the commit
//! point: anything beyond its size is an unacknowledged (torn) tail.

use crate::merkle::{Hash, NodeSource};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const TILE_WIDTH: u64 = 256;
pub const TILE_HEIGHT: u8 = 8;

/// Which kind of tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// Merkle hashes at tree level `8 * L`.
    Hashes(u8),
    Entries,
}

/// One tile file: kind, index, and width (256 = full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileId {
    pub kind: TileKind,
    pub index: u64,
    pub width: u16,
}

fn index_path(mut n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        parts.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    parts.reverse();
    parts.join("/")
}

impl TileId {
    /// The path relative to the log's folder.
    pub fn rel_path(&self) -> String {
        let kind = match self.kind {
            TileKind::Hashes(l) => l.to_string(),
            TileKind::Entries => "entries".to_string(),
        };
        let mut p = format!("tile/{kind}/{}", index_path(self.index));
        if u64::from(self.width) < TILE_WIDTH {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path relative to the log folder; None when it is not a tile path.
    pub fn parse(rel: &str) -> Option<Self> {
        let rest = rel.strip_prefix("tile/")?;
        let (kind, rest) = rest.split_once('/')?;
        let kind = if kind == "entries" {
            TileKind::Entries
        } else {
            let l: u8 = kind.parse().ok()?;
            if l.to_string() != kind || l > 63 {
                return None;
            }
            TileKind::Hashes(l)
        };
        let (idx, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                let w: u16 = w.parse().ok()?;
                if w == 0
                    || u64::from(w) >= TILE_WIDTH
                    || w.to_string() != rest.split_once(".p/")?.1
                {
                    return None;
                }
                (i, w)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let parts: Vec<&str> = idx.split('/').collect();
        let mut n: u64 = 0;
        for (i, p) in parts.iter().enumerate() {
            let digits = if i + 1 < parts.len() {
                p.strip_prefix('x')?
            } else {
                p
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n = n
                .checked_mul(1000)?
                .checked_add(digits.parse::<u64>().ok()?)?;
        }
        Some(Self {
            kind,
            index: n,
            width,
        })
    }

    /// Is this tile part of the tree of `size` entries (full tiles wholly inside it,
    /// partial tiles no wider than what the tree has at that position)?
    pub fn within(&self, size: u64) -> bool {
        let n = match self.kind {
            TileKind::Hashes(l) => size
                .checked_shr(u32::from(l) * u32::from(TILE_HEIGHT))
                .unwrap_or(0),
            TileKind::Entries => size,
        };
        self.index
            .checked_mul(TILE_WIDTH)
            .and_then(|s| s.checked_add(u64::from(self.width)))
            .is_some_and(|end| end <= n)
    }
}

/// Deletes the partial tiles that the full tile `full` supersedes (its `<N>.p/` folder). The
/// tlog-tiles layout lets a log drop them once the full tile exists, and readers here (and
/// tlog clients) fall back to the full tile's prefix. Kept, they made a log grow with the
/// square of each tile's entries: every append writes a new partial bundle holding all of the
/// tile's entries so far (a log appended one entry at a time held ~128x its entries' bytes).
pub fn prune_partials(dir: &Path, full: &TileId) -> std::io::Result<()> {
    let p = dir.join(format!("{}.p", full.rel_path()));
    match std::fs::remove_dir_all(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The tiles of the tree of `size` entries that cover `kind` (full tiles, then the partial one).
pub fn tiles_for(kind: TileKind, size: u64) -> Vec<TileId> {
    let n = match kind {
        TileKind::Hashes(l) => size
            .checked_shr(u32::from(l) * u32::from(TILE_HEIGHT))
            .unwrap_or(0),
        TileKind::Entries => size,
    };
    let mut out: Vec<TileId> = (0..n / TILE_WIDTH)
        .map(|index| TileId {
            kind,
            index,
            width: TILE_WIDTH as u16,
        })
        .collect();
    if n % TILE_WIDTH > 0 {
        out.push(TileId {
            kind,
            index: n / TILE_WIDTH,
            width: (n % TILE_WIDTH) as u16,
        });
    }
    out
}

/// Splits an entry bundle into entries.
pub fn parse_bundle(b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return None;
        }
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 2 + n {
            return None;
        }
        out.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    Some(out)
}

pub fn encode_bundle(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 2).sum());
    for e in entries {
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

pub fn encode_hashes(h: &[Hash]) -> Vec<u8> {
    h.concat()
}

pub fn parse_hashes(b: &[u8]) -> Option<Vec<Hash>> {
    if !b.len().is_multiple_of(32) {
        return None;
    }
    Some(
        b.chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}

/// Writes `bytes` at `path` atomically: temporary file, fsync, rename. The folder entry is
/// durable only after [`sync_dirs`] of its folder (done once per append for all files). A file
/// already there with the same bytes is left alone (a rewrite after a retry); different bytes
/// are an error: tiles are write-once.
pub fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_all_once(&[(path.to_path_buf(), bytes)])
}

/// [`write_once`] for a group of files, with the fsyncs of their contents issued in parallel:
/// one append writes some 35 files, and a disk flushes concurrent fsyncs together, where one
/// after the other they were most of an append's time. Every file is written, then all are
/// fsynced, then each is renamed into place; as with `write_once`, the names are durable only
/// after [`sync_dirs`].
pub fn write_all_once(files: &[(PathBuf, &[u8])]) -> std::io::Result<()> {
    let mut created = Vec::new();
    let written = write_all_once_noting(files, &mut created);
    if written.is_err() {
        // Nothing this call made is referred to by a checkpoint yet (the caller signs one only
        // after it returns Ok): take it all away again, so that a write that failed (a full
        // disk) leaves no tail for `ledger recover` to discard. Files that were there already,
        // with the same bytes, were not made here and stay.
        for p in created.iter().rev() {
            let _ = std::fs::remove_file(p);
        }
    }
    written
}

/// [`write_all_once`], noting in `created` every path it creates (temporary and final).
fn write_all_once_noting(
    files: &[(PathBuf, &[u8])],
    created: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut pending: Vec<(&Path, PathBuf, std::fs::File)> = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        if let Ok(old) = std::fs::read(path) {
            if old == *bytes {
                continue;
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists with other content; tiles are write-once",
                    path.display()
                ),
            ));
        }
        let tmp = tmp_path(path)?;
        let mut f = std::fs::File::create(&tmp)?;
        created.push(tmp.clone());
        f.write_all(bytes)?;
        pending.push((path, tmp, f));
    }
    const FSYNC_THREADS: usize = 8;
    let per = pending.len().div_ceil(FSYNC_THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .chunks(per)
            .map(|c| s.spawn(move || c.iter().try_for_each(|(_, _, f)| f.sync_all())))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("an fsync thread panicked")))
        })
    })?;
    crash_point();
    for (path, tmp, _) in &pending {
        std::fs::rename(tmp, path)?;
        created.push(path.to_path_buf());
        crash_point();
    }
    Ok(())
}

/// The temporary name beside `path` (its folder created).
fn tmp_path(path: &Path) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(dir.join(format!(".{name}.tmp")))
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    crash_point();
    std::fs::rename(&tmp, path)?;
    crash_point();
    Ok(())
}

/// Fsyncs every folder from the files' folders up to `root`, each once, so new names (and
/// new folders) are durable.
pub fn sync_dirs<'a>(
    root: &Path,
    files: impl IntoIterator<Item = &'a Path>,
) -> std::io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut d = f.parent();
        while let Some(x) = d {
            if !dirs.insert(x.to_path_buf()) || x == root || !x.starts_with(root) {
                break;
            }
            d = x.parent();
        }
    }
    for d in dirs.iter().rev() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Writes `path` atomically and durably, replacing it (the checkpoint).
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Crash testing: with `SEALTRAIL_FAULT_KILL_AFTER_WRITES=N` in the environment, the process
/// SIGKILLs itself at the N-th write step (after a file is written and fsynced, and after it
/// is renamed into place). The crash tests use it to stop the writer between every pair of
/// writes. Without the variable this is one relaxed atomic load.
fn crash_point() {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(limit) = *LIMIT.get_or_init(|| {
        std::env::var("SEALTRAIL_FAULT_KILL_AFTER_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if COUNT.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
        // No unsafe code in this crate: ask kill(1) to deliver SIGKILL to us, then wait for it.
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Reads Merkle hashes of the tree of `size` entries from the tiles in `dir`.
#[derive(Debug)]
pub struct TileReader {
    dir: PathBuf,
    size: u64,
    cache: RefCell<HashMap<TileId, std::rc::Rc<Vec<Hash>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a valid tile")]
    Malformed(String),
    #[error("node ({level}, {index}) is not in the tree of size {size}")]
    OutOfRange { level: u8, index: u64, size: u64 },
}

impl TileReader {
    pub fn new(dir: &Path, size: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            size,
            cache: RefCell::new(HashMap::new()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hashes of the tile at tree level `8 * level` holding node `index`, as wide as the
    /// tree of `size` has it.
    pub fn tile(&self, level: u8, tile_index: u64) -> Result<std::rc::Rc<Vec<Hash>>, TileError> {
        let avail = self.size.checked_shr(u32::from(level) * 8).unwrap_or(0);
        let width = (avail.saturating_sub(tile_index * TILE_WIDTH)).min(TILE_WIDTH);
        if width == 0 {
            return Err(TileError::OutOfRange {
                level: level * 8,
                index: tile_index * TILE_WIDTH,
                size: self.size,
            });
        }
        let id = TileId {
            kind: TileKind::Hashes(level),
            index: tile_index,
            width: width as u16,
        };
        if let Some(t) = self.cache.borrow().get(&id) {
            return Ok(t.clone());
        }
        let rel = id.rel_path();
        let path = self.dir.join(&rel);
        // A partial tile may have been replaced by the full one: take the full one's prefix.
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && width < TILE_WIDTH => {
                let full = TileId {
                    width: TILE_WIDTH as u16,
                    ..id
                };
                let b = std::fs::read(self.dir.join(full.rel_path())).map_err(|source| {
                    TileError::Io {
                        path: rel.clone(),
                        source,
                    }
                })?;
                b.get(..width as usize * 32)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            }
            Err(source) => return Err(TileError::Io { path: rel, source }),
        };
        let hashes = parse_hashes(&bytes)
            .filter(|h| h.len() == width as usize)
            .ok_or(TileError::Malformed(rel))?;
        let rc = std::rc::Rc::new(hashes);
        self.cache.borrow_mut().insert(id, rc.clone());
        Ok(rc)
    }
}

impl NodeSource for TileReader {
    type Error = TileError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, TileError> {
        let out_of_range = TileError::OutOfRange {
            level,
            index,
            size: self.size,
        };
        // (index + 1) * 2^level, refusing overflow (a shift would silently drop bits).
        let end = 1u64
            .checked_shl(u32::from(level))
            .and_then(|w| index.checked_add(1)?.checked_mul(w))
            .ok_or(TileError::OutOfRange {
                level,
                index,
                size: self.size,
            })?;
        if end > self.size {
            return Err(out_of_range);
        }
        let (l, r) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
        let first = index << r;
        let tile = self.tile(l, first / TILE_WIDTH)?;
        let off = (first % TILE_WIDTH) as usize;
        let count = 1usize << r;
        let hashes = tile.get(off..off + count).ok_or(out_of_range)?;
        Ok(crate::merkle::root(hashes))
    }
}

/// The exact bytes of entry `seq` of the tree of `size` entries stored under `dir` (from the
/// full entry bundle, or the partial one when the tile is not complete yet).
pub fn read_entry(dir: &Path, size: u64, seq: u64) -> std::io::Result<Vec<u8>> {
    if seq >= size {
        return Err(std::io::Error::other(format!(
            "entry {seq} is not in the tree of {size} entries"
        )));
    }
    let index = seq / TILE_WIDTH;
    let in_tree = size - index * TILE_WIDTH;
    let id = |width: u64| TileId {
        kind: TileKind::Entries,
        index,
        width: width as u16,
    };
    let b = std::fs::read(dir.join(id(TILE_WIDTH).rel_path()))
        .or_else(|_| std::fs::read(dir.join(id(in_tree.min(TILE_WIDTH)).rel_path())))?;
    let list =
        parse_bundle(&b).ok_or_else(|| std::io::Error::other("an entry bundle is damaged"))?;
    list.get((seq % TILE_WIDTH) as usize)
        .map(|e| e.to_vec())
        .ok_or_else(|| std::io::Error::other(format!("entry {seq} is missing from its bundle")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group write that fails part-way (here the second file's place is a folder, so its
    /// rename fails after the first file's succeeded) takes away everything it made, final
    /// names and temporary files alike, and leaves a file that was there already.
    #[test]
    fn a_failed_group_write_leaves_nothing_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("kept"), b"same").unwrap();
        std::fs::create_dir_all(d.join("taken/inside")).unwrap();
        let files: Vec<(PathBuf, &[u8])> = vec![
            (d.join("kept"), b"same"),
            (d.join("a"), b"first"),
            (d.join("taken"), b"second"),
        ];
        assert!(write_all_once(&files).is_err());
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["kept", "taken"]);
        assert_eq!(std::fs::read(d.join("kept")).unwrap(), b"same");
        // The same group, its obstacle gone, is written whole.
        std::fs::remove_dir_all(d.join("taken")).unwrap();
        write_all_once(&files).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"first");
        assert_eq!(std::fs::read(d.join("taken")).unwrap(), b"second");
    }
}
