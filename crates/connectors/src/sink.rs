//! Sinks with idempotent per-batch commits.
//!
//! ```text
//!   open_sink ──▶ SinkWriter ──commit(key, batches)──▶ already committed? ──yes──▶ Ok(false)
//!                                                          │ no
//!                                                          ▼
//!                                          write data ──▶ atomic publish (with the key) ──▶ Ok(true)
//! ```
//!
//! - Parquet: one file per (run, source, batch), written under a hidden temporary name,
//!   fsynced, then renamed into place. The file name is the key: present means committed.
//! - Delta Lake: one table version per batch, carrying a Delta application transaction
//!   (`txn` action) with app id `sealtrail/<pipeline>/<source>/<run>` and version = batch.
//!   The txn version is the key: Delta readers and writers agree on it atomically.
//! - PostgreSQL: COPY and the key row in `sealtrail_sink_commits` in one transaction (see
//!   [`crate::pg`]).

use crate::guard::guarded;
use crate::{Error, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sealtrail_core::with_root_cause;
use sealtrail_spec::{Codec, Target};
use std::path::{Path, PathBuf};

/// Identifies one batch commit of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitKey {
    pub pipeline: String,
    pub run_id: String,
    pub source: String,
    pub batch: u64,
}

impl CommitKey {
    /// The Delta application id of a run's commits.
    pub fn app_id(&self) -> String {
        format!(
            "sealtrail/{}/{}/{}",
            self.pipeline, self.source, self.run_id
        )
    }
    /// The key a Delta commit names by its application id and version (the batch), if the
    /// id is one [`Self::app_id`] writes.
    pub fn from_app_id(app_id: &str, batch: u64) -> Option<Self> {
        let (head, run_id) = app_id.strip_prefix("sealtrail/")?.rsplit_once('/')?;
        let (pipeline, source) = head.rsplit_once('/')?;
        (!pipeline.is_empty() && !source.is_empty() && !run_id.is_empty()).then(|| Self {
            pipeline: pipeline.to_string(),
            run_id: run_id.to_string(),
            source: source.to_string(),
            batch,
        })
    }
    /// The file in `dir` that holds this batch, if one does, whatever its compression (the
    /// codec the spec names now need not be the one the file was written with).
    fn existing_file(&self, dir: &Path) -> Option<PathBuf> {
        Codec::FILE_INFIXES.iter().find_map(|infix| {
            let f = dir.join(format!(
                "{}{infix}.parquet",
                batch_file_stem(&self.run_id, &self.source, self.batch)
            ));
            f.exists().then_some(f)
        })
    }
}

/// The name a Parquet sink's file of one batch of a run starts with (so `prove` reads only
/// that one): `part-<run>-<source>-<batch>`.
pub fn batch_file_stem(run_id: &str, source: &str, batch: u64) -> String {
    format!("part-{run_id}-{source}-{batch:06}")
}

/// The file a Parquet sink writes for one batch of a run, compressed with `codec`:
/// `part-<run>-<source>-<batch>.zstd.parquet` for the default.
pub fn batch_file_name(run_id: &str, source: &str, batch: u64, codec: Codec) -> String {
    format!(
        "{}{}.parquet",
        batch_file_stem(run_id, source, batch),
        codec.file_infix()
    )
}

/// The (run id, source, batch) a [`batch_file_name`] names, if `name` is one.
pub fn parse_batch_file_name(name: &str) -> Option<(&str, &str, u64)> {
    let rest = name.strip_prefix("part-")?;
    // Run ids are UUIDs: 36 characters, hyphens at 8, 13, 18 and 23.
    let id = rest.get(..36)?;
    let well_formed = id.char_indices().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-',
        _ => c.is_ascii_hexdigit(),
    });
    let stem = rest
        .get(36..)?
        .strip_prefix('-')?
        .strip_suffix(".parquet")?;
    let stem = Codec::FILE_INFIXES
        .iter()
        .find_map(|infix| stem.strip_suffix(infix))?;
    let (source, batch) = stem.rsplit_once('-')?;
    let batch = batch
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| batch.parse().ok())??;
    (well_formed && !source.is_empty()).then_some((id, source, batch))
}

/// The commit info field of a `keys reencrypt` commit naming the batch its new file holds:
/// `{"appId": ..., "version": ...}`, as the batch's own commit's transaction did.
pub const REWRITE_OF: &str = "sealtrailRewriteOf";

/// For a Delta table on a local path: the batch each data file was written by, from the JSON
/// commits in its `_delta_log/`: file name -> (transaction app id, version) of the commit
/// that added it, for commits that carry exactly one transaction (sealtrail's: app id
/// [`CommitKey::app_id`], version the batch) or, for a rewrite, name the batch in
/// [`REWRITE_OF`]. A file added by another writer (OPTIMIZE, a
/// plain append), a file two commits claim, and a file whose JSON commit was cleaned up after
/// a checkpoint are absent; so is everything of a table that is not local. Nothing here is
/// trusted: `audit` and `prove` check each row against the batch's custody record and fall
/// back to lineage ids when it does not match.
pub fn delta_file_commits(uri: &str) -> std::collections::HashMap<String, (String, u64)> {
    use std::collections::HashMap;
    let mut out: HashMap<String, (String, u64)> = HashMap::new();
    let dir = match url::Url::parse(uri) {
        Ok(u) if u.scheme() == "file" => match u.to_file_path() {
            Ok(p) => p,
            Err(()) => return out,
        },
        Ok(_) => return out,
        Err(_) => PathBuf::from(uri),
    }
    .join("_delta_log");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut commits: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let mut claimed: HashMap<String, usize> = HashMap::new();
    for c in commits {
        let Ok(text) = std::fs::read_to_string(&c) else {
            continue;
        };
        let mut txn = Vec::new();
        let mut adds = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(r) = v.pointer(&format!("/commitInfo/{REWRITE_OF}")) {
                if let (Some(app), Some(ver)) = (
                    r.get("appId").and_then(|a| a.as_str()),
                    r.get("version").and_then(|v| v.as_u64()),
                ) {
                    txn.push((app.to_string(), ver));
                }
            } else if let Some(t) = v.get("txn") {
                if let (Some(app), Some(ver)) = (
                    t.get("appId").and_then(|a| a.as_str()),
                    t.get("version").and_then(|v| v.as_u64()),
                ) {
                    txn.push((app.to_string(), ver));
                }
            } else if let Some(path) = v.pointer("/add/path").and_then(|p| p.as_str()) {
                // Paths are URL-encoded; sealtrail's writer names files without escapes.
                let name = path.rsplit('/').next().unwrap_or(path);
                if !name.contains('%') {
                    adds.push(name.to_string());
                }
            }
        }
        for name in adds {
            *claimed.entry(name.clone()).or_default() += 1;
            if let [one] = txn.as_slice() {
                out.insert(name, one.clone());
            }
        }
    }
    out.retain(|name, _| claimed.get(name) == Some(&1));
    out
}

