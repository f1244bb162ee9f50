//! Per-record chain of custody on the engine side: lineage ids, the canonical encoding of
//! output rows, and what a batch stores so any of its rows can be proven later.
//!
//! - A record's lineage id is `source:input:position`: `input` is the first 12 hex digits of
//!   SHA-256 of the input's name (file path or table), `position` its physical line (text
//!   files), row index (Parquet) or key (PostgreSQL, else `#row`). It travels with the record
//!   as the column [`ID_COLUMN`] through protection and every transform, into every sink.
//! - Input commitments are SHA-256 of the record's source bytes (the raw line, or the
//!   canonical row encoding of typed sources: [`sealtrail_core::record::canonical_row`]).
//! - Output commitments are SHA-256 of [`canonical_row`] of the row as delivered.
//!
//! The exact encodings are specified in `docs/custody.md`.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use sealtrail_core::record::PosKind;
use sealtrail_ledger::custody::{chunked_root, commitment, group_id, record_leaf, records_root};
use sealtrail_ledger::entry::Hash;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;

pub use sealtrail_ledger::custody::ID_COLUMN;

/// The input part of lineage ids: 12 hex digits of SHA-256 of the input's name.
pub fn input_key(input: &str) -> String {
    hex::encode(&Sha256::digest(input.as_bytes())[..6])
}

/// The lineage id of a record.
pub fn record_id(
    source: &str,
    input_key: &str,
    kind: PosKind,
    pos: u64,
    key: Option<&str>,
) -> String {
    match (kind, key) {
        (PosKind::Key, Some(k)) => format!("{source}:{input_key}:{k}"),
        (PosKind::Key, None) => format!("{source}:{input_key}:#{pos}"),
        _ => format!("{source}:{input_key}:{pos}"),
    }
}

/// Splits a lineage id into (source, input key, position or key).
pub fn parse_id(id: &str) -> Option<(&str, &str, &str)> {
    let mut it = id.splitn(3, ':');
    let (s, i, p) = (it.next()?, it.next()?, it.next()?);
    (!s.is_empty() && i.len() == 12 && !p.is_empty()).then_some((s, i, p))
}

