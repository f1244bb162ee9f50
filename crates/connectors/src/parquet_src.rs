//! Parquet decoder: Arrow record batches read column-projected, turned into field text.
//!
//! Values become field text with Arrow's display formatting (the same text any Arrow tool
//! shows), so every source goes through the same checks and the same strict typed conversion;
//! a Parquet column whose values do not fit the declared type is quarantined row by row as
//! `invalid_type`, never a crash. The record's "raw bytes" are its canonical encoding
//! ([`sealtrail_core::record::canonical_row`]); its position is the 0-based row index in the
//! file.
//!
//! The file's schema must fit the declared columns, checked before any record is read:
//! a `required` column missing from the file, or (with `unknown_columns: reject`) a column in
//! the file that is not declared, fails the run with a schema error and loads nothing.

use crate::guard::guarded;
use crate::{Decoded, Error, Result, SourceReader};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use arrow::json::writer::{EncoderOptions, NullableEncoder, make_encoder};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use sealtrail_core::Reason;
use sealtrail_core::record::{PosKind, Quarantined, RawBatch, canonical_row};
use sealtrail_spec::Source;
use sealtrail_spec::raw::UnknownColumns;
use std::collections::VecDeque;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug)]
pub struct ParquetReader {
    source: Source,
    inputs: VecDeque<PathBuf>,
    batch_rows: usize,
    cur: Option<OpenFile>,
}

struct OpenFile {
    name: Arc<str>,
    reader: ParquetRecordBatchReader,
    /// For each declared column, its index in the projected batches.
    map: Vec<Option<usize>>,
    next_row: u64,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("name", &self.name)
            .field("next_row", &self.next_row)
            .finish_non_exhaustive()
    }
}

impl ParquetReader {
    pub fn new(source: Source, inputs: Vec<PathBuf>, batch_rows: usize) -> Self {
        Self {
            source,
            inputs: inputs.into(),
            batch_rows: batch_rows.max(1),
            cur: None,
        }
    }

    fn open(&self, path: &PathBuf) -> Result<OpenFile> {
        let name: Arc<str> = path.display().to_string().into();
        let unreadable = |reason: String| Error::Unreadable {
            input: name.to_string(),
            reason,
        };
        let f = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
        let builder = guarded(|| ParquetRecordBatchReaderBuilder::try_new(f))
            .map_err(|e| unreadable(e.to_string()))?
            .map_err(|e| unreadable(format!("not a readable Parquet file: {e}")))?;
        let file_schema = builder.schema().clone();
        let schema_err = |reason: String| Error::Schema {
            input: name.to_string(),
            source_name: self.source.name.clone(),
            reason,
        };
        if self.source.unknown_columns == UnknownColumns::Reject
            && let Some(f) = file_schema
                .fields()
                .iter()
                .find(|f| self.source.column_index(f.name()).is_none())
        {
            return Err(schema_err(format!(
                "the file has column `{}`, which is not declared; declare it or set `unknown_columns: drop`",
                f.name()
            )));
        }
        if let Some(c) = self
            .source
            .columns
            .iter()
            .find(|c| c.required && file_schema.index_of(&c.name).is_err())
        {
            return Err(schema_err(format!(
                "required column `{}` is not in the file",
                c.name
            )));
        }
        // Project the declared columns that exist, in file order; map declared -> projected.
        let mut roots: Vec<usize> = self
            .source
            .columns
            .iter()
            .filter_map(|c| file_schema.index_of(&c.name).ok())
            .collect();
        roots.sort_unstable();
        let map = self
            .source
            .columns
            .iter()
            .map(|c| {
                let i = file_schema.index_of(&c.name).ok()?;
                roots.iter().position(|&r| r == i)
            })
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = guarded(|| {
            builder
                .with_projection(mask)
                .with_batch_size(self.batch_rows)
                .build()
        })
        .map_err(|e| unreadable(e.to_string()))?
        .map_err(|e| unreadable(e.to_string()))?;
        Ok(OpenFile {
            name,
            reader,
            map,
            next_row: 0,
        })
    }
}

impl SourceReader for ParquetReader {
    fn next_batch(&mut self) -> Result<Option<Decoded>> {
        loop {
            if self.cur.is_none() {
                let Some(path) = self.inputs.pop_front() else {
                    return Ok(None);
                };
                self.cur = Some(self.open(&path)?);
            }
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            // Pages that fail to decompress or decode: the file was damaged after it was
            // written (Parquet pages carry no checksum unless the writer added one, so some
            // damage reads as other values instead, which only the producer can detect).
            let (name, from_row) = (cur.name.clone(), cur.next_row);
            let damaged = |e: &dyn std::fmt::Display| Error::Unreadable {
                input: name.to_string(),
                reason: format!(
                    "the Parquet file is damaged in its rows from row {from_row} on ({e}); replace it with an intact copy"
                ),
            };
            let rb = match guarded(|| cur.reader.next()) {
                Err(e) => return Err(damaged(&e)),
                Ok(None) => {
                    self.cur = None;
                    continue;
                }
                Ok(Some(rb)) => rb.map_err(|e| damaged(&e))?,
            };
            let (batch, malformed) = to_raw(&self.source, cur, &rb)?;
            return Ok(Some(Decoded { batch, malformed }));
        }
    }
}

