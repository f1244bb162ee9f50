//! The release guard: the release check on every value, not only on a sample.
//!
//! The release check decides from a column's classification, which is made from the column's
//! name and the first records of a run. A feed can change under a pipeline: a free-text
//! `comment` that holds an email address from its millionth record on, a `ref` column that
//! starts carrying card numbers. The guard looks at every value of every raw column that
//! reaches a sink whose audience is not cleared for all data (through any SQL transform), and
//! quarantines the rows that would deliver a sensitive value there anyway, with reason
//! `release_check`: the record is kept (encrypted, like every quarantined record) for repair
//! and replay, and nothing sensitive lands.
//!
//! What it recognises is what the classifier recognises, with the same validators:
//!
//! - values that identify themselves (an email address; an IBAN or LEI, whose mod-97 check
//!   digits a random string passes once in 97, on top of their shape): every such value;
//! - values that could be something else (a Luhn-valid number is also one order id in ten, a
//!   grouped number may be a reference, `1.2.3.4` a version): only when they are at least half
//!   of the batch's values in that column, the classifier's own threshold for a column;
//! - text of several words, lists and documents (`a@x.com;b@y.com`, a JSON array or object):
//!   every embedded span the redactor would replace (emails, IBANs, card numbers, SSNs, phone
//!   numbers).
//!
//! A column whose class the spec declares (`class:`) is the spec author's word and is not
//! guarded; neither is a column whose every loaded value a check already pins to values that
//! may be released (an `in_set` of non-sensitive values, an ISIN checksum).

use crate::detect;
use arrow::array::{Array, StringArray};
use sealtrail_core::Reason;
use sealtrail_core::class::{Kind, Tag};
use sealtrail_spec::{Audience, ColumnType, Rule, Source};

/// The reason code of rows the guard quarantines.
pub const REASON: &str = "release_check";

/// Values of a kind that could be something else are acted on once they are at least this
/// share of a batch's non-empty values in the column (the classifier's threshold).
const WEAK_SHARE: f64 = 0.5;

/// One raw source column that reaches an audience not cleared for every tag.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Index of the column in the source.
    pub column: usize,
    pub name: String,
    /// The least cleared audience the column reaches raw, and a sink through which it does.
    pub audience: Audience,
    pub sink: String,
}

impl Guard {
    /// The guard of column `column` of `source`, or `None` when nothing it could hold is
    /// withheld from `audience`, its class is declared, or a check pins its values. Text and
    /// integer columns are guarded (a card or phone number may be declared as an integer);
    /// decimals, floats, dates, timestamps and booleans hold no kind the validators recognise.
    pub fn new(source: &Source, column: usize, audience: Audience, sink: &str) -> Option<Self> {
        let col = source.columns.get(column)?;
        let needed = !audience.cleared_for(Tag::Pii)
            || !audience.cleared_for(Tag::Financial)
            || !audience.cleared_for(Tag::Proprietary);
        let readable = matches!(col.ty, ColumnType::Utf8 | ColumnType::Int64);
        if !needed || !readable || col.class.is_some() || pinned(source, column, audience) {
            return None;
        }
        Some(Self {
            column,
            name: col.name.clone(),
            audience,
            sink: sink.to_owned(),
        })
    }

    fn withheld(&self, kind: Kind) -> bool {
        !self.audience.cleared_for(kind.default_tag())
    }

    fn reason(&self, kind: Kind, embedded: bool) -> Reason {
        Reason::new(
            REASON,
            format!(
                "`{}` holds {}{kind} ({}) data, which sink `{}` (audience {}) may not receive raw; protect the column under `protect:`, or declare its class if the value is not what it looks like",
                self.name,
                if embedded { "text with embedded " } else { "" },
                kind.default_tag(),
                self.sink,
                self.audience.name(),
            ),
        )
    }