/// `schema` with the lineage id column appended (what the protection stage emits).
pub fn with_id_field(schema: &Schema) -> arrow::datatypes::SchemaRef {
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
        ID_COLUMN,
        DataType::Utf8,
        false,
    )));
    std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Whether `ty` can hold lineage ids: text (one record per row) or a list of text (the
/// contributing records of an aggregated row).
pub fn id_type(ty: &DataType) -> bool {
    match ty {
        DataType::Utf8 => true,
        DataType::List(f) | DataType::LargeList(f) => f.data_type() == &DataType::Utf8,
        _ => false,
    }
}

/// Whether every value of `ty` has a canonical encoding (checked for every sink at `check`).
pub fn encodable(ty: &DataType) -> bool {
    use DataType::*;
    match ty {
        Null | Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        | Float32 | Float64 | Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView
        | Date32 | Date64 | Decimal128(..) | Decimal256(..) => true,
        Timestamp(..) => true,
        List(f) | LargeList(f) => encodable(f.data_type()),
        _ => false,
    }
}

/// Writes the canonical encoding of row `row` of `batch` into `out` (cleared first): a compact
/// JSON object with every column in schema order (see `docs/custody.md`). For many rows of one
/// batch, build a [`RowEncoder`] once instead.
pub fn canonical_row(batch: &RecordBatch, row: usize, out: &mut String) -> Result<(), String> {
    RowEncoder::new(batch).encode(row, out)
}

/// Encodes the rows of one batch canonically, with the per-column work done once: the
/// `"name":` prefixes, the downcasts, and one scan of each text column's whole value buffer
/// for characters that need escaping (usually none, so each value is then a plain copy).
/// This is the hot path of every commit (one call per delivered row) and of `audit`.
#[derive(Debug)]
pub struct RowEncoder<'a> {
    cols: Vec<(String, Col<'a>)>,
}

#[derive(Debug)]
enum Col<'a> {
    /// Utf8 values; `true` when some value may need escaping.
    Utf8(&'a arrow::array::StringArray, bool),
    Int64(&'a arrow::array::Int64Array),
    Boolean(&'a arrow::array::BooleanArray),
    Date32(&'a arrow::array::Date32Array),
    /// Any timestamp, as its i64 values and unit.
    Timestamp(&'a ArrayRef, &'a [i64], TimeUnit),
    Decimal128(&'a arrow::array::Decimal128Array, i8),
    /// Everything else, through the general [`value`].
    Other(&'a ArrayRef),
}

/// Whether any byte of `b` must be escaped in a JSON string. No early exit, so it vectorises.
fn needs_escape(b: &[u8]) -> bool {
    b.chunks(64).any(|c| {
        c.iter()
            .fold(false, |a, &x| a | (x < 0x20) | (x == b'"') | (x == b'\\'))
    })
}

impl<'a> RowEncoder<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        use arrow::datatypes::*;
        let schema = batch.schema();
        let cols = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .enumerate()
            .map(|(i, (f, col))| {
                let mut prefix = String::from(if i == 0 { "{" } else { "," });
                json_str(f.name(), &mut prefix);
                prefix.push(':');
                let enc = match col.data_type() {
                    DataType::Utf8 => {
                        let a = col.as_string::<i32>();
                        Col::Utf8(a, needs_escape(a.values()))
                    }
                    DataType::Int64 => Col::Int64(col.as_primitive::<Int64Type>()),
                    DataType::Boolean => Col::Boolean(col.as_boolean()),
                    DataType::Date32 => Col::Date32(col.as_primitive::<Date32Type>()),
                    DataType::Timestamp(unit, _) => {
                        let v: &[i64] = match unit {
                            TimeUnit::Second => col.as_primitive::<TimestampSecondType>().values(),
                            TimeUnit::Millisecond => {
                                col.as_primitive::<TimestampMillisecondType>().values()
                            }
                            TimeUnit::Microsecond => {
                                col.as_primitive::<TimestampMicrosecondType>().values()
                            }
                            TimeUnit::Nanosecond => {
                                col.as_primitive::<TimestampNanosecondType>().values()
                            }
                        };
                        Col::Timestamp(col, v, *unit)
                    }
                    DataType::Decimal128(_, s) => {
                        Col::Decimal128(col.as_primitive::<Decimal128Type>(), *s)
                    }
                    _ => Col::Other(col),
                };
                (prefix, enc)
            })
            .collect();
        Self { cols }
    }

    /// Writes the canonical encoding of `row` into `out` (cleared first).
    pub fn encode(&self, row: usize, out: &mut String) -> Result<(), String> {
        out.clear();
        if self.cols.is_empty() {
            out.push('{');
        }
        for (prefix, col) in &self.cols {
            out.push_str(prefix);
            match col {
                Col::Utf8(a, dirty) => {
                    if a.is_null(row) {
                        out.push_str("null");
                    } else if *dirty {
                        json_str(a.value(row), out);
                    } else {
                        out.push('"');
                        out.push_str(a.value(row));
                        out.push('"');
                    }
                }
                Col::Int64(a) if a.is_valid(row) => {
                    out.push_str(itoa::Buffer::new().format(a.value(row)))
                }
                Col::Boolean(a) if a.is_valid(row) => {
                    out.push_str(if a.value(row) { "true" } else { "false" })
                }
                Col::Date32(a) if a.is_valid(row) => {
                    out.push('"');
                    date(i64::from(a.value(row)), out)?;
                    out.push('"');
                }
                Col::Timestamp(a, v, unit) if a.is_valid(row) => timestamp(v[row], *unit, out)?,
                Col::Decimal128(a, s) if a.is_valid(row) => decimal(a.value(row), *s, out),
                Col::Other(a) => value(a, row, out)?,
                _ => out.push_str("null"),
            }
        }
        out.push('}');
        Ok(())
    }
}

/// A JSON string as serde_json writes it (`"`, `\` and control characters escaped).
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn float(x: f64, out: &mut String) {
    if x.is_finite() {
        // Rust's Display: the shortest digits that round-trip, positional notation.
        let _ = write!(out, "{x}");
    } else if x.is_nan() {
        out.push_str("\"NaN\"");
    } else if x > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

fn decimal(v: i128, scale: i8, out: &mut String) {
    // Exactly `scale` fraction digits; a negative scale multiplies. No allocation: this runs
    // for every decimal of every delivered row.
    let mut b = itoa::Buffer::new();
    let digits = b.format(v.unsigned_abs());
    out.push('"');
    if v < 0 {
        out.push('-');
    }
    if scale <= 0 {
        out.push_str(digits);
        for _ in 0..scale.unsigned_abs() {
            out.push('0');
        }
        out.push('"');
        return;
    }
    let s = scale as usize;
    if digits.len() <= s {
        out.push_str("0.");
        for _ in digits.len()..s {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - s);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    out.push('"');
}

/// Appends `v` in decimal with at least `width` digits (zero-padded); `v` >= 0.
fn digits(out: &mut String, v: i64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    for _ in s.len()..width {
        out.push('0');
    }
    out.push_str(s);
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (proleptic Gregorian).
fn date(days: i64, out: &mut String) -> Result<(), String> {
    let (y, m, d) = sealtrail_core::civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return Err("a date outside years 0-9999".into());
    }
    digits(out, y, 4);
    out.push('-');
    digits(out, m, 2);
    out.push('-');
    digits(out, d, 2);
    Ok(())
}

fn timestamp(v: i64, unit: TimeUnit, out: &mut String) -> Result<(), String> {
    let (secs, nanos, width) = match unit {
        TimeUnit::Second => (v, 0, 0),
        TimeUnit::Millisecond => (v.div_euclid(1_000), v.rem_euclid(1_000), 3),
        TimeUnit::Microsecond => (v.div_euclid(1_000_000), v.rem_euclid(1_000_000), 6),
        TimeUnit::Nanosecond => (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000), 9),
    };
    let (days, tod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    out.push('"');
    date(days, out)?;
    out.push('T');
    digits(out, tod / 3_600, 2);
    out.push(':');
    digits(out, tod / 60 % 60, 2);
    out.push(':');
    digits(out, tod % 60, 2);
    if width > 0 {
        out.push('.');
        digits(out, nanos, width);
    }
    out.push_str("Z\"");
    Ok(())
}

fn value(col: &ArrayRef, row: usize, out: &mut String) -> Result<(), String> {
    use arrow::datatypes::*;
    if col.is_null(row) {
        out.push_str("null");
        return Ok(());
    }
    macro_rules! int {
        ($t:ty) => {{
            out.push_str(itoa::Buffer::new().format(col.as_primitive::<$t>().value(row)));
        }};
    }
    match col.data_type() {
        DataType::Null => out.push_str("null"),
        DataType::Boolean => out.push_str(if col.as_boolean().value(row) {
            "true"
        } else {
            "false"
        }),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => float(f64::from(col.as_primitive::<Float32Type>().value(row)), out),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row), out),
        DataType::Utf8 => json_str(col.as_string::<i32>().value(row), out),
        DataType::LargeUtf8 => json_str(col.as_string::<i64>().value(row), out),
        DataType::Utf8View => json_str(col.as_string_view().value(row), out),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            use base64::Engine;
            let b: &[u8] = match col.data_type() {
                DataType::Binary => col.as_binary::<i32>().value(row),
                DataType::LargeBinary => col.as_binary::<i64>().value(row),
                _ => col.as_binary_view().value(row),
            };
            out.push('"');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
        DataType::Date32 => {
            out.push('"');
            date(i64::from(col.as_primitive::<Date32Type>().value(row)), out)?;
            out.push('"');
        }
        DataType::Date64 => {
            out.push('"');
            let ms = col.as_primitive::<Date64Type>().value(row);
            date(ms.div_euclid(86_400_000), out)?;
            out.push('"');
        }
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => col.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => col.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(row),
            };
            timestamp(v, *unit, out)?;
        }
        DataType::Decimal128(_, s) => {
            decimal(col.as_primitive::<Decimal128Type>().value(row), *s, out)
        }
        DataType::Decimal256(_, s) => {
            let v = col.as_primitive::<Decimal256Type>().value(row);
            let v = v
                .to_i128()
                .ok_or_else(|| "a Decimal256 beyond 128 bits".to_string())?;
            decimal(v, *s, out);
        }
        DataType::List(_) | DataType::LargeList(_) => {
            let inner: ArrayRef = match col.data_type() {
                DataType::List(_) => col.as_list::<i32>().value(row),
                _ => col.as_list::<i64>().value(row),
            };
            out.push('[');
            for i in 0..inner.len() {
                if i > 0 {
                    out.push(',');
                }
                value(&inner, i, out)?;
            }
            out.push(']');
        }
        other => return Err(format!("no canonical encoding for {other}")),
    }
    Ok(())
}

fn unknown_id(sink: &str) -> String {
    format!("sink `{sink}` received a row whose `{ID_COLUMN}` is not a record of its batch")
}

/// One sink's rows of a batch as (input record index, output commitment), computed straight
/// from the Arrow batches: the hot path of every commit. A row of an aggregation lists its
/// contributing records; it becomes a group (index [`GROUP`] + k of [`SinkCustody::groups`]).
pub fn sink_rows(
    sink: &str,
    rows: &[RecordBatch],
    input: &[(String, Hash)],
) -> Result<SinkCustody, String> {
    // Built only when rows come out of input order (a transform that sorts or groups).
    let index = std::cell::OnceCell::new();
    let mut out = Vec::with_capacity(rows.iter().map(RecordBatch::num_rows).sum());
    let mut groups = Vec::new();
    let mut buf = String::with_capacity(1024);
    // Rows of 1:1 transforms come in input order: try the records just after the previous
    // match (quarantined ones are skipped) before the hash index.
    let mut next = 0usize;
    let mut find = |id: &str| -> Result<u32, String> {
        let window = input.iter().enumerate().skip(next).take(8);
        if let Some(k) = window.filter(|(_, r)| r.0 == id).map(|(k, _)| k).next() {
            next = k + 1;
            return Ok(k as u32);
        }
        let index = index.get_or_init(|| {
            input
                .iter()
                .enumerate()
                .map(|(k, (id, _))| (id.as_str(), k as u32))
                .collect::<HashMap<&str, u32>>()
        });
        let k = index.get(id).copied().ok_or_else(|| unknown_id(sink))?;
        next = k as usize + 1;
        Ok(k)
    };
    for b in rows {
        let ids = id_column(b)?;
        let enc = RowEncoder::new(b);
        for r in 0..b.num_rows() {
            let k = match ids(r) {
                Some(RowIds::One(id)) => find(id)?,
                Some(RowIds::Many(list)) if !list.is_empty() => {
                    let g = list.into_iter().map(&mut find);
                    groups.push(g.collect::<Result<Vec<_>, _>>()?);
                    GROUP | (groups.len() - 1) as u32
                }
                _ => return Err(unknown_id(sink)),
            };
            enc.encode(r, &mut buf)?;
            out.push((k, commitment(buf.as_bytes())));
        }
    }
    Ok(SinkCustody {
        sink: sink.to_string(),
        rows: out,
        groups,
        chunks: Vec::new(),
    })
}

/// A row's lineage: the id of its input record or, for a row of an aggregation, the ids of
/// every record that contributed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowIds<'a> {
    One(&'a str),
    Many(Vec<&'a str>),
}

impl RowIds<'_> {
    /// The row's lineage id: the record's id, or the group id of the contributors.
    pub fn lineage_id(&self) -> String {
        match self {
            RowIds::One(id) => id.to_string(),
            RowIds::Many(ids) => group_id(ids.iter().copied()),
        }
    }

    /// The contributing records' ids.
    pub fn members(&self) -> Vec<&str> {
        match self {
            RowIds::One(id) => vec![id],
            RowIds::Many(ids) => ids.clone(),
        }
    }
}

type StrAt<'a> = Box<dyn Fn(usize) -> Option<&'a str> + 'a>;

fn strings(col: &ArrayRef) -> Option<StrAt<'_>> {
    Some(match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            Box::new(move |r| a.is_valid(r).then(|| a.value(r)))
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            Box::new(move |r| a.is_valid(r).then(|| a.value(r)))
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            Box::new(move |r| a.is_valid(r).then(|| a.value(r)))
        }
        _ => return None,
    })
}

