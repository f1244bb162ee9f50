//! Per-record chain of custody on the engine side: lineage ids, the canonical encoding of
//! output rows, and what a batch stores so any of its rows can be proven later.
//!
//! - A record's lineage id is `source:input:position`: `input` is the first 12 hex digits of
//!   SHA-256 of the input's name (file path or table), `position` its physical line (text
//!   files), row index (Parquet) or key (PostgreSQL: `KEY#n` for the nth row of a run with
//!   that key, else `#row`). It travels with the record as the column [`ID_COLUMN`] through
//!   protection and every transform, into every sink.
//! - Input commitments are SHA-256 of the record's source bytes (the raw line, or the
//!   canonical row encoding of typed sources: [`sealtrail_core::record::canonical_row`]).
//! - Output commitments are SHA-256 of [`canonical_row`] of the row as delivered.
//!
//! The exact encodings are specified in `docs/custody.md`.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use sealtrail_core::record::PosKind;
use sealtrail_ledger::custody::{
    CHUNK_LEAVES, ChunkedTree, Inclusion, chunked_root, commitment, group_id, record_leaf,
    records_root,
};
use sealtrail_ledger::entry::Hash;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;

pub use sealtrail_ledger::custody::ID_COLUMN;

pub use sealtrail_ledger::custody::input_key;

/// The lineage id of a record.
pub fn record_id(
    source: &str,
    input_key: &str,
    kind: PosKind,
    pos: u64,
    key: Option<&str>,
) -> String {
    RecordIds::new(source, input_key).id(kind, pos, key)
}

/// Lineage ids of one input's records: `source:input_key:` formatted once, then each record's
/// position (or key) appended (the decode thread makes one id per record).
#[derive(Debug)]
pub struct RecordIds {
    prefix: String,
}

impl RecordIds {
    pub fn new(source: &str, input_key: &str) -> Self {
        Self {
            prefix: format!("{source}:{input_key}:"),
        }
    }

    pub fn id(&self, kind: PosKind, pos: u64, key: Option<&str>) -> String {
        let mut n = itoa::Buffer::new();
        let tail = match (kind, key) {
            (PosKind::Key, Some(k)) => k,
            _ => n.format(pos),
        };
        let hash = kind == PosKind::Key && key.is_none();
        let mut s = String::with_capacity(self.prefix.len() + usize::from(hash) + tail.len());
        s.push_str(&self.prefix);
        if hash {
            s.push('#');
        }
        s.push_str(tail);
        s
    }
}

/// Splits a lineage id into (source, input key, position or key).
pub fn parse_id(id: &str) -> Option<(&str, &str, &str)> {
    let mut it = id.splitn(3, ':');
    let (s, i, p) = (it.next()?, it.next()?, it.next()?);
    (!s.is_empty() && i.len() == 12 && !p.is_empty()).then_some((s, i, p))
}

/// The index of the first record where `reread` (lineage id and commitment per record, in
/// source order) differs from the input records of `committed`, or where one of the two ends
/// before the other; `None` when they are the same.
pub fn first_difference(committed: &CustodyView<'_>, reread: &[(String, Hash)]) -> Option<usize> {
    let n = committed.inputs();
    (0..n.min(reread.len()))
        .find(|&i| {
            let (id, c) = committed.input(i);
            id != reread[i].0 || c != reread[i].1
        })
        .or_else(|| (n != reread.len()).then_some(n.min(reread.len())))
}

/// Where a record is, for a message: `position 17` (a line or row number), or `a keyed
/// record` for a record identified by its key (key values may be personal data, and messages
/// go to logs and the ledger). `keyed`: the record's source keys its ids (PostgreSQL), whose
/// keys may be numbers too (a numeric customer id is no position).
pub fn describe_position(id: &str, keyed: bool) -> String {
    match parse_id(id) {
        Some((_, _, pos)) if !keyed && pos.bytes().all(|b| b.is_ascii_digit()) => {
            format!("position {pos}")
        }
        Some(_) => "a keyed record".to_string(),
        None => "a record without a lineage id".to_string(),
    }
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

/// The i64 values of a timestamp column of `unit`.
fn timestamp_values(col: &ArrayRef, unit: TimeUnit) -> &[i64] {
    use arrow::datatypes::*;
    match unit {
        TimeUnit::Second => col.as_primitive::<TimestampSecondType>().values(),
        TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().values(),
        TimeUnit::Microsecond => col.as_primitive::<TimestampMicrosecondType>().values(),
        TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().values(),
    }
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
                        Col::Timestamp(col, timestamp_values(col, *unit), *unit)
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
        DataType::Timestamp(unit, _) => timestamp(timestamp_values(col, *unit)[row], *unit, out)?,
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

/// How a batch's output rows were encoded for their commitments (`docs/custody.md`). Custody
/// records say which (records of version 5 and later: [`RowFormat::Binary`]); proofs and
/// audits re-encode rows the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RowFormat {
    /// Row format 1: a compact JSON object with every column's name ([`RowEncoder`]).
    Json,
    /// Row format 2: tag, schema digest and length-prefixed binary values ([`BinEncoder`],
    /// [`sealtrail_ledger::row`]): about a third fewer bytes to hash and no text formatting.
    #[default]
    Binary,
}

/// The row format 2 type name of an Arrow type (`None`: no canonical encoding).
pub fn row_type(ty: &DataType) -> Option<String> {
    use DataType::*;
    Some(match ty {
        Null => "null".into(),
        Boolean => "bool".into(),
        Int8 | Int16 | Int32 | Int64 => "int".into(),
        UInt8 | UInt16 | UInt32 | UInt64 => "uint".into(),
        Float32 | Float64 => "float".into(),
        Utf8 | LargeUtf8 | Utf8View => "string".into(),
        Binary | LargeBinary | BinaryView => "binary".into(),
        Date32 | Date64 => "date".into(),
        Timestamp(u, _) => format!(
            "timestamp({})",
            match u {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            }
        ),
        Decimal128(_, s) | Decimal256(_, s) => format!("decimal({s})"),
        List(f) | LargeList(f) => format!("list<{}>", row_type(f.data_type())?),
        _ => return None,
    })
}

/// Encodes the rows of one batch in row format 2. The 64 bytes every row starts with (tag and
/// schema digest) are hashed once per batch; each row then hashes only its values, which are
/// copied as they are (no escaping, no formatting of numbers or dates).
#[derive(Debug)]
pub struct BinEncoder<'a> {
    cols: Vec<BCol<'a>>,
    columns: Vec<(String, String)>,
    /// SHA-256 state after the 64-byte prefix.
    start: Sha256,
}

