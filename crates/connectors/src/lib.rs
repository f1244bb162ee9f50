//! Sources and sinks.
//!
//! Every component that can touch data is listed here, in [`open_source`] and [`open_sink`]:
//! a reviewer reads one match to know which code reads and writes records.
//!
//! Sources are synchronous iterators of [`Decoded`] batches (the engine runs them on a blocking
//! thread): bounded memory, one batch of one input at a time. Records that cannot be decoded
//! come out quarantined, never as an error; an error means the input as a whole is unreadable.
//!
//! Sinks commit one batch at a time under a [`CommitKey`] (pipeline, run, source, batch) and
//! are idempotent on it: committing a key twice writes once. That is what makes a re-run after
//! a crash load every record exactly once.

pub mod csv;
pub mod files;
pub mod guard;
pub mod jsonl;
pub mod parquet_src;
pub mod pg;
pub mod s3;
pub mod sink;

use sealtrail_core::record::{Quarantined, RawBatch};
use sealtrail_spec::{Source, SourceConnector};
pub use sink::{CommitKey, SinkWriter, open_sink};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input cannot be read at all: the run fails and loads nothing from it.
    #[error("cannot read {input}: {reason}")]
    Unreadable { input: String, reason: String },
    /// The input's shape does not fit the declared columns (header, table columns).
    #[error("{input} does not match the declared columns of source `{source_name}`: {reason}")]
    Schema {
        input: String,
        source_name: String,
        reason: String,
    },
    #[error("sink `{sink}` failed: {reason}")]
    Sink { sink: String, reason: String },
    #[error("source `{source_name}`: {reason}")]
    Unsupported { source_name: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One decoded batch: well-formed records plus those that could not be decoded.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RawBatch,
    pub malformed: Vec<Quarantined>,
}

impl Decoded {
    /// Records read from the input in this batch.
    pub fn rows_in(&self) -> u64 {
        (self.batch.len() + self.malformed.len()) as u64
    }
}

/// The longest physical line a text decoder (CSV, JSON Lines) reads as a record. A longer
/// one (a binary file, a whole JSON document on one line) is quarantined as
/// `line_too_long` with its first `MAX_LINE_BYTES` bytes, the rest read past and never held:
/// memory stays bounded whatever the input.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// A source being read.
pub trait SourceReader: Send {
    /// The next batch, or `None` at the end of all inputs.
    fn next_batch(&mut self) -> Result<Option<Decoded>>;

    /// The content digests (lowercase hex SHA-256 of the whole file) of the inputs of an
    /// incremental file source read to their end since the last call, by input name. Readers
    /// that do not read their files front to back (Parquet) leave them to the engine.
    fn content_digests(&mut self) -> Vec<(Arc<str>, String)> {
        Vec::new()
    }
}

/// A source with nothing to read.
impl SourceReader for std::iter::Empty<Decoded> {
    fn next_batch(&mut self) -> Result<Option<Decoded>> {
        Ok(None)
    }
}

/// Test support: a reader of `bytes` as the one input of a pipeline whose source `s` reads it
/// with the connector `connector` (YAML, its path `in`) and declares the string `columns`,
/// with the temporary folder holding them (keep it while reading).
#[cfg(test)]
pub(crate) fn test_reader(
    connector: &str,
    columns: &[&str],
    bytes: &[u8],
) -> (tempfile::TempDir, Box<dyn SourceReader>) {
    let dir = tempfile::tempdir().unwrap();
    let cols: String = columns
        .iter()
        .map(|c| format!("      - {{ name: {c} }}\n"))
        .collect();
    let yaml = format!(
        "version: 1\npipeline: p\nsources:\n  s:\n    {connector}\n    columns:\n{cols}sinks:\n  o: {{ from: s, audience: internal, parquet: {{ path: out }} }}\nquarantine:\n  parquet: {{ path: q }}\n"
    );
    let p = sealtrail_spec::parse_str(&yaml, &dir.path().join("p.yaml")).unwrap();
    let file = dir.path().join("in");
    std::fs::write(&file, bytes).unwrap();
    let r = open_source(&p.sources[0], vec![file.display().to_string()], 100).unwrap();
    (dir, r)
}

/// Opens `source` over the given inputs, chosen by the engine when the run started: file
/// paths (all, or only new ones), or for PostgreSQL one [`pg::PgInput`] descriptor.
pub fn open_source(
    source: &Source,
    inputs: Vec<String>,
    batch_rows: usize,
) -> Result<Box<dyn SourceReader>> {
    let inputs_as_paths = || inputs.iter().map(std::path::PathBuf::from).collect();
    match &source.connector {
        SourceConnector::Csv(opts) => Ok(Box::new(csv::CsvReader::new(
            source.clone(),
            opts.clone(),
            inputs_as_paths(),
            batch_rows,
        ))),
        SourceConnector::Jsonl(_) => Ok(Box::new(jsonl::JsonlReader::new(
            source.clone(),
            inputs_as_paths(),
            batch_rows,
        ))),
        SourceConnector::Parquet(_) => Ok(Box::new(parquet_src::ParquetReader::new(
            source.clone(),
            inputs_as_paths(),
            batch_rows,
        ))),
        SourceConnector::Postgres(pg) => match inputs.as_slice() {
            [] => Ok(Box::new(std::iter::empty::<Decoded>())),
            [one] => Ok(Box::new(pg::PgReader::new(
                source.clone(),
                pg.clone(),
                one,
                batch_rows,
            )?)),
            _ => Err(Error::Unsupported {
                source_name: source.name.clone(),
                reason: "a PostgreSQL source reads one input per run".into(),
            }),
        },
    }
}
