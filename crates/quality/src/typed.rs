//! Schema enforcement: text fields -> typed Arrow columns.
//!
//! Parsing is strict: no silent rounding (a decimal with more fraction digits than its scale
//! is an error), no lenient dates (February 30th fails). The common ISO 8601 shapes have a
//! hand-written fast path because chrono's format-driven parser costs ~10x more per value and
//! timestamps are on every hot path of a trades job; any other format goes through chrono.

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sealtrail_core::Reason;
use sealtrail_core::record::{Quarantined, RawBatch};
use sealtrail_spec::{Column, ColumnType, Source};
use std::sync::Arc;

/// The Arrow type of a declared column type.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
    }
}

/// The Arrow schema of a source's declared columns (all nullable: `not_null` checks enforce
/// presence, and Delta/Parquet readers cope better with nullable fields).
pub fn source_schema(source: &Source) -> SchemaRef {
    Arc::new(Schema::new(
        source
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), true))
            .collect::<Vec<_>>(),
    ))
}

/// Does `v` parse as `ty` (with `format` for dates and timestamps)?
pub fn parses(v: &str, ty: ColumnType, format: Option<&str>) -> bool {
    parse(v, ty, format).is_some()
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Str(&'a str),
    I64(i64),
    F64(f64),
    Bool(bool),
    Date(i32),
    Micros(i64),
    Dec(i128),
}

fn parse<'a>(v: &'a str, ty: ColumnType, format: Option<&str>) -> Option<Value<'a>> {
    Some(match ty {
        ColumnType::Utf8 => Value::Str(v),
        ColumnType::Int64 => Value::I64(v.parse().ok()?),
        ColumnType::Float64 => Value::F64(v.parse::<f64>().ok().filter(|x| x.is_finite())?),
        ColumnType::Boolean => Value::Bool(match v.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" => true,
            "false" | "f" | "0" | "no" | "n" => false,
            _ => return None,
        }),
        ColumnType::Date => Value::Date(parse_date(v, format)?),
        ColumnType::Timestamp => Value::Micros(parse_timestamp(v, format)?),
        ColumnType::Decimal { precision, scale } => Value::Dec(parse_decimal(v, precision, scale)?),
    })
}

/// A typed value in a form that hashes and compares by value, as it will load: `7`, `007`
/// and `+7` are one int64, `1.5` and `1.50` one decimal, `10:00+02:00` and `08:00Z` one
/// instant. `unique`, `in_set` and `greater_than` on a typed column compare these, so what
/// they accept is what lands (comparing the text, `007` and `7` both loaded under `unique`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Canon {
    Int(i64),
    /// The bits of a finite float, `-0.0` taken as `0.0`.
    Float(u64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Micros(i64),
    /// Unscaled value and scale.
    Dec(i128, i8),
}

/// `v` as a value of column `col`'s declared type; `None` for a text column (compare the
/// text) or a value that does not parse (its record is quarantined as `invalid_type`).
pub fn canonical(v: &str, col: &Column) -> Option<Canon> {
    Some(match parse(v, col.ty, col.format.as_deref())? {
        Value::Null | Value::Str(_) => return None,
        Value::I64(x) => Canon::Int(x),
        Value::F64(x) => Canon::Float(if x == 0.0 { 0f64 } else { x }.to_bits()),
        Value::Bool(x) => Canon::Bool(x),
        Value::Date(x) => Canon::Date(x),
        Value::Micros(x) => Canon::Micros(x),
        Value::Dec(x) => match col.ty {
            ColumnType::Decimal { scale, .. } => Canon::Dec(x, scale),
            _ => return None,
        },
    })
}

/// `v` as the text its loaded value casts to (Arrow's cast to `Utf8`, as protection reads a
/// typed column: `007` of an int64 column is `7`); `None` when it does not parse as the
/// column's type. Names a quarantined record's data subject as the loaded records name it.
pub fn loaded_text(v: &str, col: &Column) -> Option<String> {
    let value = parse(v, col.ty, col.format.as_deref())?;
    if let Value::Str(s) = value {
        return Some(s.to_owned());
    }
    let mut b = Builder::new(col.ty, 1, 0);
    b.append(value);
    let a = arrow::compute::cast(&b.finish().ok()?, &DataType::Utf8).ok()?;
    let a = a.as_any().downcast_ref::<arrow::array::StringArray>()?;
    arrow::array::Array::is_valid(a, 0).then(|| a.value(0).to_owned())
}

