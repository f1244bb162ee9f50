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
use sealtrail_spec::{Column, ColumnType, Rule, Source};
use std::collections::HashSet;
use typed::Canon;
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
    /// Per `in_set` check on a typed column (indexed like `source.checks`): its values as
    /// typed values, which the column's values are compared with.
    typed_sets: Vec<Option<HashSet<Canon>>>,
}

impl Validator {
    pub fn new(source: &Source) -> Self {
        // Only `unique` checks use their slot; the others stay empty (empty tables cost no heap
        // memory until the first insert).
        let seen = source.checks.iter().map(|_| KeySet::default()).collect();
        let typed_sets = source
            .checks
            .iter()
            .map(|c| match &c.rule {
                Rule::InSet(i, set) if source.columns[*i].ty != ColumnType::Utf8 => Some(
                    set.iter()
                        .filter_map(|v| typed::canonical(v, &source.columns[*i]))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        Self {
            source: source.clone(),
            seen,
            seed: rand::random(),
            typed_sets,
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
                        let key = fingerprint(self.seed, batch, row, cols, &self.source.columns);
                        match key {
                            None => true,
                            Some(k) if failed.is_empty() => self.seen[ci].insert(k)?,
                            Some(k) => !self.seen[ci].contains(k)?,
                        }
                    }
                    Rule::InSet(c, set) => batch.get(row, *c).is_none_or(|v| {
                        match &self.typed_sets[ci] {
                            // A typed column's values compare by value (`007` is `7`); one
                            // that does not parse is `invalid_type`'s business.
                            Some(typed) => typed::canonical(v, &self.source.columns[*c])
                                .is_none_or(|v| typed.contains(&v)),
                            None => set.contains(v),
                        }
                    }),
                    rule => eval(rule, batch, row, &self.source.columns),
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

/// What `check` finds wrong in a source's checks that needs the declared types' parsers:
/// an `in_set` value that is not a value of its column's type, which no record can match.
/// Each problem: (line, column) of the check, message, hint.
pub fn lint(source: &Source) -> Vec<((u64, u64), String, String)> {
    let mut out = Vec::new();
    for check in &source.checks {
        let Rule::InSet(i, set) = &check.rule else {
            continue;
        };
        let col = &source.columns[*i];
        if col.ty == ColumnType::Utf8 {
            continue;
        }
        let mut bad: Vec<&str> = set
            .iter()
            .filter(|v| typed::canonical(v, col).is_none())
            .map(String::as_str)
            .collect();
        if bad.is_empty() {
            continue;
        }
        bad.sort_unstable();
        let ty = match col.ty {
            ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColumnType::Int64 => "int64".into(),
            ColumnType::Float64 => "float64".into(),
            ColumnType::Boolean => "boolean".into(),
            ColumnType::Date => "date".into(),
            _ => "timestamp".into(),
        };
        out.push((
            check.at,
            format!(
                "source `{}`: rule `in_set` on `{}` ({ty}) lists {}, which {} not parse as {ty}: no record can match {}",
                source.name,
                col.name,
                bad.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
                if bad.len() == 1 { "does" } else { "do" },
                if bad.len() == 1 { "it" } else { "them" },
            ),
            match col.format.as_deref() {
                Some(f) => format!("list {ty} values written as the column's `format` (`{f}`) reads them, or declare the column as text to compare text"),
                None => format!("list {ty} values, or declare the column as text to compare text"),
            },
        ));
    }
    out
}

/// A quarantine record for row `row` of `batch`.
pub fn quarantine(batch: &RawBatch, row: usize, reasons: Vec<Reason>) -> Quarantined {
    let key = batch.key(row).map(std::borrow::Cow::into_owned);
    Quarantined {
        input: batch.input(row).clone(),
        pos_kind: batch.pos_kind,
        pos: batch.position(row),
        key,
        subject: batch.subject(row).map(str::to_owned),
        raw: batch.raw(row).to_vec(),
        reasons,
    }
}

/// 128-bit fingerprint of a (compound) key; `None` when any part is null (SQL semantics:
/// nulls are never equal, so they never collide) or does not parse as its column's type (the
/// record is quarantined as `invalid_type`, so its key must not shadow a later good one).
/// Typed parts are taken by value ([`Canon`]): `007` and `7` are one int64 key.
fn fingerprint(
    seed: u64,
    batch: &RawBatch,
    row: usize,
    cols: &[usize],
    columns: &[Column],
) -> Option<u128> {
    let mut h = Xxh3::with_seed(seed);
    for &c in cols {
        let v = batch.get(row, c)?;
        if columns[c].ty == ColumnType::Utf8 {
            // Length-prefix each part so ("ab","c") and ("a","bc") differ.
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        } else {
            let (b, n) = typed::canonical(v, &columns[c])?.bytes();
            h.update(&[u8::MAX; 8]); // not a text length: a typed part
            h.update(&b[..n]);
        }
    }
    Some(h.digest128())
}

fn eval(rule: &Rule, b: &RawBatch, row: usize, columns: &[Column]) -> bool {
    match rule {
        Rule::NotNull(c) => b.get(row, *c).is_some_and(|v| !v.is_empty()),
        Rule::Unique(_) => true,
        // Null values pass every rule but not_null: absence is not_null's business, so a
        // record missing an optional value gets one clear reason, not several.
        // (The validator compares a typed column's set by value before it gets here.)
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
            (Some(x), Some(y)) => {
                let (ca, co) = (&columns[*a], &columns[*o]);
                if ca.ty == ColumnType::Utf8 || co.ty == ColumnType::Utf8 {
                    greater(x, y)
                } else {
                    // Declared types compare by value (a date with a `format`, timestamps
                    // with offsets); a value that does not parse is `invalid_type`'s business.
                    match (typed::canonical(x, ca), typed::canonical(y, co)) {
                        (Some(x), Some(y)) => x.greater(&y).unwrap_or(false),
                        _ => true,
                    }
                }
            }
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

/// `a > b` of text columns: as numbers when both parse, else as text (ISO dates and
/// timestamps in UTC order as text).
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
        typed_source("{ name: id }, { name: a }, { name: b }", checks)
    }

    /// A source of three columns declared by `columns` (YAML flow items) and `checks`.
    fn typed_source(columns: &str, checks: &str) -> Source {
        let spec = format!(
            "version: 1\npipeline: p\nsources:\n  t:\n    csv: {{ path: x.csv }}\n    columns: [{columns}]\n    checks:\n{checks}\nsinks:\n  o: {{ from: t, parquet: {{ path: o }} }}\nquarantine: {{ parquet: {{ path: q }} }}\n"
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

    /// What `unique`, `in_set` and `greater_than` accept of a typed column is what loads: the
    /// values, not their spellings.
    #[test]
    fn typed_columns_are_compared_by_value() {
        let s = typed_source(
            "{ name: id, type: int64 }, { name: a, type: \"decimal(9,2)\" }, { name: b, type: int64 }",
            "      - { rule: unique, column: id, reason: dup }\n      - { rule: unique, column: a, reason: dup_a }\n      - { rule: in_set, column: b, values: [\"1\", \"2\"], reason: not_in }",
        );
        let mut v = Validator::new(&s);
        let out = v
            .validate(&batch(&[
                [Some("7"), Some("1.5"), Some("01")],
                [Some("007"), Some("2.5"), Some("2")],
                [Some("+7"), Some("1.50"), Some("+2")],
                [Some("x"), Some("3"), Some("3")],
                [Some("x"), Some("3.00"), Some("y")],
                [Some("8"), Some("-0"), None],
                [Some("9"), Some("0.00"), Some("1")],
            ]))
            .unwrap();
        // `007` and `+7` are 7 again; `1.50` is 1.5; `01` and `+2` are in the set, `3` is not.
        // `x` and `y` do not parse: typing quarantines them (`invalid_type`), and `x` as a key
        // shadows nothing.
        assert_eq!(
            out.passed,
            vec![true, false, false, false, false, true, false]
        );
        let codes = |i: usize| -> Vec<&str> {
            out.quarantined[i]
                .reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect()
        };
        assert_eq!(codes(0), ["dup"]);
        assert_eq!(codes(1), ["dup", "dup_a"]);
        assert_eq!(codes(2), ["not_in"]);
        assert_eq!(codes(3), ["dup_a"]);
        assert_eq!(codes(4), ["dup_a"]);
    }

    #[test]
    fn greater_than_of_typed_columns_compares_values() {
        let s = typed_source(
            "{ name: id }, { name: a, type: date, format: \"%d/%m/%Y\" }, { name: b, type: date, format: \"%d/%m/%Y\" }",
            "      - { rule: greater_than, column: a, other: b }",
        );
        let mut v = Validator::new(&s);
        let out = v
            .validate(&batch(&[
                // As text `01/02/2026` < `31/12/2025`; as dates it is later.
                [None, Some("01/02/2026"), Some("31/12/2025")],
                [None, Some("31/12/2025"), Some("01/02/2026")],
                [None, Some("31/12/2025"), Some("31/12/2025")],
                [None, Some("30/02/2025"), Some("01/01/2025")],
            ]))
            .unwrap();
        assert_eq!(out.passed, vec![true, false, false, true]);

        let s = typed_source(
            "{ name: id, type: timestamp }, { name: a, type: timestamp }, { name: b, type: \"decimal(9,2)\" }",
            "      - { rule: greater_than, column: id, other: a }",
        );
        let mut v = Validator::new(&s);
        let out = v
            .validate(&batch(&[
                // 09:00Z is after 10:00+02:00 (08:00Z), though it sorts before it as text.
                [
                    Some("2026-01-01T09:00:00Z"),
                    Some("2026-01-01T10:00:00+02:00"),
                    None,
                ],
                [
                    Some("2026-01-01T10:00:00+02:00"),
                    Some("2026-01-01T09:00:00Z"),
                    None,
                ],
            ]))
            .unwrap();
        assert_eq!(out.passed, vec![true, false]);

        // Numbers: exact across integer and decimal scales.
        for (a, b, gt) in [
            (Canon::Int(2), Canon::Dec(199, 2), true),
            (Canon::Dec(200, 2), Canon::Int(2), false),
            (Canon::Dec(2001, 3), Canon::Dec(200, 2), true),
            (Canon::Float(2.5f64.to_bits()), Canon::Int(2), true),
            (Canon::Date(1), Canon::Micros(86_400_000_000), false),
            (Canon::Date(1), Canon::Micros(86_399_999_999), true),
        ] {
            assert_eq!(a.greater(&b), Some(gt), "{a:?} > {b:?}");
        }
        assert_eq!(Canon::Bool(true).greater(&Canon::Int(0)), None);
        assert_eq!(Canon::Date(0).greater(&Canon::Int(0)), None);
    }

    #[test]
    fn in_set_values_that_are_not_values_of_the_column_type_are_reported() {
        let s = typed_source(
            "{ name: id, type: int64 }, { name: a }, { name: b, type: date }",
            "      - { rule: in_set, column: id, values: [\"1\", \"one\", \"2.5\"] }\n      - { rule: in_set, column: a, values: [\"one\"] }\n      - { rule: in_set, column: b, values: [\"2026-01-01\"] }",
        );
        let problems = lint(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (at, message, _) = &problems[0];
        assert_eq!(at.0, 8, "the line of the check");
        assert!(
            message.contains("`id` (int64) lists `2.5`, `one`, which do not parse as int64"),
            "{message}"
        );
    }
}
