//! The runner: sources -> checks -> typed batches -> SQL transforms -> sinks, exactly once.
//!
//! A run, per source, batch by batch:
//! ```text
//!  decode thread:  read ─▶ validate (checks, unique state) ─▶ typed Arrow batch ─┐ (bounded
//!                                                                                 │  channel)
//!  async side:     already committed? ─yes─▶ skip (counts from state)  ◀─────────┘
//!                      │ no
//!                      ▼
//!                  transforms ─▶ each sink.commit(key) ─▶ quarantine.commit(key)
//!                      ─▶ audit BatchCommitted ─▶ state.commit_batch (the commit point)
//! ```
//! A crash anywhere leaves the run `running`; the next run of the pipeline resumes it with the
//! same id and inputs, re-reads (rebuilding `unique` state) and skips committed batches, and
//! each sink skips keys it already holds. So every record is loaded or quarantined exactly once.
//! A run ends only when `rows_in == rows_loaded + rows_quarantined` over all its batches.

pub mod custody;
pub mod openlineage;
pub mod quarantine;
pub mod state;
pub mod transform;

use arrow::array::{AsArray, RecordBatch};
use futures::FutureExt;
use sealtrail_connectors::{CommitKey, SinkWriter, open_sink};
use sealtrail_core::audit::{AuditEvent, AuditSink, now};
use sealtrail_core::record::Quarantined;
use sealtrail_core::{Counts, RunId};
use sealtrail_protect::guard::Guard;
use sealtrail_protect::keyring::{Keyring, Purpose};
use sealtrail_protect::ops::Sealer;
use sealtrail_protect::plan::{self as protect, ColumnState, Protector, Resolution};
use sealtrail_quality::Validator;
use sealtrail_spec::Source;
use sealtrail_spec::{Diagnostic, Pipeline, SourceConnector, Target};
use state::StateStore;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use transform::Transforms;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is wrong; every problem is listed.
    #[error(transparent)]
    Spec(#[from] sealtrail_spec::Error),
    /// A source could not be read, or a sink written.
    #[error(transparent)]
    Connector(#[from] sealtrail_connectors::Error),
    #[error(transparent)]
    State(#[from] state::StateError),
    /// A pipeline that has never loaded anything with this state store would load inputs that
    /// other pipelines of the store loaded: a renamed pipeline (whose loaded files and cursors
    /// stay under its old name) would load them all again. [`RunOptions::reload_inputs_of`]
    /// names the pipelines whose inputs may be loaded again.
    #[error(
        "pipeline `{pipeline}` has no succeeded run in this run state store, and {what}: if the pipeline was renamed, put its old name back (`pipeline: {other}`), since the files and cursor positions a pipeline loaded are kept under its name; to load them again on purpose (another pipeline reading the same inputs), run with --reload-inputs-of {other}. Nothing was loaded"
    )]
    LoadedByAnotherPipeline {
        pipeline: String,
        other: String,
        what: String,
    },
    /// An earlier run of this pipeline did not finish under a different spec.
    #[error(
        "run {run_id} of pipeline `{pipeline}` did not finish and was started with another version of the spec; run it with that spec to complete it, or pass --abandon-unfinished to give it up (its committed batches stay loaded)"
    )]
    UnfinishedRun { run_id: String, pipeline: String },
    /// Another process is running the pipeline.
    #[error(
        "pipeline `{pipeline}` is being run by {holder}; runs of one pipeline go one at a time: wait for that run to end (an interrupted run resumes when run again)"
    )]
    Busy { pipeline: String, holder: String },
    /// The pipeline's run lock was lost while the run went on (see
    /// [`state::PipelineLock::confirm`]).
    #[error(
        "run {run_id} of pipeline `{pipeline}` lost its run lock: {why} (a server restart, a failover, an idle timeout or an administrator ending the session), so another process could start or resume the pipeline meanwhile; the run stopped before committing batch {batch} of source `{source_name}`: run it again to resume it (or, if another process is running it now, wait for that one)"
    )]
    LockLost {
        run_id: String,
        pipeline: String,
        source_name: String,
        batch: u64,
        why: String,
    },
    /// Counts do not balance, or a run-level check failed.
    #[error("integrity check failed for run {run_id}: {reason}")]
    Integrity { run_id: String, reason: String },
    /// A transform failed on a batch, or its rows have no canonical encoding (the message
    /// says which).
    #[error("{0}")]
    Transform(String),
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    #[error("protection keys: {0}")]
    Keys(String),
    /// An incremental file that a succeeded run loaded has grown since (its first bytes are
    /// those the run loaded), and the records added cannot be told apart from those loaded
    /// (`why`): loading it again would load those records twice.
    #[error(
        "input `{input}` of source `{source_name}` grew since run {run_id} loaded it: its first {loaded_bytes} bytes are the bytes that run loaded (its records), and {why}, so only the whole file could be loaded again, which would load those records twice; nothing was loaded. To load what was added, move it to a file of a new name (a CSV file with its header line) and cut this one back to the bytes loaded (`truncate -s {loaded_bytes}`); to load the whole file again, records already loaded included, give it a new name. Producers that append to a file should append whole lines, uncompressed"
    )]
    InputGrew {
        input: String,
        source_name: String,
        run_id: String,
        loaded_bytes: u64,
        why: String,
    },
    /// A resumed run's input is no longer where the run read it, nor found again.
    #[error(
        "input `{input}` of source `{source_name}` of unfinished run {run_id} is gone, and {found}: put the file back (there, or where the spec's pattern finds it under the same name and size) to resume, or pass --abandon-unfinished to give the run up (its committed batches stay loaded)"
    )]
    InputGone {
        input: String,
        source_name: String,
        run_id: String,
        found: String,
    },
    /// The run was asked to stop ([`RunOptions::stop`]) and stopped between two batches: what
    /// it committed stays, and the next `run` resumes it from there.
    #[error(
        "run {run_id} of pipeline `{pipeline}` stopped on {signal} after {batches} committed batch(es) of source `{source_name}`; everything committed stays, and `sealtrail run` with the same spec resumes it from there"
    )]
    Stopped {
        signal: String,
        run_id: String,
        pipeline: String,
        source_name: String,
        batches: u64,
    },
    /// The run was asked to stop ([`RunOptions::stop`]) while it was being prepared (inputs
    /// chosen, a PostgreSQL source's range found), before it was recorded: nothing was read
    /// into a sink, written or recorded.
    #[error(
        "pipeline `{pipeline}` stopped on {signal} before its run started: nothing was loaded, written or recorded{}",
        if *.resumed { "; the unfinished run stays as it was, and `sealtrail run` resumes it" } else { "" }
    )]
    NotStarted {
        signal: String,
        pipeline: String,
        resumed: bool,
    },
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
    /// A stage stopped on a panic (a bug; the panic hook reports where): the decode or
    /// protection thread, or the commit of a batch. What the run committed stays, and the run
    /// resumes like one that was killed.
    #[error(
        "internal error (this is a bug): the {stage} stage of source `{source_name}` of run {run_id} panicked (the panic report gives its location); {batch}"
    )]
    StageStopped {
        stage: &'static str,
        source_name: String,
        run_id: String,
        /// What became of the batch it was working on.
        batch: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Progress callback: (source, rows read so far in this run).
pub type Progress = Arc<dyn Fn(&str, u64) + Send + Sync>;

pub struct RunOptions {
    /// `sqlite://...` or `postgres://...`.
    pub state_url: String,
    /// Keys for protection policies and for the quarantine's encrypted raw records.
    pub keyring: Arc<Mutex<Keyring>>,
    pub audit: Arc<dyn AuditSink>,
    pub abandon_unfinished: bool,
    pub progress: Option<Progress>,
    /// For benchmarks only: skip record commitments, batch roots and custody records (the
    /// lineage ids stay), to measure what they cost. Rows of such a run cannot be proven.
    pub skip_commitments_for_benchmark: bool,
    /// How output rows are encoded for their commitments: [`custody::RowFormat::Binary`]
    /// (row format 2); `Json` writes batches as versions before it did, which only tests of
    /// their compatibility want.
    pub row_format: custody::RowFormat,
    /// Where to send OpenLineage run events, if anywhere.
    pub openlineage: Option<openlineage::Emitter>,
    /// Set (to the signal's name: `SIGTERM`, `SIGINT`) to stop the run at the next batch
    /// boundary: the batch being committed is finished, no other is started, and the run
    /// ends as failed with [`Error::Stopped`] (recorded in the state store and the ledger),
    /// to be resumed by the next run.
    pub stop: Option<Arc<std::sync::OnceLock<String>>>,
    /// Other pipelines of the state store whose loaded inputs a first run of this one may load
    /// again (otherwise [`Error::LoadedByAnotherPipeline`]).
    pub reload_inputs_of: Vec<String>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("abandon_unfinished", &self.abandon_unfinished)
            .finish_non_exhaustive()
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: RunId,
    pub pipeline: String,
    pub resumed: bool,
    pub counts: Counts,
    pub per_source: Vec<(String, Counts)>,
    /// Quarantined rows by primary reason code (only batches committed by this process).
    pub by_reason: BTreeMap<String, u64>,
    pub sinks: Vec<SinkReport>,
    pub quarantine: String,
    /// Files that grew since an earlier run loaded them, whose loaded records this run read
    /// past (only the records added were loaded).
    pub grown: Vec<GrownInput>,
    /// Per source, the files this run left for a later one: modified less than its `min_age`
    /// ago (a resumed run reads the inputs its start chose, and leaves none).
    pub deferred: Vec<(String, u64)>,
}

/// An input file that grew since a run loaded its first bytes (see [`RunReport::grown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrownInput {
    pub source: String,
    /// The input as the run recorded it.
    pub input: String,
    /// How many of its first bytes (their records loaded before) were read past.
    pub read_past: u64,
}

/// A sink of a run: where it is and how many rows the run delivered to it.
#[derive(Debug, Clone)]
pub struct SinkReport {
    pub name: String,
    pub location: String,
    /// Rows of every committed batch of the run (resumed runs included). A transform's filter
    /// or aggregation makes this differ from the loaded records of the sink's source.
    pub rows: u64,
}

/// Checks a spec beyond compilation, with columns classified from their names (and the
/// spec's declarations): every sensitive column has a protection policy, every transform's
/// SQL plans against its input's (protected) columns, and no sink receives a raw sensitive
/// column its audience is not cleared for. Returns every problem found.
pub async fn check(p: &Pipeline) -> Vec<Diagnostic> {
    check_with(p, &HashMap::new()).await.1
}

/// What a spec that checks does that its author may not expect, one sentence each: sinks that
/// receive rows aggregated within each batch (a `GROUP BY` or `DISTINCT` does not group over
/// the whole input), and PostgreSQL sources read incrementally on a cursor (rows that commit
/// late below the cursor's last maximum are never read). `planned`: what [`check_with`] planned.
pub fn notes(p: &Pipeline, planned: &HashMap<String, Planned>) -> Vec<String> {
    let mut out = Vec::new();
    for sink in &p.sinks {
        let Some(schema) = planned
            .get(&sink.root_source)
            .and_then(|pl| pl.transforms.schema_of(&sink.from))
        else {
            continue;
        };
        if schema
            .field_with_name(custody::ID_COLUMN)
            .is_ok_and(|f| matches!(f.data_type(), arrow::datatypes::DataType::List(_)))
        {
            out.push(format!(
                "sink `{}` receives rows of `{}` aggregated within each batch of {} records (`batch_rows`; small files join into one batch, a large one is cut into several), not over the whole input: a group met in several batches is delivered once per batch. To group over everything, aggregate the sink's rows where they land (a view over the table), or raise `batch_rows` above the input's record count (memory grows with it)",
                sink.name, sink.from, p.batch_rows
            ));
        }
    }
    for s in &p.sources {
        if let sealtrail_spec::SourceConnector::Postgres(pg) = &s.connector
            && let Some(c) = &pg.cursor
        {
            out.push(format!(
                "source `{}` reads the rows whose `{c}` is above the last run's maximum: a row that commits later with a `{c}` at or below it (the same value, or one set by a transaction that committed after the run) is never read; fill `{c}` in commit order (docs/spec.md, PostgreSQL)",
                s.name
            ));
            if pg.key.is_none() {
                out.push(format!(
                    "source `{}` has no `key`: its records' lineage ids are the table's primary key when that is one declared column that holds no personal or financial data, else their `{c}` values, the rows that share one numbered in the order of the read (`VALUE#2`, `VALUE#3`...: a row inserted later with that value can change which row a number names); set `key:` to a unique column",
                    s.name
                ));
            }
        }
    }
    out
}

