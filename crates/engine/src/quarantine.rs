//! The quarantine table: one row per record that was not loaded.
//!
//! Columns: `run_id`, `source`, `input` (file or table), `line` (physical line, for text
//! files), `row` (row index, for Parquet), `key` (for tables), `reason` (the first failed
//! rule's code), `reasons` and `rules` (every failed rule, `;`-separated, in check order),
//! `raw` (the exact source bytes, encrypted: AES-256-GCM under the keyring's `quarantine` key,
//! `st1:quarantine@N:` then nonce, ciphertext and tag; `sealtrail quarantine show` decrypts).
//! Reasons and rules never contain record values.

use arrow::array::{BinaryBuilder, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sealtrail_core::record::{PosKind, Quarantined};
use sealtrail_protect::ops::Sealer;
use std::sync::{Arc, LazyLock};

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
    sealer: &Sealer,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = rows.len();
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
    for q in rows {
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
        raw.append_value(sealer.seal_bytes(&q.raw));
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
}