/// Parquet writer settings shared by every Parquet and Delta file sealtrail writes, tuned to
/// the rows about to be written: dictionary encoding is turned
/// off for text and binary columns whose sample is mostly distinct values (ids, tokens,
/// ciphertexts, digests, free text). For those a dictionary never pays off; the writer would
/// intern every value until the dictionary page overflows and then fall back to plain
/// encoding anyway. Low-cardinality columns (currencies, venues) keep their dictionary.
pub fn writer_properties_for(batches: &[RecordBatch], codec: Codec) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(compression(codec))
        .set_max_row_group_row_count(Some(1 << 20))
        // Pages of at most 4,096 rows: reading one row back (`prove`) decompresses a page per
        // column, not a fifth of the file; compression is unchanged to within a percent.
        .set_data_page_row_count_limit(4096)
        // Lineage ids are unique per row.
        .set_column_dictionary_enabled(
            parquet::schema::types::ColumnPath::from(sealtrail_core::LINEAGE_ID_COLUMN),
            false,
        );
    if let Some(first) = batches.first() {
        for (f, col) in first.schema().fields().iter().zip(first.columns()) {
            if mostly_distinct(col.as_ref()) {
                b = b.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::from(f.name().as_str()),
                    false,
                );
            }
        }
    }
    b.build()
}

/// The Parquet compression of `codec`. The spec checks the levels, so the fallbacks to a
/// codec's default level are never taken.
fn compression(codec: Codec) -> Compression {
    match codec {
        Codec::Zstd(l) => Compression::ZSTD(ZstdLevel::try_new(l.into()).unwrap_or_default()),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::Gzip(l) => Compression::GZIP(GzipLevel::try_new(l.into()).unwrap_or_default()),
        Codec::None => Compression::UNCOMPRESSED,
    }
}

/// Rows sampled per column to decide on a dictionary.
const DICTIONARY_SAMPLE: usize = 2048;

/// Whether more than half of the first [`DICTIONARY_SAMPLE`] non-null values of a text,
/// binary or fixed-width column are distinct. Other types (booleans, nested) answer false.
/// (Interning a column of distinct timestamps until its dictionary overflowed cost ~2 % of
/// the reference job's CPU, for no gain.)
fn mostly_distinct(col: &dyn arrow::array::Array) -> bool {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    fn distinct<'a>(vals: impl Iterator<Item = Option<&'a [u8]>>) -> bool {
        let mut seen = std::collections::HashSet::with_capacity(DICTIONARY_SAMPLE);
        let mut n = 0usize;
        for v in vals.flatten().take(DICTIONARY_SAMPLE) {
            n += 1;
            seen.insert(v);
        }
        n >= 64 && seen.len() * 2 > n
    }
    match col.data_type() {
        DataType::Utf8 => distinct(col.as_string::<i32>().iter().map(|v| v.map(str::as_bytes))),
        DataType::LargeUtf8 => {
            distinct(col.as_string::<i64>().iter().map(|v| v.map(str::as_bytes)))
        }
        DataType::Utf8View => distinct(col.as_string_view().iter().map(|v| v.map(str::as_bytes))),
        DataType::Binary => distinct(col.as_binary::<i32>().iter()),
        DataType::LargeBinary => distinct(col.as_binary::<i64>().iter()),
        // Fixed-width values (timestamps, amounts, quantities), compared as their bytes.
        t => match t.primitive_width() {
            Some(w) if t.is_primitive() => {
                let d = col.to_data();
                let Some(buf) = d.buffers().first() else {
                    return false;
                };
                let vals = &buf.as_slice()[d.offset() * w..];
                distinct((0..d.len()).map(|i| col.is_valid(i).then(|| &vals[i * w..(i + 1) * w])))
            }
            _ => false,
        },
    }
}

#[derive(Debug)]
pub enum SinkWriter {
    Parquet {
        name: String,
        dir: PathBuf,
        schema: SchemaRef,
        codec: Codec,
    },
    Delta {
        name: String,
        uri: String,
        table: Box<DeltaTable>,
        schema: SchemaRef,
        codec: Codec,
        /// Where and with which columns to create the table, until it exists.
        create: Option<Box<(url::Url, StructType)>>,
    },
    Postgres(Box<crate::pg::PgSink>),
}

fn sink_err(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Sink {
        sink: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Creates a sink's folder (and its parents); a file where the folder (or a parent) should be
/// is said to be one.
fn create_folder(name: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        let file = dir
            .ancestors()
            .find(|a| a.metadata().is_ok_and(|m| !m.is_dir()));
        match file {
            Some(f) => sink_err(
                name,
                format!(
                    "cannot create folder {}: {} is a file, not a folder; name a folder for the output (or move the file away)",
                    dir.display(),
                    f.display()
                ),
            ),
            None => sink_err(name, format!("cannot create folder {}: {e}", dir.display())),
        }
    })
}

/// Opens the sink `name` for rows of `schema`. An existing Delta or PostgreSQL table must
/// have exactly these columns and types; a missing one is created by the first commit that
/// brings rows, or by [`SinkWriter::finish`] (so a run that fails before leaves no empty table).
pub async fn open_sink(name: &str, target: &Target, schema: SchemaRef) -> Result<SinkWriter> {
    match target {
        Target::Parquet { dir, compression } => {
            create_folder(name, dir)?;
            check_parquet_columns(name, dir, &schema)?;
            Ok(SinkWriter::Parquet {
                name: name.into(),
                dir: dir.clone(),
                schema,
                codec: *compression,
            })
        }
        Target::Delta { uri, compression } => {
            crate::s3::register();
            if crate::s3::is_s3(uri) {
                crate::s3::check_conditional_writes(uri)
                    .await
                    .map_err(|e| sink_err(name, e))?;
            }
            let url = if uri.contains("://") {
                url::Url::parse(uri)
                    .map_err(|e| sink_err(name, format!("bad table URL {uri}: {e}")))?
            } else {
                create_folder(name, Path::new(uri))?;
                url::Url::from_directory_path(uri)
                    .map_err(|_| sink_err(name, format!("bad table path {uri}")))?
            };
            let table = DeltaTable::try_from_url(url.clone()).await.map_err(|e| {
                sink_err(
                    name,
                    format!("cannot open Delta table {uri}: {}", with_root_cause(&e)),
                )
            })?;
            let kernel: StructType = schema
                .as_ref()
                .try_into_kernel()
                .map_err(|e| sink_err(name, e))?;
            // A missing table is created by the first commit that brings rows, or when the
            // run ends well ([`SinkWriter::finish`]): a run that fails first leaves none.
            let create = if table.version().is_some() {
                check_delta_columns(name, uri, &table, &kernel)?;
                None
            } else {
                Some(Box::new((url, kernel)))
            };
            Ok(SinkWriter::Delta {
                name: name.into(),
                uri: uri.clone(),
                table: Box::new(table),
                schema,
                codec: *compression,
                create,
            })
        }
        Target::Postgres {
            url,
            table,
            index_ids,
        } => Ok(SinkWriter::Postgres(Box::new(
            crate::pg::PgSink::open(name, url, table, schema, *index_ids).await?,
        ))),
    }
}

/// An existing Delta table must have exactly the columns and types the pipeline writes.
fn check_delta_columns(
    name: &str,
    uri: &str,
    table: &DeltaTable,
    kernel: &StructType,
) -> Result<()> {
    let existing = table.snapshot().map_err(|e| sink_err(name, e))?.schema();
    let want: Vec<(String, String)> = kernel
        .fields()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let have: Vec<(String, String)> = existing
        .fields()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    if want != have {
        return Err(sink_err(
            name,
            format!(
                "the Delta table at {uri} has columns {} but the pipeline writes {} ({}): a table keeps the columns its first run gave it (the ledger's commitments of its rows cover them); point the sink at a new path for the new columns (this table's rows stay provable by `audit` and `prove`), or put the spec's columns back",
                fmt_cols(&have),
                fmt_cols(&want),
                column_differences(&have, &want)
            ),
        ));
    }
    Ok(())
}