/// A source ready to run: its columns' classification, the policies resolved against it, and
/// its transforms planned over the protected columns.
#[derive(Debug)]
pub struct Planned {
    pub classes: Vec<sealtrail_protect::detect::Classification>,
    pub resolution: Resolution,
    pub transforms: Transforms,
    /// The release guards of its raw columns bound for audiences not cleared for all data.
    pub guards: Vec<Guard>,
}

/// Samples of each source's values, by source name then column (declared order).
pub type Samples = HashMap<String, Vec<Vec<String>>>;

/// [`check`] with value samples for the classifier. Also returns each source's resolution.
pub async fn check_with(
    p: &Pipeline,
    samples: &Samples,
) -> (HashMap<String, Planned>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut ok = HashMap::new();
    let diag = |at: (u64, u64), message: String, hint: String| Diagnostic {
        file: p.spec_path.clone(),
        line: at.0,
        column: at.1,
        message,
        hint: Some(hint),
    };
    for s in &p.sources {
        out.extend(
            sealtrail_quality::lint(s)
                .into_iter()
                .map(|(at, message, hint)| diag(at, message, hint)),
        );
        let classes = protect::classify_source(s, samples.get(&s.name).map_or(&[], Vec::as_slice));
        if let Some((message, hint)) = key_check(s, &classes, None) {
            out.push(diag(s.at, message, hint));
        }
        if let Some((message, hint)) = cursor_check(s, &classes) {
            out.push(diag(s.at, message, hint));
        }
        let res = match protect::resolve(s, &classes) {
            Ok(r) => r,
            Err(problems) => {
                out.extend(problems.into_iter().map(|x| diag(x.at, x.message, x.hint)));
                continue;
            }
        };
        let schema = protect::output_schema(&sealtrail_quality::typed::source_schema(s), &res);
        if schema.index_of(custody::ID_COLUMN).is_ok() {
            out.push(diag(
                s.at,
                format!(
                    "source `{}` has a column named `{}`, which sealtrail reserves for lineage ids",
                    s.name,
                    custody::ID_COLUMN
                ),
                "rename the column (or the `as:` of the policy that produces it)".into(),
            ));
            continue;
        }
        let schema = custody::with_id_field(&schema);
        match Transforms::plan(p, &s.name, schema).await {
            Err(errs) => {
                for e in errs {
                    out.push(diag(
                        e.at,
                        format!("transform `{}`: {}", e.transform, e.message),
                        "fix the SQL; it reads the columns declared for its input (see `columns:` of the source), after protection (`protect:` outputs replace the raw columns)".into(),
                    ));
                }
            }
            Ok(t) => {
                out.extend(release_check(p, s, &res.states, &t));
                out.extend(custody_check(p, s, &t));
                let guards = release_guards(p, s, &res.states, &t);
                ok.insert(
                    s.name.clone(),
                    Planned {
                        classes,
                        resolution: res,
                        transforms: t,
                        guards,
                    },
                );
            }
        }
    }
    (ok, out)
}

/// The columns of `source` whose names (or declared classes) say they hold sensitive data.
fn sensitive_columns(source: &Source) -> Vec<String> {
    protect::classify_source(source, &[])
        .iter()
        .zip(&source.columns)
        .filter(|(k, _)| k.is_sensitive())
        .map(|(_, c)| c.name.clone())
        .collect()
}

/// A PostgreSQL source's lineage ids end in its key's values (`key`, else the table's
/// `primary_key` when a run found a usable one, else the cursor), and the ids reach every sink
/// (`_sealtrail_id`), proof bundles and listings whatever protects the column itself: a key
/// column classified as sensitive is refused.
fn key_check(
    source: &Source,
    classes: &[sealtrail_protect::detect::Classification],
    primary_key: Option<&str>,
) -> Option<(String, String)> {
    let sealtrail_spec::SourceConnector::Postgres(pg) = &source.connector else {
        return None;
    };
    let (what, col) = match (pg.key.as_deref(), primary_key, pg.cursor.as_deref()) {
        (Some(k), _, _) => ("`key`", k),
        (None, Some(k), _) => ("primary key (which keys the records without a `key`)", k),
        (None, None, Some(c)) => ("`cursor` (which keys the records without a `key`)", c),
        (None, None, None) => return None,
    };
    let class = sensitive_class(source, classes, col)?;
    Some((
        format!(
            "source `{}`: the {what} column `{col}` is classified {class}; its values would reach every sink unprotected in the lineage ids (`{}`), whatever policy protects the column",
            source.name,
            custody::ID_COLUMN
        ),
        "key the records by a column that identifies a row without being personal or financial data (a surrogate id), or, if the column holds no such data, declare `class: none` on it".into(),
    ))
}

/// `TAG (KIND)` of column `col` when it is classified as sensitive.
fn sensitive_class(
    source: &Source,
    classes: &[sealtrail_protect::detect::Classification],
    col: &str,
) -> Option<String> {
    let k = &classes[source.column_index(col)?];
    k.is_sensitive().then(|| {
        let kind = k.kind.map_or(String::new(), |x| format!(" ({x})"));
        format!("{}{kind}", k.tag)
    })
}

/// A PostgreSQL source's `cursor` values mark the range each run read: the largest is kept in
/// the run state and in the ledger's `run_started` entry (the run's inputs), unprotected, so a
/// cursor column classified as sensitive is refused. (A cursor that also keys the records is
/// [`key_check`]'s.)
fn cursor_check(
    source: &Source,
    classes: &[sealtrail_protect::detect::Classification],
) -> Option<(String, String)> {
    let sealtrail_spec::SourceConnector::Postgres(pg) = &source.connector else {
        return None;
    };
    let col = pg.cursor.as_deref()?;
    if pg.key.is_none() && key_check(source, classes, None).is_some() {
        return None; // said once, as the column keying the records
    }
    let class = sensitive_class(source, classes, col)?;
    Some((
        format!(
            "source `{}`: the `cursor` column `{col}` is classified {class}; the largest value each run reads is kept unprotected in the run state and the ledger (where the next run starts)",
            source.name
        ),
        "use a column that grows in commit order without being personal or financial data (an `updated_at` timestamp, a sequence id), or, if the column holds no such data, declare `class: none` on it".into(),
    ))
}

/// The release check ("push, don't pull"): follow every sink column back through the SQL
/// transforms to the protection stage; a raw sensitive column may reach only an audience
/// cleared for its tag.
fn release_check(
    p: &Pipeline,
    source: &Source,
    states: &[ColumnState],
    t: &Transforms,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for sink in p.sinks.iter().filter(|k| k.root_source == source.name) {
        let Some(schema) = t.schema_of(&sink.from) else {
            continue;
        };
        for f in schema.fields() {
            for (path, st) in trace(&source.name, states, t, &sink.from, f.name()) {
                if sink.audience.cleared_for(st.tag) {
                    continue;
                }
                let what = st.kind.map_or(String::new(), |k| format!(" ({k})"));
                // A protection that leaves the data what it was ([`ColumnState::tag`]).
                let weak = match st.protected_by {
                    Some("hash") => Some((
                        "an unkeyed SHA-256",
                        "which anyone reverses by hashing every candidate value",
                        "`action: token` instead (HMAC-SHA256 under a keyring key: equal values still give equal tokens, so joins work)",
                    )),
                    Some("mask") => Some((
                        "a mask",
                        "which shows more than the first 6 and last 4 digits PCI DSS 4.0 (3.4.1, 3.5.1) allows of every card number",
                        "`keep_first` of at most 6 and `keep_last` of at most 4, or `action: token` or `fpe`",
                    )),
                    _ => None,
                };
                let (received, instead) = match weak {
                    Some((how, why, instead)) => (
                        format!("as {how} of {}{what} data, {why}:", st.tag),
                        format!("with {instead},"),
                    ),
                    None => (
                        format!("unprotected: {}{what} data,", st.tag),
                        "under the source's `protect:` (token, mask, encrypt, drop...), leave it out of the SQL,".to_string(),
                    ),
                };
                out.push(Diagnostic {
                    file: p.spec_path.clone(),
                    line: sink.at.0,
                    column: sink.at.1,
                    message: format!(
                        "sink `{}` (audience {}) would receive `{}` {received} via {} -> sink {}.{}",
                        sink.name,
                        sink.audience.name(),
                        f.name(),
                        path.join(" -> "),
                        sink.name,
                        f.name()
                    ),
                    hint: Some(format!(
                        "protect `{}` {instead} or send it to a sink whose audience is cleared for {} data (`restricted`)",
                        st.origin, st.tag
                    )),
                });
            }
        }
    }
    out
}

/// The release guards of a source (see [`sealtrail_protect::guard`]): each raw column that
/// reaches, through the SQL, a sink whose audience is not cleared for every tag, with the
/// least cleared such audience.
fn release_guards(
    p: &Pipeline,
    source: &Source,
    states: &[ColumnState],
    t: &Transforms,
) -> Vec<Guard> {
    // Source column -> (least cleared audience, a sink of that audience).
    let mut least: BTreeMap<usize, (sealtrail_spec::Audience, &str)> = BTreeMap::new();
    for sink in p.sinks.iter().filter(|k| k.root_source == source.name) {
        let Some(schema) = t.schema_of(&sink.from) else {
            continue;
        };
        for f in schema.fields() {
            for (_, st) in trace_all(&source.name, states, t, &sink.from, f.name()) {
                let Some(i) = st
                    .protected_by
                    .is_none()
                    .then(|| source.column_index(&st.origin))
                    .flatten()
                else {
                    continue;
                };
                let e = least.entry(i).or_insert((sink.audience, &sink.name));
                if sink.audience < e.0 {
                    *e = (sink.audience, &sink.name);
                }
            }
        }
    }
    least
        .into_iter()
        .filter_map(|(i, (audience, sink))| Guard::new(source, i, audience, sink))
        .collect()
}

/// Every sink must receive each row's lineage id and only columns with a canonical encoding,
/// or its rows could not be committed to and proven.
fn custody_check(p: &Pipeline, source: &Source, t: &Transforms) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for sink in p.sinks.iter().filter(|k| k.root_source == source.name) {
        let Some(schema) = t.schema_of(&sink.from) else {
            continue;
        };
        let diag = |message: String, hint: &str| Diagnostic {
            file: p.spec_path.clone(),
            line: sink.at.0,
            column: sink.at.1,
            message,
            hint: Some(hint.into()),
        };
        match schema.field_with_name(custody::ID_COLUMN) {
            Err(_) => out.push(diag(
                format!(
                    "sink `{}` would receive rows without `{}`: `{}` does not keep each row's lineage id",
                    sink.name,
                    custody::ID_COLUMN,
                    sink.from
                ),
                "transforms keep the id through projections, filters and aggregations (as the list of contributing ids); joins and set operations cannot name their source records yet, so deliver such results from a separate pipeline",
            )),
            Ok(f) if !custody::id_type(f.data_type()) => out.push(diag(
                format!(
                    "sink `{}`: `{}` is {} instead of the lineage id (text, or a list of text after an aggregation)",
                    sink.name,
                    custody::ID_COLUMN,
                    f.data_type()
                ),
                "do not compute a column of that name in SQL, and aggregate at most once per transform chain; the engine carries the id",
            )),
            Ok(_) => {}
        }
        if let Some(deps) = t
            .lineage
            .get(&sink.from)
            .and_then(|l| l.iter().find(|(n, _)| n == custody::ID_COLUMN))
            && deps.1.iter().any(|d| d != custody::ID_COLUMN)
        {
            out.push(diag(
                format!(
                    "sink `{}`: `{}` in `{}` is computed from other columns, not carried from the source record",
                    sink.name,
                    custody::ID_COLUMN,
                    sink.from
                ),
                "do not compute a column of that name in SQL; the engine carries it",
            ));
        }
        for (col, ty) in custody::unencodable(&schema) {
            out.push(diag(
                format!(
                    "sink `{}`: column `{col}` is {ty}, which has no canonical encoding for record commitments",
                    sink.name
                ),
                "CAST it in SQL to text, a number, a boolean, a date, a timestamp or a decimal",
            ));
        }
    }
    out
}