/// Reads the lineage ids of a batch's rows: the column [`ID_COLUMN`], text (one record per
/// row) or a list of text (the contributors of an aggregated row).
#[allow(clippy::type_complexity)]
pub fn id_column<'a>(
    b: &'a RecordBatch,
) -> Result<Box<dyn Fn(usize) -> Option<RowIds<'a>> + 'a>, String> {
    let i = b
        .schema()
        .index_of(ID_COLUMN)
        .map_err(|_| format!("the rows have no `{ID_COLUMN}` column"))?;
    let col = b.column(i);
    let wrong = || {
        format!(
            "`{ID_COLUMN}` is {}, not text or a list of text",
            col.data_type()
        )
    };
    if let Some(one) = strings(col) {
        return Ok(Box::new(move |r| one(r).map(RowIds::One)));
    }
    let (offsets, values): (Vec<usize>, &ArrayRef) = match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            (
                l.value_offsets().iter().map(|&o| o as usize).collect(),
                l.values(),
            )
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            (
                l.value_offsets().iter().map(|&o| o as usize).collect(),
                l.values(),
            )
        }
        _ => return Err(wrong()),
    };
    let inner = strings(values).ok_or_else(wrong)?;
    Ok(Box::new(move |r| {
        if col.is_null(r) {
            return None;
        }
        (offsets[r]..offsets[r + 1])
            .map(&inner)
            .collect::<Option<Vec<_>>>()
            .map(RowIds::Many)
    }))
}

