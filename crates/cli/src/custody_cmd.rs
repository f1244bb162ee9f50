//! `sealtrail prove`, `verify-proof` and `audit`: the chain of custody of delivered rows.

use crate::StateArgs;
use crate::ledger_cmd::load_verifier;
use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use sealtrail_connectors::pg::PgTable;
use sealtrail_connectors::s3::TableCopy;
use sealtrail_engine::custody::{self, CustodyView, GROUP, RowFormat, RowHasher, RowIds, SinkView};
use sealtrail_engine::state::{CustodyRef, StateStore};
use sealtrail_ledger::custody::{
    BUNDLE_FORMAT, BUNDLE_FORMAT_V1, Bundle, ChunkedTree, Contributor, EntryProof, GROUP_ID_PREFIX,
    ID_COLUMN, Inclusion, RowProof, RowsState, commitment, inclusions,
};
use sealtrail_ledger::entry::{Entry, Event, Hash};
use sealtrail_ledger::merkle;
use sealtrail_ledger::tiles::{self, TileReader};
use sealtrail_spec::{Pipeline, Sink, Target};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Exit code when a proof or an audit finds a difference.
const TAMPERED: i32 = 4;

/// The signed ledger as `audit`, `prove` and `keys reencrypt` read it: entries under its
/// checkpoint.
pub(crate) struct Signed<'a> {
    dir: &'a Path,
    size: u64,
    root: Hash,
    /// Caches the tiles inclusion proofs read.
    reader: TileReader,
}

/// What the signed ledger says a batch's rows in one sink are now.
#[derive(Debug, Clone)]
pub(crate) struct SinkState {
    pub rows: u64,
    /// The root in force: the batch entry's, or its last revision's.
    pub root: Hash,
    /// The `outputs_revised` entries it went through, oldest first.
    pub revisions: Vec<u64>,
}

impl<'a> Signed<'a> {
    /// The ledger in `dir` under the checkpoint `cp` (already verified).
    pub fn new(dir: &'a Path, cp: &sealtrail_ledger::note::Checkpoint) -> Self {
        Self {
            dir,
            size: cp.size,
            root: cp.root,
            reader: TileReader::new(dir, cp.size),
        }
    }

    /// Entry `seq`, checked to be in the signed tree.
    pub fn entry(&self, seq: u64) -> Option<Entry> {
        let bytes = tiles::read_entry(self.dir, self.size, seq).ok()?;
        let path = merkle::inclusion_proof(&self.reader, seq, self.size).ok()?;
        merkle::verify_inclusion(
            seq,
            self.size,
            &merkle::leaf_hash(&bytes),
            &path,
            &self.root,
        )
        .ok()?;
        Entry::decode(&bytes).ok()
    }

    /// The state of batch `r`'s rows in `sink`: its `batch_committed` entry's, then through
    /// each of the batch's `outputs_revised` entries of the sink that `revisions` (the state
    /// store's, [`StateStore::revisions`]) names, each of which must be the batch's and follow
    /// the root before it. `None` when an entry does not check out (the state store does not
    /// match the ledger); `Some(None)` when the batch delivered nothing to `sink`.
    pub fn sink_state(
        &self,
        r: &CustodyRef,
        revisions: &[(String, u64)],
        sink: &str,
    ) -> Option<Option<SinkState>> {
        let Event::BatchCommitted {
            run_id,
            source,
            batch,
            outputs,
            ..
        } = self.entry(r.ledger_seq?)?.event
        else {
            return None;
        };
        if (run_id.as_str(), source.as_str(), batch)
            != (r.run_id.as_str(), r.source.as_str(), r.batch)
        {
            return None;
        }
        let Some(o) = outputs.into_iter().find(|o| o.sink == sink) else {
            return Some(None);
        };
        let mut now = RowsState {
            rows: o.rows,
            root: o.root,
            after: r.ledger_seq?,
        };
        let mut seqs = Vec::new();
        for (_, seq) in revisions.iter().filter(|(s, _)| s == sink) {
            let e = self.entry(*seq)?;
            now = now
                .revised(&e, (&r.run_id, &r.source, r.batch, sink))
                .ok()?;
            seqs.push(*seq);
        }
        Some(Some(SinkState {
            rows: now.rows,
            root: now.root,
            revisions: seqs,
        }))
    }

    /// The hand-overs of the signing key within the signed tree, oldest first, as a bundle
    /// carries them (from the hand-over checkpoints kept in `rotations/`).
    pub fn handovers(&self) -> Result<Vec<sealtrail_ledger::custody::Handover>> {
        let d = self.dir.join(sealtrail_ledger::log::ROTATIONS);
        let mut sizes: Vec<u64> = sealtrail_ledger::log::list_rotations(self.dir)
            .with_context(|| format!("reading {}", d.display()))?
            .into_iter()
            .filter_map(|(_, t)| t.filter(|t| (1..=self.size).contains(t)))
            .collect();
        sizes.sort_unstable();
        sizes
            .into_iter()
            .map(|t| {
                let consistency = merkle::consistency_proof(&self.reader, t, self.size)?;
                Ok(sealtrail_ledger::custody::Handover {
                    entry: self.entry_proof(t - 1)?,
                    checkpoint: std::fs::read_to_string(d.join(t.to_string()))?,
                    consistency: consistency.iter().map(hex::encode).collect(),
                })
            })
            .collect()
    }

    /// The inclusion proof of entry `seq`, as a bundle carries it.
    pub fn entry_proof(&self, seq: u64) -> Result<EntryProof> {
        use base64::Engine;
        let entry = tiles::read_entry(self.dir, self.size, seq)?;
        let path = merkle::inclusion_proof(&self.reader, seq, self.size)?;
        Ok(EntryProof {
            index: seq,
            bytes: base64::engine::general_purpose::STANDARD.encode(&entry),
            path: path.iter().map(hex::encode).collect(),
        })
    }
}

/// Which row to prove.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RowSelector {
    /// The row's lineage id (its `_sealtrail_id`; for a row of an aggregation, the `agg:` id
    /// that `audit` and `prove` print).
    #[arg(long)]
    pub id: Option<String>,
    /// A column value that identifies the row, as `COLUMN=VALUE` (for example
    /// `trade_id=TRD-000000100000`); it must match exactly one row.
    #[arg(long = "where", value_name = "COLUMN=VALUE")]
    pub where_: Option<String>,
}

/// `sk` as `prove` and `audit` read it: a Delta table on `s3://` is first copied to a local
/// temporary folder, whole, or with `log_only` its log alone (the data files a proof needs
/// are fetched with [`TableCopy::fetch`]). The copy lives as long as the returned guard.
async fn readable_sink(sk: &Sink, log_only: bool) -> Result<(Sink, Option<TableCopy>)> {
    match &sk.target {
        Target::Delta { uri, .. } if sealtrail_connectors::s3::is_s3(uri) => {
            let (copy, n) = TableCopy::new(uri, !log_only)
                .await
                .map_err(|e| anyhow!("sink `{}`: {e}", sk.name))?;
            tracing::info!(sink = %sk.name, objects = n, log_only, "copied the S3 table to a local folder to read it");
            let mut local = sk.clone();
            local.target = Target::delta_at(copy.dir().display().to_string());
            Ok((local, Some(copy)))
        }
        _ => Ok((sk.clone(), None)),
    }
}