/// The sensitive protection-stage columns (raw, or weakly protected: [`ColumnState::tag`])
/// that column `col` of `table` is computed from,
/// each with its path (`source.col -> transform.col ...`).
fn trace<'a>(
    source: &str,
    states: &'a [ColumnState],
    t: &Transforms,
    table: &str,
    col: &str,
) -> Vec<(Vec<String>, &'a ColumnState)> {
    // A protected column's tag is `none`, unless its protection left it what it was.
    trace_all(source, states, t, table, col)
        .into_iter()
        .filter(|(_, s)| s.tag.is_sensitive())
        .collect()
}

/// Every protection-stage column that column `col` of `table` is computed from, each with
/// its path (`source.col -> transform.col ...`): column lineage through the SQL.
pub fn trace_all<'a>(
    source: &str,
    states: &'a [ColumnState],
    t: &Transforms,
    table: &str,
    col: &str,
) -> Vec<(Vec<String>, &'a ColumnState)> {
    if table == source {
        return states
            .iter()
            .filter(|s| s.name == col)
            .map(|s| (vec![format!("{source}.{col}")], s))
            .collect();
    }
    let (Some(deps), Some(input)) = (
        t.lineage
            .get(table)
            .and_then(|l| l.iter().find(|(n, _)| n == col)),
        t.input_of(table),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in &deps.1 {
        for (mut path, s) in trace_all(source, states, t, input, d) {
            path.push(format!("{table}.{col}"));
            out.push((path, s));
        }
    }
    out
}

/// Reads up to `n` records of `source`'s inputs (for PostgreSQL, of its range, unordered) and
/// returns each column's values. An input that cannot be read is an error: classifying it by
/// name alone would silently weaken the check. Blocks: call it off the async workers.
pub fn sample(
    source: &Source,
    inputs: &[String],
    n: usize,
) -> Result<Vec<Vec<String>>, sealtrail_connectors::Error> {
    let mut cols = vec![Vec::new(); source.columns.len()];
    if let SourceConnector::Postgres(pg) = &source.connector {
        if let Some(input) = inputs.first() {
            for row in sealtrail_connectors::pg::sample_rows(source, pg, input, n)? {
                for (c, v) in cols.iter_mut().zip(row) {
                    c.extend(v);
                }
            }
        }
        return Ok(cols);
    }
    // The first `n` records of the inputs in read order: past empty or header-only files, so
    // that a first file without records does not leave the values unsampled.
    let mut r = sealtrail_connectors::open_source(source, inputs.to_vec(), n)?;
    let mut taken = 0;
    while taken < n {
        let Some(d) = r.next_batch()? else { break };
        for row in 0..d.batch.len().min(n - taken) {
            for (ci, c) in cols.iter_mut().enumerate() {
                if let Some(v) = d.batch.get(row, ci) {
                    c.push(v.to_string());
                }
            }
        }
        taken += d.batch.len();
    }
    Ok(cols)
}

/// Chooses the inputs of every source: all matching files, minus those already loaded for
/// incremental file sources; for PostgreSQL, the range of rows to read (after the cursor
/// value where the last succeeded run stopped, up to the current maximum).
/// An incremental file is new unless a succeeded run loaded it: the same path, size and
/// modification time (no need to read it), or the same bytes under the same name relative to
/// the pattern (read and hashed: a file touched, copied again or moved with its project is
/// not loaded twice). A file whose name and size match no loaded file's is new without being
/// read: its digest is computed as the run loads it (CSV and JSON Lines). Of a loaded file that
/// grew since, only the records added are read ([`grown_since_loaded`]).
/// Also returns, per source with any, how many files were left for a later run (`min_age`).
async fn choose_inputs(
    p: &Pipeline,
    st: &StateStore,
) -> Result<(Vec<SourceInputs>, Vec<(String, u64)>)> {
    let mut out = Vec::new();
    let mut deferred = Vec::new();
    for s in &p.sources {
        let files = match &s.connector {
            SourceConnector::Csv(o) => &o.files,
            SourceConnector::Jsonl(f) | SourceConnector::Parquet(f) => f,
            SourceConnector::Postgres(pg) => {
                use sealtrail_connectors::pg::{PgInput, plan_input};
                let last = match &pg.cursor {
                    Some(_) => st
                        .last_loaded_input(&p.name, &s.name)
                        .await?
                        .and_then(|i| PgInput::decode(&i)),
                    None => None,
                };
                let mut input = plan_input(s, pg, last).await?;
                // A primary key that holds personal or financial data would reach every sink
                // in the lineage ids: the ids fall back to the cursor then (`check` refuses a
                // sensitive `key` or cursor).
                if let Some(k) = &input.primary_key
                    && sensitive_columns(s).contains(k)
                {
                    input.primary_key = None;
                }
                if pg.cursor.is_none() && st.last_loaded_input(&p.name, &s.name).await?.is_some() {
                    tracing::warn!(
                        source = %s.name,
                        "an earlier run loaded this source, and this run reads every row of it again, adding its rows to the sinks once more: the source has no `cursor` (a cursor column reads only the rows added since the last run)"
                    );
                }
                let fingerprint = format!("pg:{}", input.upto.as_deref().unwrap_or("full"));
                out.push((
                    s.name.clone(),
                    vec![state::ChosenInput {
                        input: input.encode(),
                        fingerprint,
                        content: None,
                        skip: 0,
                    }],
                ));
                continue;
            }
        };
        use sealtrail_connectors::files as fs;
        let mut chosen = Vec::new();
        // Unchanged files of a source that is not incremental, which earlier runs loaded.
        let mut reloaded = 0usize;
        let header = matches!(&s.connector, SourceConnector::Csv(o) if o.header);
        // Files modified within `min_age` (perhaps still being written), left for later.
        let mut young = 0usize;
        let now = std::time::SystemTime::now();
        for path in fs::list(&files.pattern)? {
            let fingerprint = fs::fingerprint(&path)?;
            if let Some(min) = files.min_age
                && let Some(modified) = fs::fingerprint_modified(&fingerprint)
            {
                // A time in the future is as young as can be.
                if now.duration_since(modified).unwrap_or_default() < min {
                    young += 1;
                    continue;
                }
            }
            let mut content = None;
            let mut skip = 0;
            if files.incremental {
                if st.is_loaded(&p.name, &s.name, &fingerprint).await? {
                    continue;
                }
                let name = fs::matched_name(&files.pattern, &path);
                // Only a file of a loaded file's name and size can hold its bytes; any other
                // is hashed by the decoder while the run loads it, not read once more here.
                // (Parquet is read by row group, not front to back: hashed here.)
                let size = fs::fingerprint_size(&fingerprint);
                let parquet = matches!(&s.connector, SourceConnector::Parquet(_));
                let loaded = st.loaded_versions(&p.name, &s.name, &name).await?;
                let maybe_loaded = loaded.iter().any(|l| l.size.is_none() || l.size == size);
                let digest = if parquet || size.is_none() || maybe_loaded {
                    // Reading a whole file: off the async workers.
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || fs::content_digest(&path))
                        .await
                        .map_err(|e| Error::Internal(format!("hashing an input: {e}")))??
                } else {
                    String::new()
                };
                if !digest.is_empty()
                    && let Some(run) = st.loaded_content(&p.name, &s.name, &name, &digest).await?
                {
                    tracing::warn!(
                        source = %s.name,
                        input = %path.display(),
                        "not loaded: run {run} loaded the same bytes as `{name}` (the file was touched, copied again or moved); change its name to load it again"
                    );
                    // Said once: from now on the file is known by its new fingerprint.
                    st.alias_loaded(&p.name, &s.name, &fingerprint, &run)
                        .await?;
                    continue;
                }
                skip = grown_since_loaded(st, s, &path, size, &loaded).await?;
                content = Some((name, digest));
            } else if st.is_loaded(&p.name, &s.name, &fingerprint).await? {
                reloaded += 1;
            }
            if header && fs::fingerprint_size(&fingerprint) == Some(0) {
                tracing::warn!(
                    source = %s.name,
                    input = %path.display(),
                    "the file is empty (not even a header line): read as holding no records"
                );
            }
            chosen.push(state::ChosenInput {
                input: path.display().to_string(),
                fingerprint,
                content,
                skip,
            });
        }
        if young > 0 {
            deferred.push((s.name.clone(), young as u64));
            tracing::warn!(
                source = %s.name,
                "{young} file(s) modified less than `min_age` ({} s) ago were left for a later run (they may still be being written)",
                files.min_age.map_or(0, |a| a.as_secs())
            );
        }
        if reloaded > 0 {
            tracing::warn!(
                source = %s.name,
                "{reloaded} of the source's {} file(s) were loaded by an earlier run and are loaded again, their records added to the sinks once more: the source is not incremental (`incremental: true` loads only files not loaded before)",
                chosen.len()
            );
        }
        out.push((s.name.clone(), chosen));
    }
    Ok((out, deferred))
}

/// The inputs a new run chose for one source, by source name.
type SourceInputs = (String, Vec<state::ChosenInput>);

