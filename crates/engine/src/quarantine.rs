//! The quarantine table: one row per record that was not loaded.
//!
//! Columns: `run_id`, `source`, `input` (file or table), `line` (physical line, for text
//! files), `row` (row index, for Parquet), `key` (for tables), `reason` (the first failed
//! rule's code), `reasons` and `rules` (every failed rule, `;`-separated, in check order),
//! `raw` (the exact source bytes, encrypted: AES-256-GCM under the keyring's `quarantine` key,
//! `st1:quarantine@N:` then nonce, ciphertext and tag; `sealtrail quarantine show` decrypts).
//! A record of a source with per-subject keys whose subject is known is sealed under that
//! subject's key instead (`st1:subject:H:`), so `keys shred` erases it with the subject's
//! values; one of a subject already shredded keeps only `st1:subject:H:` (nothing to open).
//! Reasons and rules never contain record values.

use arrow::array::{BinaryBuilder, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sealtrail_core::record::{PosKind, Quarantined};
use sealtrail_protect::keyring::Keyring;
use sealtrail_protect::ops::Sealer;
use sealtrail_spec::Column;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// How a run seals the raw records it quarantines.
#[derive(Debug)]
pub struct Sealing<'a> {
    /// The keyring's active `quarantine` key.
    pub quarantine: &'a Sealer,
    /// For subject keys.
    pub keyring: &'a Mutex<Keyring>,
    /// The source's subject column ([`sealtrail_spec::Source::quarantine_subject`]).
    pub subject: Option<&'a Column>,
}

impl Sealing<'_> {
    /// Each record's raw bytes sealed: under its subject's key where it names a subject (the
    /// value as protection reads it), as `st1:subject:H:` alone for a shredded subject, else
    /// under the quarantine key. One keyring lookup for the batch's distinct subjects.
    fn seal(&self, rows: &[Quarantined]) -> Result<Vec<Vec<u8>>, crate::Error> {
        let subjects: Vec<Option<String>> = rows
            .iter()
            .map(|q| {
                let col = self.subject?;
                sealtrail_quality::typed::loaded_text(q.subject.as_deref()?, col)
            })
            .collect();
        let mut distinct: Vec<&str> = subjects.iter().flatten().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let mut by_subject: HashMap<&str, Result<Sealer, String>> = HashMap::new();
        if !distinct.is_empty() {
            let keys_err =
                |e: sealtrail_protect::keyring::KeyError| crate::Error::Keys(e.to_string());
            let mut ring = self
                .keyring
                .lock()
                .map_err(|_| crate::Error::Keys("keyring lock poisoned".into()))?;
            let keys = ring.subject_keys(&distinct).map_err(keys_err)?;
            for (d, k) in distinct.iter().zip(keys) {
                let sealer = match k {
                    Some((id, key)) => Ok(Sealer::new(&id, &key)),
                    None => Err(format!(
                        "st1:subject:{}:",
                        ring.subject_id(d).map_err(keys_err)?
                    )),
                };
                by_subject.insert(d, sealer);
            }
        }
        Ok(rows
            .iter()
            .zip(&subjects)
            .map(
                |(q, s)| match s.as_deref().and_then(|s| by_subject.get(s)) {
                    Some(Ok(sealer)) => sealer.seal_bytes(&q.raw),
                    Some(Err(erased)) => erased.as_bytes().to_vec(),
                    None => self.quarantine.seal_bytes(&q.raw),
                },
            )
            .collect())
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("input", DataType::Utf8, false),
        Field::new("line", DataType::Int64, true),
        Field::new("row", DataType::Int64, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("reasons", DataType::Utf8, false),
        Field::new("rules", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
    ]))
});

pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

pub fn to_batch(
    run_id: &str,
    source: &str,
    rows: &[Quarantined],
    sealing: &Sealing,
) -> Result<RecordBatch, crate::Error> {
    let n = rows.len();
    let sealed = sealing.seal(rows)?;
    let mut run = StringBuilder::with_capacity(n, n * 36);
    let mut src = StringBuilder::new();
    let mut input = StringBuilder::new();
    let mut line = Int64Builder::with_capacity(n);
    let mut row = Int64Builder::with_capacity(n);
    let mut key = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut reasons = StringBuilder::new();
    let mut rules = StringBuilder::new();
    let mut raw = BinaryBuilder::new();
    for (q, sealed) in rows.iter().zip(&sealed) {
        run.append_value(run_id);
        src.append_value(source);
        input.append_value(&*q.input);
        match q.pos_kind {
            PosKind::Line => {
                line.append_value(q.pos as i64);
                row.append_null();
            }
            PosKind::Row | PosKind::Key => {
                line.append_null();
                row.append_value(q.pos as i64);
            }
        }
        key.append_option(q.key.as_deref());
        reason.append_value(
            q.reasons
                .first()
                .map(|r| r.code.as_str())
                .unwrap_or("unknown"),
        );
        reasons.append_value(
            q.reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>()
                .join(";"),
        );
        rules.append_value(
            q.reasons
                .iter()
                .map(|r| r.rule.as_str())
                .collect::<Vec<_>>()
                .join(";"),
        );
        raw.append_value(sealed);
    }
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(run.finish()),
            Arc::new(src.finish()),
            Arc::new(input.finish()),
            Arc::new(line.finish()),
            Arc::new(row.finish()),
            Arc::new(key.finish()),
            Arc::new(reason.finish()),
            Arc::new(reasons.finish()),
            Arc::new(rules.finish()),
            Arc::new(raw.finish()),
        ],
    )
    .map_err(|e| crate::Error::Internal(format!("the quarantine batch: {e}")))
}
