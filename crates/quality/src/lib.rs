//! Quality gates: checks on decoded records, and schema enforcement into typed Arrow batches.
//!
//! - [`Validator`] runs a source's checks over each [`RawBatch`], in order, keeping the state
//!   that spans batches (seen keys of `unique` checks). Each record either passes or becomes a
//!   [`Quarantined`] record listing every rule it failed (the first is its primary reason).
//! - [`typed::to_record_batch`] converts the passing records to the declared Arrow types; a
//!   value that does not parse quarantines its record (`invalid_type`), it never fails the run.
//! - [`checksum`]: ISIN, LEI, IBAN and Luhn check digits.
//!
//! ```
//! use sealtrail_core::record::{RawBatch, PosKind};
//! let spec = "version: 1\npipeline: p\nsources:\n  t:\n    csv: { path: x.csv }\n    columns: [{ name: id }, { name: n, type: int64 }]\n    checks: [{ rule: not_null, column: id, reason: no_id }]\nsinks:\n  o: { from: t, parquet: { path: o } }\nquarantine: { parquet: { path: q } }\n";
//! let p = sealtrail_spec::parse_str(spec, "p.yaml".as_ref()).unwrap();
//! let mut v = sealtrail_quality::Validator::new(&p.sources[0]);
//! let mut b = RawBatch::new("x.csv".into(), PosKind::Line, 2);
//! b.begin(2, b"a,1"); b.push(Some("a")); b.push(Some("1"));
//! b.begin(3, b",2"); b.push(None); b.push(Some("2"));
//! let out = v.validate(&b);
//! assert_eq!(out.passed, vec![true, false]);
//! assert_eq!(out.quarantined[0].reasons[0].code, "no_id");
//! ```

pub mod checksum;
pub mod typed;

use sealtrail_core::Reason;
use sealtrail_core::record::{Quarantined, RawBatch};
use sealtrail_spec::raw::ChecksumScheme;
use sealtrail_spec::{Rule, Source};
use std::collections::HashSet;
use xxhash_rust::xxh3::Xxh3;

/// Outcome of validating one batch.
#[derive(Debug, Default)]
pub struct Validated {
    /// One flag per record of the batch: true when it passed every check.
    pub passed: Vec<bool>,
    pub quarantined: Vec<Quarantined>,
}

/// Runs a source's checks. One per source per run: `unique` state spans batches.
#[derive(Debug)]
pub struct Validator {
    source: Source,
    /// Per `unique` check (indexed like `source.checks`): 128-bit fingerprints of seen keys.
    /// 128 bits make a false duplicate practically impossible (p < 1e-20 at 10^9 keys) at 16
    /// bytes per key, a third of what storing `TRD-`-style keys would take.
    seen: Vec<KeySet>,
}

/// A set of 128-bit key fingerprints, split into 16 hash tables by the top 4 bits. A hash table
/// doubles when it fills, holding old and new tables at once; with one table of 10M keys that
/// spike alone is ~430 MiB. With 16 shards a resize holds 1/16 of the keys twice, so peak
/// memory stays near the steady state (~17-25 bytes per key). (256 shards were measured 40%
/// slower overall: thousands of large table reallocations, each faulting fresh pages.)
#[derive(Debug)]
pub struct KeySet {
    shards: Vec<HashSet<u128, BuildIdentity>>,
}

const SHARDS: usize = 16;
const SHARD_SHIFT: u32 = 124;

impl Default for KeySet {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashSet::default()).collect(),
        }
    }
}