impl Canon {
    /// Bytes that identify the value (for keyed fingerprints): a tag, then the value.
    pub fn bytes(&self) -> ([u8; 18], usize) {
        let mut b = [0u8; 18];
        let n = match *self {
            Canon::Int(x) => put(&mut b, 1, &x.to_le_bytes()),
            Canon::Float(x) => put(&mut b, 2, &x.to_le_bytes()),
            Canon::Bool(x) => put(&mut b, 3, &[x as u8]),
            Canon::Date(x) => put(&mut b, 4, &x.to_le_bytes()),
            Canon::Micros(x) => put(&mut b, 5, &x.to_le_bytes()),
            Canon::Dec(x, s) => {
                b[17] = s as u8;
                put(&mut b, 6, &x.to_le_bytes()).max(18)
            }
        };
        (b, n)
    }

    /// `self > other`, or `None` when the two never compare (a number and a date, booleans).
    /// Numbers compare exactly when both are integers or decimals, else as floats; a date is
    /// its day's midnight UTC against a timestamp.
    pub fn greater(&self, other: &Canon) -> Option<bool> {
        use Canon::*;
        let day = |d: i32| d as i64 * 86_400_000_000;
        Some(match (*self, *other) {
            (Date(a), Date(b)) => a > b,
            (Micros(a), Micros(b)) => a > b,
            (Date(a), Micros(b)) => day(a) > b,
            (Micros(a), Date(b)) => a > day(b),
            (a, b) => match (a.exact(), b.exact()) {
                (Some((x, s)), Some((y, t))) => match (rescale(x, t), rescale(y, s)) {
                    (Some(x), Some(y)) => x > y,
                    _ => a.float()? > b.float()?,
                },
                _ => a.float()? > b.float()?,
            },
        })
    }

    /// An integer or decimal as (unscaled, scale).
    fn exact(&self) -> Option<(i128, i8)> {
        match *self {
            Canon::Int(x) => Some((x as i128, 0)),
            Canon::Dec(x, s) => Some((x, s)),
            _ => None,
        }
    }

    fn float(&self) -> Option<f64> {
        match *self {
            Canon::Int(x) => Some(x as f64),
            Canon::Float(x) => Some(f64::from_bits(x)),
            Canon::Dec(x, s) => Some(x as f64 / 10f64.powi(s as i32)),
            _ => None,
        }
    }
}

/// `x` times 10^`by` (bringing two decimals to one scale), `None` on overflow.
fn rescale(x: i128, by: i8) -> Option<i128> {
    10i128.checked_pow(by.max(0) as u32)?.checked_mul(x)
}

fn put(b: &mut [u8; 18], tag: u8, v: &[u8]) -> usize {
    b[0] = tag;
    b[1..=v.len()].copy_from_slice(v);
    v.len() + 1
}

const ISO_MS: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

fn digits(b: &[u8]) -> Option<u32> {
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as u32;
    }
    Some(n)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` -> days, validating the calendar.
fn iso_date(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (
        digits(&b[..4])? as i64,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    );
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn parse_date(v: &str, format: Option<&str>) -> Option<i32> {
    match format {
        None | Some("%Y-%m-%d") => iso_date(v.as_bytes()).and_then(|d| i32::try_from(d).ok()),
        Some(f) => {
            let d = chrono::NaiveDate::parse_from_str(v, f).ok()?;
            Some((d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` then `.` + `frac_digits` digits (any count 1..=9 when `None`),
/// then `Z` when `zulu`. Returns microseconds since the epoch (UTC).
fn iso_timestamp(b: &[u8], frac_digits: Option<usize>) -> Option<i64> {
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let days = iso_date(&b[..10])?;
    let (h, mi, s) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let frac = &b[19..b.len() - 1];
    let micros = if frac.is_empty() {
        if frac_digits.is_some_and(|n| n > 0) {
            return None;
        }
        0
    } else {
        let f = frac.strip_prefix(b".")?;
        if f.is_empty() || f.len() > 9 || frac_digits.is_some_and(|n| n != f.len()) {
            return None;
        }
        // Stored to the microsecond: digits past it must be zeros (never cut, as a decimal's
        // fraction digits past its scale are never rounded).
        let (f, past) = f.split_at(f.len().min(6));
        if past.iter().any(|&d| d != b'0') {
            return None;
        }
        let mut v = digits(f)? as i64;
        for _ in f.len()..6 {
            v *= 10;
        }
        v
    };
    Some(((days * 86_400 + (h * 3600 + mi * 60 + s) as i64) * 1_000_000) + micros)
}