/// What one batch stores so its rows can be proven later: the input records' ids and
/// commitments in source order, and per sink the rows' commitments with, for each, the index
/// of its input record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchCustody {
    pub input: Vec<(String, Hash)>,
    pub outputs: Vec<SinkCustody>,
    /// Chunk roots of the input tree (see [`sealtrail_ledger::custody::chunk_roots`]); empty
    /// in records written before they were kept, and until [`BatchCustody::seal`].
    pub input_chunks: Vec<Hash>,
}

/// The Merkle roots a batch's ledger entry carries: its input records and, in the order of
/// [`BatchCustody::outputs`], each sink's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roots {
    pub input: Hash,
    pub outputs: Vec<Hash>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkCustody {
    pub sink: String,
    /// (index into `input`, output commitment), in the order the rows were written; an index
    /// with the [`GROUP`] bit set names `groups[index - GROUP]` instead (a many-to-one row).
    pub rows: Vec<(u32, Hash)>,
    /// The contributing input records of each many-to-one row, as indexes into `input`.
    pub groups: Vec<Vec<u32>>,
    /// Chunk roots of the sink's tree (as [`BatchCustody::input_chunks`]).
    pub chunks: Vec<Hash>,
}

/// Marks a row index that names a group of contributing records (see [`SinkCustody`]).
pub const GROUP: u32 = 1 << 31;

