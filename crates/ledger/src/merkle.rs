//! The RFC 6962 / RFC 9162 Merkle tree: hashing, proofs and their verification.
//!
//! Leaves hash as `SHA-256(0x00 || data)`, interior nodes as `SHA-256(0x01 || left || right)`,
//! and the tree over `n` leaves splits at the largest power of two below `n` (RFC 9162 §2.1.1).
//! Written here rather than taken from a crate: it is the core of the product's guarantees,
//! fifty lines, and pinned by the transparency-dev test vectors in `testdata/merkle`.
//!
//! Proof generation reads complete subtree hashes through [`NodeSource`], so the same code
//! serves an in-memory tree (tests, record batches) and the tiles on disk.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Why a proof did not verify. Verification never panics, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree sizes {0} and {1} cannot be proven consistent (need 0 < first <= second)")]
    BadSizes(u64, u64),
    #[error("a proof hash is {0} bytes long, not 32")]
    BadHashLength(usize),
    #[error("the proof has {got} hashes; a valid one has {want}")]
    WrongLength { got: usize, want: usize },
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Root of a tree over `leaves` (leaf hashes), in one pass with a stack of complete subtrees.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut r = CompactRange::default();
    for l in leaves {
        r.push(*l);
    }
    r.root()
}

/// The right edge of a growing tree: one hash per complete subtree (at most 64), enough to
/// append leaves and compute the root without the rest of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// Hashes of the complete subtrees, largest (leftmost) first.
    stack: Vec<Hash>,
}

impl CompactRange {
    /// A range from its parts: one complete-subtree hash per set bit of `size`, largest first.
    pub fn from_parts(size: u64, stack: Vec<Hash>) -> Self {
        debug_assert_eq!(stack.len(), size.count_ones() as usize);
        Self { size, stack }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The complete-subtree hashes, largest (leftmost) first.
    pub fn parts(&self) -> &[Hash] {
        &self.stack
    }

    /// Appends a leaf hash; calls `visit(level, index, hash)` for every node completed,
    /// the leaf itself included (level 0).
    pub fn push_visit(&mut self, leaf: Hash, mut visit: impl FnMut(u8, u64, &Hash)) {
        let mut h = leaf;
        let mut level = 0u8;
        let mut idx = self.size;
        visit(0, idx, &h);
        let mut n = self.size;
        while n & 1 == 1 {
            // `stack` holds one hash per set bit of `size`, so it is never empty here.
            let Some(left) = self.stack.pop() else { break };
            h = node_hash(&left, &h);
            level += 1;
            idx >>= 1;
            visit(level, idx, &h);
            n >>= 1;
        }
        self.stack.push(h);
        self.size += 1;
    }

    pub fn push(&mut self, leaf: Hash) {
        self.push_visit(leaf, |_, _, _| {});
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        fold_parts(self.stack.iter())
    }
}

/// The root over complete subtrees given left to right, each no larger than the one before
/// (the right edge of a tree): folded from the right.
pub fn fold_parts<'a>(parts: impl DoubleEndedIterator<Item = &'a Hash>) -> Hash {
    let mut it = parts.rev();
    let Some(first) = it.next() else {
        return empty_root();
    };
    it.fold(*first, |acc, l| node_hash(l, &acc))
}

/// Hashes of complete subtrees: `node(level, index)` is the root over leaves
/// `index * 2^level .. (index + 1) * 2^level`.
pub trait NodeSource {
    type Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// An in-memory tree over leaf hashes (for tests and per-batch record trees).
#[derive(Debug, Clone)]
pub struct MemTree {
    /// levels[0] = leaves, levels[k] = complete nodes at level k.
    levels: Vec<Vec<Hash>>,
}

impl MemTree {
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let prev = levels.last().map(Vec::as_slice).unwrap_or_default();
            let next = prev
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(next);
        }
        Self { levels }
    }
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }
    pub fn root(&self) -> Hash {
        subtree(self, 0, self.size()).unwrap_or_else(|_| empty_root())
    }
    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= self.size() {
            return Err(ProofError::IndexOutOfRange {
                index,
                size: self.size(),
            });
        }
        inclusion_proof(self, index, self.size())
    }
}

impl NodeSource for MemTree {
    type Error = ProofError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or(ProofError::IndexOutOfRange {
                index,
                size: self.size(),
            })
    }
}

