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
//! let out = v.validate(&b).unwrap();
//! assert_eq!(out.passed, vec![true, false]);
//! assert_eq!(out.quarantined[0].reasons[0].code, "no_id");
//! ```

pub mod checksum;
pub mod keyset;
pub mod typed;

pub use keyset::KeySet;
use sealtrail_core::Reason;
use sealtrail_core::record::{Quarantined, RawBatch};
use sealtrail_spec::raw::ChecksumScheme;
use sealtrail_spec::{Rule, Source};
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
    /// bytes per key, a third of what storing `TRD-`-style keys would take. Past a million
    /// keys they spill to temporary files ([`keyset`]), so memory stays bounded.
    seen: Vec<KeySet>,
    /// Random per validator: fingerprints (which may reach temporary files) cannot be matched
    /// against fingerprints of guessed key values.
    seed: u64,
}

impl Validator {
    pub fn new(source: &Source) -> Self {
        // Only `unique` checks use their slot; the others stay empty (empty tables cost no heap
        // memory until the first insert).
        let seen = source.checks.iter().map(|_| KeySet::default()).collect();
        Self {
            source: source.clone(),
            seen,
            seed: rand::random(),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Checks every record of `batch` (whose columns are the source's declared columns).
    /// Fails only when the `unique` checks' spilled keys cannot be read back.
    pub fn validate(&mut self, batch: &RawBatch) -> std::io::Result<Validated> {
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
                        let key = fingerprint(self.seed, batch, row, cols);
                        match key {
                            None => true,
                            Some(k) if failed.is_empty() => self.seen[ci].insert(k)?,
                            Some(k) => !self.seen[ci].contains(k)?,
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
        Ok(out)
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
fn fingerprint(seed: u64, batch: &RawBatch, row: usize, cols: &[usize]) -> Option<u128> {
    let mut h = Xxh3::with_seed(seed);
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
        let out = v
            .validate(&batch(&[
                [Some("k"), None, None],
                [Some("k"), Some("x"), None],
                [Some("k"), Some("y"), None],
            ]))
            .unwrap();
        assert_eq!(out.passed, vec![false, true, false]);
        assert_eq!(out.quarantined[1].reasons[0].code, "dup");
        // State spans batches.
        let out = v
            .validate(&batch(&[
                [Some("k"), Some("z"), None],
                [Some("j"), Some("z"), None],
            ]))
            .unwrap();
        assert_eq!(out.passed, vec![false, true]);
    }

    #[test]
    fn compound_unique_is_length_prefixed() {
        let s = source("      - { rule: unique, columns: [a, b] }");
        let mut v = Validator::new(&s);
        let out = v
            .validate(&batch(&[
                [None, Some("ab"), Some("c")],
                [None, Some("a"), Some("bc")],
                [None, Some("a"), Some("bc")],
            ]))
            .unwrap();
        assert_eq!(out.passed, vec![true, true, false]);
    }

    #[test]
    fn every_failed_rule_is_listed_in_order() {
        let s = source(
            "      - { rule: regex, column: a, pattern: '^[0-9]+$', reason: bad_a }\n      - { rule: in_set, column: b, values: [X, Y], reason: bad_b }\n      - { rule: length_between, column: id, min: 1, max: 3 }\n      - { rule: greater_than, column: a, other: id }",
        );
        let mut v = Validator::new(&s);
        let out = v
            .validate(&batch(&[
                [Some("zzzz"), Some("q"), Some("z")],
                [Some("5"), Some("12"), Some("X")],
            ]))
            .unwrap();
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
        let out = v
            .validate(&batch(&[
                [Some("US0378331005"), Some("5"), Some("2025-02-28")],
                [Some("US0378331006"), Some("0"), Some("2025-02-30")],
                [Some("US0378331005"), Some("NaN"), None],
            ]))
            .unwrap();
        assert_eq!(out.passed, vec![true, false, false]);
        let codes: Vec<&str> = out.quarantined[0]
            .reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect();
        assert_eq!(codes, ["between", "checksum", "parses"]);
    }
}
