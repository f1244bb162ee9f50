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
pub mod jsonl;
pub mod sink;

use sealtrail_core::record::{Quarantined, RawBatch};
use sealtrail_spec::{Source, SourceConnector};
use std::path::PathBuf;

pub use sink::{CommitKey, SinkWriter, open_sink};

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

/// A source being read.
pub trait SourceReader: Send {
    /// The next batch, or `None` at the end of all inputs.
    fn next_batch(&mut self) -> Result<Option<Decoded>>;
}

/// Opens `source` over the given input files (chosen by the engine: all, or only new ones).
/// Database sources are opened by the engine (they are async); see the engine's `pg` module.
pub fn open_source(
    source: &Source,
    inputs: Vec<PathBuf>,
    batch_rows: usize,
) -> Result<Box<dyn SourceReader>> {
    match &source.connector {
        SourceConnector::Csv(opts) => Ok(Box::new(csv::CsvReader::new(
            source.clone(),
            opts.clone(),
            inputs,
            batch_rows,
        ))),
        SourceConnector::Jsonl(_) => Ok(Box::new(jsonl::JsonlReader::new(
            source.clone(),
            inputs,
            batch_rows,
        ))),
        SourceConnector::Parquet(_) | SourceConnector::Postgres(_) => Err(Error::Unsupported {
            source_name: source.name.clone(),
            reason: "this connector is not implemented yet; use csv or jsonl".into(),
        }),
    }
}