/// Root over leaves `lo..hi` (lo < hi), where `lo` is a multiple of the largest power of two
/// not above `hi - lo` (true for every range the proofs ask for).
pub fn subtree<S: NodeSource>(s: &S, lo: u64, hi: u64) -> Result<Hash, S::Error> {
    // Split into complete subtrees left to right, then fold right to left.
    let mut parts = Vec::new();
    let mut at = lo;
    while at < hi {
        let mut level = 0u8;
        while level < 63
            && at.is_multiple_of(1u64 << (level + 1))
            && at + (1u64 << (level + 1)) <= hi
        {
            level += 1;
        }
        parts.push(s.node(level, at >> level)?);
        at += 1 << level;
    }
    let mut it = parts.into_iter().rev();
    let Some(last) = it.next() else {
        return Ok(empty_root());
    };
    Ok(it.fold(last, |acc, l| node_hash(&l, &acc)))
}

/// RFC 9162 PATH(m, D[lo:hi]), deepest hash first.
fn path<S: NodeSource>(
    s: &S,
    m: u64,
    lo: u64,
    hi: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if hi - lo <= 1 {
        return Ok(());
    }
    let k = split(hi - lo);
    if m < lo + k {
        path(s, m, lo, lo + k, out)?;
        out.push(subtree(s, lo + k, hi)?);
    } else {
        path(s, m, lo + k, hi, out)?;
        out.push(subtree(s, lo, lo + k)?);
    }
    Ok(())
}

/// Inclusion proof of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<S: NodeSource>(s: &S, index: u64, size: u64) -> Result<Vec<Hash>, S::Error> {
    let mut out = Vec::new();
    path(s, index, 0, size, &mut out)?;
    Ok(out)
}

/// RFC 9162 SUBPROOF(m, D[lo:hi], b).
fn subproof<S: NodeSource>(
    s: &S,
    m: u64,
    lo: u64,
    hi: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(subtree(s, lo, hi)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(s, m, lo, lo + k, whole, out)?;
        out.push(subtree(s, lo + k, hi)?);
    } else {
        subproof(s, m - k, lo + k, hi, false, out)?;
        out.push(subtree(s, lo, lo + k)?);
    }
    Ok(())
}

/// Consistency proof between the trees of the first `size1` and `size2` leaves
/// (0 < size1 <= size2; empty when equal).
pub fn consistency_proof<S: NodeSource>(
    s: &S,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut out = Vec::new();
    if 0 < size1 && size1 < size2 {
        subproof(s, size1, 0, size2, true, &mut out)?;
    }
    Ok(out)
}

/// Checks that every proof element is a 32-byte hash.
pub fn to_hashes(proof: &[impl AsRef<[u8]>]) -> Result<Vec<Hash>, ProofError> {
    proof
        .iter()
        .map(|p| {
            let p = p.as_ref();
            <Hash>::try_from(p).map_err(|_| ProofError::BadHashLength(p.len()))
        })
        .collect()
}