#[derive(Debug)]
enum BCol<'a> {
    Utf8(&'a arrow::array::StringArray),
    Int64(&'a arrow::array::Int64Array),
    Boolean(&'a arrow::array::BooleanArray),
    Date32(&'a arrow::array::Date32Array),
    /// Any timestamp, as its i64 values.
    Timestamp(&'a ArrayRef, &'a [i64]),
    Decimal128(&'a arrow::array::Decimal128Array),
    Other(&'a ArrayRef),
}

impl<'a> BinEncoder<'a> {
    /// Fails for a column with no canonical encoding (`check` rejects such sinks).
    pub fn new(batch: &'a RecordBatch) -> Result<Self, String> {
        use arrow::datatypes::*;
        let schema = batch.schema();
        let mut columns = Vec::with_capacity(batch.num_columns());
        let mut cols = Vec::with_capacity(batch.num_columns());
        for (f, col) in schema.fields().iter().zip(batch.columns()) {
            let ty = row_type(col.data_type())
                .ok_or_else(|| format!("no canonical encoding for {}", col.data_type()))?;
            columns.push((f.name().clone(), ty));
            cols.push(match col.data_type() {
                DataType::Utf8 => BCol::Utf8(col.as_string::<i32>()),
                DataType::Int64 => BCol::Int64(col.as_primitive::<Int64Type>()),
                DataType::Boolean => BCol::Boolean(col.as_boolean()),
                DataType::Date32 => BCol::Date32(col.as_primitive::<Date32Type>()),
                DataType::Timestamp(unit, _) => BCol::Timestamp(col, timestamp_values(col, *unit)),
                DataType::Decimal128(..) => BCol::Decimal128(col.as_primitive::<Decimal128Type>()),
                _ => BCol::Other(col),
            });
        }
        let mut start = Sha256::new();
        start.update(sealtrail_ledger::row::ROW_TAG);
        start.update(sealtrail_ledger::row::schema_digest(
            columns.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        ));
        Ok(Self {
            cols,
            columns,
            start,
        })
    }

    /// The columns' names and row format 2 types, in order.
    pub fn columns(&self) -> &[(String, String)] {
        &self.columns
    }

    /// Appends the values of `row` (everything after the 64-byte prefix) to `out`.
    fn values(&self, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
        for col in &self.cols {
            match col {
                BCol::Utf8(a) if a.is_valid(row) => {
                    let v = a.value(row).as_bytes();
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                BCol::Int64(a) if a.is_valid(row) => {
                    out.push(1);
                    out.extend_from_slice(&a.value(row).to_be_bytes());
                }
                BCol::Boolean(a) if a.is_valid(row) => {
                    out.extend_from_slice(&[1, a.value(row) as u8])
                }
                BCol::Date32(a) if a.is_valid(row) => {
                    out.push(1);
                    out.extend_from_slice(&a.value(row).to_be_bytes());
                }
                BCol::Timestamp(a, v) if a.is_valid(row) => {
                    out.push(1);
                    out.extend_from_slice(&v[row].to_be_bytes());
                }
                BCol::Decimal128(a) if a.is_valid(row) => {
                    out.push(1);
                    out.extend_from_slice(&a.value(row).to_be_bytes());
                }
                BCol::Other(a) => bin_value(a, row, out)?,
                _ => out.push(0),
            }
        }
        Ok(())
    }

    /// The row's whole encoding (prefix and values), written into `out` (cleared first).
    pub fn encode(&self, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        out.extend_from_slice(&sealtrail_ledger::row::ROW_TAG);
        out.extend_from_slice(&sealtrail_ledger::row::schema_digest(
            self.columns.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        ));
        self.values(row, out)
    }

    /// The row's commitment; `buf` is scratch space.
    pub fn commitment(&self, row: usize, buf: &mut Vec<u8>) -> Result<Hash, String> {
        buf.clear();
        self.values(row, buf)?;
        let mut h = self.start.clone();
        h.update(&buf[..]);
        Ok(h.finalize().into())
    }
}

/// Appends one value of any encodable type in row format 2.
fn bin_value(col: &ArrayRef, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    use arrow::datatypes::*;
    if col.is_null(row) || col.data_type() == &DataType::Null {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    macro_rules! int {
        ($t:ty, $as:ty) => {
            out.extend_from_slice(&(col.as_primitive::<$t>().value(row) as $as).to_be_bytes())
        };
    }
    let float = |x: f64, out: &mut Vec<u8>| {
        let bits = if x.is_nan() {
            sealtrail_ledger::row::NAN_BITS
        } else {
            x.to_bits()
        };
        out.extend_from_slice(&bits.to_be_bytes());
    };
    let bytes = |b: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    match col.data_type() {
        DataType::Boolean => out.push(col.as_boolean().value(row) as u8),
        DataType::Int8 => int!(Int8Type, i64),
        DataType::Int16 => int!(Int16Type, i64),
        DataType::Int32 => int!(Int32Type, i64),
        DataType::Int64 => int!(Int64Type, i64),
        DataType::UInt8 => int!(UInt8Type, u64),
        DataType::UInt16 => int!(UInt16Type, u64),
        DataType::UInt32 => int!(UInt32Type, u64),
        DataType::UInt64 => int!(UInt64Type, u64),
        DataType::Float32 => float(f64::from(col.as_primitive::<Float32Type>().value(row)), out),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row), out),
        DataType::Utf8 => bytes(col.as_string::<i32>().value(row).as_bytes(), out),
        DataType::LargeUtf8 => bytes(col.as_string::<i64>().value(row).as_bytes(), out),
        DataType::Utf8View => bytes(col.as_string_view().value(row).as_bytes(), out),
        DataType::Binary => bytes(col.as_binary::<i32>().value(row), out),
        DataType::LargeBinary => bytes(col.as_binary::<i64>().value(row), out),
        DataType::BinaryView => bytes(col.as_binary_view().value(row), out),
        DataType::Date32 => int!(Date32Type, i32),
        DataType::Date64 => {
            let days = col
                .as_primitive::<Date64Type>()
                .value(row)
                .div_euclid(86_400_000);
            let days = i32::try_from(days).map_err(|_| "a date beyond 32-bit days".to_string())?;
            out.extend_from_slice(&days.to_be_bytes());
        }
        DataType::Timestamp(unit, _) => {
            out.extend_from_slice(&timestamp_values(col, *unit)[row].to_be_bytes())
        }
        DataType::Decimal128(..) => out.extend_from_slice(
            &col.as_primitive::<Decimal128Type>()
                .value(row)
                .to_be_bytes(),
        ),
        DataType::Decimal256(..) => {
            let v = col.as_primitive::<Decimal256Type>().value(row);
            let v = v
                .to_i128()
                .ok_or_else(|| "a Decimal256 beyond 128 bits".to_string())?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        DataType::List(_) | DataType::LargeList(_) => {
            let inner: ArrayRef = match col.data_type() {
                DataType::List(_) => col.as_list::<i32>().value(row),
                _ => col.as_list::<i64>().value(row),
            };
            out.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            for i in 0..inner.len() {
                bin_value(&inner, i, out)?;
            }
        }
        other => return Err(format!("no canonical encoding for {other}")),
    }
    Ok(())
}

/// Row commitments of one batch in either format, with the scratch buffer they need.
#[derive(Debug)]
pub enum RowHasher<'a> {
    Json(RowEncoder<'a>, String),
    Binary(BinEncoder<'a>, Vec<u8>),
}

impl<'a> RowHasher<'a> {
    pub fn new(format: RowFormat, batch: &'a RecordBatch) -> Result<Self, String> {
        Ok(match format {
            RowFormat::Json => Self::Json(RowEncoder::new(batch), String::with_capacity(1024)),
            RowFormat::Binary => Self::Binary(BinEncoder::new(batch)?, Vec::with_capacity(1024)),
        })
    }

    /// The commitment of `row`.
    pub fn commitment(&mut self, row: usize) -> Result<Hash, String> {
        match self {
            Self::Json(e, buf) => {
                e.encode(row, buf)?;
                Ok(commitment(buf.as_bytes()))
            }
            Self::Binary(e, buf) => e.commitment(row, buf),
        }
    }
}

/// The bytes a commitment of `row` of `batch` is over, in `format`.
pub fn encoded_row(format: RowFormat, batch: &RecordBatch, row: usize) -> Result<Vec<u8>, String> {
    match format {
        RowFormat::Json => {
            let mut s = String::new();
            canonical_row(batch, row, &mut s)?;
            Ok(s.into_bytes())
        }
        RowFormat::Binary => {
            let mut out = Vec::new();
            BinEncoder::new(batch)?.encode(row, &mut out)?;
            Ok(out)
        }
    }
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
    format: RowFormat,
) -> Result<SinkCustody, String> {
    // Built only when rows come out of input order (a transform that sorts or groups).
    let index = std::cell::OnceCell::new();
    let mut out = Vec::with_capacity(rows.iter().map(RecordBatch::num_rows).sum());
    let mut groups = Vec::new();
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
        let mut enc = RowHasher::new(format, b)?;
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
            out.push((k, enc.commitment(r)?));
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
    /// How the output commitments encode rows: [`RowFormat::Binary`] for records of version 5,
    /// [`RowFormat::Json`] for older ones.
    pub row_format: RowFormat,
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

    /// Binary form (version 5), stored with the batch's commit: `u8 5 | u32 h | head (h
    /// bytes, a [`CustodyHead`]) | body`, the body being
    /// `u32 n | n × (u16 len, id, [32]) | u32 s | s × (u16 len, sink, u32 m, m × (u32, [32]),
    /// u32 g, g × (u32 c, c × u32)) | u32 k, k × [32] | s × (u32 k, k × [32])`, the last two
    /// being the chunk roots of the input tree and of each sink's tree. Version 5 output
    /// commitments are over rows in [`RowFormat::Binary`]; version 4 (the same layout) and
    /// versions 1 (no groups), 2 (no chunk roots) and 3 (no head: `u8 3 | body`) are over rows
    /// in [`RowFormat::Json`] and still decode. A record in JSON rows is written as version 4.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(8 + self.input.len() * 64);
        let mut head = CustodyHead {
            inputs: self.input.len() as u32,
            ..Default::default()
        };
        body.extend_from_slice(&(self.input.len() as u32).to_be_bytes());
        for (i, (id, c)) in self.input.iter().enumerate() {
            if i % CHUNK_LEAVES == 0 {
                head.input_chunks.push((body.len() as u32, id_position(id)));
            }
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(c);
        }
        head.inputs_end = body.len() as u32;
        body.extend_from_slice(&(self.outputs.len() as u32).to_be_bytes());
        for s in &self.outputs {
            body.extend_from_slice(&(s.sink.len() as u16).to_be_bytes());
            body.extend_from_slice(s.sink.as_bytes());
            body.extend_from_slice(&(s.rows.len() as u32).to_be_bytes());
            head.sinks.push(SinkHead {
                sink: s.sink.clone(),
                rows: s.rows.len() as u32,
                rows_at: body.len() as u32,
                groups: s.groups.len() as u32,
                first_keys: s.rows.iter().step_by(CHUNK_LEAVES).map(|r| r.0).collect(),
            });
            for (k, c) in &s.rows {
                body.extend_from_slice(&k.to_be_bytes());
                body.extend_from_slice(c);
            }
            body.extend_from_slice(&(s.groups.len() as u32).to_be_bytes());
            for g in &s.groups {
                body.extend_from_slice(&(g.len() as u32).to_be_bytes());
                for k in g {
                    body.extend_from_slice(&k.to_be_bytes());
                }
            }
        }
        head.roots_at = body.len() as u32;
        let chunks = |out: &mut Vec<u8>, c: &[Hash]| {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            c.iter().for_each(|h| out.extend_from_slice(h));
        };
        chunks(&mut body, &self.input_chunks);
        for s in &self.outputs {
            chunks(&mut body, &s.chunks);
        }
        let head = head.encode();
        let mut out = Vec::with_capacity(5 + head.len() + body.len());
        out.push(match self.row_format {
            RowFormat::Json => 4,
            RowFormat::Binary => 5,
        });
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a stored record into owned form (see [`CustodyView`] to read one in place).
    pub fn decode(b: &[u8]) -> Option<Self> {
        CustodyView::parse(b).map(|v| v.to_owned())
    }
}

/// A stored custody record read in place: the structure is checked and indexed once, and
/// ids and commitments are read from the stored bytes when asked for. `prove` reads one row
/// of a 65,536-record batch this way without materialising the batch's 65,536 ids.
#[derive(Debug)]
pub struct CustodyView<'a> {
    bytes: &'a [u8],
    /// Byte offset of each input record's entry (`u16 len, id, [32]`).
    input_at: Vec<u32>,
    sinks: Vec<SinkView<'a>>,
    input_chunks: &'a [u8],
    row_format: RowFormat,
}

/// One sink's part of a [`CustodyView`].
#[derive(Debug)]
pub struct SinkView<'a> {
    pub sink: &'a str,
    /// `m × (u32 index, [32] commitment)`.
    rows: &'a [u8],
    /// The contributing input records of each many-to-one row (as [`SinkCustody::groups`]).
    pub groups: Vec<Vec<u32>>,
    chunks: &'a [u8],
}

/// Bounds-checked reads from a stored record.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u16()?;
        std::str::from_utf8(self.take(n)?).ok()
    }
    /// `count × size` bytes (overflow-checked: the count comes from untrusted bytes).
    fn array(&mut self, count: u32, size: usize) -> Option<&'a [u8]> {
        self.take((count as usize).checked_mul(size)?)
    }
}

fn hash_at(b: &[u8], at: usize) -> Hash {
    b[at..at + 32].try_into().expect("32 bytes")
}

fn hashes(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32)
        .map(|h| h.try_into().expect("32 bytes"))
        .collect()
}

impl<'a> CustodyView<'a> {
    /// Checks the structure of a stored record (any version, see [`BatchCustody::encode`]) and
    /// indexes it: every id is UTF-8 and every row names a record (or a non-empty group) of the
    /// batch. `None` for anything else: the record is damaged.
    pub fn parse(b: &'a [u8]) -> Option<Self> {
        let version = *b.first()?;
        let start = match version {
            1..=3 => 1,
            // The head is an index into the body (which is version 3's): it must decode, and
            // is not otherwise needed to read the whole record.
            4 | 5 => {
                let h = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?) as usize;
                CustodyHead::decode(b.get(5..h.checked_add(5)?)?)?;
                h + 5
            }
            _ => return None,
        };
        let mut r = Reader { b, at: start };
        let n = r.u32()?;
        // Each entry takes at least 34 bytes: a count beyond that is damage, not a reason to
        // reserve memory.
        let mut input_at = Vec::with_capacity((n as usize).min(b.len() / 34));
        for _ in 0..n {
            input_at.push(u32::try_from(r.at).ok()?);
            let len = r.u16()?;
            std::str::from_utf8(r.take(len)?).ok()?;
            r.take(32)?;
        }
        let mut sinks = Vec::new();
        for _ in 0..r.u32()? {
            let sink = r.str()?;
            let m = r.u32()?;
            let rows = r.array(m, 36)?;
            let mut groups = Vec::new();
            for _ in 0..if version >= 2 { r.u32()? } else { 0 } {
                let c = r.u32()?;
                let g = r.array(c, 4)?;
                groups.push(
                    g.chunks_exact(4)
                        .map(|k| u32::from_be_bytes([k[0], k[1], k[2], k[3]]))
                        .collect::<Vec<_>>(),
                );
            }
            let in_input = |k: &u32| *k < n;
            let valid = rows.chunks_exact(36).all(|row| {
                let k = u32::from_be_bytes([row[0], row[1], row[2], row[3]]);
                if k & GROUP != 0 {
                    groups
                        .get((k & !GROUP) as usize)
                        .is_some_and(|g| !g.is_empty())
                } else {
                    in_input(&k)
                }
            });
            if !valid || !groups.iter().flatten().all(in_input) {
                return None;
            }
            sinks.push(SinkView {
                sink,
                rows,
                groups,
                chunks: &[],
            });
        }
        let mut input_chunks: &[u8] = &[];
        if version >= 3 {
            let k = r.u32()?;
            input_chunks = r.array(k, 32)?;
            for s in &mut sinks {
                let k = r.u32()?;
                s.chunks = r.array(k, 32)?;
            }
        }
        (r.at == b.len()).then_some(Self {
            bytes: b,
            input_at,
            sinks,
            input_chunks,
            row_format: record_row_format(version),
        })
    }

    /// How the record's output commitments encode rows.
    pub fn row_format(&self) -> RowFormat {
        self.row_format
    }

    /// The number of input records.
    pub fn inputs(&self) -> usize {
        self.input_at.len()
    }

    /// Input record `i`: its lineage id and commitment.
    pub fn input(&self, i: usize) -> (&'a str, Hash) {
        let at = self.input_at[i] as usize;
        let len = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]) as usize;
        let id = &self.bytes[at + 2..at + 2 + len];
        // Checked in `parse`.
        let id = std::str::from_utf8(id).unwrap_or_default();
        (id, hash_at(self.bytes, at + 2 + len))
    }

    /// The index of the input record with lineage id `id`.
    pub fn find_input(&self, id: &str) -> Option<usize> {
        let want = id.as_bytes();
        self.input_at.iter().position(|&at| {
            let at = at as usize;
            let len = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]) as usize;
            &self.bytes[at + 2..at + 2 + len] == want
        })
    }

    pub fn sinks(&self) -> &[SinkView<'a>] {
        &self.sinks
    }

    /// The part of sink `name`, with its index in the record.
    pub fn sink(&self, name: &str) -> Option<(usize, &SinkView<'a>)> {
        self.sinks.iter().enumerate().find(|(_, s)| s.sink == name)
    }

    /// Chunk roots of the input tree (empty in records written before they were kept).
    pub fn input_chunks(&self) -> Vec<Hash> {
        hashes(self.input_chunks)
    }

    /// The leaf of input record `i`.
    pub fn input_leaf(&self, i: usize) -> Hash {
        let (id, c) = self.input(i);
        record_leaf(id, &c)
    }

    /// The leaf of row `j` of sink `s`.
    pub fn output_leaf(&self, s: &SinkView<'_>, j: usize) -> Hash {
        let (k, c) = s.row(j);
        if k & GROUP != 0 {
            record_leaf(&self.row_id(s, k), &c)
        } else {
            record_leaf(self.input(k as usize).0, &c)
        }
    }

    /// The lineage id of a row of sink `s` with index `k`: its record's id, or the group id.
    pub fn row_id(&self, s: &SinkView<'_>, k: u32) -> String {
        if k & GROUP != 0 {
            group_id(
                s.groups[(k & !GROUP) as usize]
                    .iter()
                    .map(|&i| self.input(i as usize).0),
            )
        } else {
            self.input(k as usize).0.to_string()
        }
    }

    /// The Merkle root of sink `s`'s rows (what its batch's ledger entry holds).
    pub fn output_root(&self, s: &SinkView<'_>) -> Hash {
        let mut r = sealtrail_ledger::merkle::CompactRange::default();
        for j in 0..s.len() {
            r.push(self.output_leaf(s, j));
        }
        r.root()
    }

    /// The record in owned form.
    pub fn to_owned(&self) -> BatchCustody {
        BatchCustody {
            input: (0..self.inputs())
                .map(|i| {
                    let (id, c) = self.input(i);
                    (id.to_string(), c)
                })
                .collect(),
            outputs: self
                .sinks
                .iter()
                .map(|s| SinkCustody {
                    sink: s.sink.to_string(),
                    rows: (0..s.len()).map(|j| s.row(j)).collect(),
                    groups: s.groups.clone(),
                    chunks: s.chunks(),
                })
                .collect(),
            input_chunks: self.input_chunks(),
            row_format: self.row_format,
        }
    }
}