/// A Parquet folder's batch files must have the columns and types the pipeline writes, as a
/// Delta table's must: readers take one schema for the folder's files (a column added later is
/// left out, a type changed fails the read) and the ledger's commitments cover the columns
/// each batch had. The newest batch file (run ids grow with time) stands for the folder; one
/// that cannot be read (damaged: `audit` names it) is passed over for the one before.
fn check_parquet_columns(name: &str, dir: &Path, schema: &SchemaRef) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| parse_batch_file_name(n).is_some())
        .collect();
    files.sort();
    let cols = |s: &Schema| -> Vec<(String, String)> {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect()
    };
    let want = cols(schema);
    let mut unreadable = Vec::new();
    for f in files.iter().rev().take(3) {
        let path = dir.join(f);
        let Ok(have) = parquet_file_schema(&path) else {
            unreadable.push(f.as_str());
            continue;
        };
        let have = cols(&have);
        if have != want {
            return Err(sink_err(
                name,
                format!(
                    "the Parquet folder {} holds files of columns {} (the newest, {f}) but the pipeline writes {} ({}): a folder keeps the columns its first run gave it (readers take one schema for all its files, and the ledger's commitments of its rows cover them); point the sink at a new folder for the new columns (this folder's rows stay provable by `audit` and `prove`), or put the spec's columns back",
                    dir.display(),
                    fmt_cols(&have),
                    fmt_cols(&want),
                    column_differences(&have, &want)
                ),
            ));
        }
        return Ok(());
    }
    if !unreadable.is_empty() {
        // Damaged files are `audit`'s to report; the run is not stopped for them, but it is
        // said that the folder's columns went unchecked.
        tracing::warn!(
            sink = name,
            "the newest batch files of the Parquet folder {} ({}) have no readable footer, so the columns this run writes were not compared with the folder's; `sealtrail audit` names damaged files",
            dir.display(),
            unreadable.join(", ")
        );
    }
    Ok(())
}

/// The Arrow schema of a Parquet file, from its footer alone.
fn parquet_file_schema(path: &Path) -> std::io::Result<SchemaRef> {
    let f = std::fs::File::open(path)?;
    guarded(|| {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .map(|b| b.schema().clone())
    })
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)
}

/// What differs between a table's columns (`have`) and those a pipeline writes (`want`), both
/// (name, type) in order: `added: x; removed: y; of another type: z (t1, now t2); in another
/// order`.
pub(crate) fn column_differences(have: &[(String, String)], want: &[(String, String)]) -> String {
    let find =
        |c: &[(String, String)], n: &str| c.iter().find(|(m, _)| m == n).map(|(_, t)| t.clone());
    let names = |c: Vec<&String>| {
        c.iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added: Vec<&String> = want
        .iter()
        .filter(|(n, _)| find(have, n).is_none())
        .map(|(n, _)| n)
        .collect();
    let removed: Vec<&String> = have
        .iter()
        .filter(|(n, _)| find(want, n).is_none())
        .map(|(n, _)| n)
        .collect();
    let retyped: Vec<String> = want
        .iter()
        .filter_map(|(n, t)| {
            let old = find(have, n)?;
            (old != *t).then(|| format!("`{n}` ({old}, now {t})"))
        })
        .collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added: {}", names(added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removed: {}", names(removed)));
    }
    if !retyped.is_empty() {
        parts.push(format!("of another type: {}", retyped.join(", ")));
    }
    let common = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
        a.iter()
            .filter(|(n, _)| find(b, n).is_some())
            .map(|(n, _)| n.clone())
            .collect()
    };
    if common(have, want) != common(want, have) {
        parts.push("in another order".into());
    }
    parts.join("; ")
}