impl KeySet {
    fn shard(&mut self, k: u128) -> &mut HashSet<u128, BuildIdentity> {
        &mut self.shards[(k >> SHARD_SHIFT) as usize]
    }
    /// Adds `k`; false when it was already present.
    pub fn insert(&mut self, k: u128) -> bool {
        self.shard(k).insert(k)
    }
    pub fn contains(&self, k: u128) -> bool {
        self.shards[(k >> SHARD_SHIFT) as usize].contains(&k)
    }
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashSet::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fingerprints are already uniformly distributed hashes: use them as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildIdentity;

impl std::hash::BuildHasher for BuildIdentity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

#[derive(Debug, Default)]
pub struct IdentityHasher(u64);

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

impl Validator {
    pub fn new(source: &Source) -> Self {
        // Only `unique` checks use their slot; the others stay empty (empty tables cost no heap
        // memory until the first insert).
        let seen = source.checks.iter().map(|_| KeySet::default()).collect();
        Self {
            source: source.clone(),
            seen,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Checks every record of `batch` (whose columns are the source's declared columns).
    pub fn validate(&mut self, batch: &RawBatch) -> Validated {
        let n = batch.len();
        let mut out = Validated {
            passed: vec![true; n],
            quarantined: Vec::new(),
        };
        let mut failed: Vec<usize> = Vec::new();
        for row in 0..n {
            failed.clear();
            for (ci, check) in self.source.checks.iter().enumerate() {
                let ok = match &check.rule {
                    Rule::Unique(cols) => {
                        // Register the key only when every earlier check passed: a record that
                        // is already rejected must not shadow a later good one.
                        let key = fingerprint(batch, row, cols);
                        match key {
                            None => true,
                            Some(k) if failed.is_empty() => self.seen[ci].insert(k),
                            Some(k) => !self.seen[ci].contains(k),
                        }
                    }
                    rule => eval(rule, batch, row),
                };
                if !ok {
                    failed.push(ci);
                }
            }
            if !failed.is_empty() {
                out.passed[row] = false;
                let reasons = failed
                    .iter()
                    .map(|&ci| {
                        let c = &self.source.checks[ci];
                        Reason::new(c.reason.clone(), c.label.clone())
                    })
                    .collect();
                out.quarantined.push(quarantine(batch, row, reasons));
            }
        }
        out
    }
}

/// A quarantine record for row `row` of `batch`.
pub fn quarantine(batch: &RawBatch, row: usize, reasons: Vec<Reason>) -> Quarantined {
    let key = batch.key(row).map(str::to_owned);
    Quarantined {
        input: batch.input.clone(),
        pos_kind: batch.pos_kind,
        pos: batch.position(row),
        key,
        raw: batch.raw(row).to_vec(),
        reasons,
    }
}

/// 128-bit fingerprint of a (compound) key; `None` when any part is null (SQL semantics:
/// nulls are never equal, so they never collide).
fn fingerprint(batch: &RawBatch, row: usize, cols: &[usize]) -> Option<u128> {
    let mut h = Xxh3::new();
    for &c in cols {
        let v = batch.get(row, c)?;
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    Some(h.digest128())
}

fn eval(rule: &Rule, b: &RawBatch, row: usize) -> bool {
    match rule {
        Rule::NotNull(c) => b.get(row, *c).is_some_and(|v| !v.is_empty()),
        Rule::Unique(_) => true,
        // Null values pass every rule but not_null: absence is not_null's business, so a
        // record missing an optional value gets one clear reason, not several.
        Rule::InSet(c, set) => b.get(row, *c).is_none_or(|v| set.contains(v)),
        Rule::Between(c, lo, hi) => b
            .get(row, *c)
            .is_none_or(|v| match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => lo.is_none_or(|l| x >= l) && hi.is_none_or(|h| x <= h),
                _ => false,
            }),
        Rule::Regex(c, re) => b.get(row, *c).is_none_or(|v| re.is_match(v)),
        Rule::LengthBetween(c, lo, hi) => b.get(row, *c).is_none_or(|v| {
            let n = v.chars().count() as u64;
            lo.is_none_or(|l| n >= l) && hi.is_none_or(|h| n <= h)
        }),
        Rule::Parses(c, ty, fmt) => b
            .get(row, *c)
            .is_none_or(|v| typed::parses(v, *ty, fmt.as_deref())),
        Rule::GreaterThan(a, o) => match (b.get(row, *a), b.get(row, *o)) {
            (Some(x), Some(y)) => greater(x, y),
            _ => true,
        },
        Rule::Checksum(c, scheme) => b.get(row, *c).is_none_or(|v| match scheme {
            ChecksumScheme::Isin => checksum::isin(v),
            ChecksumScheme::Lei => checksum::lei(v),
            ChecksumScheme::Iban => checksum::iban(v),
            ChecksumScheme::Luhn => checksum::luhn(v),
        }),
    }
}

/// `a > b` as numbers when both parse, else as ISO dates/timestamps (which order as text).
fn greater(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x > y,
        (Err(_), Err(_)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_set_finds_keys_in_every_shard() {
        let mut k = KeySet::default();
        let keys: Vec<u128> = (0..5000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        for &x in &keys {
            assert!(k.insert(x));
        }
        assert_eq!(k.len(), 5000);
        assert!(k.shards.iter().all(|s| !s.is_empty()));
        for &x in &keys {
            assert!(k.contains(x) && !k.insert(x));
        }
        assert!(!k.contains(1));
    }

    use super::*;
    use sealtrail_core::record::PosKind;

    fn source(checks: &str) -> Source {
        let spec = format!(
            "version: 1\npipeline: p\nsources:\n  t:\n    csv: {{ path: x.csv }}\n    columns: [{{ name: id }}, {{ name: a }}, {{ name: b }}]\n    checks:\n{checks}\nsinks:\n  o: {{ from: t, parquet: {{ path: o }} }}\nquarantine: {{ parquet: {{ path: q }} }}\n"
        );
        sealtrail_spec::parse_str(&spec, "p.yaml".as_ref())
            .unwrap()
            .sources
            .remove(0)
    }

    fn batch(rows: &[[Option<&str>; 3]]) -> RawBatch {
        let mut b = RawBatch::new("x.csv".into(), PosKind::Line, 3);
        for (i, r) in rows.iter().enumerate() {
            b.begin(i as u64 + 2, b"raw");
            for v in r {
                b.push(*v);
            }
        }
        b
    }

    #[test]
    fn unique_keeps_the_first_and_ignores_rejected_rows() {
        let s = source(
            "      - { rule: not_null, column: a, reason: no_a }\n      - { rule: unique, column: id, reason: dup }",
        );
        let mut v = Validator::new(&s);
        // Row 0 fails not_null: its id must not block row 1. Row 2 duplicates row 1.
        let out = v.validate(&batch(&[
            [Some("k"), None, None],
            [Some("k"), Some("x"), None],
            [Some("k"), Some("y"), None],
        ]));
        assert_eq!(out.passed, vec![false, true, false]);
        assert_eq!(out.quarantined[1].reasons[0].code, "dup");
        // State spans batches.
        let out = v.validate(&batch(&[
            [Some("k"), Some("z"), None],
            [Some("j"), Some("z"), None],
        ]));
        assert_eq!(out.passed, vec![false, true]);
    }

    #[test]
    fn compound_unique_is_length_prefixed() {
        let s = source("      - { rule: unique, columns: [a, b] }");
        let mut v = Validator::new(&s);
        let out = v.validate(&batch(&[
            [None, Some("ab"), Some("c")],
            [None, Some("a"), Some("bc")],
            [None, Some("a"), Some("bc")],
        ]));
        assert_eq!(out.passed, vec![true, true, false]);
    }

    #[test]
    fn every_failed_rule_is_listed_in_order() {
        let s = source(
            "      - { rule: regex, column: a, pattern: '^[0-9]+$', reason: bad_a }\n      - { rule: in_set, column: b, values: [X, Y], reason: bad_b }\n      - { rule: length_between, column: id, min: 1, max: 3 }\n      - { rule: greater_than, column: a, other: id }",
        );
        let mut v = Validator::new(&s);
        let out = v.validate(&batch(&[
            [Some("zzzz"), Some("q"), Some("z")],
            [Some("5"), Some("12"), Some("X")],
        ]));
        let codes: Vec<&str> = out.quarantined[0]
            .reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect();
        assert_eq!(codes, ["bad_a", "bad_b", "length_between", "greater_than"]);
        assert_eq!(out.quarantined[0].reasons[0].rule, "regex(a)");
        assert_eq!(out.passed, vec![false, true]);
    }

    #[test]
    fn between_parses_and_checksum_rules() {
        let s = source(
            "      - { rule: between, column: a, min: 1, max: 10 }\n      - { rule: checksum, column: id, scheme: isin }\n      - { rule: parses, column: b, type: date }",
        );
        let mut v = Validator::new(&s);
        let out = v.validate(&batch(&[
            [Some("US0378331005"), Some("5"), Some("2025-02-28")],
            [Some("US0378331006"), Some("0"), Some("2025-02-30")],
            [Some("US0378331005"), Some("NaN"), None],
        ]));
        assert_eq!(out.passed, vec![true, false, false]);
        let codes: Vec<&str> = out.quarantined[0]
            .reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect();
        assert_eq!(codes, ["between", "checksum", "parses"]);
    }
}