    /// The rows of `values` (the column as text; `skip(r)` for rows already rejected) that
    /// must not be loaded, each with its reason. Never names a value.
    pub fn inspect(
        &self,
        values: &StringArray,
        skip: impl Fn(usize) -> bool,
    ) -> Vec<(usize, Reason)> {
        let mut out = Vec::new();
        // Rows by weak kind, decided on once the batch's share is known.
        let mut weak: Vec<(Kind, Vec<usize>)> = Vec::new();
        let mut non_empty = 0usize;
        for r in 0..values.len() {
            if values.is_null(r) || skip(r) {
                continue;
            }
            let v = values.value(r).trim();
            if v.is_empty() {
                continue;
            }
            non_empty += 1;
            if !detect::worth_a_look(v) {
                continue;
            }
            // Only the validators of kinds this audience may not receive run.
            if let Some(kind) = detect::first_kind(v, |k| self.withheld(k)) {
                if self_evident(kind) {
                    out.push((r, self.reason(kind, false)));
                } else {
                    match weak.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, rows)) => rows.push(r),
                        None => weak.push((kind, vec![r])),
                    }
                }
            } else if detect::has_parts(v)
                && let Some(span) = detect::scan_text(v)
                    .into_iter()
                    .find(|s| self.withheld(s.kind))
            {
                out.push((r, self.reason(span.kind, true)));
            }
        }
        for (kind, rows) in weak {
            if rows.len() as f64 >= WEAK_SHARE * non_empty as f64 {
                out.extend(rows.into_iter().map(|r| (r, self.reason(kind, false))));
            }
        }
        out.sort_by_key(|(r, _)| *r);
        out
    }
}

/// Kinds a random value passes for only by its shape and check digits.
fn self_evident(kind: Kind) -> bool {
    matches!(kind, Kind::Email | Kind::Iban | Kind::Lei)
}