impl BatchCustody {
    /// The leaf of input record `i`.
    pub fn input_leaf(&self, i: usize) -> Hash {
        let (id, c) = &self.input[i];
        record_leaf(id, c)
    }

    /// The leaf of row `j` of sink `s`.
    pub fn output_leaf(&self, s: &SinkCustody, j: usize) -> Hash {
        let (k, c) = &s.rows[j];
        if k & GROUP != 0 {
            record_leaf(&self.row_id(s, *k), c)
        } else {
            record_leaf(&self.input[*k as usize].0, c)
        }
    }

    /// Computes and keeps the chunk roots of every tree; returns the trees' roots.
    pub fn seal(&mut self) -> Roots {
        let leaves: Vec<Hash> = (0..self.input.len()).map(|i| self.input_leaf(i)).collect();
        let (input, chunks) = chunked_root(&leaves);
        self.input_chunks = chunks;
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for j in 0..self.outputs.len() {
            let s = &self.outputs[j];
            let leaves: Vec<Hash> = (0..s.rows.len()).map(|r| self.output_leaf(s, r)).collect();
            let (root, chunks) = chunked_root(&leaves);
            outputs.push(root);
            self.outputs[j].chunks = chunks;
        }
        Roots { input, outputs }
    }

    pub fn input_root(&self) -> Hash {
        records_root(self.input.iter().map(|(i, c)| (i.as_str(), c)))
    }

    pub fn output_root(&self, s: &SinkCustody) -> Hash {
        if s.groups.is_empty() {
            return records_root(
                s.rows
                    .iter()
                    .map(|(i, c)| (self.input[*i as usize].0.as_str(), c)),
            );
        }
        let ids: Vec<String> = s.rows.iter().map(|(k, _)| self.row_id(s, *k)).collect();
        records_root(
            ids.iter()
                .map(String::as_str)
                .zip(s.rows.iter().map(|(_, c)| c)),
        )
    }

    /// The input records (indexes into `input`) behind row index `k` of sink `s`.
    pub fn members(s: &SinkCustody, k: u32) -> Vec<u32> {
        if k & GROUP != 0 {
            s.groups[(k & !GROUP) as usize].clone()
        } else {
            vec![k]
        }
    }

    /// The lineage id of a row of sink `s` with index `k`: its record's id, or the group id.
    pub fn row_id(&self, s: &SinkCustody, k: u32) -> String {
        if k & GROUP != 0 {
            group_id(
                s.groups[(k & !GROUP) as usize]
                    .iter()
                    .map(|&i| self.input[i as usize].0.as_str()),
            )
        } else {
            self.input[k as usize].0.clone()
        }
    }