pub(crate) fn find_sink<'a>(p: &'a Pipeline, name: &str) -> Result<&'a Sink> {
    p.sinks.iter().find(|s| s.name == name).ok_or_else(|| {
        anyhow!(
            "pipeline `{}` has no sink `{name}`; its sinks: {}",
            p.name,
            p.sinks
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Text of a column value for `--where` matching (`None` for null).
fn cell_text(b: &RecordBatch, col: usize, row: usize) -> Option<String> {
    let c = b.column(col);
    if c.is_null(row) {
        return None;
    }
    let s = arrow::compute::cast(&c.slice(row, 1), &arrow::datatypes::DataType::Utf8).ok()?;
    Some(s.as_string::<i32>().value(0).to_string())
}

/// A delivered row: its lineage id and values.
struct FoundRow {
    /// The row's lineage id (an `agg:` group id for a row of an aggregation).
    id: String,
    /// The ids of the records it came from (one, or every contributor of an aggregation).
    members: Vec<String>,
    /// The row as it sits in the table (a batch of one row).
    row: RecordBatch,
}

impl FoundRow {
    /// The bytes its commitment is over, in `format`.
    fn bytes(&self, format: RowFormat) -> Result<Vec<u8>> {
        custody::encoded_row(format, &self.row, 0).map_err(|e| anyhow!(e))
    }
}

/// Whether a row's ids are lineage id `want`.
fn is_id(ids: Option<RowIds<'_>>, want: &str) -> bool {
    match ids {
        Some(RowIds::One(id)) => id == want,
        Some(many) => many.lineage_id() == want,
        None => false,
    }
}

/// The row at `row` of `file`, when it is lineage id `id`: the row a batch's custody record
/// places there. `None` when the file holds something else at that place (rows added,
/// deleted or reordered since); the caller then searches.
fn row_at(file: &Path, row: usize, id: &str) -> Result<Option<FoundRow>> {
    let Some(b) = sealtrail_connectors::sink::read_parquet_row(file, row)
        .with_context(|| format!("reading {}", file.display()))?
    else {
        return Ok(None);
    };
    let ids = custody::id_column(&b).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    if !matches!(ids(0), Some(RowIds::One(got)) if got == id) {
        return Ok(None);
    }
    drop(ids);
    Ok(Some(FoundRow {
        id: id.to_string(),
        members: vec![id.to_string()],
        row: b,
    }))
}

/// `COLUMN=VALUE` of `--where`, split.
fn parse_where(w: &str) -> Result<(String, String)> {
    let (c, v) = w
        .split_once('=')
        .ok_or_else(|| anyhow!("--where takes COLUMN=VALUE, got `{w}`"))?;
    Ok((c.trim().to_string(), v.to_string()))
}

/// The rows of `b` that `hit` selects, with their lineage ids.
fn found_rows(
    b: &RecordBatch,
    what: &str,
    mut hit: impl FnMut(Option<RowIds<'_>>, usize) -> bool,
    out: &mut Vec<FoundRow>,
) -> Result<()> {
    let ids = custody::id_column(b).map_err(|e| anyhow!("{what}: {e}"))?;
    for r in 0..b.num_rows() {
        if hit(ids(r), r) {
            let row_ids = ids(r);
            out.push(FoundRow {
                id: row_ids.as_ref().map(RowIds::lineage_id).unwrap_or_default(),
                members: row_ids
                    .map(|m| m.members().into_iter().map(str::to_owned).collect())
                    .unwrap_or_default(),
                row: b.slice(r, 1),
            });
        }
    }
    Ok(())
}

/// `--where` names a column the sink does not have: say which it has, and that a row
/// without an identifying column is named by its lineage id.
fn no_such_column(col: &str, schema: &arrow::datatypes::Schema) -> anyhow::Error {
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name())
        .filter(|n| *n != ID_COLUMN)
        .map(|n| format!("`{n}`"))
        .collect();
    anyhow!(
        "the sink has no column `{col}`; its columns are {}. Pick one for --where, or name the row by its lineage id with --id (its `{ID_COLUMN}`, which `lineage --id` and the source's other sinks show)",
        names.join(", ")
    )
}

/// Reads the table `files` make up and returns the rows `want` selects.
fn find_rows(files: &[PathBuf], sel: &RowSelector) -> Result<Vec<FoundRow>> {
    let cond = sel.where_.as_deref().map(parse_where).transpose()?;
    let mut out = Vec::new();
    for f in files {
        for b in sealtrail_connectors::sink::read_parquet(f)
            .with_context(|| format!("reading {}", f.display()))?
        {
            let col = match &cond {
                Some((c, _)) => Some(
                    b.schema()
                        .index_of(c)
                        .map_err(|_| no_such_column(c, &b.schema()))?,
                ),
                None => None,
            };
            let what = f.display().to_string();
            found_rows(
                &b,
                &what,
                |ids, r| match (&sel.id, &cond, col) {
                    (Some(id), _, _) => is_id(ids, id),
                    (_, Some((_, v)), Some(c)) => cell_text(&b, c, r).as_deref() == Some(v),
                    _ => false,
                },
                &mut out,
            )?;
        }
    }
    Ok(out)
}

/// The rows of a PostgreSQL sink's table that `sel` selects: by `_sealtrail_id`, or by a
/// column whose PostgreSQL text form is the `--where` value.
async fn find_pg_rows(t: &mut PgTable, sel: &RowSelector) -> Result<Vec<FoundRow>> {
    let (col, value) = match (&sel.id, &sel.where_) {
        (Some(id), _) => (ID_COLUMN.to_string(), id.clone()),
        (None, Some(w)) => parse_where(w)?,
        (None, None) => bail!("name the row with --id or --where"),
    };
    if t.schema().index_of(&col).is_err() {
        return Err(no_such_column(&col, &t.schema()));
    }
    let b = t.rows_where(&col, &value).await?;
    let mut out = Vec::new();
    found_rows(&b, &t.location(), |ids, _| ids.is_some(), &mut out)?;
    Ok(out)
}

/// Where a sink's delivered rows are read back from.
pub(crate) enum SinkTable {
    /// Parquet files: a Parquet sink's folder, or the files of a Delta table's snapshot.
    Files(Vec<PathBuf>),
    /// A PostgreSQL sink's table, read with SQL.
    Pg(Box<PgTable>),
}

impl SinkTable {
    /// The table of the sink (or quarantine) `name` at `target` (a local one: see
    /// [`readable_sink`]), or None when it has no table or folder: never created (the batches
    /// that reached it brought it no rows and the run did not end well), or removed.
    pub(crate) async fn open_existing(name: &str, target: &Target) -> Result<Option<Self>> {
        Ok(match target {
            Target::Postgres { url, table, .. } => PgTable::open_existing(name, url, table)
                .await?
                .map(|t| Self::Pg(Box::new(t))),
            Target::Parquet { dir, .. } if !dir.exists() => None,
            Target::Delta { uri, .. }
                if !uri.contains("://") && !Path::new(uri).join("_delta_log").is_dir() =>
            {
                None
            }
            t => Some(Self::Files(
                sealtrail_connectors::sink::sink_files(name, t).await?,
            )),
        })
    }

    /// The rows `sel` selects.
    async fn find(&mut self, sel: &RowSelector) -> Result<Vec<FoundRow>> {
        match self {
            Self::Files(files) => find_rows(files, sel),
            Self::Pg(t) => find_pg_rows(t, sel).await,
        }
    }
}

/// Where a delivered row sits in the stored custody records.
struct Located {
    at: CustodyRef,
    /// The batch's stored custody record (read in place with [`CustodyView`]).
    record: Vec<u8>,
    sink_index: usize,
    row_index: usize,
}

impl Located {
    fn view(&self) -> Result<CustodyView<'_>> {
        CustodyView::parse(&self.record).ok_or_else(|| damaged(&self.at))
    }
}

fn damaged(r: &CustodyRef) -> anyhow::Error {
    anyhow!(
        "the custody record of run {} batch {} is damaged",
        r.run_id,
        r.batch
    )
}

/// The committed batches that read record `id`, newest first; only those of `run` when given.
async fn batches_reading(
    st: &StateStore,
    p: &Pipeline,
    id: &str,
    run: Option<&str>,
) -> Result<Vec<CustodyRef>> {
    let mut refs = st.custody_index(&p.name, Some(index_of(p, id)?)).await?;
    if let Some(run) = run {
        refs.retain(|r| r.run_id == run);
    }
    Ok(refs)
}

/// What narrows the search for record `id`'s batches: its source, its input, and its
/// position when it is one (a line or row number, which each batch's custody index spans). The
/// last part of a PostgreSQL record's id is its key, which says nothing of its batch (an id
/// `:4` is the row keyed 4, wherever the read put it): no position then.
fn index_of<'a>(p: &Pipeline, id: &'a str) -> Result<(&'a str, &'a str, Option<u64>)> {
    let (source, key, pos) = custody::parse_id(id)
        .ok_or_else(|| anyhow!("`{id}` is not a lineage id (source:input:position)"))?;
    let keyed = p
        .sources
        .iter()
        .any(|s| s.name == source && s.keys_records());
    Ok((source, key, pos.parse().ok().filter(|_| !keyed)))
}

async fn locate(
    st: &StateStore,
    p: &Pipeline,
    sink: &str,
    id: &str,
    members: &[String],
    run: Option<&str>,
) -> Result<Located> {
    let first = members
        .first()
        .ok_or_else(|| anyhow!("the row has no `{}`", custody::ID_COLUMN))?;
    let grouped = id != first;
    let pipeline = p.name.as_str();
    let refs = batches_reading(st, p, first, run).await?;
    for r in refs {
        let record = st.custody(&r).await?;
        let c = CustodyView::parse(&record).ok_or_else(|| damaged(&r))?;
        let Some((s, o)) = c.sink(sink) else {
            continue;
        };
        let j = if grouped {
            (0..o.len()).find(|&j| {
                let k = o.row(j).0;
                k & GROUP != 0 && c.row_id(o, k) == *id
            })
        } else {
            let Some(k) = c.find_input(id) else {
                continue;
            };
            o.position(k as u32)
        };
        let Some(j) = j else {
            continue;
        };
        return Ok(Located {
            at: r,
            record,
            sink_index: s,
            row_index: j,
        });
    }
    match run {
        Some(run) => bail!(
            "no committed batch of run {run} delivered record {id} to sink `{sink}`; `sealtrail runs` lists the runs, and `sealtrail lineage --id` the runs that read the record"
        ),
        None => bail!(
            "no committed batch of pipeline `{pipeline}` delivered record {id} to sink `{sink}` (it may have been quarantined, or loaded under another state store)"
        ),
    }
}

/// A row's inclusions in its batch's trees.
struct Parts {
    delivered: Hash,
    /// The input record's inclusion (one record per row) ...
    input: Option<Inclusion>,
    /// ... or every contributor's (a row of an aggregation).
    inputs: Vec<Contributor>,
    output: Inclusion,
}

/// The row's proof parts from its batch's whole custody record.
fn full_parts(loc: &Located) -> Result<Parts> {
    let c = loc.view()?;
    let sc = &c.sinks()[loc.sink_index];
    let (row_key, delivered) = sc.row(loc.row_index);
    let members = sc.members(row_key);
    let wanted: Vec<(u64, Hash)> = members
        .iter()
        .map(|&k| (k as u64, c.input(k as usize).1))
        .collect();
    // Custody records keep the trees' chunk roots: a path then hashes one chunk's leaves.
    // Records written before they were kept rebuild the whole trees, side by side.
    let input_tree = ChunkedTree::new(c.inputs() as u64, c.input_chunks(), |i| {
        c.input_leaf(i as usize)
    });
    let output_tree = ChunkedTree::new(sc.len() as u64, sc.chunks(), |j| {
        c.output_leaf(sc, j as usize)
    });
    let (mut found, output) = match (input_tree, output_tree) {
        (Some(it), Some(ot)) => (
            wanted
                .iter()
                .map(|(k, h)| it.inclusion(*k, h))
                .collect::<Result<Vec<_>, _>>()?,
            ot.inclusion(loc.row_index as u64, &delivered)?,
        ),
        _ => {
            let (found, output) = std::thread::scope(|s| {
                let input = s.spawn(|| {
                    let leaves: Vec<Hash> = (0..c.inputs()).map(|i| c.input_leaf(i)).collect();
                    inclusions(leaves, &wanted)
                });
                let leaves: Vec<Hash> = (0..sc.len()).map(|j| c.output_leaf(sc, j)).collect();
                let output = inclusions(leaves, &[(loc.row_index as u64, delivered)]);
                (input.join(), output)
            });
            (
                found.map_err(|_| anyhow!("building the batch's input tree panicked"))??,
                output?.remove(0),
            )
        }
    };
    let (input, inputs) = if row_key & GROUP != 0 {
        let list = members
            .iter()
            .zip(found)
            .map(|(&k, inclusion)| Contributor {
                id: c.input(k as usize).0.to_string(),
                inclusion,
            })
            .collect();
        (None, list)
    } else {
        (Some(found.remove(0)), Vec::new())
    };

    Ok(Parts {
        delivered,
        input,
        inputs,
        output,
    })
}

/// Reads a stored custody record in ranges.
struct StoredRecord<'a> {
    st: &'a StateStore,
    at: &'a CustodyRef,
    /// Bytes read so far.
    read: usize,
}

impl custody::RangeRead for StoredRecord<'_> {
    type Error = anyhow::Error;
    async fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let got = self.st.custody_range(self.at, offset, len).await?;
        self.read += got.len();
        Ok(got)
    }
}

/// The proof parts of record `id`'s row of `sink` read from the first of `refs` (the newest
/// batch that read the record), in ranges; `None` when they do not answer (see
/// [`custody::partial_proof`]).
async fn fast_proof(
    st: &StateStore,
    sink: &str,
    id: &str,
    refs: &[CustodyRef],
) -> Result<Option<(CustodyRef, custody::PartialProof)>> {
    let Some((_, key, pos)) = custody::parse_id(id) else {
        return Ok(None);
    };
    if pos.parse::<u64>().is_err() {
        return Ok(None);
    }
    let Some(at) = refs.first().cloned() else {
        return Ok(None);
    };
    // Where the records of the id's input sit in the batch (a batch of small files reads
    // several inputs, whose positions each start again).
    let within = st.input_records_of(&at, key).await?;
    let mut rec = StoredRecord {
        st,
        at: &at,
        read: 0,
    };
    let got = custody::partial_proof(&mut rec, id, sink, within).await?;
    match &got {
        Some(_) => tracing::debug!(bytes = rec.read, "custody record read in parts"),
        None => tracing::debug!("custody record parts do not answer: reading it whole"),
    }
    Ok(got.map(|pp| (at, pp)))
}

