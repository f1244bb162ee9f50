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
    test_reader_skipping(connector, columns, bytes, 0)
}

/// [`test_reader`], reading past the records in the first `skip` bytes.
#[cfg(test)]
pub(crate) fn test_reader_skipping(
    connector: &str,
    columns: &[&str],
    bytes: &[u8],
    skip: u64,
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
    let r = open_source_skipping(
        &p.sources[0],
        vec![file.display().to_string()],
        SkipLoaded::from([(file, skip)]),
        100,
    )
    .unwrap();
    (dir, r)
}

/// Per input file (CSV or JSON Lines, read as it is stored): the length of its first bytes,
/// which an earlier run loaded before the file grew. Its records that start there are read
/// past (their line numbers counted), so only the records added since are loaded.
pub type SkipLoaded = std::collections::HashMap<std::path::PathBuf, u64>;

/// Fails when a record read past (it starts in the first `skip` bytes, loaded before) ends at
/// or after byte `end` >= `skip`: it was cut where the earlier run stopped reading.
pub(crate) fn check_not_straddling(input: &str, end: u64, skip: u64) -> Result<()> {
    if end < skip {
        return Ok(());
    }
    Err(Error::Unreadable {
        input: input.to_string(),
        reason: format!(
            "a record starts in the first {skip} bytes, which an earlier run loaded, and ends after them: the file was read while a record was being written. Move the records added since into a new file and cut this one back (`truncate -s {skip}`), or rename it to load all of it again"
        ),
    })
}

/// Opens `source` over the given inputs, chosen by the engine when the run started: file
/// paths (all, or only new ones), or for PostgreSQL one [`pg::PgInput`] descriptor.
pub fn open_source(
    source: &Source,
    inputs: Vec<String>,
    batch_rows: usize,
) -> Result<Box<dyn SourceReader>> {
    open_source_skipping(source, inputs, SkipLoaded::new(), batch_rows)
}

/// [`open_source`], reading past the records that earlier runs loaded of files that grew.
pub fn open_source_skipping(
    source: &Source,
    inputs: Vec<String>,
    skips: SkipLoaded,
    batch_rows: usize,
) -> Result<Box<dyn SourceReader>> {
    let inputs_as_paths = || inputs.iter().map(std::path::PathBuf::from).collect();
    match &source.connector {
        SourceConnector::Csv(opts) => Ok(Box::new(
            csv::CsvReader::new(source.clone(), opts.clone(), inputs_as_paths(), batch_rows)
                .skipping(skips),
        )),
        SourceConnector::Jsonl(_) => Ok(Box::new(
            jsonl::JsonlReader::new(source.clone(), inputs_as_paths(), batch_rows).skipping(skips),
        )),
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

#[cfg(test)]
mod skip_tests {
    use super::*;

    /// (position, first field) of every record read, and the quarantined positions.
    type Read = (Vec<(u64, String)>, Vec<u64>);

    fn read_all(r: &mut Box<dyn SourceReader>) -> Result<Read> {
        let (mut rows, mut bad) = (Vec::new(), Vec::new());
        while let Some(d) = r.next_batch()? {
            for i in 0..d.batch.len() {
                rows.push((
                    d.batch.position(i),
                    d.batch.get(i, 0).unwrap_or("").to_string(),
                ));
            }
            bad.extend(d.malformed.iter().map(|q| q.pos));
        }
        Ok((rows, bad))
    }

    /// Records that start in the skipped bytes are read past, their lines counted: positions go
    /// on from them. CSV (quoted line breaks, CRLF, a bad record in the skipped part) and JSON
    /// Lines alike.
    #[test]
    fn records_in_the_loaded_bytes_are_read_past_and_positions_go_on() {
        let csv = b"id,n\r\n1,\"a\nb\"\r\n2,x,extra\r\n3,c\r\n4,d,bad\r\n";
        let loaded = csv.len() - b"3,c\r\n4,d,bad\r\n".len();
        let (_d, mut r) =
            test_reader_skipping("csv: { path: in }", &["id", "n"], csv, loaded as u64);
        assert_eq!(read_all(&mut r).unwrap(), (vec![(5, "3".into())], vec![6]));
        let jsonl = b"{\"id\": \"1\"}\n\n{bad\n{\"id\": \"2\"}\r\n{\"id\": \"3\"}\n";
        let loaded = jsonl.len() - b"{\"id\": \"2\"}\r\n{\"id\": \"3\"}\n".len();
        let (_d, mut r) =
            test_reader_skipping("jsonl: { path: in }", &["id"], jsonl, loaded as u64);
        assert_eq!(
            read_all(&mut r).unwrap(),
            (vec![(4, "2".into()), (5, "3".into())], vec![])
        );
    }

    /// A record that starts in the skipped bytes and ends after them fails the read.
    #[test]
    fn a_record_across_the_loaded_bytes_fails_the_read() {
        let csv = b"id,n\n1,\"open\nclosed\"\n2,b\n";
        let (_d, mut r) = test_reader_skipping("csv: { path: in }", &["id", "n"], csv, 13);
        let e = read_all(&mut r).unwrap_err().to_string();
        assert!(e.contains("a record starts in the first 13 bytes"), "{e}");
    }
}