/// Refuses the first run of a pipeline (none succeeded with this state store) that would load
/// inputs another pipeline of the store loaded under a source of the same name, unless that
/// pipeline is `allowed`: files of an incremental source by their fingerprint or bytes, and a
/// PostgreSQL source with a cursor by its relation. That is what a renamed pipeline does: what it
/// loaded is kept under its old name, so it would load everything again into the same sinks.
async fn loaded_under_another_name(
    p: &Pipeline,
    st: &StateStore,
    inputs: &[(String, Vec<state::ChosenInput>)],
    allowed: &[String],
) -> Result<()> {
    if st.has_succeeded_run(&p.name).await? {
        return Ok(());
    }
    for (source, chosen) in inputs {
        let Some(s) = p.sources.iter().find(|s| &s.name == source) else {
            continue;
        };
        // Per other pipeline: the inputs it loaded, in the run's order.
        let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match &s.connector {
            SourceConnector::Csv(o) if o.files.incremental => {}
            SourceConnector::Jsonl(f) | SourceConnector::Parquet(f) if f.incremental => {}
            SourceConnector::Postgres(pg) if pg.cursor.is_some() => {
                // A table is one relation whoever reads it; queries of two pipelines' sources
                // of one name may read different rows, and are not compared.
                let Some(what) = chosen
                    .first()
                    .and_then(|c| sealtrail_connectors::pg::PgInput::decode(&c.input))
                    .map(|i| i.what)
                    .filter(|w| w.starts_with("table "))
                else {
                    continue;
                };
                for (other, input) in st.last_loaded_inputs_of_others(&p.name, source).await? {
                    if allowed.contains(&other) {
                        continue;
                    }
                    if sealtrail_connectors::pg::PgInput::decode(&input)
                        .is_some_and(|i| i.what == what)
                    {
                        found.entry(other).or_default().push(what.clone());
                    }
                }
                if let Some((other, _)) = found.into_iter().next() {
                    return Err(Error::LoadedByAnotherPipeline {
                        pipeline: p.name.clone(),
                        other: other.clone(),
                        what: format!(
                            "its source `{source}` would read every row of {what} again, which pipeline `{other}` read up to its cursor under a source of the same name"
                        ),
                    });
                }
                continue;
            }
            _ => continue,
        }
        for c in chosen {
            let content = c.content.as_ref().filter(|(_, d)| !d.is_empty());
            for other in st
                .loaded_by_others(&p.name, source, &c.fingerprint, content)
                .await?
            {
                if !allowed.contains(&other) {
                    found.entry(other).or_default().push(c.input.clone());
                }
            }
        }
        if let Some((other, files)) = found.into_iter().next() {
            let shown: Vec<&str> = files.iter().take(3).map(String::as_str).collect();
            return Err(Error::LoadedByAnotherPipeline {
                pipeline: p.name.clone(),
                other: other.clone(),
                what: format!(
                    "{} of the {} file(s) its source `{source}` would load were loaded by pipeline `{other}` under a source of the same name ({}{})",
                    files.len(),
                    chosen.len(),
                    shown.join(", "),
                    if files.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    Ok(())
}

/// `msg` with every input name of the run in it replaced by `input <key>`, the input part of
/// its records' lineage ids ([`custody::input_key`]): for the ledger, which is never rewritten,
/// while a file's name can hold a person's (the state store keeps the message whole).
fn without_input_names(msg: &str, inputs: &[String]) -> String {
    let mut names: Vec<&String> = inputs.iter().filter(|i| !i.is_empty()).collect();
    // The longest first: a name inside another (`a.csv` in `data/a.csv`) must not break it.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = msg.to_string();
    for n in names {
        if out.contains(n.as_str()) {
            out = out.replace(n.as_str(), &format!("input {}", custody::input_key(n)));
        }
    }
    out
}

/// Of `path` (of `size` bytes, not loaded as it is): how many of its first bytes a succeeded
/// run loaded with records in them, when it is such a file grown since (0 when not). Those
/// records are then read past, and only the records added are loaded: a CSV (not UTF-16) or
/// JSON Lines file stored uncompressed, whose loaded bytes end with a line break. Any other
/// grown file fails the run: loading it whole again would load those records twice. (A loaded
/// version that held no record, an empty file or a header line alone, is no obstacle: loading
/// the file whole duplicates nothing.)
async fn grown_since_loaded(
    st: &StateStore,
    s: &sealtrail_spec::Source,
    path: &std::path::Path,
    size: Option<u64>,
    loaded: &[state::LoadedVersion],
) -> Result<u64> {
    let Some(size) = size else {
        return Ok(0);
    };
    // The longest loaded version the file starts with (it may have grown more than once).
    let mut found: Option<(u64, &state::LoadedVersion)> = None;
    for v in loaded {
        let Some(old) = v.size.filter(|&old| old > 0 && old < size) else {
            continue;
        };
        if found.is_some_and(|(f, _)| f >= old) {
            continue;
        }
        let prefix = {
            let path = path.to_path_buf();
            // Reading up to a whole file: off the async workers.
            tokio::task::spawn_blocking(move || {
                sealtrail_connectors::files::prefix_digest(&path, old)
            })
            .await
            .map_err(|e| Error::Internal(format!("hashing an input: {e}")))??
        };
        if prefix.as_deref() == Some(v.sha256.as_str())
            && st
                .read_records_of(&v.run_id, &s.name, &custody::input_key(&v.input))
                .await?
        {
            found = Some((old, v));
        }
    }
    let Some((old, v)) = found else {
        return Ok(0);
    };
    let grew = |why: String| Error::InputGrew {
        input: path.display().to_string(),
        source_name: s.name.clone(),
        run_id: v.run_id.clone(),
        loaded_bytes: old,
        why,
    };
    let unreadable = |e: std::io::Error| {
        Error::Connector(sealtrail_connectors::Error::Unreadable {
            input: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    match &s.connector {
        SourceConnector::Csv(o) if o.encoding.name().starts_with("UTF-16") => {
            return Err(grew(format!(
                "it is {}, whose records are not read past by their bytes",
                o.encoding.name()
            )));
        }
        SourceConnector::Csv(_) | SourceConnector::Jsonl(_) => {}
        _ => return Err(grew("it is not a CSV or JSON Lines file".into())),
    }
    let opened = sealtrail_connectors::files::InputBytes::open(path, false).map_err(unreadable)?;
    if let Some(c) = opened.compression() {
        return Err(grew(format!(
            "it is {c}-compressed: the records added cannot be told apart from those loaded by their bytes"
        )));
    }
    let last = {
        use std::io::{Read as _, Seek as _};
        let mut f = std::fs::File::open(path).map_err(unreadable)?;
        let mut b = [0u8; 1];
        f.seek(std::io::SeekFrom::Start(old - 1))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(unreadable)?;
        b[0]
    };
    if last != b'\n' {
        return Err(grew(
            "the bytes loaded do not end with a line break: that run read the file while its last record was being written".into(),
        ));
    }
    tracing::info!(
        source = %s.name,
        input = %path.display(),
        "the file grew since run {} loaded its first {old} bytes: reading past their records, loading only the records added",
        v.run_id
    );
    Ok(old)
}

struct Prepared {
    /// Protected valid rows, with their lineage ids in [`custody::ID_COLUMN`].
    valid: RecordBatch,
    quarantined: Vec<Quarantined>,
    rows_in: u64,
    custody: InputCustody,
    /// For a source with transforms: the batch's raw records and, for each row of `valid`, its
    /// record there, so that a record a transform fails on is quarantined with its raw bytes.
    raw: Option<(sealtrail_core::record::RawBatch, Vec<u32>)>,
}

/// Records of each source a run classifies its columns from (`check --data` samples as many).
pub const SAMPLE_ROWS: usize = 1000;

/// At most this many records of a batch are quarantined for failing a transform; more, and
/// the run fails (the SQL is more likely wrong than the records, and finding each costs a few
/// dozen runs of the transforms).
const TRANSFORM_FAILURES_PER_BATCH: usize = 100;

/// The batch's transforms applied: a record they fail on by itself (a `CAST` of text that is
/// no number, a division by zero) is quarantined as `transform_failed`, with the transform and
/// DataFusion's words (values withheld) as its rule, and the rest transformed. The run fails
/// instead when the records cannot be told ([`Transforms::failing_rows`]) or are too many.
async fn transformed(
    transforms: &Transforms,
    mut prepared: Prepared,
    keyed: bool,
) -> Result<(HashMap<String, Vec<RecordBatch>>, Prepared)> {
    let f = match transforms.apply(&prepared.valid).await {
        Ok(o) => return Ok((o, prepared)),
        Err(f) => f,
    };
    let rows = transforms
        .failing_rows(&prepared.valid, TRANSFORM_FAILURES_PER_BATCH)
        .await;
    let (Some(rows), Some((raw, raw_rows))) = (rows, prepared.raw.as_ref()) else {
        return Err(Error::Transform(
            transform_failure(transforms, &prepared, f, keyed).await,
        ));
    };
    let mut keep = vec![true; prepared.valid.num_rows()];
    for &r in &rows {
        keep[r] = false;
        let rule = match transforms.apply(&prepared.valid.slice(r, 1)).await {
            Err(e) => format!("transform({}): {}", e.transform, failure_words(&e)),
            Ok(_) => format!("transform({})", f.transform),
        };
        prepared.quarantined.push(sealtrail_quality::quarantine(
            raw,
            raw_rows[r] as usize,
            vec![sealtrail_core::Reason::new("transform_failed", rule)],
        ));
    }
    prepared.quarantined.sort_by_key(|q| q.pos);
    let raw_rows: Vec<u32> = raw_rows
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(r, _)| *r)
        .collect();
    prepared.valid = arrow::compute::filter_record_batch(&prepared.valid, &keep.into())
        .map_err(|e| Error::Internal(format!("filtering a batch: {e}")))?;
    if let Some((_, rows)) = prepared.raw.as_mut() {
        *rows = raw_rows;
    }
    match transforms.apply(&prepared.valid).await {
        Ok(o) => Ok((o, prepared)),
        Err(f) => Err(Error::Transform(
            transform_failure(transforms, &prepared, f, keyed).await,
        )),
    }
}

/// DataFusion's words for a transform's failure, on one line, values withheld: quoted text
/// and long digit runs ([`sealtrail_core::withhold_values`]), and every number standing on its
/// own (`1234.56 is too large to store in a Decimal128 of precision 5` quotes an amount; the
/// digits of a name such as `Int32` stay).
fn failure_words(f: &transform::Failed) -> String {
    let why = sealtrail_core::withhold_values(&f.error.find_root().to_string());
    let line = why.lines().next().unwrap_or_default();
    let mut out = String::with_capacity(line.len());
    let mut prev: Option<char> = None;
    let mut withheld = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let attached = prev.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '…');
        if c.is_ascii_digit() && !attached {
            while chars.next_if(|d| d.is_ascii_digit() || *d == '.').is_some() {}
            out.push('…');
            prev = Some('…');
            withheld = true;
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    if withheld && !out.ends_with("(values withheld)") {
        out.push_str(" (values withheld)");
    }
    out
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    #[test]
    fn input_names_leave_failure_messages_for_the_ledger() {
        let inputs = ["a.csv".to_string(), "data/a.csv".to_string()];
        let key = custody::input_key("data/a.csv");
        assert_eq!(
            without_input_names("cannot read data/a.csv: gone; nor a.csv", &inputs),
            format!(
                "cannot read input {key}: gone; nor input {}",
                custody::input_key("a.csv")
            )
        );
        assert_eq!(without_input_names("no name here", &inputs), "no name here");
    }

    #[test]
    fn failure_words_withhold_every_number_of_the_data() {
        let words = |m: &str| {
            failure_words(&transform::Failed {
                transform: "t".into(),
                error: datafusion::error::DataFusionError::Execution(m.into()),
            })
        };
        assert_eq!(
            words("1234.56 is too large to store in a Decimal128 of precision 5. Max is 999.99"),
            "Execution error: … is too large to store in a Decimal128 of precision … Max is … (values withheld)"
        );
        assert_eq!(
            words("Cannot cast string 'a@b.io' to value of Int32 type"),
            "Execution error: Cannot cast string '…' to value of Int32 type (values withheld)"
        );
        assert_eq!(
            words("Divide by zero error"),
            "Execution error: Divide by zero error"
        );
    }
}

/// Why a batch's transforms failed, for the run's error: which transform, on which record (its
/// lineage id and position, found by [`Transforms::failing_row`]), DataFusion's words with any
/// values withheld, and what to do so that such records are quarantined instead.
async fn transform_failure(
    transforms: &Transforms,
    prepared: &Prepared,
    f: transform::Failed,
    keyed: bool,
) -> String {
    let why = failure_words(&f);
    let record = match transforms.failing_row(&prepared.valid).await {
        Some(row) => prepared
            .valid
            .column_by_name(custody::ID_COLUMN)
            .and_then(|c| c.as_string_opt::<i32>())
            .map(|ids| {
                let id = ids.value(row);
                format!(
                    " on the record `{id}` ({} of {})",
                    custody::describe_position(id, keyed),
                    prepared.custody.input_named_by(id)
                )
            })
            .unwrap_or_default(),
        None => String::new(),
    };
    format!(
        "transform `{}` failed{record}: {why}; quarantine such records before it with a check on the source (a `parses` rule for a value the SQL casts, `between` for a divisor), or make the SQL take them (`TRY_CAST`, `CASE`, `NULLIF`)",
        f.transform
    )
}

/// The records of one input in a batch (a batch of small files holds several).
#[derive(Debug, Clone)]
struct InputPart {
    /// The input as the run recorded it (named when a resume finds it changed).
    input: String,
    /// The input part of its records' lineage ids ([`custody::input_key`]).
    input_key: String,
    first_pos: u64,
    last_pos: u64,
    records: u64,
}

/// A batch's input records for the chain of custody.
struct InputCustody {
    /// The inputs the batch read records of, in reading order.
    inputs: Vec<InputPart>,
    /// Every record of the batch, loaded or quarantined, in source order: (id, commitment).
    records: Vec<(String, sealtrail_ledger::entry::Hash)>,
}

impl InputCustody {
    /// The input record `i` of [`InputCustody::records`] was read from.
    fn input_of(&self, i: usize) -> &str {
        let mut end = 0;
        for p in &self.inputs {
            end += p.records as usize;
            if i < end {
                return &p.input;
            }
        }
        self.inputs.last().map_or("", |p| p.input.as_str())
    }

    /// The input a record of the batch with lineage id `id` was read from.
    fn input_named_by(&self, id: &str) -> &str {
        self.inputs
            .iter()
            .find(|p| custody::parse_id(id).is_some_and(|(_, key, _)| key == p.input_key))
            .or(self.inputs.first())
            .map_or("", |p| p.input.as_str())
    }
}

/// On resume, a batch that was already committed is read again (to rebuild the state of
/// later checks) and skipped; its records must be the ones committed, byte for byte, or the
/// run would mix two versions of its input (counts alone miss an input rewritten in place).
/// The custody record stored at the commit holds every input record's lineage id and
/// commitment; the batch just read must have the same, in the same order. A record stored
/// without commitments (`skip_commitments_for_benchmark`) has nothing to compare.
async fn same_records_as_committed(
    st: &StateStore,
    run_id: &RunId,
    source: &str,
    keyed: bool,
    batch_no: u64,
    reread: &InputCustody,
) -> Result<()> {
    let stored = st
        .custody(&state::CustodyRef {
            pipeline: String::new(), // not part of the record's key
            run_id: run_id.to_string(),
            source: source.to_string(),
            batch: batch_no,
            ledger_seq: None,
        })
        .await?;
    let integrity = |reason: String| Error::Integrity {
        run_id: run_id.to_string(),
        reason,
    };
    let Some(committed) = custody::CustodyView::parse(&stored) else {
        return Err(integrity(format!(
            "the custody record of committed batch {batch_no} of `{source}` in the state store is damaged, so the batch cannot be compared with the input read again; restore the state store from a backup, or pass --abandon-unfinished to give the run up (its committed batches stay loaded)"
        )));
    };
    if committed.inputs() == 0 {
        return Ok(());
    }
    let records = &reread.records;
    match custody::first_difference(&committed, records) {
        None => Ok(()),
        Some(i) => Err(integrity(format!(
            "batch {batch_no} of `{source}` was read again on resume and differs from what the run committed, from its record {} of {} on ({} of {}); the input changed since the run started. Restore the input as it was, or pass --abandon-unfinished to give the run up (its committed batches stay loaded)",
            i + 1,
            committed.inputs(),
            custody::describe_position(
                records.get(i).map_or(committed.input(i).0, |r| &r.0),
                keyed
            ),
            reread.input_of(i),
        ))),
    }
}

/// Runs (or resumes) the pipeline.
pub async fn run(p: &Pipeline, opts: &RunOptions) -> Result<RunReport> {
    // Everything that can be checked before touching data is checked first.
    let diags = check(p).await;
    if !diags.is_empty() {
        return Err(Error::Spec(sealtrail_spec::Error::Invalid(diags)));
    }
    let st = StateStore::open(&opts.state_url).await?;
    let result = run_with(p, opts, &st).await;
    // Closed however the run ended: SQLite then folds its write-ahead log into the database
    // and removes it, rather than leaving tens of megabytes beside it.
    st.close().await;
    result
}

async fn run_with(p: &Pipeline, opts: &RunOptions, st: &StateStore) -> Result<RunReport> {
    // Held to the end of the run: another process must not take this run for an interrupted
    // one and resume (or abandon) it while it goes on.
    let mut lock = st
        .lock_pipeline(&p.name)
        .await?
        .map_err(|holder| Error::Busy {
            pipeline: p.name.clone(),
            holder,
        })?;
    let (run_id, resumed) = match st.unfinished_run(&p.name).await? {
        Some(u) if opts.abandon_unfinished => {
            // In the ledger first: a run is never given up without a trace of what it left.
            opts.audit
                .record(&AuditEvent::RunAbandoned {
                    run_id: u.run_id.clone(),
                    pipeline: p.name.clone(),
                    counts: st.totals(&u.run_id, None).await?,
                    at: now(),
                })
                .map_err(Error::Audit)?;
            st.abandon(&u.run_id).await?;
            (None, false)
        }
        Some(u) if u.spec_sha256 != p.spec_sha256 => {
            return Err(Error::UnfinishedRun {
                run_id: u.run_id.to_string(),
                pipeline: p.name.clone(),
            });
        }
        Some(u) => (Some(u.run_id), true),
        None => (None, false),
    };
    // A signal while the run was being prepared (inputs hashed, a PostgreSQL range found):
    // stop before anything is recorded.
    let not_started = |resumed: bool| match opts.stop.as_ref().and_then(|s| s.get()) {
        Some(signal) => Err(Error::NotStarted {
            signal: signal.clone(),
            pipeline: p.name.clone(),
            resumed,
        }),
        None => Ok(()),
    };
    let mut deferred = Vec::new();
    let run_id = match run_id {
        Some(r) => {
            not_started(true)?;
            st.mark_running(&r).await?;
            r
        }
        None => {
            let (inputs, left) = choose_inputs(p, st).await?;
            deferred = left;
            loaded_under_another_name(p, st, &inputs, &opts.reload_inputs_of).await?;
            // Every input must open (and CSV headers fit the columns) before anything loads.
            preflight(p, &inputs)?;
            distinct_pg_tables(p).await?;
            not_started(false)?;
            let r = RunId::new();
            st.start_run(&r, &p.name, &p.spec_sha256, &inputs).await?;
            r
        }
    };
    let audit = |e: AuditEvent| opts.audit.record(&e).map_err(Error::Audit);
    let mut inputs_all = Vec::new();
    for s in &p.sources {
        inputs_all.extend(st.run_inputs(&run_id, &s.name).await?);
    }
    audit(AuditEvent::RunStarted {
        run_id: run_id.clone(),
        pipeline: p.name.clone(),
        spec_sha256: p.spec_sha256.clone(),
        resumed,
        inputs: inputs_all.clone(),
        at: now(),
    })?;
    let lineage = match &opts.openlineage {
        Some(em) => {
            let (planned, _) = check_with(p, &Samples::new()).await;
            let mut by_source = HashMap::new();
            for s in &p.sources {
                by_source.insert(s.name.clone(), st.run_inputs(&run_id, &s.name).await?);
            }
            let d = openlineage::describe(p, &planned, &by_source);
            em.emit(&openlineage::event(
                "START",
                p,
                run_id.as_str(),
                &d,
                None,
                None,
            ))
            .await;
            Some((em, d))
        }
        None => None,
    };
    let fresh = missing_local_folders(p);
    // Set when the first batch's commit to a sink begins. A resumed run may have committed
    // before (a kill between a sink's commit and the state store's leaves no trace here).
    let delivering = AtomicBool::new(resumed);
    let result = run_inner(p, opts, st, &run_id, &delivering, &mut lock)
        .await
        .map(|mut r| {
            r.deferred = deferred;
            r
        });
    if result.is_err() {
        remove_if_still_empty(&fresh);
    }
    if let Some((em, d)) = &lineage {
        let (kind, err) = match &result {
            Ok(_) => ("COMPLETE", None),
            Err(e) => ("FAIL", Some(e.to_string())),
        };
        // Unknown when the state store cannot be read (the run's own error says why).
        let counted = match (
            st.delivered(&run_id).await,
            st.read_per_input(&run_id).await,
        ) {
            (Ok(delivered), Ok(read)) => Some(openlineage::Counted { read, delivered }),
            _ => None,
        };
        em.emit(&openlineage::event(
            kind,
            p,
            run_id.as_str(),
            d,
            err.as_deref(),
            counted.as_ref(),
        ))
        .await;
    }
    match result {
        Ok(mut report) => {
            report.resumed = resumed;
            audit(AuditEvent::RunEnded {
                run_id: run_id.clone(),
                pipeline: p.name.clone(),
                counts: report.counts,
                at: now(),
            })?;
            Ok(report)
        }
        Err(e) => {
            let msg = e.to_string();
            // Best effort: the original error matters more than a failure to record it.
            // A run that failed before any sink received a batch holds nothing to complete:
            // the next run starts afresh (a spec fixed after a check that needed the data is
            // not refused as "another version"). A stopped one resumes, as its message says.
            let before_delivery =
                !delivering.load(Ordering::SeqCst) && !matches!(e, Error::Stopped { .. });
            let _ = st.fail(&run_id, &msg, before_delivery).await;
            let _ = audit(AuditEvent::RunFailed {
                run_id: run_id.clone(),
                pipeline: p.name.clone(),
                error: without_input_names(&msg, &inputs_all),
                at: now(),
            });
            Err(e)
        }
    }
}

/// The local folders of Parquet sinks and Delta tables (sinks' and the quarantine's) that do
/// not exist yet, each with the outermost of its folders that does not: opening a sink creates
/// them, and a run that fails before writing into them (a later sink cannot be opened, a check
/// fails) takes them away again, so that a failed first run leaves no empty output behind. (A
/// missing Delta or PostgreSQL table is created only by a commit that brings rows, or once the
/// run has gone well: [`SinkWriter::finish`].)
fn missing_local_folders(p: &Pipeline) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    p.sinks
        .iter()
        .map(|s| &s.target)
        .chain([&p.quarantine])
        .filter_map(|t| match t {
            Target::Parquet { dir, .. } => Some(dir.clone()),
            Target::Delta { uri, .. } if !uri.contains("://") => {
                Some(std::path::PathBuf::from(uri))
            }
            _ => None,
        })
        .filter(|dir| !dir.exists())
        .filter_map(|dir| {
            let top = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .last()?
                .to_path_buf();
            Some((dir, top))
        })
        .collect()
}

/// Removes each folder of `fresh` and its parents up to the recorded outermost one, as long as
/// they are empty (`remove_dir` refuses a folder that holds anything, so nothing written is
/// lost whoever wrote it).
fn remove_if_still_empty(fresh: &[(std::path::PathBuf, std::path::PathBuf)]) {
    for (dir, top) in fresh {
        for d in dir.ancestors() {
            if std::fs::remove_dir(d).is_err() || d == top.as_path() {
                break;
            }
        }
    }
}

/// Where to read each input a run recorded for `source`, with the recorded name: where it
/// was, or, for a file no longer there (its project or data folder moved, or mounted
/// elsewhere, between a stopped run and its resumption), the one file the spec's pattern now
/// finds under the same name relative to the pattern and with the same size. Its records
/// keep the input name, and so the ids, the run gave them; the batches the run committed are
/// read again and compared with their custody records before anything more loads.
async fn locate_inputs(
    source: &Source,
    st: &StateStore,
    run_id: &RunId,
) -> Result<Vec<(String, String)>> {
    use sealtrail_connectors::files as fs;
    let recorded = st.run_inputs_fingerprinted(run_id, &source.name).await?;
    let pattern = match &source.connector {
        SourceConnector::Csv(o) => &o.files.pattern,
        SourceConnector::Jsonl(f) | SourceConnector::Parquet(f) => &f.pattern,
        SourceConnector::Postgres(_) => {
            return Ok(recorded.into_iter().map(|(i, _)| (i.clone(), i)).collect());
        }
    };
    let mut listed: Option<Vec<std::path::PathBuf>> = None;
    let mut out = Vec::with_capacity(recorded.len());
    for (input, fingerprint) in recorded {
        if std::path::Path::new(&input).exists() {
            out.push((input.clone(), input));
            continue;
        }
        let listed = match &mut listed {
            Some(l) => l,
            None => listed.insert(fs::list(pattern)?),
        };
        // The fingerprint is `path|size|mtime` (the path may hold `|`).
        let size = fingerprint.rsplit('|').nth(1).unwrap_or_default();
        let found: Vec<&std::path::PathBuf> = listed
            .iter()
            .filter(|f| {
                let name = fs::matched_name(pattern, f);
                let same_name = input == name
                    || input
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with(std::path::MAIN_SEPARATOR));
                same_name && std::fs::metadata(f).is_ok_and(|m| m.len().to_string() == size)
            })
            .collect();
        match found.as_slice() {
            [one] => {
                let read = one.display().to_string();
                tracing::warn!(
                    source = %source.name,
                    input = %input,
                    now = %read,
                    "the input moved since run {run_id} started; reading it where it is now, under the name the run recorded"
                );
                out.push((read, input));
            }
            many => {
                return Err(Error::InputGone {
                    input,
                    source_name: source.name.clone(),
                    run_id: run_id.to_string(),
                    found: if many.is_empty() {
                        format!("no file under `{pattern}` has its name and size")
                    } else {
                        format!(
                            "{} files under `{pattern}` have its name and size",
                            many.len()
                        )
                    },
                });
            }
        }
    }
    Ok(out)
}

fn preflight(p: &Pipeline, inputs: &[(String, Vec<state::ChosenInput>)]) -> Result<()> {
    for (s, (_, files)) in p.sources.iter().zip(inputs) {
        if matches!(s.connector, SourceConnector::Postgres(_)) {
            continue; // checked by plan_input when the range was chosen
        }
        for i in files {
            // Opening the reader reads and checks the header; no record is consumed.
            let mut r = sealtrail_connectors::open_source(s, vec![i.input.clone()], 1)?;
            r.next_batch()?;
            if matches!(
                s.connector,
                SourceConnector::Csv(_) | SourceConnector::Jsonl(_)
            ) {
                sealtrail_connectors::files::check_compressed(std::path::Path::new(&i.input))?;
            }
        }
    }
    Ok(())
}

/// No two PostgreSQL sinks may write to one table. `check` compares their connection
/// references; this compares the tables the resolved connections reach (two references to
/// one database, `localhost` and `127.0.0.1`, `t` and `public.t`), before anything is written.
/// Each row's custody would otherwise be claimed by two sinks, and each batch key committed
/// twice to one table.
async fn distinct_pg_tables(p: &Pipeline) -> Result<()> {
    let mut seen: HashMap<String, &sealtrail_spec::Sink> = HashMap::new();
    for s in &p.sinks {
        let sealtrail_spec::Target::Postgres { url, table, .. } = &s.target else {
            continue;
        };
        // A sink that cannot be reached fails the run when it is opened, as it always has.
        let Ok((id, shown)) = sealtrail_connectors::pg::table_identity(&s.name, url, table).await
        else {
            continue;
        };
        if let Some(first) = seen.insert(id, s) {
            return Err(Error::Spec(sealtrail_spec::Error::Invalid(vec![
                sealtrail_spec::Diagnostic {
                    file: p.spec_path.clone(),
                    line: s.at.0,
                    column: s.at.1,
                    message: format!(
                        "sink `{}` writes to the same PostgreSQL table as sink `{}`: both reach {shown} on one server",
                        s.name, first.name
                    ),
                    hint: Some("give each sink its own table".into()),
                },
            ])));
        }
    }
    Ok(())
}

async fn run_inner(
    p: &Pipeline,
    opts: &RunOptions,
    st: &StateStore,
    run_id: &RunId,
    delivering: &AtomicBool,
    lock: &mut state::PipelineLock,
) -> Result<RunReport> {
    let mut report = RunReport {
        run_id: run_id.clone(),
        pipeline: p.name.clone(),
        resumed: false,
        counts: Counts::default(),
        per_source: Vec::new(),
        by_reason: BTreeMap::new(),
        sinks: Vec::new(),
        quarantine: String::new(),
        grown: Vec::new(),
        deferred: Vec::new(),
    };
    let mut qsink = open_sink("quarantine", &p.quarantine, quarantine::schema()).await?;
    report.quarantine = qsink.location();
    // The classifier sees a sample of each source's values: a column whose values turn out
    // sensitive must be protected before anything loads (the same check as `sealtrail check`,
    // so an edited spec or a changed feed cannot bypass it).
    let mut samples = Samples::new();
    let mut located = HashMap::new();
    for source in &p.sources {
        located.insert(
            source.name.clone(),
            locate_inputs(source, st, run_id).await?,
        );
    }
    for source in &p.sources {
        let inputs: Vec<String> = located[&source.name]
            .iter()
            .map(|(read, _)| read.clone())
            .collect();
        // Off the async workers: a PostgreSQL sample blocks on a runtime of its own.
        let s = source.clone();
        let got = tokio::task::spawn_blocking(move || sample(&s, &inputs, SAMPLE_ROWS))
            .await
            .map_err(|e| Error::Internal(format!("sampling a source: {e}")))??;
        samples.insert(source.name.clone(), got);
    }
    let (mut planned, mut diags) = check_with(p, &samples).await;
    // A primary key keying a PostgreSQL source (no `key` in the spec) whose sampled values
    // turn out sensitive: the ids would carry them into the sinks.
    for source in &p.sources {
        let pk = located[&source.name]
            .first()
            .and_then(|(read, _)| sealtrail_connectors::pg::PgInput::decode(read))
            .and_then(|i| i.primary_key);
        if let (Some(pk), Some(pl)) = (pk, planned.get(&source.name))
            && let Some((message, hint)) = key_check(source, &pl.classes, Some(&pk))
        {
            diags.push(Diagnostic {
                file: p.spec_path.clone(),
                line: source.at.0,
                column: source.at.1,
                message,
                hint: Some(hint),
            });
        }
    }
    if !diags.is_empty() {
        return Err(Error::Spec(sealtrail_spec::Error::Invalid(diags)));
    }
    let qsealer = {
        let mut ring = opts
            .keyring
            .lock()
            .map_err(|_| Error::Keys("keyring lock poisoned".into()))?;
        let (id, key) = ring
            .active("quarantine", Purpose::Encrypt)
            .map_err(|e| Error::Keys(e.to_string()))?;
        Sealer::new(&id, &key)
    };
    // Every sink opens (connects, reads or checks its table) before any source loads: a sink
    // that cannot be reached fails the run before anything is written, rather than after the
    // sources before its own have loaded into theirs.
    let mut opened: HashMap<&str, Vec<(SinkWriter, String)>> = HashMap::new();
    for source in &p.sources {
        let transforms = &planned
            .get(&source.name)
            .ok_or_else(|| Error::Internal(format!("source `{}` was not planned", source.name)))?
            .transforms;
        let mut sinks = Vec::new();
        for s in p.sinks.iter().filter(|s| s.root_source == source.name) {
            let sch = transforms
                .schema_of(&s.from)
                .ok_or_else(|| Error::Internal(format!("no schema for `{}`", s.from)))?;
            let w = open_sink(&s.name, &s.target, sch).await?;
            report.sinks.push(SinkReport {
                name: s.name.clone(),
                location: w.location(),
                rows: 0,
            });
            sinks.push((w, s.from.clone()));
        }
        opened.insert(&source.name, sinks);
    }
    for source in &p.sources {
        // A signal while the run was prepared (sources sampled, sinks opened) or while the
        // source before this one loaded: stop before this one starts.
        if let Some(signal) = opts.stop.as_ref().and_then(|s| s.get()) {
            return Err(Error::Stopped {
                signal: signal.clone(),
                run_id: run_id.to_string(),
                pipeline: p.name.clone(),
                source_name: source.name.clone(),
                batches: 0,
            });
        }
        let schema = sealtrail_quality::typed::source_schema(source);
        let Planned {
            classes,
            resolution,
            transforms,
            guards,
        } = planned
            .remove(&source.name)
            .ok_or_else(|| Error::Internal(format!("source `{}` was not planned", source.name)))?;
        let stored: Vec<state::StoredClass> = source
            .columns
            .iter()
            .zip(&classes)
            .map(|(c, k)| state::StoredClass {
                source: source.name.clone(),
                column: c.name.clone(),
                tag: k.tag.to_string(),
                kind: k.kind.map(|k| k.to_string()),
                confidence: k.confidence,
                evidence: k.evidence.clone(),
                run_id: run_id.to_string(),
            })
            .collect();
        st.save_classifications(&p.name, run_id, &stored).await?;
        let versions = Versions {
            spec: p.spec_sha256.clone(),
            transforms: transforms.version(),
            policy: policy_version(&resolution),
        };
        let protector = Protector::new(source, &schema, &resolution, opts.keyring.clone())
            .map_err(|e| Error::Keys(e.to_string()))?
            .with_guards(guards);
        let mut sinks = opened.remove(source.name.as_str()).unwrap_or_default();

        let inputs = located.remove(&source.name).unwrap_or_default();
        // Files that grew since a run loaded their first bytes: read past those records.
        let recorded_skips = st.run_input_skips(run_id, &source.name).await?;
        let mut grown: Vec<GrownInput> = recorded_skips
            .iter()
            .filter(|&(_, &skip)| skip > 0)
            .map(|(input, &skip)| GrownInput {
                source: source.name.clone(),
                input: input.clone(),
                read_past: skip,
            })
            .collect();
        grown.sort_by(|a, b| a.input.cmp(&b.input));
        report.grown.extend(grown);
        let skips: sealtrail_connectors::SkipLoaded = inputs
            .iter()
            .filter_map(|(read, name)| Some((read.into(), *recorded_skips.get(name)?)))
            .collect();
        // Each file is read up to the size it had when the run chose it (its fingerprint):
        // what a producer appends meanwhile is the next run's, and a resumed run reads the
        // same bytes as the attempt it resumes.
        let sizes: sealtrail_connectors::ReadSizes = {
            let recorded: HashMap<String, String> = st
                .run_inputs_fingerprinted(run_id, &source.name)
                .await?
                .into_iter()
                .collect();
            inputs
                .iter()
                .filter_map(|(read, name)| {
                    let size = sealtrail_connectors::files::fingerprint_size(recorded.get(name)?)?;
                    Some((read.into(), size))
                })
                .collect()
        };
        let commit = !opts.skip_commitments_for_benchmark;
        let keep_raw = !transforms.is_empty();
        // Batches in flight bound the run's memory (each is tens of megabytes in several
        // forms): every stage works on one while the next works on the one before, the
        // decode thread hands its batch over when protection takes it (a rendezvous), and one
        // protected batch may wait for the commit. Deeper queues bought no throughput on two
        // cores and cost ~200 MiB of resident memory at 10M rows.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Prepared>>(1);
        let src = source.clone();
        let batch_rows = p.batch_rows;
        let (ctx, crx) = std::sync::mpsc::sync_channel::<Result<Checked>>(0);
        let decoder = std::thread::Builder::new()
            .name(format!("decode-{}", source.name))
            .spawn(move || {
                decode_loop(src, inputs, (skips, sizes), batch_rows, schema, ctx, commit)
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
        let protect = std::thread::Builder::new()
            .name(format!("protect-{}", source.name))
            .spawn(move || protect_loop(protector, commit, keep_raw, crx, tx))
            .map_err(|e| Error::Internal(e.to_string()))?;

        let stopped = |stage, batch| Error::StageStopped {
            stage,
            source_name: source.name.clone(),
            run_id: run_id.to_string(),
            batch,
        };
        let mut batch_no = 0u64;
        let mut rows_seen = 0u64;
        let mut result = Ok(());
        while let Some(msg) = rx.recv().await {
            let prepared = match msg {
                Ok(x) => x,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            rows_seen += prepared.rows_in;
            // Nothing is committed without the run lock: had it gone, another process could
            // be resuming this very run, or loading the same new inputs in a run of its own.
            if let Err(why) = lock.confirm().await {
                result = Err(Error::LockLost {
                    run_id: run_id.to_string(),
                    pipeline: p.name.clone(),
                    source_name: source.name.clone(),
                    batch: batch_no,
                    why,
                });
                break;
            }
            // A panic in the commit (ours, or in DataFusion or a sink's writer under it) stops
            // the run like the other stages' panics, rather than the process: what was
            // written of the batch is skipped or completed when the run resumes (the sinks'
            // commits are idempotent per run and batch), as after a kill.
            let committed = AssertUnwindSafe(commit_one(
                p,
                st,
                run_id,
                &source.name,
                batch_no,
                prepared,
                &transforms,
                &mut sinks,
                &mut qsink,
                &qsealer,
                &versions,
                opts,
                &mut report,
                delivering,
            ))
            .catch_unwind()
            .await;
            match committed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    result = Err(e);
                    break;
                }
                Err(_) => {
                    result = Err(stopped("commit", PARTLY_WRITTEN));
                    break;
                }
            }
            if let Some(cb) = &opts.progress {
                cb(&source.name, rows_seen);
            }
            batch_no += 1;
            if let Some(signal) = opts.stop.as_ref().and_then(|s| s.get()) {
                result = Err(Error::Stopped {
                    signal: signal.clone(),
                    run_id: run_id.to_string(),
                    pipeline: p.name.clone(),
                    source_name: source.name.clone(),
                    batches: batch_no,
                });
                break;
            }
        }
        drop(rx);
        // Both threads end once the channels close; join both before reporting either.
        let protected = protect.join();
        let decoded = decoder.join();
        protected.map_err(|_| stopped("protection", NOT_COMMITTED))?;
        let digests = decoded.map_err(|_| stopped("decode", NOT_COMMITTED))?;
        result?;
        for (w, _) in &mut sinks {
            w.finish().await?;
        }
        st.set_content_digests(run_id, &source.name, &digests)
            .await?;

        let c = st.totals(run_id, Some(&source.name)).await?;
        if let Some((lo, hi)) = source.row_count
            && (lo.is_some_and(|l| c.rows_in < l) || hi.is_some_and(|h| c.rows_in > h))
        {
            return Err(Error::Integrity {
                run_id: run_id.to_string(),
                reason: format!(
                    "source `{}` read {} records, outside row_count_between [{}, {}]",
                    source.name,
                    c.rows_in,
                    lo.map_or("-".into(), |v| v.to_string()),
                    hi.map_or("-".into(), |v| v.to_string())
                ),
            });
        }
        report.per_source.push((source.name.clone(), c));
    }
    let total = st.totals(run_id, None).await?;
    if !total.balanced() {
        return Err(Error::Integrity {
            run_id: run_id.to_string(),
            reason: format!(
                "rows in {} != loaded {} + quarantined {}",
                total.rows_in, total.rows_loaded, total.rows_quarantined
            ),
        });
    }
    qsink.finish().await?;
    st.succeed(run_id, &p.name, total).await?;
    report.counts = total;
    let delivered = st.delivered(run_id).await?;
    for s in &mut report.sinks {
        s.rows = delivered.get(&s.name).copied().unwrap_or(0);
    }
    Ok(report)
}

/// What a stopped stage left of its batch (see [`Error::StageStopped`]).
const NOT_COMMITTED: &str = "the batch it was working on was not committed";
const PARTLY_WRITTEN: &str = "the batch it was committing may be partly written; resuming the run skips what was written of it and writes the rest, once";

/// A batch after decoding, checks and typed conversion, before protection.
struct Checked {
    raw: sealtrail_core::record::RawBatch,
    /// For each row of `valid`, its row in `raw`.
    rows: Vec<u32>,
    valid: RecordBatch,
    quarantined: Vec<Quarantined>,
    rows_in: u64,
    /// For each row of `raw`, its record in `custody.records` (which holds its lineage id).
    record_of: Vec<u32>,
    custody: InputCustody,
}

/// Lineage ids and input commitments of every record of a decoded batch.
fn input_custody(
    source: &str,
    d: &sealtrail_connectors::Decoded,
    commitments: bool,
) -> (Vec<u32>, InputCustody) {
    let commitment = |b: &[u8]| {
        if commitments {
            sealtrail_ledger::custody::commitment(b)
        } else {
            [0; 32]
        }
    };
    let b = &d.batch;
    // The batch's inputs in reading order, then any other a malformed record names.
    let mut names: Vec<Arc<str>> = b.inputs().map(|(_, n)| n.clone()).collect();
    let mut keys: Vec<String> = names.iter().map(|n| custody::input_key(n)).collect();
    // (input, position, raw row or usize::MAX for a malformed record, id, commitment)
    let mut recs: Vec<(usize, u64, usize, String, sealtrail_ledger::entry::Hash)> =
        Vec::with_capacity(b.len() + d.malformed.len());
    for (k, (rows, _)) in b.inputs().enumerate() {
        let ids = custody::RecordIds::new(source, &keys[k]);
        for r in rows {
            let id = ids.id(b.pos_kind, b.position(r), b.key(r).as_deref());
            recs.push((k, b.position(r), r, id, commitment(b.raw(r))));
        }
    }
    // A batch of small files may hold thousands of inputs: malformed records find theirs by
    // name in a map, not by a scan per record.
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    if !d.malformed.is_empty() {
        index.extend(names.iter().cloned().enumerate().map(|(k, n)| (n, k)));
    }
    for q in &d.malformed {
        let k = *index.entry(q.input.clone()).or_insert_with(|| {
            names.push(q.input.clone());
            keys.push(custody::input_key(&q.input));
            names.len() - 1
        });
        let id = custody::record_id(source, &keys[k], q.pos_kind, q.pos, q.key.as_deref());
        recs.push((k, q.pos, usize::MAX, id, commitment(&q.raw)));
    }
    // Records arrive in source order except malformed ones, which come separately.
    if !d.malformed.is_empty() {
        recs.sort_by_key(|r| (r.0, r.1));
    }
    let mut record_of = vec![0u32; b.len()];
    let mut inputs: Vec<InputPart> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        if r.2 != usize::MAX {
            record_of[r.2] = i as u32;
        }
        match inputs.last_mut() {
            Some(p) if p.input_key == keys[r.0] => {
                p.last_pos = r.1;
                p.records += 1;
            }
            _ => inputs.push(InputPart {
                input: names[r.0].to_string(),
                input_key: keys[r.0].clone(),
                first_pos: r.1,
                last_pos: r.1,
                records: 1,
            }),
        }
    }
    let c = InputCustody {
        inputs,
        records: recs.into_iter().map(|(_, _, _, id, c)| (id, c)).collect(),
    };
    (record_of, c)
}

/// `inputs`: (where to read it, the name the run recorded): the records of a moved input keep
/// the name, and so the ids, they had when the run started.
fn decode_loop(
    source: sealtrail_spec::Source,
    inputs: Vec<(String, String)>,
    (skips, sizes): (
        sealtrail_connectors::SkipLoaded,
        sealtrail_connectors::ReadSizes,
    ),
    batch_rows: usize,
    schema: arrow::datatypes::SchemaRef,
    tx: std::sync::mpsc::SyncSender<Result<Checked>>,
    commitments: bool,
) -> Vec<(String, String)> {
    // Content digests of incremental files read to their end, by recorded input name.
    let mut digests = Vec::new();
    let mut validator = Validator::new(&source);
    let recorded: HashMap<String, Arc<str>> = inputs
        .iter()
        .filter(|(read, name)| read != name)
        .map(|(read, name)| (read.clone(), Arc::from(name.as_str())))
        .collect();
    let inputs = inputs.into_iter().map(|(read, _)| read).collect();
    use sealtrail_connectors::SourceReader as _;
    let mut batch_no = 0u64;
    // Records keep their subject through the stages, for the key that seals them in quarantine.
    let subject_col = source.quarantine_subject();
    let mut reader =
        match sealtrail_connectors::open_source_within(&source, inputs, skips, sizes, batch_rows) {
            Ok(r) => sealtrail_connectors::Coalescing::new(r, batch_rows),
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return digests;
            }
        };
    loop {
        let next = reader.next_batch();
        for (input, d) in reader.content_digests() {
            let name = recorded.get(&*input).cloned().unwrap_or(input);
            digests.push((name.to_string(), d));
        }
        let mut decoded = match next {
            Ok(Some(d)) => d,
            Ok(None) => return digests,
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return digests;
            }
        };
        if let Some(col) = subject_col {
            decoded.batch.set_subject_column(col);
        }
        if !recorded.is_empty() {
            decoded.batch.rename_inputs(|n| recorded.get(n).cloned());
            for m in &mut decoded.malformed {
                if let Some(name) = recorded.get(&*m.input) {
                    m.input = name.clone();
                }
            }
        }
        let rows_in = decoded.rows_in();
        let (record_of, custody) = input_custody(&source.name, &decoded, commitments);
        let mut v = match validator.validate(&decoded.batch) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(Error::Internal(format!(
                    "reading back the keys of `unique` checks from a temporary file: {e}"
                ))));
                return digests;
            }
        };
        let mut quarantined = decoded.malformed;
        let typed = sealtrail_quality::typed::to_record_batch(
            &source,
            &schema,
            &decoded.batch,
            &mut v.passed,
        );
        let (valid, rows, bad) = match typed {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Err(Error::Internal(format!("building a batch: {e}"))));
                return digests;
            }
        };
        quarantined.extend(v.quarantined);
        quarantined.extend(bad);
        // Typed and checked: from here on only records' raw bytes are needed.
        let mut raw = decoded.batch;
        raw.release_fields();
        let checked = Checked {
            raw,
            rows,
            valid,
            quarantined,
            rows_in,
            record_of,
            custody,
        };
        debug_panic_in("decode", batch_no);
        batch_no += 1;
        if tx.send(Ok(checked)).is_err() {
            return digests; // the run stopped
        }
    }
}