/// `run`: the run whose delivery of the record to prove, when several delivered it (default:
/// the newest).
pub async fn prove(
    spec: &Path,
    sink: &str,
    sel: &RowSelector,
    run: Option<&str>,
    out: Option<&Path>,
    state: &StateArgs,
) -> Result<i32> {
    let p = sealtrail_spec::load(spec)?;
    let home = state.home(Some(spec));
    // With an id, only the file of the row's batch is read: an S3 table's other data files
    // are not copied.
    let (sk, copy) = readable_sink(find_sink(&p, sink)?, sel.id.is_some()).await?;
    let sk = &sk;
    let Some(mut table) = SinkTable::open_existing(&sk.name, &sk.target).await? else {
        bail!(
            "sink `{sink}` has no table or folder ({}): no run has delivered rows to it, so it holds no row to prove (a run that fails before its first rows reach a sink leaves none; `sealtrail runs` lists the runs)",
            find_sink(&p, sink)?.target.describe()
        );
    };
    let st = crate::open_state_to_read(&state.url(&home)).await?;
    // Given a record's lineage id, the custody records name the batch that delivered it, and
    // a Parquet sink's file names (a Delta table's log) name each file's batch: read that one
    // file, not the whole table. The batch's record is read in the parts a proof needs (a few
    // KB of megabytes) when it can be; otherwise whole.
    let mut fast = None;
    let early = match &sel.id {
        Some(id) if !id.starts_with(GROUP_ID_PREFIX) => {
            let refs = batches_reading(&st, &p, id, run).await?;
            let runs: BTreeSet<&str> = refs.iter().map(|r| r.run_id.as_str()).collect();
            if run.is_none() && runs.len() > 1 {
                eprintln!(
                    "note: {} runs read record {id}; this proves the newest delivery (pass --run RUN to prove another's: {})",
                    runs.len(),
                    runs.iter().copied().collect::<Vec<_>>().join(", ")
                );
            }
            fast = fast_proof(&st, sink, id, &refs).await?;
            if fast.is_some() {
                None
            } else {
                Some(locate(&st, &p, sink, id, std::slice::from_ref(id), run).await?)
            }
        }
        _ => None,
    };
    let place = match (&fast, &early) {
        (Some((at, pp)), _) => Some((at, pp.row_index)),
        (None, Some(loc)) => Some((&loc.at, loc.row_index)),
        _ => None,
    };
    let rows = match &mut table {
        SinkTable::Files(files) => {
            let files = match place {
                Some((at, _)) => batch_files(
                    files,
                    &sk.target,
                    (&at.pipeline, &at.run_id, &at.source, at.batch),
                )
                .unwrap_or_else(|| files.clone()),
                // Searched by value: not in the files of a folder or table other pipelines
                // also load (their rows are not this pipeline's to prove).
                None => {
                    let unpaired = vec![None; files.len()];
                    let other =
                        other_pipelines_files(&st, &p.name, &sk.target, files, &unpaired).await?;
                    files
                        .iter()
                        .zip(other)
                        .filter(|(_, o)| o.is_none())
                        .map(|(f, _)| f.clone())
                        .collect()
                }
            };
            if let Some(c) = &copy {
                let n = c.fetch(&files).await.map_err(|e| anyhow!("{e}"))?;
                tracing::info!(files = n, "fetched data files of the S3 table");
            }
            // The batch's file holds the sink's rows of the batch in custody order: try the
            // row's own place first (one page per column read), and search only if it is not
            // there.
            let direct = match (place, files.as_slice(), &sel.id) {
                (Some((_, row)), [file], Some(id)) => row_at(file, row, id)?,
                _ => None,
            };
            match direct {
                Some(row) => vec![row],
                None => find_rows(&files, sel)?,
            }
        }
        t => {
            let mut rows = t.find(sel).await?;
            // A table other pipelines also load: not the rows only they delivered.
            if sel.id.is_none() {
                let mut owners = InputOwners::new(&st, &p.name);
                let mut kept = Vec::with_capacity(rows.len());
                for r in rows {
                    // An aggregated row: by its first contributing record.
                    let id = r.members.first().unwrap_or(&r.id);
                    if owners.other(id).await?.is_none() {
                        kept.push(r);
                    }
                }
                rows = kept;
            }
            rows
        }
    };
    let row = match rows.as_slice() {
        [one] => one,
        [] => bail!("sink `{sink}` holds no such row"),
        many if many.iter().all(|r| r.id == many[0].id) => bail!(
            "{} rows of sink `{sink}` match, all deliveries of record {} by several runs; prove one with --id {} (the newest delivery) and --run RUN for another's",
            many.len(),
            many[0].id,
            many[0].id
        ),
        many => {
            let ids: BTreeSet<&str> = many.iter().map(|r| r.id.as_str()).collect();
            bail!(
                "{} rows of sink `{sink}` match; prove one of them with --id ({})",
                many.len(),
                ids.into_iter().take(5).collect::<Vec<_>>().join(", ")
            )
        }
    };
    let verifier = load_verifier(&home, None)?;
    let (dir, _guard) = state.ledger.readable(&home)?;
    let (cp, note) = sealtrail_ledger::log::read_checkpoint(&dir, &verifier)?
        .ok_or_else(|| anyhow!("the ledger has no checkpoint"))?;
    let signed = Signed::new(&dir, &cp);
    let handovers = signed.handovers()?;
    let make = |at: &CustodyRef,
                revisions: &[(String, u64)],
                parts: Parts,
                bytes: Vec<u8>,
                format: RowFormat|
     -> Result<Bundle> {
        let seq = at.ledger_seq.ok_or_else(|| {
            anyhow!(
                "batch {} of run {} has no ledger entry recorded (was it run with another audit sink?)",
                at.batch,
                at.run_id
            )
        })?;
        let (format, output) = row_proof(sink, row, bytes, format, parts.output)?;
        Ok(Bundle {
            format: format.into(),
            id: row.id.clone(),
            pipeline: at.pipeline.clone(),
            run_id: at.run_id.clone(),
            source: at.source.clone(),
            batch: at.batch,
            output,
            input: parts.input,
            inputs: parts.inputs,
            entry: signed.entry_proof(seq)?,
            revisions: revisions
                .iter()
                .filter(|(s, _)| s == sink)
                .map(|(_, seq)| signed.entry_proof(*seq))
                .collect::<Result<_>>()?,
            replay: None,
            handovers: handovers.clone(),
            checkpoint: note.clone(),
        })
    };
    // Parts read through a record's head must agree with the row and verify; otherwise the
    // whole record decides, so a damaged head can neither report a row as changed nor fail
    // a proof the record supports.
    let from_parts = match fast {
        Some((at, pp)) => {
            let bytes = row.bytes(pp.row_format)?;
            if merkle::ct_eq(&commitment(&bytes), &pp.delivered) {
                Some((at, pp, bytes))
            } else {
                None
            }
        }
        None => None,
    };
    let from_parts = match from_parts {
        Some((at, pp, bytes)) => {
            let parts = Parts {
                delivered: pp.delivered,
                input: Some(pp.input),
                inputs: Vec::new(),
                output: pp.output,
            };
            // A batch whose rows were rewritten in place: the bundle carries its revisions.
            let revised = st.revisions(&at).await?;
            let b = make(&at, &revised, parts, bytes, pp.row_format)?;
            if sealtrail_ledger::custody::verify(&b, &verifier).is_ok() {
                Some((at, b))
            } else {
                tracing::warn!(
                    run = %at.run_id,
                    batch = at.batch,
                    "the head of this batch's custody record does not match its body; reading the record whole"
                );
                None
            }
        }
        None => None,
    };
    let (at, bundle) = match from_parts {
        Some(found) => found,
        None => {
            let loc = match early {
                Some(loc) => loc,
                None => locate(&st, &p, sink, &row.id, &row.members, run).await?,
            };
            let revised = st.revisions(&loc.at).await?;
            let parts = full_parts(&loc)?;
            let format = loc.view()?.row_format();
            let bytes = row.bytes(format)?;
            if !merkle::ct_eq(&commitment(&bytes), &parts.delivered) {
                eprintln!(
                    "row {} of sink `{sink}` is not the row that was delivered: its commitment differs (it was changed after loading); `sealtrail audit` lists every such row",
                    row.id
                );
                return Ok(TAMPERED);
            }
            let b = make(&loc.at, &revised, parts, bytes, format)?;
            (loc.at, b)
        }
    };
    // A bundle that does not verify here is a bug or a damaged store: never hand it out.
    let verified = |bundle: &Bundle| {
        sealtrail_ledger::custody::verify(bundle, &verifier).map_err(|e| {
            anyhow!(
                "the proof does not verify: {e}; run `sealtrail ledger verify` and `sealtrail audit`"
            )
        })
    };
    let ok = verified(&bundle)?;
    // A replayed row's bundle carries the entry that ties its spec version to the spec's.
    let mut bundle = bundle;
    if at.pipeline != p.name
        && let Some(seq) = st.replay_declaration(&hex::encode(ok.spec_sha256)).await?
    {
        bundle.replay = Some(signed.entry_proof(seq)?);
        verified(&bundle)?;
    }
    let seq = bundle.entry.index;
    let text = serde_json::to_string_pretty(&bundle)?;
    match out {
        Some(path) => {
            std::fs::write(path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            outln!(
                "wrote the proof of row {} of sink `{sink}` to {} (batch {} of run {}, ledger entry {seq} under the checkpoint of size {})",
                row.id,
                path.display(),
                at.batch,
                at.run_id,
                cp.size
            );
        }
        None => outln!("{text}"),
    }
    Ok(0)
}

/// The bundle format and output part of `row` of `sink`, whose commitment is over `bytes` in
/// `format`.
fn row_proof(
    sink: &str,
    row: &FoundRow,
    bytes: Vec<u8>,
    format: RowFormat,
    inclusion: Inclusion,
) -> Result<(&'static str, RowProof)> {
    use base64::Engine;
    let mut out = RowProof {
        sink: sink.to_string(),
        canonical: String::new(),
        row: String::new(),
        columns: Vec::new(),
        inclusion,
    };
    Ok(match format {
        RowFormat::Json => {
            out.canonical =
                String::from_utf8(bytes).map_err(|_| anyhow!("a JSON row that is not UTF-8"))?;
            (BUNDLE_FORMAT_V1, out)
        }
        RowFormat::Binary => {
            out.row = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let enc = custody::BinEncoder::new(&row.row).map_err(|e| anyhow!(e))?;
            out.columns = enc.columns().to_vec();
            (BUNDLE_FORMAT, out)
        }
    })
}

/// The files of the table at `path`: a Delta table (has `_delta_log/`) or a Parquet folder,
/// or an `s3://` Delta table, copied first to a temporary folder that lives as long as the
/// returned guard.
async fn table_files(path: &Path) -> Result<(Vec<PathBuf>, Target, Option<TableCopy>)> {
    let text = path.to_string_lossy();
    if sealtrail_connectors::s3::is_s3(&text) {
        let (copy, _) = TableCopy::new(&text, true)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let target = sealtrail_spec::Target::delta_at(copy.dir().display().to_string());
        let files = sealtrail_connectors::sink::sink_files("table", &target).await?;
        return Ok((files, target, Some(copy)));
    }
    let target = if path.join("_delta_log").is_dir() {
        sealtrail_spec::Target::delta_at(path.display().to_string())
    } else if path.is_dir() {
        sealtrail_spec::Target::parquet_at(path.to_path_buf())
    } else {
        bail!(
            "{} is not a Delta table or a folder of Parquet files",
            path.display()
        )
    };
    Ok((
        sealtrail_connectors::sink::sink_files("table", &target).await?,
        target,
        None,
    ))
}

/// The files among `files` written by one batch (run, source, batch), if they can be told (a
/// Parquet sink's file names, a Delta table's log). A record loaded again (the same file read
/// by a later run) keeps its lineage id, so only its batch's own file says which row is meant.
pub(crate) fn batch_files(
    files: &[PathBuf],
    target: &Target,
    (pipeline, run_id, source, batch): (&str, &str, &str, u64),
) -> Option<Vec<PathBuf>> {
    let paired = file_batches(
        files,
        target,
        std::iter::once((pipeline, run_id, source, batch)),
    );
    let hit: Vec<PathBuf> = files
        .iter()
        .zip(paired)
        .filter(|(_, p)| p.is_some())
        .map(|(f, _)| f.clone())
        .collect();
    (!hit.is_empty()).then_some(hit)
}

/// Names of the columns whose values differ between the proven row and the row in the table
/// (never the values): by name, so added, dropped and retyped columns are named too.
fn changed_columns(proven: &RowProof, now: &FoundRow) -> Vec<String> {
    let whole = || vec!["(the whole row)".to_string()];
    if proven.row.is_empty() {
        // Row format 1: two JSON objects.
        let Ok(Ok(now)) = now
            .bytes(RowFormat::Json)
            .map(|b| serde_json::from_slice(&b))
        else {
            return whole();
        };
        let (Ok(serde_json::Value::Object(x)), serde_json::Value::Object(y)) =
            (serde_json::from_str(&proven.canonical), now)
        else {
            return whole();
        };
        let mut out: Vec<String> = x
            .iter()
            .filter(|(k, v)| y.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        out.extend(y.keys().filter(|k| !x.contains_key(*k)).cloned());
        return out;
    }
    let Ok(enc) = custody::BinEncoder::new(&now.row) else {
        return whole();
    };
    let (Some(a), Ok(b)) = (proven.bytes(), now.bytes(RowFormat::Binary)) else {
        return whole();
    };
    let (Ok(x), Ok(y)) = (
        sealtrail_ledger::row::parse(&a, &proven.columns),
        sealtrail_ledger::row::parse(&b, enc.columns()),
    ) else {
        return whole();
    };
    let typed =
        |cols: &[(String, String)], vals: Vec<&[u8]>| -> HashMap<String, (String, Vec<u8>)> {
            cols.iter()
                .zip(vals)
                .map(|((n, t), v)| (n.clone(), (t.clone(), v.to_vec())))
                .collect()
        };
    let (x, y) = (typed(&proven.columns, x), typed(enc.columns(), y));
    let mut out: Vec<String> = proven
        .columns
        .iter()
        .filter(|(n, _)| x.get(n) != y.get(n))
        .map(|(n, _)| n.clone())
        .collect();
    out.extend(
        enc.columns()
            .iter()
            .filter(|(n, _)| !x.contains_key(n))
            .map(|(n, _)| n.clone()),
    );
    out
}

/// Whether the spec file given to `verify-proof --spec` is the version the proven batch ran
/// under (for a replayed row, the version its `replay_declared` entry names). Information, not
/// a verdict: a spec is edited between runs, and the row is found by the spec as it is now.
/// `now` is the loaded spec's version (`Pipeline::spec_sha256`, the SHA-256 of its file).
fn spec_in_force(
    spec: &Path,
    now: &str,
    replayed: bool,
    ok: &sealtrail_ledger::custody::Verified,
) -> String {
    let (then, what) = match (&ok.replay, replayed) {
        (Some(r), _) => (hex::encode(r.spec_sha256), "the replay was declared under"),
        (None, false) => (hex::encode(ok.spec_sha256), "the batch ran under"),
        (None, true) => {
            return format!(
                "{} is version {now}; the row was replayed before replays were declared in the ledger, so the spec version its replay ran under is not known",
                spec.display()
            );
        }
    };
    if now == then {
        format!("{} is the spec version {what} ({now})", spec.display())
    } else {
        format!(
            "{} has changed since: it is version {now}, {what} {then}; the row is looked up where the spec names its sink now",
            spec.display()
        )
    }
}

/// Whether the row in the table is byte for byte the proven row (in the bundle's format).
fn proven_bytes(proven: &RowProof, now: &FoundRow) -> bool {
    let format = if proven.row.is_empty() {
        RowFormat::Json
    } else {
        RowFormat::Binary
    };
    proven
        .bytes()
        .is_some_and(|b| now.bytes(format).is_ok_and(|n| n == b))
}

pub async fn verify_proof(
    bundle: &Path,
    key: Option<&str>,
    home: &Path,
    table: Option<&Path>,
    spec: Option<&Path>,
) -> Result<i32> {
    let text =
        std::fs::read_to_string(bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let b: Bundle = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{} is not a proof bundle ({e}); `sealtrail prove` writes them",
            bundle.display()
        )
    })?;
    let v = load_verifier(home, key)?;
    let ok = match sealtrail_ledger::custody::verify(&b, &v) {
        Ok(ok) => ok,
        Err(e) => {
            outln!("NOT VERIFIED: {e}");
            if matches!(e, sealtrail_ledger::custody::BundleError::Signature(_)) {
                outln!(
                    "  (if the ledger's signing key was rotated after this bundle was made, verify it with the key in charge then: `sealtrail ledger show --type signer_rotated` names every key)"
                );
            }
            return Ok(TAMPERED);
        }
    };
    outln!(
        "verified: row {} of sink `{}` (pipeline `{}`, run {}, source `{}` batch {})",
        b.id,
        b.output.sink,
        b.pipeline,
        b.run_id,
        b.source,
        b.batch
    );
    if !b.handovers.is_empty() {
        outln!(
            "  the ledger's signing key was handed over {} time(s) up to the checkpoint (entries {}); each hand-over is signed by both keys",
            b.handovers.len(),
            b.handovers
                .iter()
                .map(|h| h.entry.index.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(input) = &b.input {
        outln!(
            "  input record commitment {} is leaf {} of {} under the batch's input root",
            input.commitment,
            input.index,
            input.size
        );
    }
    for c in &b.inputs {
        outln!(
            "  contributing record {} (commitment {}) is leaf {} of {} under the batch's input root",
            c.id,
            c.inclusion.commitment,
            c.inclusion.index,
            c.inclusion.size
        );
    }
    outln!(
        "  output row commitment {} is leaf {} of {} under the sink's root",
        b.output.inclusion.commitment,
        b.output.inclusion.index,
        b.output.inclusion.size
    );
    outln!(
        "  batch entry {} is in the ledger tree of {} entries, checkpoint signed by {}{}",
        ok.entry_index,
        ok.tree_size,
        ok.signer,
        ok.checkpoint_time
            .as_ref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default()
    );
    if !ok.revisions.is_empty() {
        outln!(
            "  the batch's rows in the sink were rewritten in place since delivery (`keys reencrypt`): `outputs_revised` entries {}, in the same tree, carry the root the row is proven under",
            ok.revisions
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(r) = &ok.replay {
        outln!(
            "  a replay of repaired records {} under spec {}: `replay_declared` entry {}, in the same tree, declares the batch's spec version",
            hex::encode(r.records_sha256),
            hex::encode(r.spec_sha256),
            r.entry_index
        );
    }
    outln!(
        "  versions in force: spec {}, transforms {}, policy {}",
        hex::encode(ok.spec_sha256),
        hex::encode(ok.transforms_sha256),
        hex::encode(ok.policy_sha256)
    );
    let sel = RowSelector {
        id: Some(b.id.clone()),
        where_: None,
    };
    // Whether the rows searched are the bundle's batch's alone (else several rows may carry
    // the id: deliveries of the same record by several runs).
    let mut in_batch = false;
    let (table, found) = match (table, spec) {
        (Some(table), _) => {
            let (mut files, target, _copy) = table_files(table).await?;
            in_batch = to_bundle_batch(&mut files, &target, &b);
            (table.display().to_string(), find_rows(&files, &sel)?)
        }
        (None, Some(spec)) => {
            let p = sealtrail_spec::load(spec)?;
            // A replayed row's bundle names the replay pipeline, whose sinks are the spec's.
            if p.name != b.pipeline && sealtrail_spec::replay_name(&p.name) != b.pipeline {
                bail!(
                    "the bundle proves a row of pipeline `{}`, but {} is pipeline `{}`",
                    b.pipeline,
                    spec.display(),
                    p.name
                );
            }
            outln!(
                "  {}",
                spec_in_force(spec, &p.spec_sha256, p.name != b.pipeline, &ok)
            );
            let (sk, _copy) = readable_sink(find_sink(&p, &b.output.sink)?, false).await?;
            match SinkTable::open_existing(&sk.name, &sk.target).await? {
                // No table or folder (removed whole): it holds no row at all.
                None => (
                    format!("sink `{}` (it has no table or folder)", sk.name),
                    Vec::new(),
                ),
                Some(mut t) => {
                    let label = match &mut t {
                        SinkTable::Pg(pg) => pg.location(),
                        SinkTable::Files(files) => {
                            in_batch = to_bundle_batch(files, &sk.target, &b);
                            format!("sink `{}`", sk.name)
                        }
                    };
                    (label, t.find(&sel).await?)
                }
            }
        }
        (None, None) => return Ok(0),
    };
    match found.as_slice() {
        [] => {
            outln!("CHANGED: {table} no longer holds row {} (deleted)", b.id);
            Ok(TAMPERED)
        }
        [one] if proven_bytes(&b.output, one) => {
            outln!("the row in {table} is the proven row, unchanged");
            Ok(0)
        }
        [one] => {
            outln!(
                "CHANGED: row {} in {table} differs from the proven row in column(s): {}",
                b.id,
                changed_columns(&b.output, one).join(", ")
            );
            Ok(TAMPERED)
        }
        many if !in_batch && many.iter().any(|r| proven_bytes(&b.output, r)) => {
            outln!(
                "the row in {table} is the proven row, unchanged ({} rows carry id {}: the record was delivered more than once; `sealtrail audit` checks every delivery)",
                many.len(),
                b.id
            );
            Ok(0)
        }
        many => {
            outln!(
                "CHANGED: {table} holds {} rows with id {}{}",
                many.len(),
                b.id,
                if in_batch {
                    " in the proven batch's file (duplicated)"
                } else {
                    ", none of them the proven row"
                }
            );
            Ok(TAMPERED)
        }
    }
}

/// Narrows `files` to those of the bundle's batch when they can be told; whether it did.
fn to_bundle_batch(files: &mut Vec<PathBuf>, target: &Target, b: &Bundle) -> bool {
    let key = (
        b.pipeline.as_str(),
        b.run_id.as_str(),
        b.source.as_str(),
        b.batch,
    );
    match batch_files(files, target, key) {
        Some(hit) => {
            *files = hit;
            true
        }
        None => false,
    }
}

/// For each of `files` that no batch of this pipeline wrote (`paired`), the other pipeline
/// that did: when the file names the batch that wrote it (a Parquet sink's file name, a Delta
/// table's commit) and this state store holds that batch as committed by another pipeline's
/// run. A file naming a batch nobody committed stays this audit's: a name alone proves
/// nothing.
async fn other_pipelines_files(
    st: &StateStore,
    pipeline: &str,
    target: &Target,
    files: &[PathBuf],
    paired: &[Option<usize>],
) -> Result<Vec<Option<String>>> {
    use sealtrail_connectors::sink::{CommitKey, delta_file_commits, parse_batch_file_name};
    let mut out = vec![None; files.len()];
    if paired.iter().all(Option::is_some) {
        return Ok(out); // every file is this pipeline's (the Delta log is not read again)
    }
    let commits = match target {
        Target::Delta { uri, .. } => delta_file_commits(uri),
        _ => HashMap::new(),
    };
    for ((f, b), other) in files.iter().zip(paired).zip(&mut out) {
        let Some(name) = f
            .file_name()
            .map(|n| n.to_string_lossy())
            .filter(|_| b.is_none())
        else {
            continue;
        };
        let written_by = match commits.get(name.as_ref()) {
            Some((app, batch)) => {
                CommitKey::from_app_id(app, *batch).map(|k| (k.run_id, k.source, k.batch))
            }
            None => parse_batch_file_name(&name).map(|(r, s, b)| (r.to_string(), s.to_string(), b)),
        };
        if let Some((run, source, batch)) = written_by
            && let Some(owner) = st.run_pipeline(&run).await?
            && owner != pipeline
            && owner != sealtrail_spec::replay_name(pipeline)
            && st
                .batch(&sealtrail_core::RunId::from_string(run), &source, batch)
                .await?
                .is_some()
        {
            *other = Some(owner);
        }
    }
    Ok(out)
}

/// Who delivered a row of a PostgreSQL table several pipelines load (its rows carry no batch,
/// only their ids): another pipeline, when the input its id names (source and input key) was
/// read by that pipeline's committed batches and by none of this pipeline's. One state-store
/// query per input.
struct InputOwners<'a> {
    st: &'a StateStore,
    pipeline: &'a str,
    known: HashMap<(String, String), Option<String>>,
}

impl<'a> InputOwners<'a> {
    fn new(st: &'a StateStore, pipeline: &'a str) -> Self {
        Self {
            st,
            pipeline,
            known: HashMap::new(),
        }
    }

    /// The other pipeline that alone delivered record `id`, if one did.
    async fn other(&mut self, id: &str) -> Result<Option<String>> {
        let Some((source, key, _)) = custody::parse_id(id) else {
            return Ok(None);
        };
        let k = (source.to_string(), key.to_string());
        if let Some(owner) = self.known.get(&k) {
            return Ok(owner.clone());
        }
        let readers = self.st.pipelines_reading(source, key).await?;
        let replay = sealtrail_spec::replay_name(self.pipeline);
        let owner = (!readers.iter().any(|r| r == self.pipeline || *r == replay))
            .then(|| readers.into_iter().next())
            .flatten();
        self.known.insert(k, owner.clone());
        Ok(owner)
    }
}

/// One difference between a sink and what the ledger says was delivered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// A row's id, and the batch (an index into the audit's batch list) that delivered it.
    Changed(String, u32),
    Deleted(String, u32),
    /// A row no batch delivered.
    Added(String),
}

/// Rows of each kind `audit` lists in text unless `--all` is given (the counts are whole).
const AUDIT_LISTED: usize = 20;

/// A row of a sink file as `audit` sees it: its lineage id (`None` when it has none) and the
/// commitment of its canonical encoding in each row format the sink's batches use.
#[derive(Debug)]
struct SinkRow {
    row: usize,
    id: Option<String>,
    commitments: Vec<(RowFormat, Hash)>,
}

/// What auditing one file (and its batch) or one batch without a file found.
#[derive(Debug, Default)]
struct Outcome {
    rows: u64,
    /// 1 when the item's batch checked out against the ledger.
    batches: u64,
    /// The batch whose custody record does not match its ledger entry.
    bad: Option<String>,
    /// Which of the batch's rows the file matched at their place.
    matched: Vec<bool>,
    /// The file's rows that did not match at their place.
    unmatched: Vec<SinkRow>,
    /// The batch's rows no row matched at its place, keyed by lineage id ([`ById::key`]).
    expected: Vec<(u128, Expected)>,
    /// The file could not be read (damaged): what is wrong. Its batch's rows are then looked
    /// for by id like any missing row, and reported deleted unless found elsewhere.
    unreadable: Option<String>,
}

/// A delivered row `audit` still has to find by its lineage id.
#[derive(Debug, Clone, Copy)]
struct Expected {
    /// Index of its batch (into the audit's batch list) and its place among the batch's rows
    /// of the sink: where its id is recomputed from if it is never found.
    batch: u32,
    row: u32,
    format: RowFormat,
    commitment: Hash,
}

/// The rows to find by lineage id, keyed by a 128-bit hash of the id under a seed drawn for
/// each audit rather than by the id itself: about 70 bytes per row instead of several
/// hundred, which is what bounds the memory of auditing a table whose rows cannot be matched
/// at their place (a PostgreSQL table: every row). The ids of rows never found are recomputed
/// from their batches' custody records. A collision (2^-128 per pair under a seed nobody
/// knows in advance) could only mislabel a finding: a row still has to match the commitment,
/// which covers its `_sealtrail_id`.
#[derive(Debug)]
struct ById {
    seed: u64,
    /// The first expected row of each key; further rows with the same id (a record delivered
    /// by two runs) in `more`.
    first: HashMap<u128, Expected>,
    more: HashMap<u128, Vec<Expected>>,
}

impl ById {
    fn new() -> Self {
        Self {
            seed: rand::random(),
            first: HashMap::new(),
            more: HashMap::new(),
        }
    }

    fn key(seed: u64, id: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), seed)
    }

    fn insert(&mut self, key: u128, e: Expected) {
        match self.first.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(e);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(key).or_default().push(e)
            }
        }
    }

    /// Takes an expected row of `key`: one that `same` accepts (`true`), else any (`false`);
    /// None when no row of that id is expected.
    fn take(&mut self, key: u128, same: impl Fn(&Expected) -> bool) -> Option<(Expected, bool)> {
        let first = *self.first.get(&key)?;
        if !same(&first)
            && let Some(v) = self.more.get_mut(&key)
            && let Some(i) = v.iter().position(&same)
        {
            let e = v.swap_remove(i);
            if v.is_empty() {
                self.more.remove(&key);
            }
            return Some((e, true));
        }
        // `first` goes (matched, or the row a changed row stands for); a further row of the
        // same id takes its place.
        match self.more.get_mut(&key).and_then(Vec::pop) {
            Some(next) => {
                self.first.insert(key, next);
                if self.more.get(&key).is_some_and(Vec::is_empty) {
                    self.more.remove(&key);
                }
            }
            None => {
                self.first.remove(&key);
            }
        }
        Some((first, same(&first)))
    }

    /// The rows never found.
    fn left(self) -> impl Iterator<Item = Expected> {
        self.first
            .into_values()
            .chain(self.more.into_values().flatten())
    }
}