fn parse_timestamp(v: &str, format: Option<&str>) -> Option<i64> {
    let b = v.as_bytes();
    match format {
        Some(ISO_MS) => iso_timestamp(b, Some(3)),
        Some("%Y-%m-%dT%H:%M:%SZ") => iso_timestamp(b, Some(0)),
        None => iso_timestamp(b, None)
            .or_else(|| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .ok()
                    .and_then(exact_micros)
            })
            .or_else(|| sql_timestamp(v)),
        Some(f) => {
            if let Ok(t) = chrono::DateTime::parse_from_str(v, f) {
                return exact_micros(t);
            }
            chrono::NaiveDateTime::parse_from_str(v, f)
                .ok()
                .and_then(|t| exact_micros(t.and_utc()))
        }
    }
}

/// The instant in microseconds, when it has no finer part: a timestamp is stored to the
/// microsecond, and one with nanoseconds is not cut to fit (it does not parse).
fn exact_micros<Tz: chrono::TimeZone>(t: chrono::DateTime<Tz>) -> Option<i64> {
    t.timestamp_subsec_nanos()
        .is_multiple_of(1_000)
        .then(|| t.timestamp_micros())
}

/// The spellings databases and Arrow tools print: `YYYY-MM-DD HH:MM:SS[.f]` or with `T`,
/// then an optional offset `+HH`, `+HHMM` or `+HH:MM` (PostgreSQL prints `+00`). Without an
/// offset the time is taken as UTC.
fn sql_timestamp(v: &str) -> Option<i64> {
    if v.len() < 19 || !matches!(v.as_bytes()[10], b' ' | b'T') {
        return None;
    }
    let (date, time) = (&v[..10], &v[11..]);
    let split = time.rfind(['+', '-']).filter(|&i| i >= 8);
    let (clock, offset) = match split {
        Some(i) => (&time[..i], Some(&time[i..])),
        None => (time.strip_suffix('Z').unwrap_or(time), None),
    };
    let naive =
        chrono::NaiveDateTime::parse_from_str(&format!("{date}T{clock}"), "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?;
    let off_secs = match offset {
        None => 0,
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let d: String = o[1..].chars().filter(|c| *c != ':').collect();
            if !d.bytes().all(|c| c.is_ascii_digit()) || !matches!(d.len(), 2 | 4) {
                return None;
            }
            let h: i64 = d[..2].parse().ok()?;
            let m: i64 = if d.len() == 4 {
                d[2..].parse().ok()?
            } else {
                0
            };
            sign * (h * 3600 + m * 60)
        }
    };
    Some(exact_micros(naive.and_utc())? - off_secs * 1_000_000)
}

/// `-?digits(.digits)?` -> unscaled i128. More fraction digits than `scale`, or more integer
/// digits than `precision - scale`, is an error rather than a rounding.
fn parse_decimal(v: &str, precision: u8, scale: i8) -> Option<i128> {
    let (neg, body) = match v.as_bytes().first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let scale = scale as usize;
    if int.is_empty() || frac.len() > scale || (body.contains('.') && frac.is_empty()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() + scale > precision as usize {
        return None;
    }
    let mut n: i128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as i128;
    }
    for _ in frac.len()..scale {
        n *= 10;
    }
    Some(if neg { -n } else { n })
}

enum Builder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
    Dec(Decimal128Builder, u8, i8),
}