/// The protection stage, on a thread of its own so that it overlaps decoding and encoding:
/// the only form in which valid records travel on is the protected one.
fn protect_loop(
    protector: Protector,
    commitments: bool,
    keep_raw: bool,
    rx: std::sync::mpsc::Receiver<Result<Checked>>,
    tx: tokio::sync::mpsc::Sender<Result<Prepared>>,
) {
    for (batch_no, msg) in (0u64..).zip(rx) {
        let c = match msg {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut quarantined = c.quarantined;
        // The digest column is SHA-256 of the source bytes: the input commitment, when the
        // run computes them (always, except in a benchmark's custody-off mode).
        let raw_sha256 = |i: usize| {
            let r = c.rows[i] as usize;
            if commitments {
                c.custody.records[c.record_of[r] as usize].1
            } else {
                sealtrail_ledger::custody::commitment(c.raw.raw(r))
            }
        };
        let with_ids = |b: RecordBatch| {
            let ids = arrow::array::StringArray::from_iter_values(c.rows.iter().map(|&r| {
                c.custody.records[c.record_of[r as usize] as usize]
                    .0
                    .as_str()
            }));
            let mut cols = b.columns().to_vec();
            cols.push(Arc::new(ids));
            RecordBatch::try_new(custody::with_id_field(&b.schema()), cols)
        };
        let valid = match protector
            .apply(&c.valid, raw_sha256)
            .map(|(b, f)| (with_ids(b), f))
        {
            Ok((Err(e), _)) => {
                let _ = tx.blocking_send(Err(Error::Internal(format!("lineage ids: {e}"))));
                return;
            }
            Ok((Ok(b), failed)) if failed.is_empty() => (b, c.rows),
            Ok((Ok(b), failed)) => {
                let mut keep = vec![true; b.num_rows()];
                for (i, reason) in failed {
                    keep[i] = false;
                    quarantined.push(sealtrail_quality::quarantine(
                        &c.raw,
                        c.rows[i] as usize,
                        vec![reason],
                    ));
                }
                let rows = c
                    .rows
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| **k)
                    .map(|(r, _)| *r)
                    .collect();
                match arrow::compute::filter_record_batch(&b, &keep.into()) {
                    Ok(b) => (b, rows),
                    Err(e) => {
                        let _ = tx
                            .blocking_send(Err(Error::Internal(format!("filtering a batch: {e}"))));
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(Error::Keys(format!("protecting a batch: {e}"))));
                return;
            }
        };
        // Quarantine in source order, whatever stage caught the record.
        quarantined.sort_by_key(|q| q.pos);
        let (valid, rows) = valid;
        let prepared = Prepared {
            valid,
            quarantined,
            rows_in: c.rows_in,
            custody: c.custody,
            raw: keep_raw.then_some((c.raw, rows)),
        };
        debug_panic_in("protection", batch_no);
        if tx.blocking_send(Ok(prepared)).is_err() {
            return; // the run stopped
        }
    }
}

/// Debug builds only: `SEALTRAIL_DEBUG_PANIC_STAGE=decode:N` (or `protection:N`) panics in
/// that stage just before it hands on its batch N (counted from 0 in each run, resumed or
/// not); `commit:N` panics in the commit of batch N after every sink and the quarantine
/// wrote it, before the ledger and the state record it. The tests show with it what a bug
/// there leaves behind and that the run resumes. (`reencrypt:N`: `keys reencrypt` after it
/// recorded its N-th rewrite, before the file is put in place; `reencrypt-quarantine:N`: `keys
/// reencrypt --quarantine` before it puts its N-th rewrite in place; `link:N`: `quarantine replay`
/// before it appends its N-th `records_repaired` entry.)
#[cfg(debug_assertions)]
pub fn debug_panic_in(stage: &str, batch_no: u64) {
    if let Ok(v) = std::env::var("SEALTRAIL_DEBUG_PANIC_STAGE")
        && v == format!("{stage}:{batch_no}")
    {
        panic!("a panic requested by SEALTRAIL_DEBUG_PANIC_STAGE={v}");
    }
}

#[cfg(not(debug_assertions))]
pub fn debug_panic_in(_stage: &str, _batch_no: u64) {}

/// The versions in force for a source's batches, as lowercase hex SHA-256.
#[derive(Debug, Clone)]
struct Versions {
    spec: String,
    transforms: String,
    policy: String,
}

/// SHA-256 of the resolved protection of a source: which action produces which column from
/// which input, with which parameters (key names, never key material).
fn policy_version(r: &Resolution) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for o in &r.outputs {
        h.update(format!("{}:{}:{:?}\n", o.input, o.name, o.action).as_bytes());
    }
    h.update(format!("digest={:?}", r.digest).as_bytes());
    hex::encode(h.finalize())
}