impl Outcome {
    fn bad(batch: String) -> Self {
        Self {
            bad: Some(batch),
            ..Self::default()
        }
    }
}

/// Reads one Parquet file of a sink, computes every row's commitment and matches each row
/// against the row its batch's custody record has at the same place (`expected`, when the
/// file is a batch's): the rows that match are done with; the others are returned.
/// Rows that do not match at their place get a commitment in each of `formats` (the formats of
/// the sink's batches), to be matched by id.
fn audit_file(
    f: &Path,
    expected: Option<(&CustodyView<'_>, &SinkView<'_>)>,
    formats: &[RowFormat],
) -> Result<Outcome> {
    // A damaged file (it does not decode, or is gone since the table was listed) is a
    // finding, not the end of the audit: the rest of the sink is still checked, and the rows
    // the file should hold are named. A file the auditor may not read is not damage: that
    // stops the audit with what to fix.
    let batches = match sealtrail_connectors::sink::read_parquet(f) {
        Ok(b) => b,
        Err(e) if matches!(e.kind(), ErrorKind::Other | ErrorKind::NotFound) => {
            return Ok(Outcome {
                unreadable: Some(format!("{}: {e}", f.display())),
                ..Outcome::default()
            });
        }
        Err(e) => bail!(
            "cannot read {}: {e}; run the audit as a user that can read every file of the sink",
            f.display()
        ),
    };
    audit_rows(&batches, 0, expected, formats, &f.display().to_string())
}

