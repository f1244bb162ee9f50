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

/// A reader whose small batches (the last records of a file, a small file) wait for the next
/// input's records and go on as one batch of up to `batch_rows` records: a batch is one commit
/// (a Parquet file, a Delta table version, a ledger entry, a custody record), so a thousand
/// files of twenty records make one batch of 20,000 records, not a thousand commits. Batches
/// of a decoder are full until its input ends, so records are joined only at input
/// boundaries; each keeps its input and position ([`RawBatch::input`]). Joining is
/// deterministic, so a resumed run cuts its batches where the interrupted one did.
pub struct Coalescing {
    inner: Box<dyn SourceReader>,
    batch_rows: usize,
    pending: Option<Decoded>,
    ready: std::collections::VecDeque<Decoded>,
    /// The inner reader came to its end (it is not asked again).
    done: bool,
}

impl std::fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescing")
            .field("batch_rows", &self.batch_rows)
            .field("pending", &self.pending.as_ref().map(Decoded::rows_in))
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Coalescing {
    pub fn new(inner: Box<dyn SourceReader>, batch_rows: usize) -> Self {
        Self {
            inner,
            batch_rows: batch_rows.max(1),
            pending: None,
            ready: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Takes the next decoded batch: joins it to the one waiting when both fit in a batch,
    /// and holds the result back while it is not full.
    fn take(&mut self, d: Decoded) {
        let d = match self.pending.take() {
            Some(mut p) if p.rows_in() + d.rows_in() <= self.batch_rows as u64 => {
                match p.batch.append(d.batch) {
                    Ok(()) => {
                        p.malformed.extend(d.malformed);
                        p
                    }
                    Err(batch) => {
                        self.ready.push_back(p);
                        Decoded {
                            batch: *batch,
                            malformed: d.malformed,
                        }
                    }
                }
            }
            Some(p) => {
                self.ready.push_back(p);
                d
            }
            None => d,
        };
        if d.rows_in() >= self.batch_rows as u64 {
            self.ready.push_back(d);
        } else {
            self.pending = Some(d);
        }
    }
}

impl SourceReader for Coalescing {
    fn next_batch(&mut self) -> Result<Option<Decoded>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(Some(d));
            }
            if self.done {
                return Ok(self.pending.take());
            }
            // An error ends the read and drops the batch waiting: handed on alone it would be
            // committed as a batch that a resumed run, past the error, cuts otherwise.
            match self.inner.next_batch()? {
                Some(d) => self.take(d),
                None => self.done = true,
            }
        }
    }

    fn content_digests(&mut self) -> Vec<(Arc<str>, String)> {
        self.inner.content_digests()
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

/// Per input file (CSV or JSON Lines), the size it had when the run chose it: no more of it is
/// read, so that bytes a producer appends while the run reads are left for a later run (which
/// finds the file grown and reads past what this one loaded) instead of being loaded under a
/// record of the file that does not hold them.
pub type ReadSizes = std::collections::HashMap<std::path::PathBuf, u64>;

/// The error of an input that ended `short` bytes before the size the run chose it at.
pub(crate) fn changed_while_read(input: &str, short: u64) -> Error {
    Error::Unreadable {
        input: input.to_string(),
        reason: format!(
            "it ended {short} byte(s) short of the size it had when the run chose it: it was cut or rewritten while the run read it, so what the run loaded of it is not what it recorded; restore the file as it was and run again (the run resumes), or pass --abandon-unfinished to give the run up"
        ),
    }
}

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
    open_source_within(source, inputs, skips, ReadSizes::new(), batch_rows)
}