/// The row format of a stored record whose first byte (its version) is `version`.
pub fn record_row_format(version: u8) -> RowFormat {
    if version >= 5 {
        RowFormat::Binary
    } else {
        RowFormat::Json
    }
}

impl SinkView<'_> {
    /// The number of rows the batch delivered to the sink.
    pub fn len(&self) -> usize {
        self.rows.len() / 36
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `j`: (index into the input, or [`GROUP`] + group; output commitment).
    pub fn row(&self, j: usize) -> (u32, Hash) {
        let r = &self.rows[j * 36..j * 36 + 36];
        (u32::from_be_bytes([r[0], r[1], r[2], r[3]]), hash_at(r, 4))
    }

    /// The input records (indexes into the input) behind row index `k`.
    pub fn members(&self, k: u32) -> Vec<u32> {
        if k & GROUP != 0 {
            self.groups[(k & !GROUP) as usize].clone()
        } else {
            vec![k]
        }
    }

    /// The first row whose index is `k`.
    pub fn position(&self, k: u32) -> Option<usize> {
        let want = k.to_be_bytes();
        self.rows.chunks_exact(36).position(|r| r[..4] == want)
    }

    /// Chunk roots of the sink's tree (empty in records written before they were kept).
    pub fn chunks(&self) -> Vec<Hash> {
        hashes(self.chunks)
    }
}