fn fmt_cols(c: &[(String, String)]) -> String {
    c.iter()
        .map(|(n, t)| format!("{n}:{t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SinkWriter {
    pub fn name(&self) -> &str {
        match self {
            SinkWriter::Parquet { name, .. } | SinkWriter::Delta { name, .. } => name,
            SinkWriter::Postgres(pg) => pg.name(),
        }
    }

    pub fn location(&self) -> String {
        match self {
            SinkWriter::Parquet { dir, .. } => dir.display().to_string(),
            SinkWriter::Delta { uri, .. } => uri.clone(),
            SinkWriter::Postgres(pg) => pg.location(),
        }
    }

    /// The rows an earlier attempt of the run committed under `key` (stopped before the
    /// state store recorded the batch), as the sink holds them: the batch's Parquet file,
    /// the Delta file the commit of `key` added, or a PostgreSQL table's rows with the lineage
    /// ids of `fresh` (the rows this attempt made of the same records). They differ from
    /// `fresh` where values are sealed with random nonces, so custody must describe these.
    /// None when they cannot be found as one whole batch.
    pub async fn delivered(
        &self,
        key: &CommitKey,
        fresh: &[RecordBatch],
    ) -> Result<Option<Vec<RecordBatch>>> {
        if fresh.iter().all(|b| b.num_rows() == 0) {
            // The batch brings this sink no rows, then as now (a table that only such batches
            // reached does not even exist: the first rows create it).
            return Ok(Some(Vec::new()));
        }
        let read = |name: &str, f: &Path| {
            read_parquet(f)
                .map_err(|e| sink_err(name, format!("cannot read {} back: {e}", f.display())))
        };
        match self {
            SinkWriter::Parquet { name, dir, .. } => match key.existing_file(dir) {
                Some(f) => Ok(Some(read(name, &f)?)),
                None => Ok(None),
            },
            SinkWriter::Delta { name, uri, .. } => {
                let want = (key.app_id(), key.batch);
                // A table on S3: through a copy of its log, fetching the one file.
                let copy = if crate::s3::is_s3(uri) {
                    Some(
                        crate::s3::TableCopy::new(uri, false)
                            .await
                            .map_err(|e| sink_err(name, e))?
                            .0,
                    )
                } else {
                    None
                };
                let local = match &copy {
                    Some(c) => c.dir().display().to_string(),
                    None => uri.clone(),
                };
                let commits = delta_file_commits(&local);
                let target = Target::delta_at(local);
                let files: Vec<PathBuf> = sink_files(name, &target)
                    .await?
                    .into_iter()
                    .filter(|f| {
                        let n = f.file_name().map(|n| n.to_string_lossy().into_owned());
                        n.and_then(|n| commits.get(&n)) == Some(&want)
                    })
                    .collect();
                let [f] = files.as_slice() else {
                    return Ok(None);
                };
                if let Some(c) = &copy {
                    c.fetch(std::slice::from_ref(f))
                        .await
                        .map_err(|e| sink_err(name, e))?;
                }
                Ok(Some(read(name, f)?))
            }
            SinkWriter::Postgres(pg) => {
                let mut ids = Vec::new();
                for b in fresh {
                    let Some(col) = b.column_by_name(sealtrail_core::LINEAGE_ID_COLUMN) else {
                        return Ok(None);
                    };
                    let Some(col) = arrow::array::AsArray::as_string_opt::<i32>(col.as_ref())
                    else {
                        return Ok(None);
                    };
                    ids.extend(col.iter().map(|v| v.unwrap_or_default().to_string()));
                }
                Ok(pg.delivered(&ids).await?.map(|b| vec![b]))
            }
        }
    }

    /// `batches` as this sink delivers them: a PostgreSQL sink's in the types its table reads
    /// back as ([`crate::pg::delivered_type`]), so that output commitments are over the rows
    /// `prove` and `audit` read back; the other sinks' unchanged.
    pub fn deliverable(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        match self {
            SinkWriter::Postgres(pg) => batches
                .iter()
                .map(|b| crate::pg::deliverable(b).map_err(|e| sink_err(pg.name(), e)))
                .collect(),
            _ => Ok(batches),
        }
    }

    /// Commits `batches` under `key`. Returns false when `key` was already committed (nothing
    /// is written again). Empty input commits nothing.
    pub async fn commit(&mut self, key: &CommitKey, batches: &[RecordBatch]) -> Result<bool> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        match self {
            SinkWriter::Parquet {
                name,
                dir,
                schema,
                codec,
            } => {
                if key.existing_file(dir).is_some() {
                    return Ok(false);
                }
                let path = dir.join(batch_file_name(&key.run_id, &key.source, key.batch, *codec));
                if rows == 0 {
                    return Ok(true);
                }
                // Opening created it, but a failed run of another pipeline writing beside
                // this one may have taken it away again while it was empty.
                create_folder(name, dir)?;
                write_parquet_atomically(&path, schema, batches, *codec).map_err(|e| {
                    // The file system's own words (with what to do on a full disk).
                    sink_err(
                        name,
                        format!("writing {}: {}", path.display(), with_root_cause(&e)),
                    )
                })?;
                Ok(true)
            }
            SinkWriter::Delta {
                name,
                uri,
                table,
                create,
                codec,
                ..
            } => {
                if create.is_some() && rows == 0 {
                    return Ok(true);
                }
                create_missing_table(name, uri, table, create).await?;
                let app_id = key.app_id();
                let mut conflicts = 0;
                loop {
                    let done = table
                        .snapshot()
                        .map_err(|e| sink_err(name, with_root_cause(&e)))?
                        .transaction_version(table.log_store().as_ref(), &app_id)
                        .await
                        .map_err(|e| sink_err(name, with_root_cause(&e)))?;
                    if done.is_some_and(|v| v >= key.batch as i64) {
                        return Ok(false);
                    }
                    if rows == 0 {
                        return Ok(true);
                    }
                    let props = CommitProperties::default()
                        .with_application_transaction(Transaction::new(&app_id, key.batch as i64));
                    let mut w = RecordBatchWriter::for_table(table)
                        .map_err(|e| sink_err(name, with_root_cause(&e)))?
                        .with_writer_properties(writer_properties_for(batches, *codec))
                        .with_commit_properties(props);
                    for b in batches {
                        w.write(b.clone())
                            .await
                            .map_err(|e| delta_write_err(name, uri, &e))?;
                    }
                    match w.flush_and_commit(table).await {
                        Ok(_) => return Ok(true),
                        // Another writer committed something delta-rs does not merge with
                        // this append: a metadata change (two runs creating one new table at
                        // once can leave a second metadata version), or this very batch (two
                        // processes resuming one run). Reload the table as it is now and go
                        // again: the batch is then found committed, or written anew. This
                        // attempt's files are in no commit; readers never see them (a VACUUM
                        // removes them).
                        Err(deltalake::DeltaTableError::Transaction {
                            source:
                                deltalake::kernel::transaction::TransactionError::CommitConflict(e),
                        }) if conflicts < 3 => {
                            conflicts += 1;
                            tracing::warn!(sink = %name, error = %e, "the Delta table changed during the commit; writing the batch again");
                            table
                                .update_state()
                                .await
                                .map_err(|e| sink_err(name, with_root_cause(&e)))?;
                        }
                        Err(e) => return Err(delta_write_err(name, uri, &e)),
                    }
                }
            }
            SinkWriter::Postgres(pg) => pg.commit(&key.app_id(), key.batch, batches).await,
        }
    }

    /// At the end of a run that went well: creates a sink's table that no commit brought rows
    /// to, so that it exists (empty) for readers and the next run.
    pub async fn finish(&mut self) -> Result<()> {
        match self {
            SinkWriter::Parquet { name, dir, .. } => create_folder(name, dir),
            SinkWriter::Delta {
                name,
                uri,
                table,
                create,
                ..
            } => create_missing_table(name, uri, table, create).await,
            SinkWriter::Postgres(pg) => pg.finish().await,
        }
    }
}

/// A Delta write's error. When a file system error lies under it (a full disk), that error
/// with the table it was writing into, not delta-rs's layers above it ("Failed to parse
/// parquet: External: Generic LocalFileSystem error: Unable to copy data to file: ...").
fn delta_write_err(name: &str, uri: &str, e: &deltalake::DeltaTableError) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return sink_err(
                name,
                format!("writing a data file into {uri}: {}", with_root_cause(io)),
            );
        }
        cause = c.source();
    }
    sink_err(name, with_root_cause(e))
}

/// Creates a Delta sink's table if it is still to (`create`), or joins the one another
/// writer created meanwhile once its columns are checked.
async fn create_missing_table(
    name: &str,
    uri: &str,
    table: &mut Box<DeltaTable>,
    create: &mut Option<Box<(url::Url, StructType)>>,
) -> Result<()> {
    let Some((url, kernel)) = create.as_deref() else {
        return Ok(());
    };
    let (t, created) = create_or_reopen(DeltaTable::clone(table), url, name, kernel).await?;
    if !created {
        check_delta_columns(name, uri, &t, kernel)?;
    }
    **table = t;
    *create = None;
    Ok(())
}

/// Writes a Parquet file under a hidden temporary name (ignored by Parquet readers), fsyncs
/// it and renames it into place, so a reader never sees a half-written file.
pub fn write_parquet_atomically(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    codec: Codec,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fname = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{fname}.tmp"));
    write_parquet_file(&tmp, schema, batches, codec)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        // Nothing half-written stays behind (on a full disk least of all).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// The codec of the Parquet file at `path` (of its first column chunk), for a rewrite of the
/// file to keep, at the codec's default level (a file does not record the level it was
/// written at); the default when the file has no rows or a codec sealtrail does not write
/// (LZ4 in its older framing, Brotli, LZO).
pub fn file_codec(path: &Path) -> std::io::Result<Codec> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader =
        SerializedFileReader::new(std::fs::File::open(path)?).map_err(std::io::Error::other)?;
    let meta = reader.metadata();
    let Some(chunk) = meta
        .row_groups()
        .first()
        .and_then(|rg| rg.columns().first())
    else {
        return Ok(Codec::default());
    };
    let name = match chunk.compression() {
        Compression::ZSTD(_) => "zstd",
        Compression::SNAPPY => "snappy",
        Compression::LZ4_RAW => "lz4",
        Compression::GZIP(_) => "gzip",
        Compression::UNCOMPRESSED => "none",
        _ => return Ok(Codec::default()),
    };
    // Every name above parses; the fallback is never taken.
    Ok(Codec::parse(name, None).unwrap_or_default())
}