    /// Binary form (version 3), stored with the batch's commit:
    /// `u8 3 | u32 n | n × (u16 len, id, [32]) | u32 s | s × (u16 len, sink, u32 m, m × (u32, [32]),
    /// u32 g, g × (u32 c, c × u32)) | u32 k, k × [32] | s × (u32 k, k × [32])`, the last two
    /// being the chunk roots of the input tree and of each sink's tree. Versions 1 (no groups)
    /// and 2 (no chunk roots) still decode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.input.len() * 64);
        out.push(3);
        out.extend_from_slice(&(self.input.len() as u32).to_be_bytes());
        for (id, c) in &self.input {
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&(self.outputs.len() as u32).to_be_bytes());
        for s in &self.outputs {
            out.extend_from_slice(&(s.sink.len() as u16).to_be_bytes());
            out.extend_from_slice(s.sink.as_bytes());
            out.extend_from_slice(&(s.rows.len() as u32).to_be_bytes());
            for (k, c) in &s.rows {
                out.extend_from_slice(&k.to_be_bytes());
                out.extend_from_slice(c);
            }
            out.extend_from_slice(&(s.groups.len() as u32).to_be_bytes());
            for g in &s.groups {
                out.extend_from_slice(&(g.len() as u32).to_be_bytes());
                for k in g {
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
        }
        let chunks = |out: &mut Vec<u8>, c: &[Hash]| {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            c.iter().for_each(|h| out.extend_from_slice(h));
        };
        chunks(&mut out, &self.input_chunks);
        for s in &self.outputs {
            chunks(&mut out, &s.chunks);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        struct R<'a>(&'a [u8]);
        impl<'a> R<'a> {
            fn take(&mut self, n: usize) -> Option<&'a [u8]> {
                (self.0.len() >= n).then(|| {
                    let (a, b) = self.0.split_at(n);
                    self.0 = b;
                    a
                })
            }
            fn u16(&mut self) -> Option<usize> {
                self.take(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            }
            fn u32(&mut self) -> Option<u32> {
                self.take(4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            fn hash(&mut self) -> Option<Hash> {
                self.take(32)?.try_into().ok()
            }
            fn str(&mut self) -> Option<String> {
                let n = self.u16()?;
                String::from_utf8(self.take(n)?.to_vec()).ok()
            }
        }
        let mut r = R(b);
        let version = r.take(1)?[0];
        if !(1..=3).contains(&version) {
            return None;
        }
        let n = r.u32()? as usize;
        let mut input = Vec::with_capacity(n.min(b.len() / 34));
        for _ in 0..n {
            input.push((r.str()?, r.hash()?));
        }
        let s = r.u32()? as usize;
        let mut outputs = Vec::new();
        for _ in 0..s {
            let sink = r.str()?;
            let m = r.u32()? as usize;
            let mut rows = Vec::with_capacity(m.min(b.len() / 36));
            for _ in 0..m {
                rows.push((r.u32()?, r.hash()?));
            }
            let mut groups = Vec::new();
            for _ in 0..if version >= 2 { r.u32()? } else { 0 } {
                let c = r.u32()? as usize;
                let mut g = Vec::with_capacity(c.min(b.len() / 4));
                for _ in 0..c {
                    g.push(r.u32()?);
                }
                groups.push(g);
            }
            let in_input = |k: &u32| (*k as usize) < input.len();
            let valid = |k: &u32| {
                if k & GROUP != 0 {
                    groups
                        .get((k & !GROUP) as usize)
                        .is_some_and(|g| !g.is_empty())
                } else {
                    in_input(k)
                }
            };
            if !rows.iter().all(|(k, _)| valid(k)) || !groups.iter().flatten().all(in_input) {
                return None;
            }
            outputs.push(SinkCustody {
                sink,
                rows,
                groups,
                chunks: Vec::new(),
            });
        }
        let mut chunks = || -> Option<Vec<Hash>> {
            let k = r.u32()? as usize;
            let mut c = Vec::with_capacity(k.min(b.len() / 32));
            for _ in 0..k {
                c.push(r.hash()?);
            }
            Some(c)
        };
        let mut input_chunks = Vec::new();
        if version >= 3 {
            input_chunks = chunks()?;
            for o in &mut outputs {
                o.chunks = chunks()?;
            }
        }
        r.0.is_empty().then_some(BatchCustody {
            input,
            outputs,
            input_chunks,
        })
    }
}

/// Checks that every sink's schema can be committed to (see [`encodable`]); returns the
/// offending (column, type) pairs.
pub fn unencodable(schema: &Schema) -> Vec<(String, DataType)> {
    schema
        .fields()
        .iter()
        .filter(|f| !encodable(f.data_type()))
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn canonical_rows_are_exact_json() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("d", DataType::Date32, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("m", DataType::Decimal128(10, 4), true),
            Field::new(ID_COLUMN, DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a\"b\n\u{1}é"), None])),
                Arc::new(Int64Array::from(vec![Some(-42), None])),
                Arc::new(Float64Array::from(vec![Some(0.1), Some(1e21)])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(Date32Array::from(vec![Some(20_454), None])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_767_225_600_000_001), None])
                        .with_timezone("UTC"),
                ),
                Arc::new(
                    Decimal128Array::from(vec![Some(-12_345), Some(5)])
                        .with_precision_and_scale(10, 4)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(vec![
                    "s:0123456789ab:2",
                    "s:0123456789ab:3",
                ])),
            ],
        )
        .unwrap();
        let mut out = String::new();
        canonical_row(&b, 0, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"s":"a\"b\n\u0001é","i":-42,"f":0.1,"b":true,"d":"2026-01-01","t":"2026-01-01T00:00:00.000001Z","m":"-1.2345","_sealtrail_id":"s:0123456789ab:2"}"#
        );
        // serde_json reads it back with the same values.
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["s"], "a\"b\n\u{1}é");
        canonical_row(&b, 1, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"s":null,"i":null,"f":1000000000000000000000,"b":null,"d":null,"t":null,"m":"0.0005","_sealtrail_id":"s:0123456789ab:3"}"#
        );
        let input: Vec<(String, Hash)> = (0..12)
            .map(|i| {
                (
                    format!(
                        "s:0123456789ab:{}",
                        [2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 3][i]
                    ),
                    [0; 32],
                )
            })
            .collect();
        let c = sink_rows("o", std::slice::from_ref(&b), &input).unwrap();
        assert_eq!(c.sink, "o");
        // Row 1's record is beyond the sequential window: found through the index.
        assert_eq!(c.rows[1], (11, commitment(out.as_bytes())));
        // A row whose id is not a record of the batch is refused, naming no value.
        let e = sink_rows("o", &[b], &input[..1]).unwrap_err();
        assert!(e.contains("sink `o`") && !e.contains("0123456789ab"), "{e}");
    }

    #[test]
    fn dates_and_timestamps_match_chrono() {
        let mut out = String::new();
        for days in (-719_162..2_932_896).step_by(997) {
            out.clear();
            date(days, &mut out).unwrap();
            let want = chrono::DateTime::from_timestamp(days * 86_400, 0)
                .unwrap()
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(out, want, "{days}");
        }
        for v in [
            0i64,
            -1,
            1_767_225_600_123_456,
            -86_400_000_001,
            253_402_300_799_999_999,
        ] {
            out.clear();
            timestamp(v, TimeUnit::Microsecond, &mut out).unwrap();
            let t = chrono::DateTime::from_timestamp_micros(v).unwrap();
            assert_eq!(
                out,
                format!("\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
                "{v}"
            );
        }
        assert!(date(3_000_000, &mut out).is_err());
    }

    #[test]
    fn ids_parse_and_custody_round_trips() {
        let k = input_key("/data/trades.csv");
        assert_eq!(k.len(), 12);
        let id = record_id("trades", &k, PosKind::Line, 17, None);
        assert_eq!(parse_id(&id), Some(("trades", k.as_str(), "17")));
        assert_eq!(
            record_id("t", &k, PosKind::Key, 3, Some("a:b")),
            format!("t:{k}:a:b")
        );
        assert_eq!(parse_id(&format!("t:{k}:a:b")).unwrap().2, "a:b");
        let mut c = BatchCustody {
            input: (0..5)
                .map(|i| (format!("t:{k}:{i}"), commitment(&[i])))
                .collect(),
            ..Default::default()
        };
        c.outputs.push(SinkCustody {
            sink: "o".into(),
            rows: vec![(3, [7; 32])],
            ..Default::default()
        });
        let back = BatchCustody::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        assert!(BatchCustody::decode(&c.encode()[..40]).is_none());
        assert_eq!(
            c.output_root(&c.outputs[0]),
            records_root([(c.input[3].0.as_str(), &[7u8; 32])])
        );
    }

    #[test]
    fn sealing_keeps_chunk_roots_that_rebuild_the_same_trees() {
        let input: Vec<(String, Hash)> = (0..700u32)
            .map(|i| (format!("t:0123456789ab:{i}"), commitment(&i.to_be_bytes())))
            .collect();
        let mut c = BatchCustody {
            input,
            ..Default::default()
        };
        c.outputs.push(SinkCustody {
            sink: "o".into(),
            // Every other record, each with some output commitment.
            rows: (0..350u32).map(|k| (2 * k, [k as u8; 32])).collect(),
            ..Default::default()
        });
        let roots = c.seal();
        assert_eq!(roots.input, c.input_root());
        assert_eq!(roots.outputs, vec![c.output_root(&c.outputs[0])]);
        assert_eq!((c.input_chunks.len(), c.outputs[0].chunks.len()), (2, 1));
        let back = BatchCustody::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        let t = sealtrail_ledger::custody::ChunkedTree::new(700, back.input_chunks.clone(), |i| {
            back.input_leaf(i as usize)
        })
        .unwrap();
        assert_eq!(t.root(), roots.input);
    }

    #[test]
    fn aggregated_rows_are_groups_of_their_contributors() {
        let input: Vec<(String, Hash)> = (0..4)
            .map(|i| (format!("t:0123456789ab:{i}"), commitment(&[i])))
            .collect();
        let mut c = BatchCustody {
            input,
            ..Default::default()
        };
        // Two aggregated rows: {0, 2} and {1, 3}, ids as DataFusion's array_agg lists them.
        let mut ids = ListBuilder::new(StringBuilder::new());
        for g in [[0, 2], [1, 3]] {
            for i in g {
                ids.values().append_value(format!("t:0123456789ab:{i}"));
            }
            ids.append(true);
        }
        let ids = ids.finish();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new(ID_COLUMN, ids.data_type().clone(), true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![2, 2])), Arc::new(ids)],
        )
        .unwrap();
        let get = id_column(&b).unwrap();
        let first = get(0).unwrap();
        assert_eq!(first.members(), ["t:0123456789ab:0", "t:0123456789ab:2"]);
        let s = sink_rows("agg", std::slice::from_ref(&b), &c.input).unwrap();
        assert_eq!(s.groups, vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(s.rows[1].0, GROUP | 1);
        assert_eq!(c.row_id(&s, s.rows[0].0), first.lineage_id());
        assert_eq!(BatchCustody::members(&s, s.rows[1].0), vec![1, 3]);
        let mut buf = String::new();
        canonical_row(&b, 0, &mut buf).unwrap();
        assert_eq!(
            buf,
            r#"{"n":2,"_sealtrail_id":["t:0123456789ab:0","t:0123456789ab:2"]}"#
        );
        let root = records_root([
            (first.lineage_id().as_str(), &commitment(buf.as_bytes())),
            (get(1).unwrap().lineage_id().as_str(), &s.rows[1].1),
        ]);
        c.outputs.push(s);
        assert_eq!(c.output_root(&c.outputs[0]), root);
        assert_eq!(c.seal().outputs, vec![root]);
        // Groups survive the stored form; a group naming no record is refused.
        let bytes = c.encode();
        assert_eq!(BatchCustody::decode(&bytes).unwrap(), c);
        c.outputs[0].groups[1] = vec![9];
        assert!(BatchCustody::decode(&c.encode()).is_none());
        // A contributor that is not a record of the batch is refused.
        assert!(sink_rows("agg", std::slice::from_ref(&b), &c.input[..1]).is_err());
    }

    /// The general per-cell path, which the batch encoder's fast paths must match exactly.
    fn reference_row(b: &RecordBatch, row: usize) -> Result<String, String> {
        let mut out = String::from("{");
        for (i, (f, col)) in b.schema().fields().iter().zip(b.columns()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(f.name(), &mut out);
            out.push(':');
            value(col, row, &mut out)?;
        }
        out.push('}');
        Ok(out)
    }

    proptest::proptest! {
        #[test]
        fn the_batch_encoder_matches_the_general_encoding(
            rows in proptest::collection::vec(
                (proptest::option::of("[a-z\"\\\\\n\u{1}é]{0,6}"), proptest::option::of(proptest::prelude::any::<i64>()),
                 proptest::option::of(-1_000_000i32..1_000_000), proptest::option::of(-(1i128 << 70)..(1i128 << 70))),
                1..20),
        ) {
            let clean: Vec<Option<String>> = rows.iter().map(|r| r.0.as_ref().map(|s| s.replace(['"', '\\', '\n', '\u{1}'], ""))).collect();
            let ts = |v: &Option<i64>| v.map(|x| x / 4);
            let schema = Arc::new(Schema::new(vec![
                Field::new("dirty", DataType::Utf8, true),
                Field::new("clean \"name\"", DataType::Utf8, true),
                Field::new("i", DataType::Int64, true),
                Field::new("b", DataType::Boolean, true),
                Field::new("d", DataType::Date32, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), true),
                Field::new("tms", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
                Field::new("tus", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                Field::new("tns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
                Field::new("m", DataType::Decimal128(38, 4), true),
                Field::new("m0", DataType::Decimal128(38, 0), true),
                Field::new("mneg", DataType::Decimal128(38, -2), true),
            ]));
            let secs: Vec<Option<i64>> = rows.iter().map(|r| r.2.map(|d| i64::from(d) * 7_919)).collect();
            let dec = || Decimal128Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>());
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())),
                Arc::new(StringArray::from(clean)),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(BooleanArray::from(rows.iter().map(|r| r.1.map(|x| x % 2 == 0)).collect::<Vec<_>>())),
                Arc::new(Date32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                Arc::new(TimestampSecondArray::from(secs.clone())),
                Arc::new(TimestampMillisecondArray::from(secs.iter().map(|s| s.map(|x| x * 1_000 + 7)).collect::<Vec<_>>()).with_timezone("UTC")),
                Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| ts(&r.1).map(|x| x % (1 << 50))).collect::<Vec<_>>())),
                Arc::new(TimestampNanosecondArray::from(secs.iter().map(|s| s.map(|x| x * 1_000_000_000 - 1)).collect::<Vec<_>>())),
                Arc::new(dec().with_precision_and_scale(38, 4).unwrap()),
                Arc::new(dec().with_precision_and_scale(38, 0).unwrap()),
                Arc::new(dec().with_precision_and_scale(38, -2).unwrap()),
            ];
            let b = RecordBatch::try_new(schema, cols).unwrap();
            let enc = RowEncoder::new(&b);
            let mut out = String::new();
            for r in 0..b.num_rows() {
                let got = enc.encode(r, &mut out).map(|()| out.clone());
                proptest::prop_assert_eq!(got, reference_row(&b, r));
            }
        }
    }
}
