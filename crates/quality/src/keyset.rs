//! The set of keys a `unique` check has seen, in bounded memory.
//!
//! ```text
//!   insert(k) ──▶ in memory? ──▶ any run's Bloom filter says maybe? ──▶ that run's block on disk
//!                    │ (≤ SPILL_KEYS, sharded hash sets)                 (one 4 KiB read)
//!                    ▼ full
//!   sort ──▶ write a run (anonymous temp file) + Bloom filter + fence keys ──▶ merge equal-sized runs
//! ```
//!
//! A `unique` check must remember every key of the run. Keys are 128-bit fingerprints (see
//! `fingerprint` in the crate root); up to [`SPILL_KEYS`] of them live in hash sets, and beyond
//! that they are sorted and spilled to *runs*: anonymous temporary files (unlinked from the
//! start, so nothing is left behind even by a killed process) with, in memory, a split-block
//! Bloom filter (16 bits per key: one cache line probed per lookup, ~0.1 % false positives)
//! and the first key of every 4 KiB block. Runs of similar size are merged (a binary counter:
//! O(log n) runs, each key rewritten O(log n) times). Memory per spilled key is ~2 bytes,
//! against ~17-25 for a key held in a hash set: 10M keys take ~55 MiB instead of ~290 MiB.
//!
//! Fingerprints are keyed with a random per-run seed, so the spilled files hold nothing a
//! dictionary of candidate key values could be matched against.
//!
//! Hand-written: no maintained crate offers an on-disk membership set with this profile
//! (insert-heavy, almost every probe a miss, bounded memory, no persistence wanted); the parts
//! are a sort, a k-way merge and a Bloom filter.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// Keys held in memory before they are spilled to a run (~25-32 MiB).
pub const SPILL_KEYS: usize = 1 << 20;
/// Keys per block of a run file: one block is read per lookup that gets past the Bloom filter.
const BLOCK_KEYS: usize = 256;
const KEY_BYTES: usize = 16;

/// A set of 128-bit key fingerprints in bounded memory (see the module documentation).
#[derive(Debug)]
pub struct KeySet {
    mem: MemSet,
    limit: usize,
    runs: Vec<Run>,
    /// Set when a spill failed (for example a full disk): the keys then stay in memory.
    spill_failed: bool,
}

impl Default for KeySet {
    fn default() -> Self {
        Self::with_limit(SPILL_KEYS)
    }
}

impl KeySet {
    /// A set that spills after `limit` keys in memory.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            mem: MemSet::default(),
            limit: limit.max(1),
            runs: Vec::new(),
            spill_failed: false,
        }
    }

    /// Adds `k`; false when it was already present.
    pub fn insert(&mut self, k: u128) -> std::io::Result<bool> {
        // The runs first, then one probe of memory that inserts when absent (looking it up
        // and then inserting took two cache misses per key of a large table).
        if self.in_runs(k)? || !self.mem.insert(k) {
            return Ok(false);
        }
        if self.mem.len() >= self.limit
            && !self.spill_failed
            && let Err(e) = self.spill()
        {
            // Memory is the fallback, never a wrong answer: the keys stay where they are.
            tracing::warn!(
                "cannot spill unique-check keys to a temporary file ({e}); keeping them in memory"
            );
            self.spill_failed = true;
        }
        Ok(true)
    }

    pub fn contains(&mut self, k: u128) -> std::io::Result<bool> {
        Ok(self.mem.contains(k) || self.in_runs(k)?)
    }

    fn in_runs(&mut self, k: u128) -> std::io::Result<bool> {
        for r in &mut self.runs {
            if r.contains(k)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn len(&self) -> usize {
        self.mem.len() + self.runs.iter().map(|r| r.len).sum::<usize>()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How many runs are on disk (for tests and diagnostics).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Moves the keys in memory to a new run. On an error nothing has moved.
    fn spill(&mut self) -> std::io::Result<()> {
        let mut keys = self.mem.keys();
        keys.sort_unstable();
        let run = Run::write(keys.len(), keys.into_iter().map(Ok))?;
        self.mem.clear();
        self.runs.push(run);
        // Binary-counter merging: while the newest run is at least half the size of the one
        // before it, merge the two. Run sizes then at least double from newest to oldest.
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            if self.runs[n - 1].len * 2 < self.runs[n - 2].len {
                break;
            }
            // A failed merge leaves both runs in place: still correct, only more of them.
            let merged = Run::merge(&self.runs[n - 2], &self.runs[n - 1])?;
            self.runs.truncate(n - 2);
            self.runs.push(merged);
        }
        Ok(())
    }
}

/// Keys in memory, split into 16 hash tables by the top 4 bits. A hash table doubles when it
/// fills, holding old and new tables at once; with 16 shards a resize holds 1/16 of the keys
/// twice, so peak memory stays near the steady state. (256 shards were measured 40% slower
/// overall: thousands of large table reallocations, each faulting fresh pages.)
#[derive(Debug)]
struct MemSet {
    shards: Vec<HashSet<u128, BuildIdentity>>,
}

const SHARDS: usize = 16;
const SHARD_SHIFT: u32 = 124;

impl Default for MemSet {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashSet::default()).collect(),
        }
    }
}