/// [`audit_file`] over rows already read: `batches` hold consecutive rows of a table part, the
/// first of them its row `first`.
fn audit_rows(
    batches: &[RecordBatch],
    first: usize,
    expected: Option<(&CustodyView<'_>, &SinkView<'_>)>,
    formats: &[RowFormat],
    what: &str,
) -> Result<Outcome> {
    let mut out = Outcome {
        matched: vec![false; expected.map_or(0, |(_, s)| s.len())],
        ..Outcome::default()
    };
    let mut row = 0;
    let ours = expected.map(|(c, _)| c.row_format());
    // A row not at its place may still be one of the batch's (moved within the file; a
    // PostgreSQL table whose heap put a short row in an earlier page's gap): the batch's ids,
    // built at the first such row.
    let mut batch_ids: Option<HashMap<&str, usize>> = None;
    for b in batches {
        let ids = custody::id_column(b).map_err(|e| anyhow!("{what}: {e}"))?;
        let mut hashers = formats
            .iter()
            .map(|&fmt| RowHasher::new(fmt, b).map(|h| (fmt, h)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{what}: {e}"))?;
        for r in 0..b.num_rows() {
            // A row that has no encoding in a format (a value sealtrail never writes, such as
            // a timestamp beyond year 9999 for format 1) has no commitment in it: it cannot be
            // a delivered row of that format, and is reported, never allowed to stop the audit.
            let mut h = None;
            for (fmt, hasher) in &mut hashers {
                if Some(*fmt) == ours {
                    h = hasher.commitment(r).ok();
                }
            }
            let got = ids(r);
            let at_place = match (expected, &got) {
                (Some((c, s)), Some(got)) if row < s.len() && !out.matched[row] => {
                    let (k, want) = s.row(row);
                    let same_id = match got {
                        RowIds::One(id) => k & GROUP == 0 && c.input(k as usize).0 == *id,
                        many => k & GROUP != 0 && c.row_id(s, k) == many.lineage_id(),
                    };
                    same_id && h.is_some_and(|h| merkle::ct_eq(&want, &h))
                }
                _ => false,
            };
            let mut elsewhere = || match (expected, &got, h) {
                (Some((c, s)), Some(RowIds::One(id)), Some(h)) => {
                    let ids = batch_ids.get_or_insert_with(|| {
                        (0..s.len())
                            .filter_map(|j| {
                                let (k, _) = s.row(j);
                                (k & GROUP == 0).then(|| (c.input(k as usize).0, j))
                            })
                            .collect()
                    });
                    ids.get(id)
                        .copied()
                        .filter(|&j| !out.matched[j] && merkle::ct_eq(&s.row(j).1, &h))
                }
                _ => None,
            };
            if at_place {
                out.matched[row] = true;
            } else if let Some(j) = elsewhere() {
                out.matched[j] = true;
            } else {
                let mut commitments = Vec::with_capacity(hashers.len());
                for (fmt, hasher) in &mut hashers {
                    let c = match ours {
                        Some(o) if o == *fmt => h,
                        _ => hasher.commitment(r).ok(),
                    };
                    if let Some(c) = c {
                        commitments.push((*fmt, c));
                    }
                }
                out.unmatched.push(SinkRow {
                    row: first + row,
                    id: got.map(|i| i.lineage_id()).filter(|id| !id.is_empty()),
                    commitments,
                });
            }
            row += 1;
        }
    }
    out.rows = row as u64;
    Ok(out)
}

/// Rows of a PostgreSQL sink's table per `audit` work item past the batches' rows.
const PG_AUDIT_ROWS: usize = 16_384;

/// One part of a sink's table as `audit` reads it.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// The sink's file at this index.
    File(usize),
    /// The next `rows` rows of a PostgreSQL table's scan, read as the `seq`-th read.
    PgRows { seq: usize, rows: usize },
}

/// A PostgreSQL table's scan shared by `audit`'s workers: each reads its rows in its turn.
struct PgScan {
    state: std::sync::Mutex<PgScanState>,
    turn: std::sync::Condvar,
}

struct PgScanState {
    table: Box<PgTable>,
    /// The read whose turn it is.
    seq: usize,
    /// Rows read so far.
    read: usize,
}

impl PgScan {
    /// Waits for read `seq`'s turn, reads `rows` rows and passes the turn on (also when the
    /// read fails, so no worker waits forever): the rows and the scan position of the first.
    fn read(
        &self,
        rt: &tokio::runtime::Handle,
        seq: usize,
        rows: usize,
    ) -> Result<(Option<RecordBatch>, usize)> {
        let broken = || anyhow!("a worker reading the table failed");
        let mut g = self.state.lock().map_err(|_| broken())?;
        while g.seq != seq {
            g = self.turn.wait(g).map_err(|_| broken())?;
        }
        let first = g.read;
        // FETCH FORWARD 0 would fetch the current row again.
        let got = match rows {
            0 => Ok(None),
            n => rt.block_on(g.table.next(n)),
        };
        g.seq += 1;
        g.read += got
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .map_or(0, RecordBatch::num_rows);
        self.turn.notify_all();
        Ok((got?, first))
    }
}

/// For each of a sink's files, the batch (index into `batches`: run id, source, batch) it
/// holds, when one can tell: a Parquet sink names its files by batch, and a local Delta
/// table's log names the transaction (run and batch) that added each file. A batch claimed by
/// several files is left unpaired (its rows go by lineage id), since a file of a batch is read
/// as holding all of the batch's rows in custody order.
fn file_batches<'a>(
    files: &[PathBuf],
    target: &Target,
    batches: impl Iterator<Item = (&'a str, &'a str, &'a str, u64)>,
) -> Vec<Option<usize>> {
    use sealtrail_connectors::sink::{CommitKey, delta_file_commits, parse_batch_file_name};
    let mut by_name: HashMap<(String, String, u64), usize> = HashMap::new();
    let mut by_commit: HashMap<(String, u64), usize> = HashMap::new();
    for (i, (pipeline, run_id, source, batch)) in batches.enumerate() {
        by_name.insert((run_id.to_string(), source.to_string(), batch), i);
        let key = CommitKey {
            pipeline: pipeline.to_string(),
            run_id: run_id.to_string(),
            source: source.to_string(),
            batch,
        };
        by_commit.insert((key.app_id(), batch), i);
    }
    let commits = match target {
        Target::Delta { uri, .. } => delta_file_commits(uri),
        _ => HashMap::new(),
    };
    let paired: Vec<Option<usize>> = files
        .iter()
        .map(|f| {
            let name = f.file_name()?.to_string_lossy();
            parse_batch_file_name(&name)
                .and_then(|(r, s, b)| by_name.get(&(r.to_string(), s.to_string(), b)))
                .or_else(|| commits.get(name.as_ref()).and_then(|k| by_commit.get(k)))
                .copied()
        })
        .collect();
    let mut claims: HashMap<usize, usize> = HashMap::new();
    for b in paired.iter().flatten() {
        *claims.entry(*b).or_default() += 1;
    }
    paired
        .into_iter()
        .map(|b| b.filter(|b| claims.get(b) == Some(&1)))
        .collect()
}

/// Recomputes every output commitment of a sink and compares them with the custody records,
/// which are themselves checked against the ledger's signed roots.
///
/// A file of a batch (a Parquet sink's, named after it; a Delta table's, whose log names the
/// batch's transaction) holds the batch's rows in custody order: the file and the batch's
/// record are matched row by row, on every core, one batch in memory at a time. Rows that do
/// not match there (changed, moved, added), files of no batch, batches with no file and the
/// rows of a PostgreSQL table are then matched by lineage id.
/// How `audit` reports: JSON, or text listing every row (`all`) or the first
/// [`AUDIT_LISTED`] of each kind.
#[derive(Debug, Clone, Copy)]
pub struct AuditOutput {
    pub json: bool,
    pub all: bool,
}

pub async fn audit(spec: &Path, sink: &str, state: &StateArgs, output: AuditOutput) -> Result<i32> {
    let AuditOutput { json, all } = output;
    let p = sealtrail_spec::load(spec)?;
    let home = state.home(Some(spec));
    let named = find_sink(&p, sink)?;
    let (sk, _copy) = readable_sink(named, false).await?;
    let sk = &sk;
    let st = crate::open_state_to_read(&state.url(&home)).await?;
    let verifier = load_verifier(&home, None)?;
    let (dir, _guard) = state.ledger.readable(&home)?;
    let (cp, _) = sealtrail_ledger::log::read_checkpoint(&dir, &verifier)?
        .ok_or_else(|| anyhow!("the ledger has no checkpoint"))?;
    let signed = Signed::new(&dir, &cp);

    // What the signed ledger says each batch delivered to the sink: (rows, root), as its
    // batch entry and any later revisions (rows rewritten in place) leave them.
    let mut batches = Vec::new();
    let mut bad_records = Vec::new();
    let mut revised = 0usize;
    for r in st.custody_index(&p.name, None).await? {
        let revisions = st.revisions(&r).await?;
        match signed.sink_state(&r, &revisions, sink) {
            None => bad_records.push(format!("run {} batch {}", r.run_id, r.batch)),
            Some(None) => {} // the batch delivered nothing to this sink
            Some(Some(now)) => {
                revised += usize::from(!now.revisions.is_empty());
                batches.push((r, (now.rows, now.root)));
            }
        }
    }

    // Work items: each file (with its batch when its name says which), then each batch that
    // has no file. A PostgreSQL table has no files: it is read in one snapshot, in turns.
    let table = SinkTable::open_existing(&sk.name, &sk.target).await?;
    // A sink with no table or folder holds no rows: every row the ledger says it delivered is
    // reported deleted.
    let missing = table.is_none().then(|| match &named.target {
        Target::Postgres { table, .. } => format!("postgres table {table}"),
        Target::Parquet { dir, .. } => dir.display().to_string(),
        Target::Delta { uri, .. } => uri.clone(),
    });
    let (files, pg) = match table.unwrap_or(SinkTable::Files(Vec::new())) {
        SinkTable::Files(files) => (files, None),
        SinkTable::Pg(mut t) => {
            let rows = t.scan().await?;
            (Vec::new(), Some((rows, t)))
        }
    };
    let pg_label = pg.as_ref().map(|(_, t)| t.location());
    let mut has_file = vec![false; batches.len()];
    // A table sealtrail filled scans in insertion order: the batches' rows in commit order
    // (their ledger entries' order), each batch's in custody order. So each batch is an item
    // that reads as many rows as the batch delivered and matches them at their place, like a
    // batch's file; rows that are not there (changed, moved, or shifted by a deletion) go by
    // id. Rows past the batches' come in chunks.
    let mut pg_items: Vec<(Option<Part>, Option<usize>)> = Vec::new();
    if let Some((count, _)) = &pg {
        let mut order: Vec<usize> = (0..batches.len()).collect();
        order.sort_by_key(|&b| batches[b].0.ledger_seq);
        let mut delivered = 0u64;
        for b in order {
            let rows = batches[b].1.0;
            delivered += rows;
            has_file[b] = true;
            let seq = pg_items.len();
            pg_items.push((
                Some(Part::PgRows {
                    seq,
                    rows: rows as usize,
                }),
                Some(b),
            ));
        }
        for _ in 0..(count.saturating_sub(delivered) as usize).div_ceil(PG_AUDIT_ROWS) {
            let seq = pg_items.len();
            pg_items.push((
                Some(Part::PgRows {
                    seq,
                    rows: PG_AUDIT_ROWS,
                }),
                None,
            ));
        }
    }
    let pg = pg.map(|(_, table)| PgScan {
        state: std::sync::Mutex::new(PgScanState {
            table,
            seq: 0,
            read: 0,
        }),
        turn: std::sync::Condvar::new(),
    });
    let paired = file_batches(
        &files,
        &sk.target,
        batches.iter().map(|(r, _)| {
            (
                r.pipeline.as_str(),
                r.run_id.as_str(),
                r.source.as_str(),
                r.batch,
            )
        }),
    );
    // Files that other pipelines wrote into a sink they share with this one (known to this
    // state store as their runs) are theirs to audit; any other file's rows count as added.
    let other = other_pipelines_files(&st, &p.name, &sk.target, &files, &paired).await?;
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    for name in other.iter().flatten() {
        *skipped.entry(name.as_str()).or_default() += 1;
    }
    let mut file_items: Vec<(Option<Part>, Option<usize>)> = paired
        .into_iter()
        .enumerate()
        .filter(|(i, _)| other[*i].is_none())
        .map(|(i, b)| {
            if let Some(b) = b {
                has_file[b] = true;
            }
            (Some(Part::File(i)), b)
        })
        .collect();
    let audited_files = file_items.len();
    file_items.extend(pg_items);
    // When no file is a batch's (a Delta table without its JSON log),
    // every expected row is known once the batches are read, and the rows are matched as they
    // come instead of being held.
    let stream = !has_file.iter().any(|x| *x);
    let mut items: Vec<(Option<Part>, Option<usize>)> = (0..batches.len())
        .filter(|b| !has_file[*b])
        .map(|b| (None, Some(b)))
        .collect();
    let unpaired_files = file_items.iter().any(|(_, b)| b.is_none());
    items.extend(file_items);
    // Rows matched by id are hashed in each row format the batches use. When every file is a
    // batch's, only the rows that differ from their record go by id (few): both formats,
    // without reading the records twice. Otherwise (rows of unpaired files) the formats in
    // use, from each record's first byte (SQLite reads a stored value whole even for that).
    let formats = if unpaired_files {
        let mut formats = Vec::new();
        for (r, _) in &batches {
            let version = st.custody_range(r, 0, 1).await?;
            let f = custody::record_row_format(version.first().copied().unwrap_or(0));
            if !formats.contains(&f) {
                formats.push(f);
            }
        }
        formats
    } else {
        vec![RowFormat::Json, RowFormat::Binary]
    };

    // The rows still to find, by lineage id (their keys are computed by the workers): every
    // row of the batches without a file, sized once (growing the table would hold it twice).
    let mut residual = ById::new();
    let by_id_rows: u64 = batches
        .iter()
        .zip(&has_file)
        .filter(|(_, has)| !**has)
        .map(|((_, (rows, _)), _)| *rows)
        .sum();
    residual.first.reserve(by_id_rows as usize);
    let seed = residual.seed;
    let rt = tokio::runtime::Handle::current();
    let work = |(file, batch): (Option<Part>, Option<usize>)| -> Result<Outcome> {
        // A read of the PostgreSQL table happens in its turn whatever comes of its batch: the
        // next read depends on it.
        let pg_rows = match (file, &pg) {
            (Some(Part::PgRows { seq, rows }), Some(pg)) => Some(pg.read(&rt, seq, rows)?),
            _ => None,
        };
        let record = match batch {
            Some(b) => Some(rt.block_on(st.custody(&batches[b].0))?),
            None => None,
        };
        let view = record.as_deref().map(CustodyView::parse);
        let expected = match (batch, &view) {
            (Some(b), Some(Some(c))) => {
                let (rows, root) = &batches[b].1;
                match c.sink(sink) {
                    Some((_, s))
                        if s.len() as u64 == *rows && merkle::ct_eq(&c.output_root(s), root) =>
                    {
                        Some((c, s))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let (Some(b), None) = (batch, expected) {
            let r = &batches[b].0;
            return Ok(Outcome::bad(format!("run {} batch {}", r.run_id, r.batch)));
        }
        let mut out = match file {
            Some(Part::File(f)) => audit_file(&files[f], expected, &formats)?,
            Some(Part::PgRows { .. }) => match pg_rows {
                Some((rows, first)) => {
                    let what = pg_label.as_deref().unwrap_or_default();
                    audit_rows(rows.as_slice(), first, expected, &formats, what)?
                }
                None => Outcome::default(),
            },
            None => Outcome::default(),
        };
        if let (Some((c, s)), Some(b)) = (expected, batch) {
            out.batches = 1;
            out.expected = (0..s.len())
                .filter(|j| !out.matched.get(*j).copied().unwrap_or(false))
                .map(|j| {
                    let (k, h) = s.row(j);
                    let e = Expected {
                        batch: b as u32,
                        row: j as u32,
                        format: c.row_format(),
                        commitment: h,
                    };
                    (ById::key(seed, &c.row_id(s, k)), e)
                })
                .collect();
        }
        Ok(out)
    };

    // Items run on every core, a few ahead of the matching, which goes in item order so that
    // reports are stable.
    let mut unmatched: Vec<(Part, SinkRow)> = Vec::new();
    let mut findings = Vec::new();
    let mut unreadable: Vec<String> = Vec::new();
    let classify = |f: Part, row: SinkRow, residual: &mut ById, findings: &mut Vec<Finding>| {
        let label = || match &row.id {
            Some(id) => id.clone(),
            None => match f {
                Part::File(i) => format!("(no id) {} row {}", files[i].display(), row.row),
                Part::PgRows { .. } => format!(
                    "(no id) {} row {} of the scan",
                    pg_label.as_deref().unwrap_or_default(),
                    row.row
                ),
            },
        };
        let same = |e: &Expected| {
            row.commitments
                .iter()
                .any(|(g, c)| *g == e.format && merkle::ct_eq(&e.commitment, c))
        };
        let key = row.id.as_deref().map(|id| ById::key(residual.seed, id));
        match key.and_then(|k| residual.take(k, same)) {
            Some((_, true)) => {}
            Some((e, false)) => findings.push(Finding::Changed(label(), e.batch)),
            None => findings.push(Finding::Added(label())),
        }
    };
    let (mut rows, mut delivered_batches, mut by_id) = (0u64, 0u64, 0u64);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcome = std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<Outcome>)>(threads);
        for _ in 0..threads {
            let (tx, next, items, work) = (tx.clone(), &next, &items, &work);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    if tx.send((i, work(*item))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut pending: HashMap<usize, Result<Outcome>> = HashMap::new();
        let mut want = 0;
        for (i, got) in rx {
            pending.insert(i, got);
            while let Some(got) = pending.remove(&want) {
                let got = got?;
                if let Some(bad) = got.bad {
                    bad_records.push(bad);
                }
                if let Some(u) = got.unreadable {
                    unreadable.push(u);
                }
                rows += got.rows;
                delivered_batches += got.batches;
                for (key, e) in got.expected {
                    residual.insert(key, e);
                }
                if let (Some(f), _) = items[want] {
                    by_id += got.unmatched.len() as u64;
                    for r in got.unmatched {
                        if stream {
                            classify(f, r, &mut residual, &mut findings);
                        } else {
                            unmatched.push((f, r));
                        }
                    }
                }
                want += 1;
            }
        }
        Ok(())
    });
    // Stop on the first error (the state store, PostgreSQL); the workers have ended with the
    // scope.
    outcome?;
    if !bad_records.is_empty() {
        outln!(
            "NOT VERIFIED: the custody records of {} batch(es) do not match the signed ledger ({}); the state store was changed, so the sink cannot be audited against it",
            bad_records.len(),
            bad_records.join(", ")
        );
        return Ok(TAMPERED);
    }
    tracing::debug!(
        at_place = rows - by_id,
        by_id,
        "sink rows matched to their batch's custody record"
    );
    for (f, row) in unmatched {
        classify(f, row, &mut residual, &mut findings);
    }
    // Rows never found: their ids from their batches' records, one batch at a time.
    let mut left: Vec<Expected> = residual.left().collect();
    left.sort_by_key(|e| (e.batch, e.row));
    for group in left.chunk_by(|a, b| a.batch == b.batch) {
        let r = &batches[group[0].batch as usize].0;
        let record = st.custody(r).await?;
        let changed = || {
            anyhow!(
                "the custody record of run {} batch {} changed during the audit",
                r.run_id,
                r.batch
            )
        };
        let c = CustodyView::parse(&record).ok_or_else(changed)?;
        let (_, s) = c.sink(sink).ok_or_else(changed)?;
        for e in group {
            let (k, _) = s.row(e.row as usize);
            findings.push(Finding::Deleted(c.row_id(s, k), e.batch));
        }
    }
    // A PostgreSQL table several pipelines load: rows whose ids name an input that only other
    // pipelines' batches read (by this state store) are theirs to audit.
    let mut other_rows: BTreeMap<String, usize> = BTreeMap::new();
    if pg_label.is_some() {
        let mut owners = InputOwners::new(&st, &p.name);
        let mut kept = Vec::with_capacity(findings.len());
        for f in findings {
            let owner = match &f {
                Finding::Added(id) => owners.other(id).await?,
                _ => None,
            };
            match owner {
                Some(owner) => *other_rows.entry(owner).or_default() += 1,
                None => kept.push(f),
            }
        }
        findings = kept;
    }
    findings.sort();
    let count = |f: fn(&Finding) -> bool| findings.iter().filter(|x| f(x)).count();
    let (changed, deleted, added) = (
        count(|f| matches!(f, Finding::Changed(..))),
        count(|f| matches!(f, Finding::Deleted(..))),
        count(|f| matches!(f, Finding::Added(_))),
    );
    // Per batch: (changed, deleted), in the order of the batches' ledger entries.
    let mut per_batch: BTreeMap<(Option<u64>, u32), (usize, usize)> = BTreeMap::new();
    for f in &findings {
        let (b, changed) = match f {
            Finding::Changed(_, b) => (*b, true),
            Finding::Deleted(_, b) => (*b, false),
            Finding::Added(_) => continue,
        };
        let n = per_batch
            .entry((batches[b as usize].0.ledger_seq, b))
            .or_default();
        if changed {
            n.0 += 1;
        } else {
            n.1 += 1;
        }
    }
    let per_batch: Vec<(&CustodyRef, u64, usize, usize)> = per_batch
        .into_iter()
        .map(|((_, b), (c, d))| {
            let (r, (rows, _)) = &batches[b as usize];
            (r, *rows, c, d)
        })
        .collect();
    let batches = delivered_batches;
    if json {
        let list = |want: fn(&Finding) -> Option<&String>| -> Vec<&String> {
            findings.iter().filter_map(want).collect()
        };
        let v = serde_json::json!({
            "sink": sink,
            "rows": rows,
            "batches": batches,
            "revised_batches": revised,
            "changed": list(|f| if let Finding::Changed(s, _) = f { Some(s) } else { None }),
            "deleted": list(|f| if let Finding::Deleted(s, _) = f { Some(s) } else { None }),
            "added": list(|f| if let Finding::Added(s) = f { Some(s) } else { None }),
            "by_batch": per_batch.iter().map(|(r, rows, c, d)| serde_json::json!({
                "run_id": r.run_id,
                "source": r.source,
                "batch": r.batch,
                "ledger_entry": r.ledger_seq,
                "delivered": rows,
                "changed": c,
                "deleted": d,
            })).collect::<Vec<_>>(),
            "unreadable": unreadable,
            "other_pipelines_files": skipped,
            "other_pipelines_rows": other_rows,
            "missing": missing.is_some(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let from = match (&pg_label, &missing) {
            (Some(t), _) => t.clone(),
            (None, Some(m)) => format!("no table or folder at {m} (never created, or removed)"),
            (None, None) => format!("{audited_files} file(s)"),
        };
        outln!(
            "sink `{sink}`: {rows} rows read from {from}, checked against {batches} committed batch(es) in the signed ledger (tree size {})",
            cp.size
        );
        if revised > 0 {
            outln!(
                "  {revised} of them rewritten in place since delivery (`keys reencrypt`): their rows are checked against the roots of their `outputs_revised` ledger entries"
            );
        }
        for (pipeline, n) in &skipped {
            outln!(
                "  skipped {n} file(s) written by pipeline `{pipeline}`, which shares the sink: audit them with its spec"
            );
        }
        for (pipeline, n) in &other_rows {
            outln!(
                "  skipped {n} row(s) delivered by pipeline `{pipeline}`, which shares the table: audit them with its spec"
            );
        }
        for u in &unreadable {
            outln!("  UNREADABLE  {u}");
        }
        // Where the differences are: each batch with its count, so that a batch missing whole
        // (a file removed, a commit undone) reads as one line.
        for (r, rows, c, d) in &per_batch {
            let what = match (c, d) {
                (0, d) if *d as u64 == *rows => match &named.target {
                    // A Parquet batch's file is named after it: say which is missing.
                    Target::Parquet { .. } => format!(
                        "every row deleted (its file {}.*parquet is gone, or holds none of them)",
                        sealtrail_connectors::sink::batch_file_stem(&r.run_id, &r.source, r.batch)
                    ),
                    _ => "every row deleted".to_string(),
                },
                (0, d) => format!("{d} deleted"),
                (c, 0) => format!("{c} changed"),
                (c, d) => format!("{c} changed, {d} deleted"),
            };
            outln!(
                "  run {} source `{}` batch {} (ledger entry {}, {rows} rows delivered): {what}",
                r.run_id,
                r.source,
                r.batch,
                r.ledger_seq.map_or("?".into(), |s| s.to_string())
            );
        }
        let mut listed = [0usize; 3];
        for f in &findings {
            let (k, line) = match f {
                Finding::Changed(id, _) => (0, format!("  CHANGED  {id}")),
                Finding::Deleted(id, _) => (1, format!("  DELETED  {id}")),
                Finding::Added(id) => (2, format!("  ADDED    {id}")),
            };
            listed[k] += 1;
            if all || listed[k] <= AUDIT_LISTED {
                outln!("{line}");
            }
        }
        let unlisted: usize = listed.iter().map(|n| n.saturating_sub(AUDIT_LISTED)).sum();
        if !all && unlisted > 0 {
            outln!(
                "  ... and {unlisted} more row(s) not listed here (the first {AUDIT_LISTED} of each kind are): `--all` lists every one, `--json` too"
            );
        }
        if findings.is_empty() && unreadable.is_empty() {
            outln!("every row is as delivered: no change, deletion or addition");
        } else {
            outln!(
                "{changed} changed, {deleted} deleted, {added} added{}",
                match unreadable.len() {
                    0 => String::new(),
                    n => format!(
                        "; {n} file(s) unreadable (damaged), their rows counted as deleted unless found elsewhere"
                    ),
                }
            );
        }
    }
    Ok(if findings.is_empty() && unreadable.is_empty() {
        0
    } else {
        TAMPERED
    })
}

/// The chain `source -> t1 -> t2 -> sink` a sink reads through.
/// Why a record that no sink received was not delivered: `Some(true)` when it was quarantined,
/// `Some(false)` when it was loaded and the transforms left it out, `None` when that cannot be
/// told (the batch's counts are missing, or its quarantine cannot be read).
///
/// Told from the batch's counts when they decide it (nothing quarantined; or every loaded record
/// reached a sink, so the ones that did not are the quarantined ones), otherwise from the
/// quarantine rows of the batch itself.
async fn undelivered(
    p: &Pipeline,
    st: &StateStore,
    r: &CustodyRef,
    c: &CustodyView<'_>,
    id: &str,
) -> Option<bool> {
    let counts = st
        .batch(
            &sealtrail_core::RunId::from_string(r.run_id.clone()),
            &r.source,
            r.batch,
        )
        .await
        .ok()??;
    if counts.rows_quarantined == 0 {
        return Some(false);
    }
    let mut reached = vec![false; c.inputs()];
    for o in c.sinks() {
        for j in 0..o.len() {
            for m in o.members(o.row(j).0) {
                if let Some(x) = reached.get_mut(m as usize) {
                    *x = true;
                }
            }
        }
    }
    if reached.iter().filter(|&&x| x).count() as u64 == counts.rows_loaded {
        return Some(true);
    }
    let path = match &p.quarantine {
        Target::Parquet { dir, .. } => dir.clone(),
        Target::Delta { uri, .. } => PathBuf::from(uri),
        // `check` refuses a quarantine in a table.
        Target::Postgres { .. } => return None,
    };
    let (files, target, _copy) = table_files(&path).await.ok()?;
    let files = batch_files(
        &files,
        &target,
        (&r.pipeline, &r.run_id, &r.source, r.batch),
    )?;
    let (_, key, pos) = custody::parse_id(id)?;
    for f in files {
        for b in sealtrail_connectors::sink::read_parquet(&f).ok()? {
            if quarantine_holds(&b, key, pos)? {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// Whether a batch of the quarantine table holds the record whose lineage id has input key
/// `key` and position `pos`; `None` when the batch is not a quarantine table's.
fn quarantine_holds(b: &RecordBatch, key: &str, pos: &str) -> Option<bool> {
    use arrow::datatypes::Int64Type;
    let input = b.column_by_name("input")?.as_string_opt::<i32>()?;
    let line = b.column_by_name("line")?.as_primitive_opt::<Int64Type>()?;
    let row = b.column_by_name("row")?.as_primitive_opt::<Int64Type>()?;
    let keys = b.column_by_name("key")?.as_string_opt::<i32>()?;
    Some((0..b.num_rows()).any(|i| {
        let at = if line.is_valid(i) {
            line.value(i).to_string() == pos
        } else if keys.is_valid(i) {
            keys.value(i) == pos
        } else {
            // A row index, or a keyed record whose key was null (`#` and its index).
            row.is_valid(i) && pos.strip_prefix('#').unwrap_or(pos) == row.value(i).to_string()
        };
        at && custody::input_key(input.value(i)) == key
    }))
}

fn chain_of(p: &Pipeline, sink: &Sink) -> Vec<String> {
    let mut out = vec![format!("sink {}", sink.name)];
    let mut at = sink.from.clone();
    while let Some(t) = p.transforms.iter().find(|t| t.name == at) {
        out.push(format!("transform {}", t.name));
        at = t.input.clone();
    }
    out.push(format!("source {at}"));
    out.reverse();
    out
}

/// `sealtrail lineage SPEC [--sink S]`: column lineage of every sink, derived from the SQL plan
/// and the protection policies; with `--id`: one record's path through every batch that
/// carried it, with the versions in force.
pub async fn lineage(
    spec: &Path,
    sink: Option<&str>,
    id: Option<&str>,
    state: &StateArgs,
) -> Result<i32> {
    let p = sealtrail_spec::load(spec)?;
    if let Some(s) = sink {
        find_sink(&p, s)?;
    }
    let sinks: Vec<&Sink> = p
        .sinks
        .iter()
        .filter(|k| sink.is_none_or(|s| s == k.name))
        .collect();
    let Some(id) = id else {
        let (planned, diags) = sealtrail_engine::check_with(&p, &Default::default()).await;
        if !diags.is_empty() {
            bail!(
                "the spec does not check ({} problem(s)); run `sealtrail check {}`",
                diags.len(),
                spec.display()
            );
        }
        for k in sinks {
            let Some(pl) = planned.get(&k.root_source) else {
                continue;
            };
            let Some(schema) = pl.transforms.schema_of(&k.from) else {
                continue;
            };
            outln!(
                "sink {} (audience {}): {}",
                k.name,
                k.audience.name(),
                chain_of(&p, k).join(" -> ")
            );
            let mut t =
                crate::table::Table::new(&["column", "from", "delivered", "protection", "path"])
                    .indent("  ");
            for f in schema.fields() {
                let from = sealtrail_engine::trace_all(
                    &k.root_source,
                    &pl.resolution.states,
                    &pl.transforms,
                    &k.from,
                    f.name(),
                );
                if from.is_empty() {
                    let what = if f.name() == custody::ID_COLUMN {
                        "(lineage id, added by the engine)"
                    } else {
                        "(constant)"
                    };
                    t.row(vec![f.name().clone(), what.into()]);
                }
                for (path, st) in from {
                    t.row(vec![
                        f.name().clone(),
                        format!("{}.{}", k.root_source, st.origin),
                        st.tag.to_string(),
                        st.protected_by.unwrap_or("raw").to_string(),
                        path.join(" -> "),
                    ]);
                }
            }
            t.print();
        }
        return Ok(0);
    };

    let home = state.home(Some(spec));
    let st = crate::open_state_to_read(&state.url(&home)).await?;
    let refs = st.custody_index(&p.name, Some(index_of(&p, id)?)).await?;
    let verifier = load_verifier(&home, None).ok();
    let ledger = state.ledger.readable(&home).ok();
    let mut found = 0;
    for r in refs {
        let record = st.custody(&r).await?;
        let Some(c) = CustodyView::parse(&record) else {
            continue;
        };
        let Some(k) = c.find_input(id) else {
            continue;
        };
        found += 1;
        outln!(
            "record {id}: run {} batch {} of source `{}`, input commitment {}",
            r.run_id,
            r.batch,
            r.source,
            hex::encode(c.input(k).1)
        );
        // The versions in force, from the signed batch entry itself.
        let signed_entry = |seq: u64| match (&verifier, &ledger) {
            (Some(v), Some((dir, _))) => sealtrail_ledger::log::read_checkpoint(dir, v)
                .ok()
                .flatten()
                .and_then(|(cp, _)| tiles::read_entry(dir, cp.size, seq).ok())
                .and_then(|b| Entry::decode(&b).ok()),
            _ => None,
        };
        match r
            .ledger_seq
            .and_then(signed_entry)
            .map(|e| (e.seq, e.event))
        {
            Some((
                seq,
                Event::BatchCommitted {
                    spec_sha256,
                    transforms_sha256,
                    policy_sha256,
                    ..
                },
            )) => {
                outln!("  ledger entry {seq}: spec {}", hex::encode(spec_sha256));
                outln!(
                    "    transforms {}  policy {}",
                    hex::encode(transforms_sha256),
                    hex::encode(policy_sha256)
                );
                let now = sealtrail_core::sha256_hex(&std::fs::read(spec)?);
                if r.pipeline != p.name {
                    outln!(
                        "    replayed repaired records (`quarantine replay`, pipeline `{}`): its spec version is SHA-256 of the spec's and the repaired records' hex SHA-256 (docs/custody.md)",
                        r.pipeline
                    );
                    // The same check as a proof bundle's `replay` gets.
                    let declared = st
                        .replay_declaration(&hex::encode(spec_sha256))
                        .await?
                        .and_then(signed_entry)
                        .and_then(|e| {
                            sealtrail_ledger::custody::replay_of(&e, &r.pipeline, seq, &spec_sha256)
                                .ok()
                        });
                    match declared {
                        Some(d) => outln!(
                            "    ledger entry {}: the replay of records {} under spec {}{}",
                            d.entry_index,
                            hex::encode(d.records_sha256),
                            hex::encode(d.spec_sha256),
                            if now == hex::encode(d.spec_sha256) {
                                " (the spec file's version now)"
                            } else {
                                " (the spec file has changed since)"
                            }
                        ),
                        None => outln!(
                            "    no replay_declared ledger entry names this version here (replays before it existed have none)"
                        ),
                    }
                } else if now != hex::encode(spec_sha256) {
                    outln!(
                        "    (the spec file has changed since: the paths below follow the current spec)"
                    );
                }
            }
            _ => outln!("  ledger entry: not readable here"),
        }
        outln!("  approval: none recorded (approvals come with the control plane)");
        let revisions = st.revisions(&r).await?;
        let mut delivered = false;
        for o in c.sinks() {
            let Some(j) = (0..o.len()).find(|&j| o.members(o.row(j).0).contains(&(k as u32)))
            else {
                continue;
            };
            let (key, commitment) = o.row(j);
            let grouped = key & GROUP != 0;
            delivered = true;
            let path = p
                .sinks
                .iter()
                .find(|s| s.name == o.sink)
                .map(|s| chain_of(&p, s).join(" -> "))
                .unwrap_or_else(|| format!("sink {}", o.sink));
            outln!(
                "  -> {path}: row {j} of the batch, commitment {}",
                hex::encode(commitment)
            );
            let revised: Vec<String> = revisions
                .iter()
                .filter(|(s, _)| *s == o.sink)
                .map(|(_, seq)| seq.to_string())
                .collect();
            if !revised.is_empty() {
                outln!(
                    "     rewritten in place since delivery (`keys reencrypt`): ledger entries {}; the commitment is the row's now",
                    revised.join(", ")
                );
            }
            if grouped {
                let n = o.members(key).len();
                outln!(
                    "     aggregated with {} other record(s) into row {}",
                    n - 1,
                    c.row_id(o, key)
                );
            }
        }
        if !delivered {
            match undelivered(&p, &st, &r, &c, id).await {
                Some(true) => outln!(
                    "  -> quarantined (no sink received it; `sealtrail quarantine list` names the reason)"
                ),
                Some(false) => outln!(
                    "  -> loaded, then left out by the transforms (a filter, or a grouping that emitted no row for it): no sink received it"
                ),
                None => outln!(
                    "  -> no sink received it: quarantined (`sealtrail quarantine list` names the reason), or left out by a transform's filter"
                ),
            }
        }
    }
    if found == 0 {
        bail!(
            "no committed batch of pipeline `{}` read record {id}",
            p.name
        );
    }
    // Quarantined records repaired and replayed (`quarantine replay` with the origins file of
    // `quarantine show --out`), either way round.
    for (run, replayed, original, seq) in st.repairs_of(id).await? {
        if replayed == id {
            outln!(
                "  repairs quarantined record {original} (replay run {run}, ledger entry {seq}): `sealtrail lineage --id {original}` shows where it was quarantined"
            );
        } else {
            outln!(
                "  repaired, and replayed as record {replayed} by run {run} (ledger entry {seq})"
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The by-id table answers like a map from id to a list of expected rows: a row that
    /// matches takes its own entry, a changed row takes one of its id's, and the rest are left.
    #[test]
    fn by_id_takes_the_matching_row_first() {
        let mut t = ById::new();
        let e = |batch, row, c: u8| Expected {
            batch,
            row,
            format: RowFormat::Binary,
            commitment: [c; 32],
        };
        let (a, b) = (ById::key(t.seed, "src:k:1"), ById::key(t.seed, "src:k:2"));
        assert_ne!(a, b);
        assert_eq!(ById::key(t.seed, "src:k:1"), a);
        // Id 1 delivered by three runs, id 2 once.
        t.insert(a, e(0, 0, 1));
        t.insert(a, e(1, 0, 2));
        t.insert(a, e(2, 0, 3));
        t.insert(b, e(0, 1, 9));
        let by = |c: u8| move |x: &Expected| x.commitment == [c; 32];
        // The match is found wherever it sits among the id's rows.
        assert_eq!(t.take(a, by(2)).map(|(x, m)| (x.batch, m)), Some((1, true)));
        assert_eq!(t.take(a, by(1)).map(|(x, m)| (x.batch, m)), Some((0, true)));
        // No match: one of the id's rows is taken, as the changed one.
        assert_eq!(
            t.take(a, by(7)).map(|(x, m)| (x.batch, m)),
            Some((2, false))
        );
        assert!(t.take(a, by(3)).is_none());
        assert!(t.take(ById::key(t.seed, "src:k:3"), by(9)).is_none());
        let left: Vec<(u32, u32)> = t.left().map(|x| (x.batch, x.row)).collect();
        assert_eq!(left, vec![(0, 1)]);
        // Another audit, another seed: keys cannot be prepared in advance.
        assert_ne!(ById::new().seed, ById::new().seed);
    }

    fn found(cols: Vec<(&str, arrow::array::ArrayRef)>) -> FoundRow {
        FoundRow {
            id: String::new(),
            members: Vec::new(),
            row: RecordBatch::try_from_iter(cols).unwrap(),
        }
    }

    #[test]
    fn changed_columns_names_columns_not_values() {
        use arrow::array::{ArrayRef, Int64Array, StringArray};
        use std::sync::Arc;
        let s = |v: Option<&str>| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let n = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
        let a = found(vec![("a", s(Some("x"))), ("b", n(1)), ("c", s(None))]);
        let b = found(vec![("a", s(Some("x"))), ("b", n(2)), ("c", s(None))]);
        // Column `c` retyped, `d` added.
        let c = found(vec![
            ("a", s(Some("x"))),
            ("b", n(1)),
            ("c", n(0)),
            ("d", n(0)),
        ]);
        for format in [RowFormat::Json, RowFormat::Binary] {
            let inc = Inclusion {
                commitment: String::new(),
                index: 0,
                size: 1,
                path: Vec::new(),
            };
            let (_, proven) = row_proof("s", &a, a.bytes(format).unwrap(), format, inc).unwrap();
            assert!(proven_bytes(&proven, &a), "{format:?}");
            assert!(!proven_bytes(&proven, &b), "{format:?}");
            assert_eq!(changed_columns(&proven, &b), ["b"], "{format:?}");
            assert_eq!(changed_columns(&proven, &a), Vec::<String>::new());
            assert_eq!(changed_columns(&proven, &c), ["c", "d"], "{format:?}");
            // Never a value.
            assert!(!format!("{:?}", changed_columns(&proven, &b)).contains('2'));
        }
    }
}