/// The numeric position of a lineage id (its line or row number); `u64::MAX` for a key.
fn id_position(id: &str) -> u64 {
    parse_id(id)
        .and_then(|(_, _, p)| p.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The index at the front of a stored record (version 4): where each chunk of
/// [`CHUNK_LEAVES`] input records and of each sink's rows sits in the body, so that proving
/// one row reads a few kilobytes of a record of megabytes ([`partial_proof`]). Offsets count
/// from the start of the body. Nothing in it is trusted: a reader checks the id it finds, and
/// every proof is verified against the signed ledger before it is handed out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustodyHead {
    pub inputs: u32,
    /// Per chunk of input records: (offset of its first entry, that record's position, or
    /// `u64::MAX` when its id ends in a key).
    pub input_chunks: Vec<(u32, u64)>,
    /// Offset just past the last input entry.
    pub inputs_end: u32,
    /// Offset of the chunk roots (the input tree's, then each sink's, each with its count).
    pub roots_at: u32,
    pub sinks: Vec<SinkHead>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkHead {
    pub sink: String,
    pub rows: u32,
    /// Offset of the first row (`u32 index, [32] commitment`, 36 bytes each).
    pub rows_at: u32,
    /// Many-to-one rows (read whole: [`partial_proof`] leaves them to the full reader).
    pub groups: u32,
    /// The input index of the first row of each chunk of rows.
    pub first_keys: Vec<u32>,
}

/// Bytes of a stored record's front that hold the head of a batch of 65,536 records with a
/// few sinks: what [`partial_proof`] reads first.
const HEAD_GUESS: u64 = 8 * 1024;

impl CustodyHead {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.input_chunks.len() * 12);
        out.extend_from_slice(&self.inputs.to_be_bytes());
        out.extend_from_slice(&(self.input_chunks.len() as u32).to_be_bytes());
        for (at, pos) in &self.input_chunks {
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(&pos.to_be_bytes());
        }
        out.extend_from_slice(&self.inputs_end.to_be_bytes());
        out.extend_from_slice(&self.roots_at.to_be_bytes());
        out.extend_from_slice(&(self.sinks.len() as u32).to_be_bytes());
        for s in &self.sinks {
            out.extend_from_slice(&(s.sink.len() as u16).to_be_bytes());
            out.extend_from_slice(s.sink.as_bytes());
            for v in [s.rows, s.rows_at, s.groups, s.first_keys.len() as u32] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            for k in &s.first_keys {
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader { b, at: 0 };
        let inputs = r.u32()?;
        let c = r.u32()?;
        let mut input_chunks = Vec::with_capacity((c as usize).min(b.len() / 12));
        for _ in 0..c {
            let at = r.u32()?;
            let pos = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
            input_chunks.push((at, pos));
        }
        let (inputs_end, roots_at) = (r.u32()?, r.u32()?);
        let mut sinks = Vec::new();
        for _ in 0..r.u32()? {
            let sink = r.str()?.to_string();
            let (rows, rows_at, groups, k) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            let first_keys = r
                .array(k, 4)?
                .chunks_exact(4)
                .map(|k| u32::from_be_bytes([k[0], k[1], k[2], k[3]]))
                .collect();
            sinks.push(SinkHead {
                sink,
                rows,
                rows_at,
                groups,
                first_keys,
            });
        }
        (r.at == b.len()).then_some(Self {
            inputs,
            input_chunks,
            inputs_end,
            roots_at,
            sinks,
        })
    }
}

/// One row's inclusion in its batch's input and output trees, read in parts.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialProof {
    /// The row's place among the sink's rows of the batch.
    pub row_index: usize,
    /// The commitment of the row as delivered.
    pub delivered: Hash,
    /// How that commitment encodes the row.
    pub row_format: RowFormat,
    pub input: Inclusion,
    pub output: Inclusion,
}

/// Reads bytes `[offset, offset + len)` of a stored record (fewer at its end).
pub trait RangeRead {
    type Error;
    fn read(
        &mut self,
        offset: u64,
        len: u64,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, Self::Error>>;
}

/// Input entries starting at input index `first`, parsed from `bytes`.
fn entries_at(bytes: &[u8], first: usize, into: &mut HashMap<u64, (String, Hash)>) -> Option<()> {
    let mut r = Reader { b: bytes, at: 0 };
    let mut i = first as u64;
    while r.at < bytes.len() {
        let id = r.str()?.to_string();
        let c: Hash = r.take(32)?.try_into().ok()?;
        into.insert(i, (id, c));
        i += 1;
    }
    Some(())
}

/// The inclusion proofs of the row of sink `sink` that delivered record `id`, read from a
/// stored record (version 4) in parts: its head, the chunks of input records and rows the
/// paths hash, and the chunk roots; about 40 KB of a 6 MB record. `Ok(None)` when the parts do
/// not answer (an older record, rows of an aggregation, an id with a key rather than a
/// position, the record not delivered to the sink by this batch): the caller then reads the
/// whole record with [`CustodyView`].
///
/// `within`: the indexes of the batch's records read from the id's input, when the caller
/// knows them (`StateStore::input_records_of`). Positions go up within an input, not across
/// the inputs of a batch of small files: without them, the chunk is found by position alone,
/// which answers for a batch of one input (a batch of several then falls back to the whole
/// record).
pub async fn partial_proof<R: RangeRead>(
    rec: &mut R,
    id: &str,
    sink: &str,
    within: Option<std::ops::Range<u64>>,
) -> Result<Option<PartialProof>, R::Error> {
    let pos = id_position(id);
    let front = rec.read(0, HEAD_GUESS).await?;
    let version = match front.first() {
        Some(v @ (4 | 5)) if front.len() >= 5 && pos != u64::MAX => *v,
        _ => return Ok(None),
    };
    let head_len = u32::from_be_bytes([front[1], front[2], front[3], front[4]]) as u64;
    let body = 5 + head_len;
    let head_bytes = if body as usize <= front.len() {
        front[5..body as usize].to_vec()
    } else {
        rec.read(5, head_len).await?
    };
    let Some(head) = CustodyHead::decode(&head_bytes) else {
        return Ok(None);
    };
    let Some((s, sh)) = head.sinks.iter().enumerate().find(|(_, s)| s.sink == sink) else {
        return Ok(None);
    };
    let chunk = CHUNK_LEAVES;
    let n = head.inputs as usize;
    let m = sh.rows as usize;
    if sh.groups > 0
        || head.input_chunks.len() != n.div_ceil(chunk)
        || sh.first_keys.len() != m.div_ceil(chunk)
    {
        return Ok(None);
    }
    // The chunk whose first record's position is the last at or before the id's, among the
    // chunks holding records of the id's input when those are known (the first of them may
    // start with another input's records: it is the one taken when no later one fits).
    let c = match within {
        Some(r) if r.start < r.end && r.end <= n as u64 => {
            let lo = r.start as usize / chunk;
            let hi = (r.end as usize - 1) / chunk;
            lo + head.input_chunks[lo + 1..=hi].partition_point(|(_, p)| *p <= pos)
        }
        Some(_) => return Ok(None),
        None => {
            let c = head.input_chunks.partition_point(|(_, p)| *p <= pos);
            let Some(c) = c.checked_sub(1) else {
                return Ok(None);
            };
            c
        }
    };
    // Input entries of chunks [lo, hi] into `entries`; chunks already read are not read again.
    let mut entries: HashMap<u64, (String, Hash)> = HashMap::new();
    let mut fetched = vec![false; head.input_chunks.len()];
    let chunk_end = |c: usize| {
        head.input_chunks
            .get(c + 1)
            .map_or(head.inputs_end, |(at, _)| *at) as u64
    };
    macro_rules! fetch_inputs {
        ($lo:expr, $hi:expr) => {{
            let (mut lo, mut hi): (usize, usize) = ($lo, $hi);
            while lo <= hi && fetched[lo] {
                lo += 1;
            }
            while hi > lo && fetched[hi] {
                hi -= 1;
            }
            if lo <= hi {
                let from = head.input_chunks[lo].0 as u64;
                let bytes = rec
                    .read(body + from, chunk_end(hi).saturating_sub(from))
                    .await?;
                if entries_at(&bytes, lo * chunk, &mut entries).is_none() {
                    return Ok(None);
                }
                fetched[lo..=hi].iter_mut().for_each(|f| *f = true);
            }
        }};
    }
    // The record's chunk and its neighbours, which usually hold the records behind the rows
    // of the row's chunk too (one read instead of two).
    fetch_inputs!(
        c.saturating_sub(1),
        (c + 1).min(head.input_chunks.len() - 1)
    );
    let Some(k) = (c * chunk..((c + 1) * chunk).min(n))
        .find(|i| entries.get(&(*i as u64)).is_some_and(|(x, _)| x == id))
    else {
        return Ok(None);
    };
    // The chunk of rows that holds record k (rows come in input order when there are no groups).
    let cj = sh.first_keys.partition_point(|&f| f <= k as u32);
    let Some(cj) = cj.checked_sub(1) else {
        return Ok(None);
    };
    let rows_of = |bytes: &[u8]| -> Vec<(u32, Hash)> {
        bytes
            .chunks_exact(36)
            .map(|r| (u32::from_be_bytes([r[0], r[1], r[2], r[3]]), hash_at(r, 4)))
            .collect()
    };
    let mut rows: HashMap<u64, (u32, Hash)> = HashMap::new();
    let roots_len = 4
        + 32 * (n / chunk) as u64
        + head
            .sinks
            .iter()
            .map(|s| 4 + 32 * (s.rows as usize / chunk) as u64)
            .sum::<u64>();
    // The chunk roots follow the last sink's rows and its group count (0): when the row's
    // sink is the last, its trailing chunk and the roots come in one read.
    let roots_follow =
        s + 1 == head.sinks.len() && sh.rows_at as u64 + m as u64 * 36 + 4 == head.roots_at as u64;
    let mut tail = None;
    // The row's chunk and, when the tree ends in a partial chunk, that chunk (its leaves are
    // hashed into every path); the same for the input tree.
    let mut row_chunks = vec![cj];
    if !m.is_multiple_of(chunk) && cj != m / chunk {
        row_chunks.push(m / chunk);
    }
    for &rc in &row_chunks {
        let lo = rc * chunk;
        let hi = ((rc + 1) * chunk).min(m);
        let len = (hi - lo) * 36;
        let with_roots = roots_follow && hi == m;
        let extra = if with_roots { 4 + roots_len } else { 0 };
        let mut bytes = rec
            .read(
                body + sh.rows_at as u64 + lo as u64 * 36,
                len as u64 + extra,
            )
            .await?;
        if bytes.len() != len + extra as usize {
            return Ok(None);
        }
        if with_roots {
            tail = Some(bytes.split_off(len + 4));
            bytes.truncate(len);
        }
        for (i, r) in rows_of(&bytes).into_iter().enumerate() {
            rows.insert((lo + i) as u64, r);
        }
        // The records behind these rows, for their leaves.
        let (Some(kmin), Some(kmax)) = (
            (lo..hi)
                .filter_map(|j| rows.get(&(j as u64)))
                .map(|r| r.0)
                .min(),
            (lo..hi)
                .filter_map(|j| rows.get(&(j as u64)))
                .map(|r| r.0)
                .max(),
        ) else {
            return Ok(None);
        };
        if kmax as usize >= n {
            return Ok(None);
        }
        fetch_inputs!(kmin as usize / chunk, kmax as usize / chunk);
    }
    if !n.is_multiple_of(chunk) && c != n / chunk {
        fetch_inputs!(n / chunk, n / chunk);
    }
    let Some(j) = (cj * chunk..((cj + 1) * chunk).min(m))
        .find(|j| rows.get(&(*j as u64)).is_some_and(|r| r.0 == k as u32))
    else {
        return Ok(None);
    };
    // The chunk roots: the input tree's, then each sink's, each with its count.
    let tail = match tail {
        Some(t) => t,
        None => rec.read(body + head.roots_at as u64, roots_len).await?,
    };
    let mut r = Reader { b: &tail, at: 0 };
    let mut roots = Vec::new();
    for _ in 0..=head.sinks.len() {
        let Some(a) = r.u32().and_then(|k| r.array(k, 32)) else {
            return Ok(None);
        };
        roots.push(hashes(a));
    }
    let leaf_in = |i: u64| {
        entries
            .get(&i)
            .map_or([0; 32], |(id, c)| record_leaf(id, c))
    };
    let leaf_out = |j: u64| {
        rows.get(&j)
            .and_then(|(k, c)| entries.get(&(*k as u64)).map(|(id, _)| record_leaf(id, c)))
            .unwrap_or([0; 32])
    };
    let (Some(it), Some(ot)) = (
        ChunkedTree::new(n as u64, roots[0].clone(), leaf_in),
        ChunkedTree::new(m as u64, roots[s + 1].clone(), leaf_out),
    ) else {
        return Ok(None);
    };
    let (input_c, delivered) = (entries[&(k as u64)].1, rows[&(j as u64)].1);
    let (Ok(input), Ok(output)) = (
        it.inclusion(k as u64, &input_c),
        ot.inclusion(j as u64, &delivered),
    ) else {
        return Ok(None);
    };
    Ok(Some(PartialProof {
        row_index: j,
        delivered,
        row_format: record_row_format(version),
        input,
        output,
    }))
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
        let c = sink_rows("o", std::slice::from_ref(&b), &input, RowFormat::Json).unwrap();
        assert_eq!(c.sink, "o");
        // Row 1's record is beyond the sequential window: found through the index.
        assert_eq!(c.rows[1], (11, commitment(out.as_bytes())));
        // A row whose id is not a record of the batch is refused, naming no value.
        let e = sink_rows("o", &[b], &input[..1], RowFormat::Binary).unwrap_err();
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
        assert_eq!(id, format!("trades:{k}:17"));
        assert_eq!(
            record_id("t", &k, PosKind::Key, 4, None),
            format!("t:{k}:#4")
        );
        assert_eq!(
            record_id("t", &k, PosKind::Row, 0, None),
            format!("t:{k}:0")
        );
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
        let s = sink_rows("agg", std::slice::from_ref(&b), &c.input, RowFormat::Json).unwrap();
        assert_eq!(s.groups, vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(s.rows[1].0, GROUP | 1);
        assert_eq!(c.row_id(&s, s.rows[0].0), first.lineage_id());
        assert_eq!(s.groups[(s.rows[1].0 & !GROUP) as usize], vec![1, 3]);
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
        assert!(
            sink_rows(
                "agg",
                std::slice::from_ref(&b),
                &c.input[..1],
                RowFormat::Binary
            )
            .is_err()
        );
        // In row format 2 the id column is a list of strings, and the commitment is over the
        // encoded row.
        let s2 = sink_rows("agg", std::slice::from_ref(&b), &c.input, RowFormat::Binary).unwrap();
        let bytes = encoded_row(RowFormat::Binary, &b, 0).unwrap();
        assert_eq!(s2.rows[0].1, commitment(&bytes));
        let cols: Vec<(String, String)> = vec![
            ("n".into(), "int".into()),
            (ID_COLUMN.into(), "list<string>".into()),
        ];
        let v = sealtrail_ledger::row::parse(&bytes, &cols).unwrap();
        assert_eq!(
            sealtrail_ledger::row::strings(v[1]).unwrap(),
            ["t:0123456789ab:0", "t:0123456789ab:2"]
        );
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
            // Row format 2: every row parses under its columns, its commitment is over its
            // bytes, and the general per-value path gives the fast paths' bytes.
            let bin = BinEncoder::new(&b).unwrap();
            let (mut bytes, mut scratch) = (Vec::new(), Vec::new());
            for r in 0..b.num_rows() {
                bin.encode(r, &mut bytes).unwrap();
                let values = sealtrail_ledger::row::parse(&bytes, bin.columns());
                proptest::prop_assert!(values.is_ok(), "{:?}", values);
                proptest::prop_assert_eq!(bin.commitment(r, &mut scratch).unwrap(), commitment(&bytes));
                let mut general = bytes[..64].to_vec();
                for c in b.columns() {
                    bin_value(c, r, &mut general).unwrap();
                }
                proptest::prop_assert_eq!(&general, &bytes);
            }
        }
    }

    /// A sealed record with two sinks: one 1:1 (every third record quarantined), one grouped.
    fn sample_record(n: u32) -> BatchCustody {
        let input: Vec<(String, Hash)> = (0..n)
            .map(|i| {
                (
                    format!("t:0123456789ab:{}", i + 2),
                    commitment(&i.to_be_bytes()),
                )
            })
            .collect();
        let mut c = BatchCustody {
            input,
            ..Default::default()
        };
        c.outputs.push(SinkCustody {
            sink: "clean".into(),
            rows: (0..n)
                .filter(|k| k % 3 != 1)
                .map(|k| (k, [k as u8; 32]))
                .collect(),
            ..Default::default()
        });
        if n >= 4 {
            c.outputs.push(SinkCustody {
                sink: "agg".into(),
                rows: vec![(GROUP, [1; 32]), (GROUP | 1, [2; 32])],
                groups: vec![vec![0, 2], vec![1, 3]],
                ..Default::default()
            });
        }
        c.seal();
        c
    }

    /// What a resumed run compares a committed batch with: the first record whose id or
    /// commitment differs, or where one list ends before the other.
    #[test]
    fn the_first_difference_from_a_committed_batch_is_found() {
        let c = sample_record(50);
        let bytes = c.encode();
        let view = CustodyView::parse(&bytes).unwrap();
        let same = c.input.clone();
        assert_eq!(first_difference(&view, &same), None);
        let mut changed = same.clone();
        changed[17].1[31] ^= 1;
        assert_eq!(first_difference(&view, &changed), Some(17));
        let mut moved = same.clone();
        moved[3].0 = "t:0123456789ab:999".into();
        assert_eq!(first_difference(&view, &moved), Some(3));
        assert_eq!(first_difference(&view, &same[..49]), Some(49));
        let mut longer = same.clone();
        longer.push(("t:0123456789ab:52".into(), [0; 32]));
        assert_eq!(first_difference(&view, &longer), Some(50));
        assert_eq!(first_difference(&view, &[]), Some(0));
        // Messages name positions, never key values (they may be personal data).
        assert_eq!(describe_position("t:0123456789ab:17", false), "position 17");
        assert_eq!(
            describe_position("t:0123456789ab:17", true),
            "a keyed record"
        );
        assert_eq!(
            describe_position("t:0123456789ab:C-1042", true),
            "a keyed record"
        );
        assert_eq!(
            describe_position("t:0123456789ab:#5", true),
            "a keyed record"
        );
        assert_eq!(
            describe_position("nonsense", false),
            "a record without a lineage id"
        );
    }

    #[test]
    fn records_say_which_row_format_their_commitments_use() {
        let c = sample_record(4);
        let bytes = c.encode();
        assert_eq!((bytes[0], c.row_format), (5, RowFormat::Binary));
        assert_eq!(
            CustodyView::parse(&bytes).unwrap().row_format(),
            RowFormat::Binary
        );
        let mut j = c.clone();
        j.row_format = RowFormat::Json;
        let bytes = j.encode();
        assert_eq!(bytes[0], 4, "records of JSON rows keep version 4");
        assert_eq!(
            CustodyView::parse(&bytes).unwrap().row_format(),
            RowFormat::Json
        );
        assert_eq!(BatchCustody::decode(&bytes).unwrap(), j);
        assert_eq!(record_row_format(3), RowFormat::Json);
    }

    #[test]
    fn equivalent_types_encode_alike_in_row_format_2() {
        use arrow::array::*;
        let ids = || StringArray::from(vec!["t:0123456789ab:1", "t:0123456789ab:2"]);
        let a = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![7, -1])) as ArrayRef),
            (
                "d",
                Arc::new(Date32Array::from(vec![19_000, -3])) as ArrayRef,
            ),
            (
                "f",
                Arc::new(Float64Array::from(vec![f64::NAN, -0.5])) as ArrayRef,
            ),
            (ID_COLUMN, Arc::new(ids()) as ArrayRef),
        ])
        .unwrap();
        let b = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringViewArray::from(vec![Some("x"), None])) as ArrayRef,
            ),
            ("n", Arc::new(Int32Array::from(vec![7, -1])) as ArrayRef),
            (
                "d",
                Arc::new(Date64Array::from(vec![
                    19_000 * 86_400_000,
                    -3 * 86_400_000 + 1,
                ])) as ArrayRef,
            ),
            (
                "f",
                Arc::new(Float32Array::from(vec![-f32::NAN, -0.5])) as ArrayRef,
            ),
            (
                ID_COLUMN,
                Arc::new(LargeStringArray::from(vec![
                    "t:0123456789ab:1",
                    "t:0123456789ab:2",
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        for r in 0..2 {
            let x = encoded_row(RowFormat::Binary, &a, r).unwrap();
            assert_eq!(x, encoded_row(RowFormat::Binary, &b, r).unwrap(), "row {r}");
            let cols = BinEncoder::new(&a).unwrap().columns().to_vec();
            let v = sealtrail_ledger::row::parse(&x, &cols).unwrap();
            assert_eq!(sealtrail_ledger::row::string(v[4]), Some(ids().value(r)));
        }
        // A renamed column changes every row's bytes (the schema digest), not only a value.
        let renamed = RecordBatch::try_new(
            Arc::new(Schema::new(
                a.schema()
                    .fields()
                    .iter()
                    .map(|f| {
                        let n = if f.name() == "n" { "m" } else { f.name() };
                        f.as_ref().clone().with_name(n)
                    })
                    .collect::<Vec<_>>(),
            )),
            a.columns().to_vec(),
        )
        .unwrap();
        let (x, y) = (
            encoded_row(RowFormat::Binary, &a, 0).unwrap(),
            encoded_row(RowFormat::Binary, &renamed, 0).unwrap(),
        );
        assert_eq!(x[64..], y[64..]);
        assert_ne!(x[32..64], y[32..64]);
    }

    #[test]
    fn the_view_reads_what_the_owned_record_holds() {
        for n in [0, 1, 4, 255, 256, 700] {
            let c = sample_record(n);
            let bytes = c.encode();
            let v = CustodyView::parse(&bytes).unwrap();
            assert_eq!(v.to_owned(), c);
            assert_eq!(v.inputs(), n as usize);
            assert_eq!(v.input_chunks(), c.input_chunks);
            for (i, (id, h)) in c.input.iter().enumerate() {
                assert_eq!(v.input(i), (id.as_str(), *h));
                assert_eq!(v.find_input(id), Some(i));
                assert_eq!(v.input_leaf(i), c.input_leaf(i));
            }
            assert_eq!(v.find_input("t:0123456789ab:1"), None);
            for (si, s) in c.outputs.iter().enumerate() {
                let (at, sv) = v.sink(&s.sink).unwrap();
                assert_eq!(
                    (at, sv.len(), sv.chunks()),
                    (si, s.rows.len(), s.chunks.clone())
                );
                assert_eq!(v.output_root(sv), c.output_root(s));
                for (j, &(k, h)) in s.rows.iter().enumerate() {
                    assert_eq!(sv.row(j), (k, h));
                    assert_eq!(sv.position(k), Some(j));
                    assert_eq!(v.output_leaf(sv, j), c.output_leaf(s, j));
                    assert_eq!(v.row_id(sv, k), c.row_id(s, k));
                    assert_eq!(
                        sv.members(k),
                        if k & GROUP != 0 {
                            s.groups[(k & !GROUP) as usize].clone()
                        } else {
                            vec![k]
                        }
                    );
                }
            }
            assert!(v.sink("missing").is_none());
        }
        // Rows of the quarantined records are not found.
        let c = sample_record(10);
        let bytes = c.encode();
        let v = CustodyView::parse(&bytes).unwrap();
        assert_eq!(v.sink("clean").unwrap().1.position(1), None);
    }

    #[test]
    fn damaged_records_are_refused_not_read() {
        let c = sample_record(300);
        let bytes = c.encode();
        // Every truncation and a trailing byte.
        for cut in 0..bytes.len() {
            assert!(CustodyView::parse(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CustodyView::parse(&longer).is_none());
        // A version this build does not know.
        let mut v9 = bytes.clone();
        v9[0] = 9;
        assert!(CustodyView::parse(&v9).is_none());
        // An id that is not UTF-8.
        let mut bad = bytes.clone();
        let first = bytes
            .windows(16)
            .position(|w| w == b"t:0123456789ab:2")
            .unwrap();
        bad[first] = 0xff;
        assert!(CustodyView::parse(&bad).is_none());
        // A row naming a record past the batch's input.
        let mut far = c.clone();
        far.outputs[0].rows[0].0 = 300;
        assert!(CustodyView::parse(&far.encode()).is_none());
    }

    proptest::proptest! {
        /// Any bytes, and any single-byte change of a valid record: parsing and every
        /// accessor never panic (the state store can be tampered with).
        #[test]
        fn arbitrary_bytes_never_panic(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            at in 0usize..20_000,
            byte in proptest::num::u8::ANY,
        ) {
            let mut changed = sample_record(40).encode();
            let i = at % changed.len();
            changed[i] = byte;
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for bytes in [junk, changed] {
                for id in ["t:0123456789ab:2", "t:0123456789ab:30", "t:0123456789ab:41"] {
                    let mut mem = Mem { b: &bytes, read: 0, reads: 0 };
                    let _ = rt.block_on(partial_proof(&mut mem, id, "clean", None));
                }
                if let Some(v) = CustodyView::parse(&bytes) {
                    for i in 0..v.inputs() {
                        let (id, _) = v.input(i);
                        proptest::prop_assert!(v.find_input(id).is_some());
                        v.input_leaf(i);
                    }
                    for s in v.sinks() {
                        for j in 0..s.len() {
                            let (k, _) = s.row(j);
                            v.output_leaf(s, j);
                            v.row_id(s, k);
                            s.members(k);
                        }
                        v.output_root(s);
                    }
                    v.to_owned().encode();
                }
            }
        }
    }

    /// A stored record in memory, counting the bytes read.
    struct Mem<'a> {
        b: &'a [u8],
        read: usize,
        reads: usize,
    }

    impl RangeRead for Mem<'_> {
        type Error = std::convert::Infallible;
        async fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, Self::Error> {
            let from = (offset as usize).min(self.b.len());
            let to = from.saturating_add(len as usize).min(self.b.len());
            self.read += to - from;
            self.reads += 1;
            Ok(self.b[from..to].to_vec())
        }
    }

    /// A batch of small files: the positions of each input start again. Told where the id's
    /// input sits in the batch, the parts answer for every record, as the whole record does;
    /// not told, they answer rightly or not at all.
    #[test]
    fn a_row_of_a_batch_of_several_inputs_is_proven_from_parts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sizes = [300u32, 10, 4000, 1];
        let mut input = Vec::new();
        let mut ranges = Vec::new();
        for (f, n) in sizes.iter().enumerate() {
            let first = input.len() as u64;
            for i in 0..*n {
                input.push((
                    format!("t:{f:012x}:{}", i + 2),
                    commitment(&(f as u32 * 1000 + i).to_be_bytes()),
                ));
            }
            ranges.push(first..input.len() as u64);
        }
        let n = input.len() as u32;
        let mut c = BatchCustody {
            input,
            ..Default::default()
        };
        c.outputs.push(SinkCustody {
            sink: "clean".into(),
            rows: (0..n).map(|k| (k, [k as u8; 32])).collect(),
            ..Default::default()
        });
        c.seal();
        let bytes = c.encode();
        let v = CustodyView::parse(&bytes).unwrap();
        let (_, sv) = v.sink("clean").unwrap();
        let whole_in =
            ChunkedTree::new(n as u64, v.input_chunks(), |i| v.input_leaf(i as usize)).unwrap();
        let mut answered_without = 0;
        for (f, range) in ranges.iter().enumerate() {
            // Every record of the small inputs; of the large one, a sample and chunk edges.
            let ks = range
                .clone()
                .filter(|k| range.end - range.start < 500 || k % 37 == 0 || (k + 1) % 256 < 2);
            for k in ks {
                let (id, h) = v.input(k as usize);
                let mut mem = Mem {
                    b: &bytes,
                    read: 0,
                    reads: 0,
                };
                let got = rt
                    .block_on(partial_proof(&mut mem, id, "clean", Some(range.clone())))
                    .unwrap()
                    .unwrap_or_else(|| panic!("record {k} of input {f}"));
                assert_eq!(got.row_index, sv.position(k as u32).unwrap());
                assert_eq!(got.input, whole_in.inclusion(k, &h).unwrap());
                assert!(
                    mem.read * 4 < bytes.len(),
                    "read {} of {}",
                    mem.read,
                    bytes.len()
                );
                let mut mem = Mem {
                    b: &bytes,
                    read: 0,
                    reads: 0,
                };
                if let Some(g) = rt
                    .block_on(partial_proof(&mut mem, id, "clean", None))
                    .unwrap()
                {
                    assert_eq!(g, got);
                    answered_without += 1;
                }
            }
        }
        assert!(
            answered_without < n,
            "positions alone cannot find every record"
        );
        // A range that is not the batch's is no answer, never a wrong one.
        let (id, _) = v.input(5);
        let mut mem = Mem {
            b: &bytes,
            read: 0,
            reads: 0,
        };
        let out_of_batch = Some(u64::from(n)..u64::from(n) + 3);
        assert_eq!(
            rt.block_on(partial_proof(&mut mem, id, "clean", out_of_batch))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_row_proven_from_parts_matches_the_whole_record() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for n in [1u32, 4, 255, 256, 257, 700, 5000] {
            let c = sample_record(n);
            let bytes = c.encode();
            let v = CustodyView::parse(&bytes).unwrap();
            let (_, sv) = v.sink("clean").unwrap();
            let whole_in =
                ChunkedTree::new(n as u64, v.input_chunks(), |i| v.input_leaf(i as usize)).unwrap();
            let whole_out = ChunkedTree::new(sv.len() as u64, sv.chunks(), |j| {
                v.output_leaf(sv, j as usize)
            })
            .unwrap();
            // Every record of small batches; of the large one, a sample and the chunk edges.
            let ks = (0..n as usize).filter(|k| n < 300 || k % 97 == 0 || (k + 1) % 256 < 2);
            for k in ks {
                let (id, h) = v.input(k);
                let mut mem = Mem {
                    b: &bytes,
                    read: 0,
                    reads: 0,
                };
                let got = rt
                    .block_on(partial_proof(&mut mem, id, "clean", None))
                    .unwrap();
                let Some(j) = sv.position(k as u32) else {
                    // Quarantined: no row to prove.
                    assert_eq!(got, None, "record {k} of {n}");
                    continue;
                };
                let got = got.unwrap_or_else(|| panic!("record {k} of {n}"));
                assert_eq!(got.row_index, j);
                assert_eq!(got.delivered, sv.row(j).1);
                assert_eq!(got.input, whole_in.inclusion(k as u64, &h).unwrap());
                assert_eq!(
                    got.output,
                    whole_out.inclusion(j as u64, &sv.row(j).1).unwrap()
                );
                if n == 5000 {
                    assert!(
                        mem.read * 4 < bytes.len(),
                        "read {} of {}",
                        mem.read,
                        bytes.len()
                    );
                    // Head, the record's chunks, the row's chunk, the trailing chunks of rows
                    // and of records, the roots.
                    assert!(mem.reads <= 6, "{} reads", mem.reads);
                }
                // Rows of an aggregation are left to the whole record.
                let mut mem = Mem {
                    b: &bytes,
                    read: 0,
                    reads: 0,
                };
                assert_eq!(
                    rt.block_on(partial_proof(&mut mem, id, "agg", None))
                        .unwrap(),
                    None
                );
            }
            // A record the batch does not hold, a sink it has not, an id with a key.
            for (id, sink) in [
                ("t:0123456789ab:999999", "clean"),
                ("t:0123456789ab:2", "nowhere"),
                ("t:0123456789ab:#2", "clean"),
            ] {
                let mut mem = Mem {
                    b: &bytes,
                    read: 0,
                    reads: 0,
                };
                assert_eq!(
                    rt.block_on(partial_proof(&mut mem, id, sink, None))
                        .unwrap(),
                    None
                );
            }
            // The same record without its head (version 3) reads whole, with the same content.
            let h = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            let mut v3 = vec![3u8];
            v3.extend_from_slice(&bytes[5 + h..]);
            let old = CustodyView::parse(&v3).unwrap().to_owned();
            assert_eq!(old.row_format, RowFormat::Json);
            assert_eq!(
                old,
                BatchCustody {
                    row_format: RowFormat::Json,
                    ..c.clone()
                }
            );
            let mut mem = Mem {
                b: &v3,
                read: 0,
                reads: 0,
            };
            let id = v.input(0).0;
            assert_eq!(
                rt.block_on(partial_proof(&mut mem, id, "clean", None))
                    .unwrap(),
                None
            );
        }
    }
}