/// [`open_source_skipping`], reading no more of each file in `sizes` than its size there.
pub fn open_source_within(
    source: &Source,
    inputs: Vec<String>,
    skips: SkipLoaded,
    sizes: ReadSizes,
    batch_rows: usize,
) -> Result<Box<dyn SourceReader>> {
    let inputs_as_paths = || inputs.iter().map(std::path::PathBuf::from).collect();
    match &source.connector {
        SourceConnector::Csv(opts) => Ok(Box::new(
            csv::CsvReader::new(source.clone(), opts.clone(), inputs_as_paths(), batch_rows)
                .skipping(skips)
                .reading_up_to(sizes),
        )),
        SourceConnector::Jsonl(_) => Ok(Box::new(
            jsonl::JsonlReader::new(source.clone(), inputs_as_paths(), batch_rows)
                .skipping(skips)
                .reading_up_to(sizes),
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

#[cfg(test)]
mod coalescing_tests {
    use super::*;

    /// Files of `sizes` records each (`id,n`; in file `f` the record on line `bad_line` has a
    /// field too many), read as one source in batches of up to `batch_rows` records joined
    /// across files: per batch, its (input file name, line, id) and malformed (file, line).
    #[allow(clippy::type_complexity)]
    fn read_joined(
        sizes: &[usize],
        batch_rows: usize,
        bad: Option<(usize, u64)>,
    ) -> Vec<(Vec<(String, u64, String)>, Vec<(String, u64)>)> {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut id = 0;
        for (f, n) in sizes.iter().enumerate() {
            let mut csv = String::from("id,n\n");
            for r in 0..*n {
                if bad == Some((f, r as u64 + 2)) {
                    csv.push_str("x,y,z\n");
                } else {
                    csv.push_str(&format!("{id},{r}\n"));
                }
                id += 1;
            }
            let path = dir.path().join(format!("f{f}.csv"));
            std::fs::write(&path, csv).unwrap();
            files.push(path.display().to_string());
        }
        let yaml = "version: 1\npipeline: p\nsources:\n  s:\n    csv: { path: '*.csv' }\n    columns:\n      - { name: id }\n      - { name: n }\nsinks:\n  o: { from: s, audience: internal, parquet: { path: out } }\nquarantine:\n  parquet: { path: q }\n";
        let p = sealtrail_spec::parse_str(yaml, &dir.path().join("p.yaml")).unwrap();
        let inner = open_source(&p.sources[0], files, batch_rows).unwrap();
        let mut r = Coalescing::new(inner, batch_rows);
        let name = |s: &str| s.rsplit('/').next().unwrap().to_string();
        let mut out = Vec::new();
        while let Some(d) = r.next_batch().unwrap() {
            let rows = (0..d.batch.len())
                .map(|i| {
                    (
                        name(d.batch.input(i)),
                        d.batch.position(i),
                        d.batch.get(i, 0).unwrap().to_string(),
                    )
                })
                .collect();
            let bad = d
                .malformed
                .iter()
                .map(|q| (name(&q.input), q.pos))
                .collect();
            out.push((rows, bad));
        }
        // The inner reader is not asked again past its end.
        assert!(r.next_batch().unwrap().is_none());
        out
    }

    #[test]
    fn small_files_join_into_full_batches_and_keep_their_files_and_lines() {
        // Five files of three: 9 (three files) and 6; no batch holds more than 10.
        let got = read_joined(&[3, 3, 3, 3, 3], 10, None);
        let sizes: Vec<usize> = got.iter().map(|b| b.0.len()).collect();
        assert_eq!(sizes, [9, 6]);
        let first: Vec<_> = got[0].0.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
        assert_eq!(
            first,
            [
                ("f0.csv", 2),
                ("f0.csv", 3),
                ("f0.csv", 4),
                ("f1.csv", 2),
                ("f1.csv", 3),
                ("f1.csv", 4),
                ("f2.csv", 2),
                ("f2.csv", 3),
                ("f2.csv", 4)
            ]
        );
        let ids: Vec<String> = got
            .iter()
            .flat_map(|b| b.0.iter().map(|r| r.2.clone()))
            .collect();
        assert_eq!(ids, (0..15).map(|i| i.to_string()).collect::<Vec<_>>());
        // Exactly full: ten files of one record are one batch of ten, then the rest.
        let got = read_joined(&[1; 12], 10, None);
        assert_eq!(got.iter().map(|b| b.0.len()).collect::<Vec<_>>(), [10, 2]);
    }

    #[test]
    fn large_files_keep_their_batches_and_their_ends_join_the_next_file() {
        // 25 records (10, 10, 5), then 3: the 5 and the 3 join; a full batch never waits.
        let got = read_joined(&[25, 3, 12], 10, None);
        let shape: Vec<Vec<(String, usize)>> = got
            .iter()
            .map(|b| {
                let mut per: Vec<(String, usize)> = Vec::new();
                for (f, ..) in &b.0 {
                    match per.last_mut() {
                        Some((last, n)) if last == f => *n += 1,
                        _ => per.push((f.clone(), 1)),
                    }
                }
                per
            })
            .collect();
        let s = |f: &str, n: usize| (f.to_string(), n);
        assert_eq!(
            shape,
            [
                vec![s("f0.csv", 10)],
                vec![s("f0.csv", 10)],
                vec![s("f0.csv", 5), s("f1.csv", 3)],
                vec![s("f2.csv", 10)],
                vec![s("f2.csv", 2)],
            ]
        );
    }

    #[test]
    fn malformed_records_travel_with_the_batch_their_file_joined() {
        // File 1's line 3 has a field too many: quarantined with its own file and line, in
        // the batch that holds file 1's other records.
        let got = read_joined(&[3, 3, 3], 100, Some((1, 3)));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.len(), 8);
        assert_eq!(got[0].1, [("f1.csv".to_string(), 3)]);
        assert!(!got[0].0.iter().any(|(f, l, _)| f == "f1.csv" && *l == 3));
    }
}