impl Builder {
    /// `bytes`: what the column's text values take (its buffer is allocated once).
    fn new(t: ColumnType, rows: usize, bytes: usize) -> Self {
        match t {
            ColumnType::Utf8 => Builder::Str(StringBuilder::with_capacity(rows, bytes)),
            ColumnType::Int64 => Builder::I64(Int64Builder::with_capacity(rows)),
            ColumnType::Float64 => Builder::F64(Float64Builder::with_capacity(rows)),
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            ColumnType::Timestamp => {
                Builder::Ts(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            ColumnType::Decimal { precision, scale } => {
                Builder::Dec(Decimal128Builder::with_capacity(rows), precision, scale)
            }
        }
    }

    fn append(&mut self, v: Value) {
        match (self, v) {
            (Builder::Str(b), Value::Str(s)) => b.append_value(s),
            (Builder::I64(b), Value::I64(x)) => b.append_value(x),
            (Builder::F64(b), Value::F64(x)) => b.append_value(x),
            (Builder::Bool(b), Value::Bool(x)) => b.append_value(x),
            (Builder::Date(b), Value::Date(x)) => b.append_value(x),
            (Builder::Ts(b), Value::Micros(x)) => b.append_value(x),
            (Builder::Dec(b, ..), Value::Dec(x)) => b.append_value(x),
            (Builder::Str(b), _) => b.append_null(),
            (Builder::I64(b), _) => b.append_null(),
            (Builder::F64(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::Date(b), _) => b.append_null(),
            (Builder::Ts(b), _) => b.append_null(),
            (Builder::Dec(b, ..), _) => b.append_null(),
        }
    }

    fn finish(self) -> Result<ArrayRef, arrow::error::ArrowError> {
        Ok(match self {
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Ts(mut b) => Arc::new(b.finish()),
            Builder::Dec(mut b, p, s) => Arc::new(b.finish().with_precision_and_scale(p, s)?),
        })
    }
}

/// Converts the records of `batch` with `passed[row]` set into a typed [`RecordBatch`] of the
/// source's schema. Records with a value that does not parse as its column's type are returned
/// as quarantined (`invalid_type`, naming the column) and their flag is cleared; so are records
/// with a NUL character in a text value when a PostgreSQL sink receives the source's records
/// (`invalid_text`, rule `nul(COLUMN)`: [`Source::text_without_nul`]).
/// Also returns, for each output row, its row index in `batch`.
pub fn to_record_batch(
    source: &Source,
    schema: &SchemaRef,
    batch: &RawBatch,
    passed: &mut [bool],
) -> Result<(RecordBatch, Vec<u32>, Vec<Quarantined>), arrow::error::ArrowError> {
    let n = passed.iter().filter(|p| **p).count();
    let text_bytes = batch.column_bytes();
    let mut builders: Vec<Builder> = source
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let bytes = match c.ty {
                ColumnType::Utf8 => text_bytes.get(i).copied().unwrap_or(0),
                _ => 0,
            };
            Builder::new(c.ty, n, bytes)
        })
        .collect();
    let mut rows = Vec::with_capacity(n);
    let mut bad = Vec::new();
    let mut vals: Vec<Value> = Vec::with_capacity(source.columns.len());
    for (row, ok) in passed.iter_mut().enumerate() {
        if !*ok {
            continue;
        }
        vals.clear();
        let mut failed: Vec<Reason> = Vec::new();
        for (ci, col) in source.columns.iter().enumerate() {
            match batch.get(row, ci) {
                None => vals.push(Value::Null),
                Some(text) => match parse(text, col.ty, col.format.as_deref()) {
                    Some(Value::Str(s)) if source.text_without_nul && s.as_bytes().contains(&0) => {
                        failed.push(Reason::new("invalid_text", format!("nul({})", col.name)));
                        vals.push(Value::Null);
                    }
                    Some(v) => vals.push(v),
                    None => {
                        failed.push(Reason::new("invalid_type", format!("type({})", col.name)));
                        vals.push(Value::Null);
                    }
                },
            }
        }
        if failed.is_empty() {
            for (b, v) in builders.iter_mut().zip(vals.iter()) {
                b.append(*v);
            }
            rows.push(row as u32);
        } else {
            *ok = false;
            bad.push(crate::quarantine(batch, row, failed));
        }
    }
    let arrays = builders
        .into_iter()
        .map(Builder::finish)
        .collect::<Result<Vec<_>, _>>()?;
    let rb = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok((rb, rows, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn loaded_text_is_the_text_protection_reads_of_the_typed_value() {
        let col = |ty| Column {
            name: "c".into(),
            ty,
            required: false,
            format: None,
            class: None,
            at: (0, 0),
        };
        let int = col(ColumnType::Int64);
        assert_eq!(loaded_text("007", &int).as_deref(), Some("7"));
        assert_eq!(loaded_text("-12", &int).as_deref(), Some("-12"));
        assert_eq!(loaded_text("x7", &int), None);
        let text = col(ColumnType::Utf8);
        assert_eq!(loaded_text(" C-1 ", &text).as_deref(), Some(" C-1 "));
        // The same text as casting a whole typed column, which `encrypt` with a subject does.
        let dec = col(ColumnType::Decimal {
            precision: 10,
            scale: 2,
        });
        let mut b = Builder::new(dec.ty, 1, 0);
        b.append(parse("12.5", dec.ty, None).unwrap());
        let cast = arrow::compute::cast(&b.finish().unwrap(), &DataType::Utf8).unwrap();
        assert_eq!(
            loaded_text("12.5", &dec).as_deref(),
            Some(cast.as_string::<i32>().value(0))
        );
    }

    #[test]
    fn timestamps_finer_than_a_microsecond_are_not_cut() {
        let us = |s: &str| parse_timestamp(s, None);
        let base = us("2026-01-01T10:00:00Z").unwrap();
        for s in [
            "2026-01-01T10:00:00.123456Z",
            "2026-01-01T10:00:00.123456000Z",
            "2026-01-01T10:00:00.123456+00:00",
            "2026-01-01 10:00:00.123456000",
            "2026-01-01 10:00:00.123456000+00",
        ] {
            assert_eq!(us(s), Some(base + 123_456), "{s}");
        }
        for s in [
            "2026-01-01T10:00:00.123456789Z",
            "2026-01-01T10:00:00.1234567Z",
            "2026-01-01T10:00:00.123456789+01:00",
            "2026-01-01 10:00:00.123456789",
            "2026-01-01 10:00:00.0000001+00",
        ] {
            assert_eq!(us(s), None, "{s}: nanoseconds would be cut");
        }
        let f = Some("%d/%m/%Y %H:%M:%S%.f");
        assert_eq!(
            parse_timestamp("01/01/2026 10:00:00.5", f),
            Some(base + 500_000)
        );
        assert_eq!(parse_timestamp("01/01/2026 10:00:00.0000005", f), None);
    }

    #[test]
    fn timestamps_fast_path_matches_chrono() {
        for s in [
            "2025-03-14T09:26:53.589Z",
            "2024-02-29T23:59:59.999Z",
            "1970-01-01T00:00:00.000Z",
            "1969-12-31T23:59:59.001Z",
        ] {
            let chrono = chrono::NaiveDateTime::parse_from_str(s, ISO_MS)
                .unwrap()
                .and_utc()
                .timestamp_micros();
            assert_eq!(parse_timestamp(s, Some(ISO_MS)), Some(chrono), "{s}");
            assert_eq!(parse_timestamp(s, None), Some(chrono), "{s}");
        }
    }

    #[test]
    fn records_with_values_of_the_wrong_type_are_quarantined_with_every_column() {
        let spec = "version: 1\npipeline: p\nsources:\n  t:\n    csv: { path: x.csv }\n    columns: [{ name: id }, { name: n, type: int64 }, { name: d, type: date }]\nsinks:\n  o: { from: t, parquet: { path: o } }\nquarantine: { parquet: { path: q } }\n";
        let source = sealtrail_spec::parse_str(spec, "p.yaml".as_ref())
            .unwrap()
            .sources
            .remove(0);
        let mut b = RawBatch::new("x.csv".into(), sealtrail_core::record::PosKind::Line, 3);
        let rows: [[Option<&str>; 3]; 5] = [
            [Some("a"), Some("1"), Some("2024-01-02")],
            [Some("b"), Some("x"), Some("2024-01-03")],
            [Some("c"), Some("y"), Some("2024-02-30")],
            [Some("d"), None, Some("2024-01-04")],
            [Some("e"), Some("z"), Some("2024-01-05")],
        ];
        for (i, r) in rows.iter().enumerate() {
            b.begin(i as u64 + 2, format!("line{i}").as_bytes());
            for v in r {
                b.push(*v);
            }
        }
        // The last record already failed a check: it is neither typed nor quarantined here.
        let mut passed = vec![true, true, true, true, false];
        let (rb, rows, bad) =
            to_record_batch(&source, &source_schema(&source), &b, &mut passed).unwrap();
        assert_eq!(rows, [0, 3]);
        assert_eq!(passed, [true, false, false, true, false]);
        let ids = rb.column(0).as_string::<i32>();
        assert_eq!(ids.iter().collect::<Vec<_>>(), [Some("a"), Some("d")]);
        let n = rb.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(n.iter().collect::<Vec<_>>(), [Some(1), None]);
        let d = rb.column(2).as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(d.iter().collect::<Vec<_>>(), [Some(19724), Some(19726)]);
        let got: Vec<(u64, Vec<String>)> = bad
            .iter()
            .map(|q| (q.pos, q.reasons.iter().map(|r| r.rule.clone()).collect()))
            .collect();
        assert_eq!(
            got,
            [
                (3, vec!["type(n)".to_string()]),
                (4, vec!["type(n)".to_string(), "type(d)".to_string()]),
            ]
        );
        assert!(
            bad.iter()
                .all(|q| q.reasons.iter().all(|r| r.code == "invalid_type"))
        );
        assert_eq!(bad[1].raw, b"line2");
    }

    #[test]
    fn database_spellings_parse_with_their_offsets() {
        let base = parse_timestamp("2024-05-06T07:08:09.123456Z", None).unwrap();
        for s in [
            "2024-05-06 07:08:09.123456+00",
            "2024-05-06 09:08:09.123456+02",
            "2024-05-06 04:38:09.123456-02:30",
            "2024-05-06T07:08:09.123456",
            "2024-05-06 07:08:09.123456",
            "2024-05-06T07:08:09.123456+0000",
        ] {
            assert_eq!(parse_timestamp(s, None), Some(base), "{s}");
        }
        assert_eq!(parse_timestamp("2024-05-06 07:08:09+0", None), None);
        assert_eq!(parse_timestamp("2024-05-06 07:08:09+0x", None), None);
    }

    #[test]
    fn impossible_instants_are_rejected() {
        for s in [
            "2025-02-29T10:00:00.000Z",
            "2025-06-31T10:00:00.000Z",
            "2025-13-45T25:61:00.000Z",
            "2025-01-01T24:00:00.000Z",
            "2025-01-01T10:00:60.000Z",
            "not-a-date",
            "",
            "31/12/2025 25:00",
            "2025-01-01T10:00:00.00Z",
            "2025-01-01T10:00:00.000",
        ] {
            assert_eq!(parse_timestamp(s, Some(ISO_MS)), None, "{s}");
        }
        assert!(parse_timestamp("2025-01-01T10:00:00+02:00", None).is_some());
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("12.34", 18, 4), Some(123_400));
        assert_eq!(parse_decimal("-0.5", 18, 4), Some(-5_000));
        assert_eq!(parse_decimal("7", 18, 4), Some(70_000));
        assert_eq!(parse_decimal("1.23456", 18, 4), None);
        assert_eq!(parse_decimal("12.34.56", 18, 4), None);
        assert_eq!(parse_decimal("1O.5", 18, 4), None);
        assert_eq!(parse_decimal("1.", 18, 4), None);
        assert_eq!(parse_decimal("", 18, 4), None);
        assert_eq!(parse_decimal("12345678901234567", 18, 4), None);
    }

    #[test]
    fn dates_validate_the_calendar() {
        assert_eq!(parse_date("1970-01-02", None), Some(1));
        assert_eq!(parse_date("2000-02-29", None), Some(11_016));
        assert_eq!(parse_date("1900-02-29", None), None);
        assert_eq!(
            parse_date("14/03/2025", Some("%d/%m/%Y")),
            parse_date("2025-03-14", None)
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            for t in [ColumnType::Int64, ColumnType::Float64, ColumnType::Boolean, ColumnType::Date, ColumnType::Timestamp, ColumnType::Decimal { precision: 18, scale: 4 }] {
                let _ = parse(&s, t, None);
                let _ = parse(&s, t, Some(ISO_MS));
            }
        }

        #[test]
        fn days_from_civil_matches_chrono(d in -100_000i64..100_000) {
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(d);
            let s = date.format("%Y-%m-%d").to_string();
            if s.len() == 10 {
                proptest::prop_assert_eq!(iso_date(s.as_bytes()), Some(d));
            }
        }
    }
}