/// A batch's custody (input records and every sink's output commitments) and its roots.
fn batch_custody(
    input: Vec<(String, sealtrail_ledger::entry::Hash)>,
    per_sink: &[(String, Vec<RecordBatch>)],
    row_format: custody::RowFormat,
) -> std::result::Result<(custody::BatchCustody, custody::Roots), String> {
    let mut bc = custody::BatchCustody {
        input,
        row_format,
        ..Default::default()
    };
    bc.outputs = per_sink
        .iter()
        .map(|(sink, rows)| custody::sink_rows(sink, rows, &bc.input, bc.row_format))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let roots = bc.seal();
    Ok((bc, roots))
}

/// The batch's quarantined records by their first reason, added to the run's report.
fn tally_reasons<'a>(
    report: &mut RunReport,
    quarantined: &'a [Quarantined],
) -> HashMap<&'a str, u64> {
    let mut by_reason: HashMap<&str, u64> = HashMap::new();
    for q in quarantined {
        *by_reason
            .entry(
                q.reasons
                    .first()
                    .map(|r| r.code.as_str())
                    .unwrap_or("unknown"),
            )
            .or_default() += 1;
    }
    for (k, v) in &by_reason {
        *report.by_reason.entry(k.to_string()).or_default() += v;
    }
    by_reason
}