/// Number of hashes in the inclusion proof of `index` in a tree of `size` (RFC 9162 §2.1.3.2).
fn inclusion_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// Recomputes the root from a leaf hash and its inclusion proof.
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut f, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f & 1 == 1 || f == sn {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::RootMismatch);
    }
    Ok(r)
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let r = root_from_inclusion(index, size, leaf, proof)?;
    if ct_eq(&r, root) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree (`size2`, `root2`) extends (`size1`, `root1`) (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if size1 == 0 || size1 > size2 {
        return Err(ProofError::BadSizes(size1, size2));
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return if ct_eq(root1, root2) {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    // Expected length: the path from the last leaf of tree 1, minus the levels it shares
    // as a complete subtree, plus the seed hash when size1 is not a power of two.
    let shift = size1.trailing_zeros();
    let inner = 64 - ((size1 - 1) ^ (size2 - 1)).leading_zeros() - shift;
    let border = ((size1 - 1) >> (inner + shift)).count_ones();
    let start = if size1.is_power_of_two() { 0 } else { 1 };
    let want = (start + inner + border) as usize;
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let (mut f, mut sn) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f & 1 == 1 || f == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        sn >>= 1;
    }
    if sn != 0 || !ct_eq(&fr, root1) || !ct_eq(&sr, root2) {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Constant-time equality of two hashes (roots are public, but the habit costs nothing).
pub fn ct_eq(a: &Hash, b: &Hash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is `[start, end)` a subtree in the sense of the Merkle Tree Certificates draft: non-empty,
/// with `start` a multiple of the smallest power of two at least `end - start`?
pub fn valid_subtree(start: u64, end: u64) -> bool {
    start < end
        && (end - start)
            .checked_next_power_of_two()
            .is_some_and(|p| start.is_multiple_of(p))
}

/// Verifies that `leaf` at `index` is in the subtree `[start, end)` whose hash is `sub_root`.
/// A subtree is itself a tree of `end - start` leaves, so this is an inclusion proof there.
pub fn verify_subtree_inclusion(
    index: u64,
    start: u64,
    end: u64,
    leaf: &Hash,
    proof: &[Hash],
    sub_root: &Hash,
) -> Result<(), ProofError> {
    if !valid_subtree(start, end) || index < start || index >= end {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: end.saturating_sub(start),
        });
    }
    verify_inclusion(index - start, end - start, leaf, proof, sub_root)
}

/// Verifies that the subtree `[start, end)` with hash `sub_root` sits at those leaves of the
/// tree of `size` leaves with `root` (Merkle Tree Certificates draft, "Verifying a Subtree
/// Consistency Proof"). `fn`, `sn` and `tn` walk up from the subtree's first and last leaf
/// and the tree's last leaf; the proof's hashes fold into both the subtree and the root.
pub fn verify_subtree_consistency(
    start: u64,
    end: u64,
    size: u64,
    proof: &[Hash],
    sub_root: &Hash,
    root: &Hash,
) -> Result<(), ProofError> {
    if !valid_subtree(start, end) || end > size {
        return Err(ProofError::BadSizes(start, end));
    }
    let (mut f, mut s, mut t) = (start, end - 1, size - 1);
    let up = |f: &mut u64, s: &mut u64, t: &mut u64| {
        *f >>= 1;
        *s >>= 1;
        *t >>= 1;
    };
    if s == t {
        while f != s {
            up(&mut f, &mut s, &mut t);
        }
    } else {
        while f != s && s & 1 == 1 {
            up(&mut f, &mut s, &mut t);
        }
    }
    let (mut fr, mut sr, rest) = if f == s {
        (*sub_root, *sub_root, proof)
    } else {
        let (first, rest) = proof
            .split_first()
            .ok_or(ProofError::WrongLength { got: 0, want: 1 })?;
        (*first, *first, rest)
    };
    for c in rest {
        if t == 0 {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: proof.len() - 1,
            });
        }
        if s & 1 == 1 || s == t {
            if f < s {
                fr = node_hash(c, &fr);
            }
            sr = node_hash(c, &sr);
            while s & 1 == 0 && s != 0 {
                up(&mut f, &mut s, &mut t);
            }
        } else {
            sr = node_hash(&sr, c);
        }
        up(&mut f, &mut s, &mut t);
    }
    if t != 0 || !ct_eq(&fr, sub_root) || !ct_eq(&sr, root) {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

fn raw_hash(b: &[u8]) -> Result<Hash, ProofError> {
    Hash::try_from(b).map_err(|_| ProofError::BadHashLength(b.len()))
}

/// [`verify_consistency`] over roots as received (e.g. decoded from a proof file): when the
/// sizes are equal the roots are compared as bytes, whatever their length (as the
/// transparency-dev reference does); otherwise each must be a 32-byte hash.
pub fn verify_consistency_raw(
    size1: u64,
    size2: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[Hash],
) -> Result<(), ProofError> {
    if size1 != 0 && size1 == size2 && proof.is_empty() {
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    verify_consistency(size1, size2, &raw_hash(root1)?, &raw_hash(root2)?, proof)
}

/// [`verify_subtree_consistency`] over roots as received: a subtree that is the whole tree,
/// with an empty proof, compares the roots as bytes; the empty subtree `[i, i)` verifies
/// with an empty proof and the empty tree's hash, against any tree containing `i`.
pub fn verify_subtree_consistency_raw(
    start: u64,
    end: u64,
    size: u64,
    proof: &[Hash],
    sub_root: &[u8],
    root: &[u8],
) -> Result<(), ProofError> {
    // The empty subtree: its hash is the empty tree's, and it is part of any tree.
    if start == end && end <= size {
        return if proof.is_empty() && sub_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if start == 0 && end == size && valid_subtree(start, end) && proof.is_empty() {
        return if sub_root == root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    verify_subtree_consistency(
        start,
        end,
        size,
        proof,
        &raw_hash(sub_root)?,
        &raw_hash(root)?,
    )
}