impl MemSet {
    fn insert(&mut self, k: u128) -> bool {
        self.shards[(k >> SHARD_SHIFT) as usize].insert(k)
    }
    fn contains(&self, k: u128) -> bool {
        self.shards[(k >> SHARD_SHIFT) as usize].contains(&k)
    }
    fn len(&self) -> usize {
        self.shards.iter().map(HashSet::len).sum()
    }
    fn keys(&self) -> Vec<u128> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.shards {
            out.extend(s.iter().copied());
        }
        out
    }
    /// Empties the tables, keeping their capacity for the next round.
    fn clear(&mut self) {
        self.shards.iter_mut().for_each(HashSet::clear);
    }
}

/// The fingerprints are already uniformly distributed hashes: use them as they are.
#[derive(Debug, Default, Clone, Copy)]
struct BuildIdentity;

impl std::hash::BuildHasher for BuildIdentity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

#[derive(Debug, Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed here; fold whatever arrives.
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 ^= u64::from_le_bytes(w);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// Sorted keys in an anonymous temporary file, with what it takes to look one up.
#[derive(Debug)]
struct Run {
    file: File,
    len: usize,
    /// The first key of every block.
    fences: Vec<u128>,
    bloom: Bloom,
    block: Vec<u8>,
}

impl Run {
    /// Writes `len` keys, which `keys` yields in ascending order.
    fn write(
        len: usize,
        keys: impl Iterator<Item = std::io::Result<u128>>,
    ) -> std::io::Result<Self> {
        let file = tempfile::tempfile()?;
        let mut bloom = Bloom::new(len);
        let mut fences = Vec::with_capacity(len.div_ceil(BLOCK_KEYS));
        let mut w = BufWriter::with_capacity(1 << 16, &file);
        let mut n = 0usize;
        for k in keys {
            let k = k?;
            if n.is_multiple_of(BLOCK_KEYS) {
                fences.push(k);
            }
            bloom.insert(k);
            w.write_all(&k.to_le_bytes())?;
            n += 1;
        }
        w.flush()?;
        drop(w);
        if n != len {
            return Err(std::io::Error::other(format!(
                "a key run holds {n} keys, expected {len}"
            )));
        }
        Ok(Self {
            file,
            len,
            fences,
            bloom,
            block: Vec::new(),
        })
    }

    /// Merges two runs (disjoint: a key is only ever added once) into a new one.
    fn merge(a: &Run, b: &Run) -> std::io::Result<Run> {
        let len = a.len + b.len;
        let mut x = KeyReader::new(&a.file)?.peekable();
        let mut y = KeyReader::new(&b.file)?.peekable();
        let merged = std::iter::from_fn(move || {
            let take_x = match (x.peek(), y.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => true,
                (None, Some(_)) | (_, Some(Err(_))) => false,
                (Some(Ok(p)), Some(Ok(q))) => p < q,
            };
            if take_x { x.next() } else { y.next() }
        });
        Run::write(len, merged)
    }

    fn contains(&mut self, k: u128) -> std::io::Result<bool> {
        if !self.bloom.maybe(k) {
            return Ok(false);
        }
        let b = self.fences.partition_point(|f| *f <= k);
        if b == 0 {
            return Ok(false);
        }
        let first = (b - 1) * BLOCK_KEYS;
        let n = BLOCK_KEYS.min(self.len - first);
        self.block.resize(n * KEY_BYTES, 0);
        let mut f = &self.file;
        f.seek(SeekFrom::Start((first * KEY_BYTES) as u64))?;
        f.read_exact(&mut self.block)?;
        let key_at = |i: usize| {
            let mut w = [0u8; KEY_BYTES];
            w.copy_from_slice(&self.block[i * KEY_BYTES..(i + 1) * KEY_BYTES]);
            u128::from_le_bytes(w)
        };
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match key_at(mid).cmp(&k) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(true),
            }
        }
        Ok(false)
    }
}

/// Reads a run's keys in order.
struct KeyReader<'a>(BufReader<&'a File>);

impl<'a> KeyReader<'a> {
    fn new(mut f: &'a File) -> std::io::Result<Self> {
        f.seek(SeekFrom::Start(0))?;
        Ok(Self(BufReader::with_capacity(1 << 16, f)))
    }
}

