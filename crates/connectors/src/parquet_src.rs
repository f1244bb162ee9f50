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
use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use sealtrail_core::record::{PosKind, RawBatch, canonical_row};
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
            let batch = to_raw(&self.source, cur, &rb)?;
            return Ok(Some(Decoded {
                batch,
                malformed: Vec::new(),
            }));
        }
    }
}

/// One Arrow batch as field text plus canonical raw bytes per row.
fn to_raw(source: &Source, cur: &mut OpenFile, rb: &RecordBatch) -> Result<RawBatch> {
    let ncols = source.columns.len();
    let opts = FormatOptions::default().with_display_error(false);
    let formatters = cur
        .map
        .iter()
        .map(|m| {
            m.map(|i| ArrayFormatter::try_new(rb.column(i).as_ref(), &opts))
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
    for row in 0..rb.num_rows() {
        for (c, f) in formatters.iter().enumerate() {
            values[c] = match (f, cur.map[c]) {
                (Some(f), Some(i)) if !rb.column(i).is_null(row) => {
                    let mut s = String::new();
                    // Writing to a String cannot fail; a value Arrow cannot display is null.
                    write!(s, "{}", f.value(row)).ok().map(|_| s)
                }
                _ => None,
            };
        }
        let refs: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        batch.begin(cur.next_row, &canonical_row(&names, &refs));
        for v in &refs {
            batch.push(*v);
        }
        cur.next_row += 1;
    }
    Ok(batch)
}