#[allow(clippy::too_many_arguments)]
async fn commit_one(
    p: &Pipeline,
    st: &StateStore,
    run_id: &RunId,
    source: &str,
    batch_no: u64,
    prepared: Prepared,
    transforms: &Transforms,
    sinks: &mut [(SinkWriter, String)],
    qsink: &mut SinkWriter,
    qsealer: &Sealer,
    versions: &Versions,
    opts: &RunOptions,
    report: &mut RunReport,
    delivering: &AtomicBool,
) -> Result<()> {
    let keyed = p
        .sources
        .iter()
        .any(|s| s.name == source && s.keys_records());
    // Before the counts: a record the transforms fail on is quarantined, not loaded (and a
    // resumed run, re-reading a committed batch, counts it alike).
    let (outputs, mut prepared) = transformed(transforms, prepared, keyed).await?;
    let counts = Counts {
        rows_in: prepared.rows_in,
        rows_loaded: prepared.valid.num_rows() as u64,
        rows_quarantined: prepared.quarantined.len() as u64,
    };
    if !counts.balanced() {
        return Err(Error::Integrity {
            run_id: run_id.to_string(),
            reason: format!("batch {batch_no} of `{source}` does not balance: {counts:?}"),
        });
    }
    if let Some(done) = st.batch(run_id, source, batch_no).await? {
        if done != counts {
            return Err(Error::Integrity {
                run_id: run_id.to_string(),
                reason: format!(
                    "batch {batch_no} of `{source}` re-read with different counts ({counts:?}) than committed ({done:?}); the input changed since the run started"
                ),
            });
        }
        same_records_as_committed(st, run_id, source, keyed, batch_no, &prepared.custody).await?;
        // The run's report counts its reasons over every batch, those an earlier attempt
        // committed too, as it counts its records.
        tally_reasons(report, &prepared.quarantined);
        return Ok(());
    }
    let key = CommitKey {
        pipeline: p.name.clone(),
        run_id: run_id.to_string(),
        source: source.to_string(),
        batch: batch_no,
    };
    let ic = &mut prepared.custody;
    let input = std::mem::take(&mut ic.records);
    if !opts.skip_commitments_for_benchmark && input.len() as u64 != counts.rows_in {
        return Err(Error::Internal(format!(
            "batch {batch_no} of `{source}`: {} input commitments for {} records",
            input.len(),
            counts.rows_in
        )));
    }
    let mut per_sink: Vec<(String, Vec<RecordBatch>)> = sinks
        .iter()
        .map(|(w, from)| {
            let rows = if from == source {
                vec![prepared.valid.clone()]
            } else {
                outputs.get(from).cloned().unwrap_or_default()
            };
            Ok::<_, Error>((w.name().to_string(), w.deliverable(rows)?))
        })
        .collect::<Result<_>>()?;
    // Output commitments are hashed on a blocking thread while the sinks encode and write the
    // same (shared, immutable) batches: the two are the heaviest steps of a commit.
    let hashing = (!opts.skip_commitments_for_benchmark).then(|| {
        let per_sink = per_sink.clone();
        let format = opts.row_format;
        tokio::task::spawn_blocking(move || batch_custody(input, &per_sink, format))
    });
    let mut held = Vec::new();
    delivering.store(true, Ordering::SeqCst);
    for (i, ((w, _), (_, rows))) in sinks.iter_mut().zip(&per_sink).enumerate() {
        if !w.commit(&key, rows).await? {
            held.push(i);
        }
    }
    let hashed = |h: tokio::task::JoinHandle<std::result::Result<_, String>>| async move {
        h.await
            .map_err(|e| Error::Internal(format!("hashing output commitments: {e}")))?
            .map_err(|e| Error::Transform(format!("a transform's rows cannot be committed: {e}")))
    };
    let (bc, roots) = match hashing {
        Some(h) => hashed(h).await?,
        None => (custody::BatchCustody::default(), custody::Roots::default()),
    };
    // Sinks that hold the batch already: an earlier attempt of this run committed it there
    // and stopped before the state store recorded it. Their custody is of the rows as they
    // were delivered then, read back (values sealed again now have other nonces).
    let (bc, roots) = if held.is_empty() || opts.skip_commitments_for_benchmark {
        (bc, roots)
    } else {
        for i in held {
            let (w, _) = &sinks[i];
            match w.delivered(&key, &per_sink[i].1).await? {
                Some(rows) => per_sink[i].1 = rows,
                None => tracing::warn!(
                    sink = w.name(),
                    batch = batch_no,
                    "the sink holds batch {batch_no} from an earlier attempt of run {run_id}, but it could not be read back as one batch: its custody record describes the rows as made now, and `audit` will report the rows whose values differ"
                ),
            }
        }
        let (format, input, per_sink) = (opts.row_format, bc.input, per_sink.clone());
        hashed(tokio::task::spawn_blocking(move || {
            batch_custody(input, &per_sink, format)
        }))
        .await?
    };
    let hex = |h: &sealtrail_ledger::entry::Hash| hex::encode(h);
    let sink_roots = roots
        .outputs
        .iter()
        .zip(&bc.outputs)
        .map(|(root, s)| sealtrail_core::audit::SinkOutput {
            sink: s.sink.clone(),
            rows: s.rows.len() as u64,
            root: hex(root),
        })
        .collect();
    let sealing = quarantine::Sealing {
        quarantine: qsealer,
        keyring: &opts.keyring,
        subject: p
            .sources
            .iter()
            .find(|s| s.name == source)
            .and_then(|s| Some(&s.columns[s.quarantine_subject()?])),
    };
    let qb = quarantine::to_batch(run_id.as_str(), source, &prepared.quarantined, &sealing)?;
    qsink.commit(&key, std::slice::from_ref(&qb)).await?;
    debug_panic_in("commit", batch_no);
    let by_reason = tally_reasons(report, &prepared.quarantined);
    let ledger_seq = opts
        .audit
        .record(&AuditEvent::BatchCommitted {
            run_id: run_id.clone(),
            source: source.to_string(),
            batch: batch_no,
            counts,
            spec_sha256: versions.spec.clone(),
            transforms_sha256: versions.transforms.clone(),
            policy_sha256: versions.policy.clone(),
            input_root: hex(&roots.input),
            outputs: sink_roots,
            at: now(),
        })
        .map_err(Error::Audit)?;
    if !prepared.quarantined.is_empty() {
        let mut by: Vec<(String, u64)> = by_reason
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        by.sort();
        opts.audit
            .record(&AuditEvent::RecordsQuarantined {
                run_id: run_id.clone(),
                batch: batch_no,
                rows: counts.rows_quarantined,
                by_reason: by,
                at: now(),
            })
            .map_err(Error::Audit)?;
    }
    // The commit point comes after the audit events: a crash in between re-runs this batch
    // (the sinks skip it) and records its events again, so the ledger may hold a batch twice
    // (same run, source and batch number) but never misses one.
    let ic = &prepared.custody;
    let row = state::CustodyRow {
        pipeline: p.name.clone(),
        inputs: ic
            .inputs
            .iter()
            .map(|i| state::CustodyInput {
                input_key: i.input_key.clone(),
                first_pos: i.first_pos,
                last_pos: i.last_pos,
                records: i.records,
            })
            .collect(),
        ledger_seq,
        data: bc.encode(),
        delivered: per_sink
            .iter()
            .map(|(name, rows)| (name.clone(), rows.iter().map(|b| b.num_rows() as u64).sum()))
            .collect(),
    };
    st.commit_batch(run_id, source, batch_no, counts, &row)
        .await?;
    Ok(())
}