impl Iterator for KeyReader<'_> {
    type Item = std::io::Result<u128>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut w = [0u8; KEY_BYTES];
        match self.0.read_exact(&mut w) {
            Ok(()) => Some(Ok(u128::from_le_bytes(w))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// A split-block Bloom filter (the layout Parquet specifies for its filters): a key picks one
/// 256-bit block and sets one bit in each of its eight 32-bit words, so a lookup touches a
/// single cache line.
#[derive(Debug)]
struct Bloom {
    blocks: Vec<[u32; 8]>,
}

/// Odd constants that spread a 32-bit hash over the eight words' bit positions (from the
/// Parquet specification's split-block Bloom filter).
const SALT: [u32; 8] = [
    0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31,
];

impl Bloom {
    /// A filter for `keys` keys at 16 bits per key.
    fn new(keys: usize) -> Self {
        Self {
            blocks: vec![[0; 8]; (keys * 16).div_ceil(256).max(1)],
        }
    }
    fn locate(&self, k: u128) -> (usize, u32) {
        // The key is a uniform hash: its top 64 bits choose the block, its low 32 the bits.
        let block = (((k >> 64) as u64 as u128 * self.blocks.len() as u128) >> 64) as usize;
        (block, k as u32)
    }
    fn insert(&mut self, k: u128) {
        let (b, h) = self.locate(k);
        for (w, s) in self.blocks[b].iter_mut().zip(SALT) {
            *w |= 1 << (h.wrapping_mul(s) >> 27);
        }
    }
    fn maybe(&self, k: u128) -> bool {
        let (b, h) = self.locate(k);
        self.blocks[b]
            .iter()
            .zip(SALT)
            .all(|(w, s)| w & (1 << (h.wrapping_mul(s) >> 27)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A uniform 128-bit key from a small integer (as the fingerprints are).
    fn key(i: u64) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes())
    }

    #[test]
    fn key_set_finds_keys_in_every_shard() {
        let mut k = KeySet::default();
        let keys: Vec<u128> = (0..5000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        for &x in &keys {
            assert!(k.insert(x).unwrap());
        }
        assert_eq!(k.len(), 5000);
        assert!(k.mem.shards.iter().all(|s| !s.is_empty()));
        for &x in &keys {
            assert!(k.contains(x).unwrap() && !k.insert(x).unwrap());
        }
        assert!(!k.contains(1).unwrap());
    }

    #[test]
    fn finds_keys_in_memory_and_in_every_run() {
        let mut s = KeySet::with_limit(100);
        for i in 0..1_000 {
            assert!(s.insert(key(i)).unwrap(), "key {i} is new");
        }
        assert!(s.runs() >= 1, "the keys spilled");
        assert!(
            s.runs() <= 4,
            "equal-sized runs were merged: {} runs",
            s.runs()
        );
        assert_eq!(s.len(), 1_000);
        for i in 0..1_000 {
            assert!(!s.insert(key(i)).unwrap(), "key {i} was seen");
        }
        for i in 1_000..3_000 {
            assert!(!s.contains(key(i)).unwrap(), "key {i} was never added");
        }
    }

    #[test]
    fn bloom_filter_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::new(10_000);
        for i in 0..10_000 {
            b.insert(key(i));
        }
        assert!((0..10_000).all(|i| b.maybe(key(i))));
        let fp = (10_000..110_000).filter(|&i| b.maybe(key(i))).count();
        assert!(
            fp < 500,
            "{fp} false positives in 100,000 (want well under 0.5 %)"
        );
    }

    #[test]
    fn memory_in_use_is_bounded_by_the_limit() {
        let mut s = KeySet::with_limit(1_000);
        for i in 0..20_000 {
            s.insert(key(i)).unwrap();
        }
        assert!(s.mem.len() < 1_000);
        // Older runs are larger (merged): O(log n) runs.
        let sizes: Vec<usize> = s.runs.iter().map(|r| r.len).collect();
        assert!(sizes.windows(2).all(|w| w[0] > w[1]), "{sizes:?}");
        assert!(sizes.len() <= 5, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>() + s.mem.len(), 20_000);
    }

    proptest! {
        /// Against a plain hash set, for any sequence of keys with repeats and a tiny limit
        /// (so that lookups go through memory, runs and merges).
        #[test]
        fn answers_like_a_hash_set(ops in proptest::collection::vec(0u64..400, 0..2_000), limit in 1usize..50) {
            let mut s = KeySet::with_limit(limit);
            let mut want = std::collections::HashSet::new();
            for i in ops {
                prop_assert_eq!(s.insert(key(i)).unwrap(), want.insert(i));
            }
            prop_assert_eq!(s.len(), want.len());
        }
    }
}