/// Whether a check of the source pins every loaded value of `column` to values `audience` may
/// receive: a set of values none of which is withheld, or the ISIN checksum (an ISIN is
/// public reference data and nothing else).
fn pinned(source: &Source, column: usize, audience: Audience) -> bool {
    source.checks.iter().any(|c| match &c.rule {
        Rule::InSet(i, values) if *i == column => values.iter().all(|v| {
            detect::value_kind(v.trim()).is_none_or(|k| audience.cleared_for(k.default_tag()))
                && !v.contains(char::is_whitespace)
        }),
        Rule::Checksum(i, sealtrail_spec::raw::ChecksumScheme::Isin) => *i == column,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(extra: &str) -> Source {
        let text = format!(
            "version: 1\npipeline: p\nsources:\n  s:\n    csv: {{ path: x.csv }}\n    columns:\n      - {{ name: id }}\n      - {{ name: ref }}\n      - {{ name: code, class: none }}\n      - {{ name: ccy }}\n      - {{ name: isin }}\n      - {{ name: n, type: int64 }}\n      - {{ name: d, type: date }}\n{extra}sinks:\n  o: {{ from: s, audience: analyst, parquet: {{ path: o }} }}\nquarantine: {{ parquet: {{ path: q }} }}\n"
        );
        sealtrail_spec::parse_str(&text, "p.yaml".as_ref())
            .unwrap()
            .sources
            .remove(0)
    }

    fn guard(audience: Audience) -> Guard {
        Guard::new(&source(""), 1, audience, "o").unwrap()
    }

    fn flagged(g: &Guard, values: &[&str]) -> Vec<usize> {
        let a = StringArray::from(values.to_vec());
        g.inspect(&a, |_| false)
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    /// 16-digit numbers passing Luhn with a card network's first digit, and others that fail.
    fn luhn_valid(prefix: u64) -> String {
        (0..10)
            .map(|d| format!("{}{d}", prefix))
            .find(|s| sealtrail_quality::checksum::luhn(s))
            .unwrap()
    }

    #[test]
    fn self_evident_values_are_stopped_one_by_one_and_never_named() {
        let g = guard(Audience::Analyst);
        let values = [
            "A-1",
            "client7@example.com",
            "GB82WEST12345698765432",
            "5493001KJTIIGC8Y1R12",
            "",
            "nothing here",
        ];
        let out = g.inspect(&StringArray::from(values.to_vec()), |_| false);
        assert_eq!(out.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [1, 2, 3]);
        for (r, reason) in &out {
            assert_eq!(reason.code, REASON);
            assert!(!reason.rule.contains(values[*r]), "{}", reason.rule);
            assert!(
                reason.rule.contains("sink `o` (audience analyst)"),
                "{}",
                reason.rule
            );
        }
        assert!(out[0].1.rule.contains("email (pii)"), "{}", out[0].1.rule);
        assert!(
            out[2].1.rule.contains("lei (proprietary)"),
            "{}",
            out[2].1.rule
        );
        // An internal audience may see an LEI, not an email.
        assert_eq!(
            flagged(&guard(Audience::Internal), &values),
            [1, 2],
            "LEIs are proprietary"
        );
        // Rows already rejected are not looked at.
        let a = StringArray::from(values.to_vec());
        assert!(g.inspect(&a, |r| r != 0).is_empty());
    }

    #[test]
    fn ambiguous_values_are_stopped_only_when_they_are_half_the_column() {
        let g = guard(Audience::Analyst);
        let pan = luhn_valid(453957000000148);
        // One Luhn-valid number among order ids: one id in ten passes Luhn by chance.
        let mut values: Vec<String> = (0..19).map(|i| format!("ORD-{i:04}")).collect();
        values.push(pan.clone());
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        assert!(flagged(&g, &refs).is_empty());
        // Half the column: a column of card numbers, row by row.
        let mut values: Vec<String> = (0..10).map(|i| format!("ORD-{i:04}")).collect();
        values.extend((0..10).map(|_| pan.clone()));
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(flagged(&g, &refs), (10..20).collect::<Vec<_>>());
    }

    #[test]
    fn text_with_an_embedded_sensitive_span_is_stopped() {
        let g = guard(Audience::Internal);
        let out = flagged(
            &g,
            &[
                "please call back tomorrow",
                "call me on +44 20 7946 0958 please",
                "mail jo.doe@example.org about it",
                "order 12 shipped",
            ],
        );
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn lists_and_documents_with_an_embedded_sensitive_value_are_stopped() {
        let g = guard(Audience::Analyst);
        let out = flagged(
            &g,
            &[
                r#"["ann@example.com","bob@corp.example"]"#,
                r#"{"iban":"GB82WEST12345698765432","n":1}"#,
                "ann@example.com;bob@corp.example",
                "{a,b,c}",
                r#"["x","y"]"#,
                "A-1|B-2",
            ],
        );
        assert_eq!(out, [0, 1, 2]);
    }

    #[test]
    fn no_guard_where_nothing_is_withheld_the_class_is_declared_or_a_check_pins_the_values() {
        let s = source(
            "    checks:\n      - { rule: in_set, column: ccy, values: [USD, EUR] }\n      - { rule: checksum, column: isin, scheme: isin }\n",
        );
        assert!(Guard::new(&s, 1, Audience::Restricted, "o").is_none());
        assert!(Guard::new(&s, 1, Audience::Internal, "o").is_some());
        assert!(
            Guard::new(&s, 2, Audience::Public, "o").is_none(),
            "declared"
        );
        assert!(Guard::new(&s, 3, Audience::Public, "o").is_none(), "in_set");
        assert!(Guard::new(&s, 4, Audience::Public, "o").is_none(), "isin");
        assert!(
            Guard::new(&s, 5, Audience::Public, "o").is_some(),
            "an integer"
        );
        assert!(Guard::new(&s, 6, Audience::Public, "o").is_none(), "a date");
        let s =
            source("    checks:\n      - { rule: in_set, column: ccy, values: [USD, a@b.com] }\n");
        assert!(
            Guard::new(&s, 3, Audience::Public, "o").is_some(),
            "a sensitive member"
        );
    }

    #[test]
    fn the_first_look_lets_through_everything_a_validator_could_accept() {
        for v in [
            "a@b.co",
            "::1",
            "1.2.3.4",
            "123-45-6789",
            "AB123456C",
            "GB82WEST12345698765432",
            "5493001KJTIIGC8Y1R12",
            "+44 20 7946 0958",
        ] {
            assert!(detect::worth_a_look(v), "{v}");
            assert!(detect::value_kind(v).is_some(), "{v}");
        }
        for v in ["BUY", "XLON", "TR12345", "USD", "12.50", "ORD-0001"] {
            assert!(!detect::worth_a_look(v), "{v}");
        }
    }
}