/// One Arrow batch as field text plus canonical raw bytes per row; a record holding a value
/// Arrow cannot display (a date or timestamp beyond the calendar's range, year 262143) is
/// quarantined as `invalid_type` for each such column, never loaded with the value as null.
fn to_raw(
    source: &Source,
    cur: &mut OpenFile,
    rb: &RecordBatch,
) -> Result<(RawBatch, Vec<Quarantined>)> {
    let ncols = source.columns.len();
    let opts = FormatOptions::default().with_display_error(false);
    let json_opts = EncoderOptions::default().with_explicit_nulls(true);
    let fields: Vec<FieldRef> = rb.schema_ref().fields().iter().cloned().collect();
    let mut formatters = cur
        .map
        .iter()
        .map(|m| {
            m.map(|i| Shown::new(&fields[i], rb.column(i).as_ref(), &opts, &json_opts))
                .transpose()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Unreadable {
            input: cur.name.to_string(),
            reason: format!("cannot format a column: {e}"),
        })?;
    let names: Vec<&str> = source.columns.iter().map(|c| c.name.as_str()).collect();
    let mut batch = RawBatch::with_capacity(
        cur.name.clone(),
        PosKind::Row,
        ncols,
        rb.num_rows(),
        rb.get_array_memory_size(),
    );
    let mut values: Vec<Option<String>> = vec![None; ncols];
    let mut malformed = Vec::new();
    let mut unshown = Vec::new();
    for row in 0..rb.num_rows() {
        unshown.clear();
        for (c, f) in formatters.iter_mut().enumerate() {
            values[c] = match (f, cur.map[c]) {
                (Some(f), Some(i)) if !rb.column(i).is_null(row) => {
                    Some(f.text(row).unwrap_or_else(|| {
                        unshown.push(c);
                        stored_value(rb.column(i).as_ref(), row)
                    }))
                }
                _ => None,
            };
        }
        let refs: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        let raw = canonical_row(&names, &refs);
        if unshown.is_empty() {
            batch.begin(cur.next_row, &raw);
            for v in &refs {
                batch.push(*v);
            }
        } else {
            malformed.push(Quarantined {
                input: cur.name.clone(),
                pos_kind: PosKind::Row,
                pos: cur.next_row,
                key: None,
                subject: None,
                raw,
                reasons: unshown
                    .iter()
                    .map(|&c| Reason::new("invalid_type", format!("type({})", names[c])))
                    .collect(),
            });
        }
        cur.next_row += 1;
    }
    Ok((batch, malformed))
}

/// How a column's values become field text: as Arrow displays them, or, for nested values
/// (lists, structs, maps), as JSON, which says where each element starts and ends (Arrow's
/// display writes `["a,b"]` and `["a", "b"]` alike, without quotes, as `[a,b]` and `[a, b]`).
///
/// Binary values are text when they are UTF-8 (writers that store strings without Parquet's
/// string annotation, read by Arrow as binary: shown as hex, an email address in them would
/// pass the classifier and the release guard unseen), else `\x` and hex, as PostgreSQL shows
/// `bytea`.
enum Shown<'a> {
    Display(ArrayFormatter<'a>),
    Json(NullableEncoder<'a>),
    Bytes(Box<dyn Fn(usize) -> &'a [u8] + 'a>),
}

impl<'a> Shown<'a> {
    fn new(
        field: &'a FieldRef,
        array: &'a dyn Array,
        opts: &'a FormatOptions<'a>,
        json: &'a EncoderOptions,
    ) -> std::result::Result<Self, arrow::error::ArrowError> {
        Ok(match array.data_type() {
            DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..) => match make_encoder(field, array, json) {
                Ok(e) => Shown::Json(e),
                // What JSON cannot say (a map keyed by numbers): as Arrow displays it.
                Err(_) => Shown::Display(ArrayFormatter::try_new(array, opts)?),
            },
            DataType::Binary => {
                let a = array.as_binary::<i32>();
                Shown::Bytes(Box::new(move |row| a.value(row)))
            }
            DataType::LargeBinary => {
                let a = array.as_binary::<i64>();
                Shown::Bytes(Box::new(move |row| a.value(row)))
            }
            DataType::BinaryView => {
                let a = array.as_binary_view();
                Shown::Bytes(Box::new(move |row| a.value(row)))
            }
            DataType::FixedSizeBinary(_) => {
                let a = array.as_fixed_size_binary();
                Shown::Bytes(Box::new(move |row| a.value(row)))
            }
            _ => Shown::Display(ArrayFormatter::try_new(array, opts)?),
        })
    }

    /// The non-null value at `row`; `None` when Arrow cannot display it (a date or timestamp
    /// beyond the calendar's range).
    fn text(&mut self, row: usize) -> Option<String> {
        match self {
            Shown::Display(f) => {
                let mut s = String::new();
                // Writing to a String fails only when Arrow cannot display the value.
                write!(s, "{}", f.value(row)).ok().map(|_| s)
            }
            Shown::Json(e) => {
                let mut out = Vec::new();
                e.encode(row, &mut out);
                String::from_utf8(out).ok()
            }
            Shown::Bytes(value) => {
                let b = value(row);
                Some(match std::str::from_utf8(b) {
                    Ok(text) => text.to_owned(),
                    Err(_) => format!("\\x{}", hex::encode(b)),
                })
            }
        }
    }
}

/// The value at `row` of `array` as the number it is stored as (days or time units since
/// 1970 for dates and timestamps), for a value Arrow cannot display: the quarantine keeps
/// what the file holds.
fn stored_value(array: &dyn Array, row: usize) -> String {
    let one = array.slice(row, 1);
    match arrow::compute::cast(&one, &DataType::Int64) {
        Ok(n) => match n.as_primitive_opt::<Int64Type>() {
            Some(n) if n.is_valid(0) => n.value(0).to_string(),
            _ => format!("({} value)", array.data_type()),
        },
        Err(_) => format!("({} value)", array.data_type()),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        ArrayRef, BinaryArray, Date32Array, Int64Array, ListBuilder, StringArray, StringBuilder,
        StructArray,
    };
    use arrow::datatypes::{DataType, Field};
    use parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    fn parquet_bytes(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
        let batch = arrow::array::RecordBatch::try_from_iter(columns).unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    #[test]
    fn nested_parquet_values_read_as_json() {
        let mut tags = ListBuilder::new(StringBuilder::new());
        tags.values().append_value("a,b");
        tags.append(true);
        tags.values().append_value("a");
        tags.values().append_value("b");
        tags.append(true);
        tags.append(false);
        tags.append(true);
        let party = StructArray::from(vec![
            (
                Arc::new(Field::new("name", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![
                    Some("Ann \"A\""),
                    None,
                    Some("x"),
                    Some("y"),
                ])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("n", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
        ]);
        let blob: Vec<&[u8]> = vec![b"ann@example.com", b"\xff\x00", b"", b"x"];
        let bytes = parquet_bytes(vec![
            ("tags", Arc::new(tags.finish()) as ArrayRef),
            ("party", Arc::new(party) as ArrayRef),
            (
                "day",
                Arc::new(Date32Array::from(vec![0, 1, i32::MAX, 3])) as ArrayRef,
            ),
            ("blob", Arc::new(BinaryArray::from(blob)) as ArrayRef),
        ]);
        let (_dir, mut r) = crate::test_reader(
            "parquet: { path: in }",
            &["tags", "party", "day", "blob"],
            &bytes,
        );
        let d = r.next_batch().unwrap().unwrap();
        let row = |i: usize| -> Vec<Option<&str>> { (0..3).map(|c| d.batch.get(i, c)).collect() };
        // Binary values: UTF-8 text as such (what the classifier must see), other bytes as
        // `\x` and hex (the loaded rows are the file's 0, 1 and 3: row 2 is quarantined).
        let blobs: Vec<Option<&str>> = (0..3).map(|i| d.batch.get(i, 3)).collect();
        assert_eq!(blobs, [Some("ann@example.com"), Some("\\xff00"), Some("x")]);
        // Element boundaries survive: one element "a,b" is not two elements a and b.
        assert_eq!(
            row(0),
            [
                Some(r#"["a,b"]"#),
                Some(r#"{"name":"Ann \"A\"","n":1}"#),
                Some("1970-01-01")
            ]
        );
        assert_eq!(
            row(1),
            [
                Some(r#"["a","b"]"#),
                Some(r#"{"name":null,"n":2}"#),
                Some("1970-01-02")
            ]
        );
        assert_eq!(d.batch.get(2, 0), Some("[]"), "an empty list is not null");
        assert_eq!(d.batch.len(), 3);
        // Row 2's day is past what the calendar shows: quarantined with the stored number, and
        // its null list stays null in the raw record.
        assert_eq!(d.malformed.len(), 1);
        let q = &d.malformed[0];
        assert_eq!((q.pos, q.reasons.len()), (2, 1));
        assert_eq!(
            (q.reasons[0].code.as_str(), q.reasons[0].rule.as_str()),
            ("invalid_type", "type(day)")
        );
        let raw = String::from_utf8(q.raw.clone()).unwrap();
        assert!(
            raw.contains(r#""tags":null"#) && raw.contains(r#""day":"2147483647""#),
            "{raw}"
        );
        assert!(r.next_batch().unwrap().is_none());
    }
}