/// Writes `batches` as a new Parquet file at `path` with the sinks' writer properties,
/// compressed with `codec`, and syncs it to disk (not its folder: the caller renames it into
/// place). A write that fails (a full disk, an I/O error) removes what it had written of the
/// file, and its error is the file system's own (`ErrorKind::StorageFull` for a full disk).
pub fn write_parquet_file(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    codec: Codec,
) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let written = (|| {
        let props = writer_properties_for(batches, codec);
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_io)?;
        for b in batches {
            w.write(b).map_err(parquet_io)?;
        }
        w.into_inner().map_err(parquet_io)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// The I/O error under a Parquet writer's error (the writer wraps the file's errors as
/// `External`), so that its kind and message are the file system's, without the writer's
/// `External: ` prefix; any other error as it is.
fn parquet_io(e: parquet::errors::ParquetError) -> std::io::Error {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => *io,
                Err(other) => std::io::Error::other(other),
            }
        }
        other => std::io::Error::other(other),
    }
}

/// Replaces data file `old` of the Delta table at `table` (a local folder or an `s3://` URL)
/// with `new`, a complete Parquet file of `size` bytes already written into
/// the table's location (not yet in any commit, so no reader sees it), both paths relative to
/// the table, in one commit that names the batch the file holds (`batch`: application id and
/// version, when it is known) in its commit info ([`REWRITE_OF`]), so that the log still says
/// which batch each file holds. The commit carries no application transaction: the table's
/// version of the run's application id is the last batch the run committed, which a stopped
/// run's resumption reads to skip what it wrote already, and a rewrite of an earlier batch
/// must not set it back. The old file stays in the table's history (time travel) until a
/// VACUUM removes it.
pub async fn delta_replace_file(
    table: &str,
    old: &str,
    new: &str,
    size: u64,
    batch: Option<(&str, i64)>,
) -> Result<()> {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::kernel::{Action, Add, Remove};
    let err = |e: String| Error::Sink {
        sink: table.to_string(),
        reason: e,
    };
    crate::s3::register();
    let table = deltalake::open_table(table_url(table).map_err(err)?)
        .await
        .map_err(|e| {
            err(format!(
                "cannot open the Delta table: {}",
                with_root_cause(&e)
            ))
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let actions = vec![
        Action::Remove(Remove {
            path: old.to_string(),
            data_change: true,
            deletion_timestamp: Some(now),
            extended_file_metadata: Some(false),
            ..Default::default()
        }),
        Action::Add(Add {
            path: new.to_string(),
            size: size as i64,
            modification_time: now,
            data_change: true,
            ..Default::default()
        }),
    ];
    let props = CommitProperties::default().with_metadata(batch.map(|(app_id, version)| {
        (
            REWRITE_OF.to_string(),
            serde_json::json!({ "appId": app_id, "version": version }),
        )
    }));
    let snapshot = table.snapshot().map_err(|e| err(e.to_string()))?;
    CommitBuilder::from(props)
        .with_actions(actions)
        .build(
            Some(snapshot),
            table.log_store(),
            deltalake::protocol::DeltaOperation::Update { predicate: None },
        )
        .await
        .map_err(|e| {
            err(format!(
                "committing the rewritten file: {}",
                with_root_cause(&e)
            ))
        })?;
    Ok(())
}

/// The URL of the Delta table at `uri`: a URL as it is, a local folder as a `file://` URL.
pub fn table_url(uri: &str) -> std::result::Result<url::Url, String> {
    if uri.contains("://") {
        url::Url::parse(uri).map_err(|e| format!("bad table URL {uri}: {e}"))
    } else {
        let dir = std::path::absolute(uri).map_err(|e| format!("{uri}: {e}"))?;
        url::Url::from_directory_path(dir).map_err(|()| format!("bad table path {uri}"))
    }
}

/// The data files that make up a sink's table now: a Parquet sink's part files, or the files
/// of a Delta table's current snapshot. For reading back what was delivered (`prove`,
/// `audit`); PostgreSQL sinks are read with SQL instead ([`crate::pg::PgTable`]).
pub async fn sink_files(name: &str, target: &Target) -> Result<Vec<PathBuf>> {
    match target {
        Target::Parquet { dir, .. } => {
            let rd = std::fs::read_dir(dir)
                .map_err(|e| sink_err(name, format!("cannot list {}: {e}", dir.display())))?;
            let mut out = Vec::new();
            for e in rd {
                let p = e.map_err(|e| sink_err(name, e))?.path();
                let f = p.file_name().map(|f| f.to_string_lossy().into_owned());
                if f.is_some_and(|f| f.ends_with(".parquet") && !f.starts_with('.')) {
                    out.push(p);
                }
            }
            out.sort();
            Ok(out)
        }
        Target::Delta { uri, .. } => {
            crate::s3::register();
            let url = table_url(uri).map_err(|e| sink_err(name, e))?;
            let table = deltalake::open_table(url).await.map_err(|e| {
                sink_err(
                    name,
                    format!("cannot open Delta table {uri}: {}", with_root_cause(&e)),
                )
            })?;
            let mut out = Vec::new();
            for u in table.get_file_uris().map_err(|e| sink_err(name, e))? {
                // Local files come back as plain paths or file:// URLs.
                let path = match url::Url::parse(&u) {
                    Err(_) => PathBuf::from(&u),
                    Ok(x) if x.scheme() == "file" => x
                        .to_file_path()
                        .map_err(|_| sink_err(name, format!("{u} is not a valid file URL")))?,
                    Ok(_) => {
                        return Err(sink_err(
                            name,
                            format!(
                                "{u} is not a local file (reading object stores back is not supported yet)"
                            ),
                        ));
                    }
                };
                out.push(path);
            }
            out.sort();
            Ok(out)
        }
        Target::Postgres { .. } => Err(sink_err(
            name,
            "reading a PostgreSQL sink back is not supported yet (Delta and Parquet sinks are)",
        )),
    }
}

/// Creates the Delta table `table` was opened at, when it has no version yet; returns the table
/// and whether this call created it. Another writer may have created it since `table` was
/// opened (two runs starting at once; version 0 is written only if absent): then it is
/// reopened as that writer left it, for the caller to check like any existing table.
async fn create_or_reopen(
    table: DeltaTable,
    url: &url::Url,
    name: &str,
    columns: &StructType,
) -> Result<(DeltaTable, bool)> {
    if table.version().is_some() {
        return Ok((table, false));
    }
    let e = match table
        .create()
        .with_table_name(name)
        .with_columns(columns.fields().cloned())
        .await
    {
        Ok(t) => return Ok((t, true)),
        Err(e) => e,
    };
    let again = DeltaTable::try_from_url(url.clone()).await.map_err(|e| {
        sink_err(
            name,
            format!("cannot open Delta table {url}: {}", with_root_cause(&e)),
        )
    })?;
    if again.version().is_none() {
        return Err(sink_err(
            name,
            format!("cannot create Delta table {url}: {}", with_root_cause(&e)),
        ));
    }
    Ok((again, false))
}

/// Reads a whole Parquet file as record batches. The file is untrusted (anyone with write
/// access to the sink can change it): damage is an error of kind `Other`, never a panic
/// ([`guarded`]); opening the file fails with the file system's own kinds.
pub fn read_parquet(path: &Path) -> std::io::Result<Vec<RecordBatch>> {
    Ok(read_parquet_with_schema(path)?.1)
}

/// [`read_parquet`], with the file's schema (which a file without rows has too).
pub fn read_parquet_with_schema(path: &Path) -> std::io::Result<(SchemaRef, Vec<RecordBatch>)> {
    let f = std::fs::File::open(path)?;
    guarded(|| -> parquet::errors::Result<_> {
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?
            .with_batch_size(65_536)
            .build()?;
        let schema = arrow::array::RecordBatchReader::schema(&r);
        Ok((schema, r.collect::<Result<Vec<_>, _>>()?))
    })
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)
}

/// Reads row `row` (0-based) of a Parquet file, decoding only the pages that hold it (the
/// writer stores page indexes). `None` when the file has fewer rows. Damage is an error, never
/// a panic, as in [`read_parquet`].
pub fn read_parquet_row(path: &Path, row: usize) -> std::io::Result<Option<RecordBatch>> {
    use parquet::arrow::arrow_reader::{
        ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
    };
    let f = std::fs::File::open(path)?;
    guarded(|| -> parquet::errors::Result<Option<RecordBatch>> {
        let b = ParquetRecordBatchReaderBuilder::try_new_with_options(
            f,
            ArrowReaderOptions::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
        )?;
        if (b.metadata().file_metadata().num_rows() as u64) <= row as u64 {
            return Ok(None);
        }
        let sel = RowSelection::from(vec![RowSelector::skip(row), RowSelector::select(1)]);
        let mut r = b.with_row_selection(sel).with_batch_size(1).build()?;
        Ok(r.next().transpose()?)
    })
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_file_names_and_app_ids_give_back_their_batch() {
        let run = "01a23478-8217-7149-9cdc-665cae7e7a50";
        let codecs = [
            Codec::Zstd(1),
            Codec::Snappy,
            Codec::Lz4,
            Codec::Gzip(6),
            Codec::None,
        ];
        for (source, batch) in [("s", 0), ("trades-eu", 12), ("a-b-c", 123_456_789)] {
            for codec in codecs {
                let name = batch_file_name(run, source, batch, codec);
                assert_eq!(
                    parse_batch_file_name(&name),
                    Some((run, source, batch)),
                    "{name}"
                );
            }
            let key = CommitKey {
                pipeline: "my-pipe".into(),
                run_id: run.into(),
                source: source.into(),
                batch,
            };
            assert_eq!(CommitKey::from_app_id(&key.app_id(), batch), Some(key));
        }
        for bad in [
            "part-01a23478-8217-7149-9cdc-665cae7e7a5-s-000000.zstd.parquet",
            "part-01a23478x8217-7149-9cdc-665cae7e7a50-s-000000.zstd.parquet",
            "part-01a23478-8217-7149-9cdc-665cae7e7a50--000000.zstd.parquet",
            "part-01a23478-8217-7149-9cdc-665cae7e7a50-s-00x000.zstd.parquet",
            "part-01a23478-8217-7149-9cdc-665cae7e7a50-s-+1.zstd.parquet",
            "part-01a23478-8217-7149-9cdc-665cae7e7a50-s-000000.brotli.parquet",
            "part-01a23478-8217-7149-9cdc-665cae7e7a50-s-000000.zstd",
            "01a23478-8217-7149-9cdc-665cae7e7a50-s-000000.zstd.parquet",
            "part-é",
        ] {
            assert_eq!(parse_batch_file_name(bad), None, "{bad}");
        }
        for bad in [
            "sealtrail/p/s",
            "other/p/s/r",
            "sealtrail//s/r",
            "sealtrail/p/s/",
        ] {
            assert_eq!(CommitKey::from_app_id(bad, 0), None, "{bad}");
        }
    }
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::sync::Arc;

    /// A file where a sink's folder (or a parent) should be is named as the problem.
    #[tokio::test]
    async fn a_file_in_the_way_of_a_sink_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out");
        std::fs::write(&file, "x").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        for target in [
            Target::Parquet {
                dir: file.join("p"),
                compression: Codec::default(),
            },
            Target::delta_at(file.display().to_string()),
        ] {
            let Err(err) = open_sink("o", &target, schema.clone()).await else {
                panic!("a file is in the way");
            };
            let err = err.to_string();
            assert!(
                err.contains(&format!("{} is a file, not a folder", file.display())),
                "{err}"
            );
        }
    }

    /// Each file of a Delta table written by sealtrail maps to the transaction (run, batch)
    /// that added it; files of a commit without one, and files claimed twice, do not map.
    #[tokio::test]
    async fn delta_files_map_to_their_batches_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().join("t").display().to_string();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef],
        )
        .unwrap();
        let target = Target::delta_at(uri.clone());
        let mut w = open_sink("t", &target, schema).await.unwrap();
        let key = |batch| CommitKey {
            pipeline: "p".into(),
            run_id: "r1".into(),
            source: "s".into(),
            batch,
        };
        for batch in [0, 1] {
            assert!(
                w.commit(&key(batch), std::slice::from_ref(&b))
                    .await
                    .unwrap()
            );
        }
        let files = sink_files("t", &target).await.unwrap();
        assert_eq!(files.len(), 2);
        let map = delta_file_commits(&uri);
        let mut got: Vec<(String, u64)> = files
            .iter()
            .map(|f| map[f.file_name().unwrap().to_string_lossy().as_ref()].clone())
            .collect();
        got.sort();
        assert_eq!(got, vec![(key(0).app_id(), 0), (key(1).app_id(), 1)]);
        // A commit that claims an existing file again (a replayed log line) unmaps it; a
        // commit without a transaction maps nothing.
        let log = dir.path().join("t/_delta_log");
        let first = std::fs::read_to_string(log.join("00000000000000000001.json")).unwrap();
        let add = first.lines().find(|l| l.contains("\"add\"")).unwrap();
        std::fs::write(log.join("00000000000000000003.json"), format!("{add}\n")).unwrap();
        let map = delta_file_commits(&uri);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map.values().next().unwrap(), &(key(1).app_id(), 1));
        // Not a local table: nothing maps.
        assert!(delta_file_commits("s3://bucket/t").is_empty());
    }

    /// A rewritten file (`keys reencrypt`) maps to the batch it replaced, and the rewrite does
    /// not set the run's application transaction back to that batch (a stopped run's
    /// resumption reads it to skip the batches it committed).
    #[tokio::test]
    async fn a_rewritten_delta_file_keeps_its_batch_and_the_runs_version() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, b, target) = two_rows_for_delta(dir.path());
        let Target::Delta { uri, .. } = &target else {
            unreachable!()
        };
        let mut w = open_sink("t", &target, schema.clone()).await.unwrap();
        let key = |batch| CommitKey {
            batch,
            ..first_batch_of_run_r1()
        };
        for batch in [0, 1, 2] {
            assert!(
                w.commit(&key(batch), std::slice::from_ref(&b))
                    .await
                    .unwrap()
            );
        }
        let map = delta_file_commits(uri);
        let old = map
            .iter()
            .find(|(_, v)| v.1 == 0)
            .map(|(k, _)| k.clone())
            .unwrap();
        let new = "part-rewrite-0.zstd.parquet";
        let path = dir.path().join("t").join(new);
        write_parquet_file(&path, &schema, std::slice::from_ref(&b), Codec::default()).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        delta_replace_file(uri, &old, new, size, Some((&key(0).app_id(), 0)))
            .await
            .unwrap();
        let map = delta_file_commits(uri);
        assert_eq!(map.get(new), Some(&(key(0).app_id(), 0)), "{map:?}");
        let table = deltalake::open_table(table_url(uri).unwrap())
            .await
            .unwrap();
        let version = table
            .snapshot()
            .unwrap()
            .transaction_version(table.log_store().as_ref(), key(0).app_id())
            .await
            .unwrap();
        assert_eq!(
            version,
            Some(2),
            "the run's last batch, not the rewritten one"
        );
        let files = sink_files("t", &target).await.unwrap();
        assert_eq!(files.len(), 3);
        assert!(files.iter().any(|f| f.ends_with(new)));
        assert!(!files.iter().any(|f| f.ends_with(&old)));
    }

    /// A one-column batch of two rows, its schema, and a Delta target in `dir`.
    fn two_rows_for_delta(dir: &Path) -> (SchemaRef, RecordBatch, Target) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef],
        )
        .unwrap();
        let uri = dir.join("t").display().to_string();
        (schema, b, Target::delta_at(uri))
    }

    fn first_batch_of_run_r1() -> CommitKey {
        CommitKey {
            pipeline: "p".into(),
            run_id: "r1".into(),
            source: "s".into(),
            batch: 0,
        }
    }

    /// Rows in the table's current files.
    async fn rows_in(target: &Target) -> usize {
        sink_files("t", target)
            .await
            .unwrap()
            .iter()
            .map(|f| {
                read_parquet(f)
                    .unwrap()
                    .iter()
                    .map(|b| b.num_rows())
                    .sum::<usize>()
            })
            .sum()
    }

    /// A batch whose commit meets a concurrent metadata change (another writer's) is written
    /// again on the table as it is now, and committed once.
    #[tokio::test]
    async fn a_commit_meeting_a_metadata_change_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, b, target) = two_rows_for_delta(dir.path());
        let mut w = open_sink("t", &target, schema).await.unwrap();
        w.finish().await.unwrap();
        // Another writer changes the table's metadata after `w` loaded it.
        let url = url::Url::from_directory_path(dir.path().join("t")).unwrap();
        let other = DeltaTable::try_from_url(url.clone()).await.unwrap();
        other
            .set_tbl_properties()
            .with_properties(std::collections::HashMap::from([(
                "delta.logRetentionDuration".to_string(),
                "interval 30 days".to_string(),
            )]))
            .await
            .unwrap();
        let key = first_batch_of_run_r1();
        assert!(w.commit(&key, std::slice::from_ref(&b)).await.unwrap());
        assert!(!w.commit(&key, std::slice::from_ref(&b)).await.unwrap());
        let t = DeltaTable::try_from_url(url).await.unwrap();
        assert_eq!(t.version(), Some(2));
        assert_eq!(rows_in(&target).await, 2);
    }

    /// Opening a missing table creates nothing, nor does a commit without rows; the first rows
    /// create it (in two versions: the table's, then theirs), and `finish` creates it empty.
    #[tokio::test]
    async fn a_missing_table_is_created_by_the_first_rows_or_by_finish() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, b, target) = two_rows_for_delta(dir.path());
        let url = url::Url::from_directory_path(dir.path().join("t")).unwrap();
        let version = || async {
            DeltaTable::try_from_url(url.clone())
                .await
                .unwrap()
                .version()
        };
        let mut w = open_sink("t", &target, schema.clone()).await.unwrap();
        assert!(w.commit(&first_batch_of_run_r1(), &[]).await.unwrap());
        assert_eq!(version().await, None);
        assert!(w.commit(&first_batch_of_run_r1(), &[b]).await.unwrap());
        assert_eq!((version().await, rows_in(&target).await), (Some(1), 2));
        w.finish().await.unwrap();
        assert_eq!(version().await, Some(1));

        let dir = tempfile::tempdir().unwrap();
        let (schema, _, target) = two_rows_for_delta(dir.path());
        let url = url::Url::from_directory_path(dir.path().join("t")).unwrap();
        let mut w = open_sink("t", &target, schema).await.unwrap();
        w.finish().await.unwrap();
        let t = DeltaTable::try_from_url(url).await.unwrap();
        assert_eq!((t.version(), rows_in(&target).await), (Some(0), 0));
    }

    /// Each codec writes files named after it that read back the same, with that codec in their
    /// metadata; a batch a Parquet sink holds under one codec is found committed by a writer
    /// of another.
    #[tokio::test]
    async fn every_codec_writes_and_a_batch_is_found_under_any() {
        let codecs = [
            Codec::Zstd(3),
            Codec::Snappy,
            Codec::Lz4,
            Codec::Gzip(9),
            Codec::None,
        ];
        for codec in codecs {
            let dir = tempfile::tempdir().unwrap();
            let (schema, b, _) = two_rows_for_delta(dir.path());
            let key = first_batch_of_run_r1();
            let delta = Target::Delta {
                uri: dir.path().join("t").display().to_string(),
                compression: codec,
            };
            let mut w = open_sink("t", &delta, schema.clone()).await.unwrap();
            assert!(w.commit(&key, std::slice::from_ref(&b)).await.unwrap());
            let files = sink_files("t", &delta).await.unwrap();
            let [f] = files.as_slice() else {
                panic!("{files:?}")
            };
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.ends_with(&format!("{}.parquet", codec.file_infix())),
                "{name}"
            );
            assert_eq!(file_codec(f).unwrap().name(), codec.name(), "{name}");
            assert_eq!(read_parquet(f).unwrap(), vec![b.clone()]);

            let parquet = |compression| Target::Parquet {
                dir: dir.path().join("p"),
                compression,
            };
            let mut w = open_sink("p", &parquet(codec), schema.clone())
                .await
                .unwrap();
            assert!(w.commit(&key, std::slice::from_ref(&b)).await.unwrap());
            let f = dir
                .path()
                .join("p")
                .join(batch_file_name("r1", "s", 0, codec));
            assert_eq!(file_codec(&f).unwrap().name(), codec.name());
            let other = codecs.into_iter().find(|c| *c != codec).unwrap();
            let mut w = open_sink("p", &parquet(other), schema.clone())
                .await
                .unwrap();
            assert_eq!(
                w.delivered(&key, std::slice::from_ref(&b)).await.unwrap(),
                Some(vec![b.clone()])
            );
            assert!(!w.commit(&key, std::slice::from_ref(&b)).await.unwrap());
            assert_eq!(sink_files("p", &parquet(other)).await.unwrap(), vec![f]);
        }
    }

    /// Two writers committing the same (run, batch) from snapshots taken before either did (two
    /// processes resuming one run at once): the batch lands once.
    #[tokio::test]
    async fn the_same_batch_from_two_writers_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, b, target) = two_rows_for_delta(dir.path());
        let mut w1 = open_sink("t", &target, schema.clone()).await.unwrap();
        let mut w2 = open_sink("t", &target, schema).await.unwrap();
        let key = first_batch_of_run_r1();
        assert!(w1.commit(&key, std::slice::from_ref(&b)).await.unwrap());
        assert!(!w2.commit(&key, std::slice::from_ref(&b)).await.unwrap());
        assert_eq!(rows_in(&target).await, 2);
    }

    /// A writer that opened a new Delta table before another writer created it (two runs
    /// starting at once) gets the table that writer created, not an error.
    #[tokio::test]
    async fn a_table_created_by_another_writer_meanwhile_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        let url = url::Url::from_directory_path(dir.path().join("t")).unwrap();
        let schema = Schema::new(vec![Field::new("v", DataType::Utf8, false)]);
        let kernel: StructType = (&schema).try_into_kernel().unwrap();
        let stale = DeltaTable::try_from_url(url.clone()).await.unwrap();
        assert_eq!(stale.version(), None);
        let fresh = DeltaTable::try_from_url(url.clone()).await.unwrap();
        let (first, created) = create_or_reopen(fresh, &url, "a", &kernel).await.unwrap();
        assert!(created);
        assert_eq!(first.version(), Some(0));
        let (second, created) = create_or_reopen(stale, &url, "b", &kernel).await.unwrap();
        assert!(!created);
        assert_eq!(second.version(), Some(0));
    }

    #[test]
    fn dictionaries_only_for_repetitive_columns() {
        let n = 5_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("token", DataType::Utf8, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("mostly_null", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("venue_no", DataType::Int64, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("{i:064x}")),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| ["USD", "EUR", "GBP"][i % 3]),
            )),
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| (i % 1000 == 0).then(|| i.to_string())),
            )),
            Arc::new(arrow::array::TimestampMicrosecondArray::from_iter_values(
                (0..n as i64).map(|i| 1_700_000_000_000_000 + i * 1_003),
            )),
            Arc::new(arrow::array::Int64Array::from_iter_values(
                (0..n as i64).map(|i| i % 12),
            )),
        ];
        let b = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        write_parquet_atomically(&path, &schema, std::slice::from_ref(&b), Codec::default())
            .unwrap();
        let r = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let rg = r.metadata().row_group(0);
        let dict = |c: usize| rg.column(c).dictionary_page_offset().is_some();
        assert!(!dict(0), "a column of distinct tokens gets no dictionary");
        assert!(dict(1), "a column of three currencies keeps its dictionary");
        // Too few values to judge (5 non-null): the writer's default (dictionary) stays.
        assert!(dict(2));
        assert!(!dict(3), "distinct timestamps get no dictionary");
        assert!(
            dict(4),
            "a numeric column of twelve values keeps its dictionary"
        );
        assert_eq!(read_parquet(&path).unwrap()[0], b);
    }

    /// Every single-byte change of a file's footer (a few values per byte) reads as rows or as
    /// an error, never as a panic: the parquet crate asserts on some damaged footers, found by
    /// the fuzz target `parquet_files` (negative column chunk offsets).
    #[test]
    fn a_damaged_footer_is_an_error_never_a_panic() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter(
                    (0..40).map(|i| (i % 7 != 0).then(|| format!("value {i}"))),
                )) as ArrayRef,
                Arc::new(arrow::array::Int64Array::from_iter_values(0..40)),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        write_parquet_atomically(&path, &schema, std::slice::from_ref(&b), Codec::default())
            .unwrap();
        let valid = std::fs::read(&path).unwrap();
        let footer_len = u32::from_le_bytes(valid[valid.len() - 8..][..4].try_into().unwrap());
        let footer = valid.len() - 8 - footer_len as usize..valid.len() - 8;
        let damaged = dir.path().join("d.parquet");
        let (mut errors, mut panics) = (0, 0);
        for at in footer {
            for x in [0x01, 0x3f, 0x80, 0xff] {
                let mut f = valid.clone();
                f[at] ^= x;
                std::fs::write(&damaged, &f).unwrap();
                for r in [
                    std::panic::catch_unwind(|| read_parquet(&damaged).map(drop)),
                    std::panic::catch_unwind(|| read_parquet_row(&damaged, 39).map(drop)),
                ] {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => errors += 1,
                        Err(_) => panics += 1,
                    }
                }
            }
        }
        assert_eq!(panics, 0);
        assert!(errors > 0, "no damage was noticed at all");
    }

    /// A text value's length prefix damaged in a plain-encoded page: skipping to a row jumps
    /// past the page's end, and the parquet crate (59.3) then computes the bytes left as
    /// `len - offset`. Unchecked, that wraps to an allocation of petabytes, which aborts the
    /// process (an allocation failure is not a panic the guard could catch); found by the fuzz
    /// target `parquet_files`. The workspace builds `parquet` with overflow checks in every
    /// profile (root `Cargo.toml`), so it is a panic there, and an error here.
    #[test]
    fn a_damaged_value_length_before_the_row_read_is_an_error() {
        let n = 40;
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("value-{i:04}")),
            )) as ArrayRef],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .build();
        let mut valid = Vec::new();
        let mut w = ArrowWriter::try_new(&mut valid, schema, Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        // The plain encoding: a 4-byte little-endian length before each value. Damage the
        // length of the last value skipped on the way to row 20.
        let at = valid
            .windows(14)
            .position(|x| x == b"\x0a\0\0\0value-0019")
            .expect("the twentieth value, plain-encoded");
        let mut f = valid.clone();
        f[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let (good, damaged) = (dir.path().join("g.parquet"), dir.path().join("d.parquet"));
        std::fs::write(&good, &valid).unwrap();
        std::fs::write(&damaged, &f).unwrap();
        let row = |p: &Path, r: usize| {
            read_parquet_row(p, r).map(|b| {
                b.map(|b| {
                    arrow::array::AsArray::as_string::<i32>(b.column(0))
                        .value(0)
                        .to_string()
                })
            })
        };
        assert_eq!(row(&good, 20).unwrap().as_deref(), Some("value-0020"));
        let e = row(&damaged, 20).expect_err("a length past the page's end");
        assert!(e.to_string().contains("damaged"), "{e}");
        assert!(read_parquet(&damaged).is_err());
    }

    #[test]
    fn reads_one_row_across_pages() {
        // 200,000 distinct 64-byte values span several 1 MiB data pages.
        let n = 200_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("token", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("{i:064x}")),
            )),
            Arc::new(arrow::array::Int64Array::from_iter(
                (0..n as i64).map(|i| (i % 7 != 0).then_some(i)),
            )),
        ];
        let b = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        write_parquet_atomically(&path, &schema, std::slice::from_ref(&b), Codec::default())
            .unwrap();
        for row in [0, 1, 77_777, 150_001, n - 1] {
            let got = read_parquet_row(&path, row).unwrap().unwrap();
            assert_eq!(got, b.slice(row, 1), "row {row}");
        }
        assert!(read_parquet_row(&path, n).unwrap().is_none());
    }

    /// What differs between a table's columns and the pipeline's is named, kind by kind.
    #[test]
    fn column_differences_name_what_was_added_removed_retyped_or_moved() {
        let cols = |c: &[(&str, &str)]| -> Vec<(String, String)> {
            c.iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect()
        };
        let have = cols(&[("id", "Int64"), ("a", "Utf8"), ("b", "Utf8")]);
        assert_eq!(column_differences(&have, &have), "");
        assert_eq!(
            column_differences(
                &have,
                &cols(&[("id", "Utf8"), ("b", "Utf8"), ("c", "Int64")])
            ),
            "added: `c`; removed: `a`; of another type: `id` (Int64, now Utf8)"
        );
        assert_eq!(
            column_differences(
                &have,
                &cols(&[("a", "Utf8"), ("id", "Int64"), ("b", "Utf8")])
            ),
            "in another order"
        );
    }
}
