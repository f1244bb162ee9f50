//! `sealtrail keys reencrypt`: a sink's ciphertexts (a Parquet folder, a Delta table local or
//! on S3, a PostgreSQL table) rewritten under the active versions of their keys (after `keys
//! rotate`), one batch at a time.
//!
//! Rewriting a delivered file changes its rows' bytes, which is exactly what `audit` and
//! `prove` exist to detect. So each rewrite is a recorded revision of the batch's rows in the
//! sink: the file must first be exactly as delivered (a file changed by anyone else is never
//! re-encrypted, which would launder the change), the new rows' commitments make a new custody
//! record and output root, an `outputs_revised` ledger entry chains the old root to the new
//! one, and only then does the new file replace the old. `audit` and `prove` follow the chain.

use crate::custody_cmd::{Signed, batch_files, find_sink};
use crate::ledger_cmd::{self, LedgerArgs, load_verifier};
use crate::protect_cmd::{actor, open_keyring};
use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, AsArray, RecordBatch, StringBuilder};
use arrow::datatypes::SchemaRef;
use sealtrail_connectors::pg::{PgTable, TextUpdate};
use sealtrail_connectors::s3::TableCopy;
use sealtrail_engine::custody::{CustodyView, RowFormat, RowHasher};
use sealtrail_engine::state::CustodyRef;
use sealtrail_ledger::entry::{Event, Hash};
use sealtrail_ledger::merkle;
use sealtrail_protect::keyring::{KeyBytes, Keyring, Purpose};
use sealtrail_protect::ops::{Sealer, key_id_of};
use sealtrail_spec::{Codec, Target};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Exit code when a file is not as delivered.
const TAMPERED: i32 = 4;

#[derive(clap::Args, Debug)]
pub struct ReencryptArgs {
    /// The pipeline spec that delivers the sink.
    pub spec: PathBuf,
    /// The sink (Parquet, Delta local or on S3, PostgreSQL) whose values to rewrite.
    #[arg(
        long,
        required_unless_present = "quarantine",
        conflicts_with = "quarantine"
    )]
    pub sink: Option<String>,
    /// Instead of a sink, the pipeline's quarantine (a Parquet folder or a Delta table): its
    /// records kept for repair, under the active version of the `quarantine` key.
    #[arg(long, conflicts_with = "column")]
    pub quarantine: bool,
    /// The encrypted column(s) (default: every column of the sink that an `encrypt` policy
    /// makes and the transforms pass on under its name).
    #[arg(long, num_args = 1..)]
    pub column: Vec<String>,
    /// Who is re-encrypting (recorded in the ledger as a SHA-256 of the name; default `$USER`,
    /// `$LOGNAME` or the account the process runs as).
    #[arg(long)]
    pub by: Option<String>,
    /// Run state store, where the batches' custody records are: `sqlite://PATH` (default
    /// `<home>/state.db`) or `postgres://...`.
    #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
    pub state_url: Option<String>,
    /// Delta tables (sinks and quarantines): delete each replaced file once the commit that
    /// replaces it is made, instead of leaving it to a `VACUUM` (its old ciphertexts are then
    /// gone from disk, and table versions from before the rewrite can no longer be read by
    /// time travel).
    #[arg(long)]
    pub purge: bool,
}

/// Runs `keys reencrypt`; returns the exit code.
pub async fn run(home: Option<PathBuf>, la: &LedgerArgs, a: ReencryptArgs) -> Result<i32> {
    let p = sealtrail_spec::load(&a.spec)?;
    if a.quarantine {
        return quarantine(home, la, &p, &a).await;
    }
    let Some(sink) = a.sink.clone() else {
        bail!("name the sink to re-encrypt with --sink, or pass --quarantine");
    };
    let sk = find_sink(&p, &sink)?;
    let mut a = a;
    if a.column.is_empty() {
        a.column = encrypted_columns(&p, sk).await?;
        if a.column.is_empty() {
            outln!(
                "nothing to re-encrypt: no column of sink `{}` comes from an `encrypt` policy under its own name (name them with --column)",
                sink
            );
            return Ok(0);
        }
    }
    for c in &a.column {
        if c == sealtrail_engine::custody::ID_COLUMN {
            bail!("`{c}` holds lineage ids, never ciphertexts");
        }
    }
    // Home and state store as `audit` finds them: beside the spec unless named.
    let state = crate::StateArgs {
        home,
        state_url: a.state_url.clone(),
        ledger: la.clone(),
    };
    let home = state.home(Some(&a.spec));
    let place = match &sk.target {
        Target::Parquet { .. } => Place::Parquet,
        Target::Delta { uri, .. } if sealtrail_connectors::s3::is_s3(uri) => {
            // Read through a local copy of the table's log; the data files of the batches are
            // fetched one at a time, rewritten locally, and uploaded.
            let (copy, _) = TableCopy::new(uri, false)
                .await
                .map_err(|e| anyhow!("sink `{}`: {e}", sink))?;
            Place::Delta {
                dir: copy.dir().to_path_buf(),
                table: uri.clone(),
                purge: a.purge,
                copy: Some(copy),
            }
        }
        Target::Delta { uri, .. } if !uri.contains("://") => Place::Delta {
            dir: std::path::absolute(uri)?,
            table: uri.clone(),
            purge: a.purge,
            copy: None,
        },
        Target::Delta { uri, .. } => bail!(
            "sink `{}` is a Delta table at {uri}: `keys reencrypt` rewrites local and `s3://` tables only",
            sink
        ),
        Target::Postgres { url, table, .. } => Place::Postgres {
            table: Box::new(tokio::sync::Mutex::new(
                PgTable::open(&sk.name, url, table).await?,
            )),
            dir: home.join("reencrypt"),
            columns: a.column.clone(),
        },
    };
    let mut ring = open_keyring(&home, false)?;
    let url = state.url(&home);
    let st = crate::open_state(&url).await?;
    // No run of the pipeline (which may be resuming a batch of this sink) and no other
    // re-encryption (whose revisions would not chain with these) meanwhile.
    let mut lock = st.lock_pipeline(&p.name).await?.map_err(|holder| {
        anyhow!(
            "pipeline `{}` is being run or re-encrypted by {holder}; run this again once it has finished",
            p.name
        )
    })?;
    let verifier = load_verifier(&home, None)?;
    let (dir, _guard) = la.readable(&home)?;
    let (cp, _) = sealtrail_ledger::log::read_checkpoint(&dir, &verifier)?
        .ok_or_else(|| anyhow!("the ledger has no checkpoint"))?;
    let signed = Signed::new(&dir, &cp);
    let target = place.target(&sk.target);
    let files = match place {
        Place::Postgres { .. } => Vec::new(),
        _ => sealtrail_connectors::sink::sink_files(&sk.name, &target).await?,
    };
    let (who, actor) = actor(&a.by);
    let mut log = None;
    // Old key versions already named by a `key_event` of this command.
    let mut recorded_ids = BTreeSet::new();
    let (mut rewritten, mut values, mut finished, mut missing, mut skipped, mut lost) =
        (0usize, 0u64, 0usize, 0usize, 0usize, 0usize);
    for r in st.custody_index(&p.name, None).await? {
        still_locked(&mut lock, &p.name).await?;
        let revisions = st.revisions(&r).await?;
        let mismatch = || {
            eprintln!(
                "error: the custody record of run {} batch {} does not match the signed ledger: the state store was changed; run `sealtrail audit` (nothing more was re-encrypted)",
                r.run_id, r.batch
            );
            Ok(TAMPERED)
        };
        let mut now = match signed.sink_state(&r, &revisions, &sink) {
            None => return mismatch(),
            Some(None) => continue,
            Some(Some(now)) => now,
        };
        let record = st.custody(&r).await?;
        let Some(c) = CustodyView::parse(&record) else {
            return mismatch();
        };
        let Some((si, s)) = c.sink(&sink) else {
            return mismatch();
        };
        if s.len() as u64 != now.rows || !merkle::ct_eq(&c.output_root(s), &now.root) {
            return mismatch();
        }
        let delivered: Vec<Hash> = (0..s.len()).map(|j| s.row(j).1).collect();
        // The batch's rows in the sink, in custody order: its file (`file`, named in messages
        // as `label`), or a PostgreSQL table's rows with its lineage ids (`file` is then where
        // their rewrite waits, in the home folder).
        let (file, label, schema, batches) = if let Place::Postgres { table, dir, .. } = &place {
            let ids: Vec<String> = (0..s.len()).map(|j| c.row_id(s, s.row(j).0)).collect();
            let mut t = table.lock().await;
            let rows = match t.rows_with_ids(&ids).await? {
                Ok(rows) => rows,
                Err(shared) => {
                    eprintln!(
                        "warning: {} row(s) of batch {} of run {} share their lineage ids with other rows of {} (a record loaded twice, e.g. by `quarantine replay --again`), so they cannot be addressed by id: left under their key versions, which `decrypt` still reads",
                        shared.len(),
                        r.batch,
                        r.run_id,
                        t.location()
                    );
                    skipped += 1;
                    continue;
                }
            };
            let label = format!(
                "the rows of batch {} of run {} in {}",
                r.batch,
                r.run_id,
                t.location()
            );
            let file = dir.join(format!(
                "{}-{}-{}-{}",
                r.pipeline, r.run_id, r.source, r.batch
            ));
            (file, label, t.schema(), vec![rows])
        } else {
            let file = match batch_files(
                &files,
                &target,
                (&r.pipeline, &r.run_id, &r.source, r.batch),
            )
            .as_deref()
            {
                Some([one]) => one.clone(),
                None => {
                    missing += 1;
                    continue;
                }
                Some(_) => bail!(
                    "several files of sink `{}` claim batch {} of run {}: run `sealtrail audit`",
                    sink,
                    r.batch,
                    r.run_id
                ),
            };
            place.fetch(&file).await?;
            let (schema, batches) = read(&file)?;
            (file.clone(), file.display().to_string(), schema, batches)
        };
        let held = commitments(&batches, c.row_format(), &label)?;
        // A rewrite keeps the file's compression (whatever the spec says now); a PostgreSQL
        // batch's rows are staged in a file of the default's.
        let codec = match place {
            Place::Postgres { .. } => Codec::default(),
            _ => kept_codec(&file, &target)?,
        };
        let mut lost_here = 0;
        if held != delivered {
            // A rewrite recorded in the ledger and the state store but not yet put in place
            // (the command was interrupted): its file is complete; finish it.
            let recorded = place.pending(&file, &r, revisions.len(), codec);
            if place.find_pending(&recorded).await?
                && commitments(
                    &read(&recorded)?.1,
                    c.row_format(),
                    &recorded.display().to_string(),
                )? == delivered
            {
                place.put(&recorded, &file, &r).await?;
                finished += 1;
                continue;
            }
            // That rewrite is gone (removed by a VACUUM, say, or its staged copy dropped) and
            // the rows are exactly as they were before it was recorded: a revision back to
            // their root records that they stayed, and they are re-encrypted like any others.
            if let Some((back, root)) = lost_rewrite(&signed, &now, &c, si, &held) {
                place.drop_pending(&recorded).await?;
                let seq = append(
                    &mut log,
                    &home,
                    la,
                    vec![Event::OutputsRevised {
                        run_id: r.run_id.clone(),
                        source: r.source.clone(),
                        batch: r.batch,
                        sink: sink.clone(),
                        rows: now.rows,
                        old_root: now.root,
                        new_root: root,
                        action: LOST.into(),
                        actor,
                    }],
                )?;
                st.add_revision(&r, &sink, seq, &back.encode()).await?;
                eprintln!(
                    "warning: the rewrite of batch {} of run {} that an interrupted run of this command recorded is gone ({} holds the rows as they were before it): recorded that they stayed (`{LOST}`), and they are re-encrypted now",
                    r.batch, r.run_id, label
                );
                now.root = root;
                lost_here = 1;
                lost += 1;
            } else {
                let (are, them) = match place {
                    Place::Postgres { .. } => ("are", "them"),
                    _ => ("is", "it"),
                };
                eprintln!(
                    "error: {label} {are} not as batch {} of run {} delivered {them}: nothing in {them} was re-encrypted (a re-encryption would make the change look authorised). `sealtrail audit {} --sink {}` names the rows; restore {them}, then run this again",
                    r.batch,
                    r.run_id,
                    a.spec.display(),
                    sink,
                );
                return Ok(TAMPERED);
            }
        }
        // A rewrite never recorded (interrupted before its ledger entry) is dropped.
        // Revisions of the batch in every sink, numbered together (this command's own
        // revision back, when it recorded one above, included).
        let pending = place.pending(&file, &r, revisions.len() + lost_here + 1, codec);
        place.drop_pending(&pending).await?;
        let mut old_ids = BTreeSet::new();
        let (out, changed) =
            reencrypt_batches(&mut ring, &schema, batches, &a.column, &label, &mut old_ids)?;
        if changed == 0 {
            continue;
        }
        let mut revised = c.to_owned();
        let rows = &mut revised.outputs[si].rows;
        for (row, h) in rows
            .iter_mut()
            .zip(commitments(&out, c.row_format(), &label)?)
        {
            row.1 = h;
        }
        let new_root = revised.seal().outputs[si];
        // The new file first (complete and on disk, under a name no reader reads), then the
        // ledger entry, then the state store, then the file in place: an interruption
        // anywhere leaves either the old file under its old root or a finished rewrite to put
        // in place.
        if let Some(d) = pending.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        sealtrail_connectors::sink::write_parquet_file(&pending, &schema, &out, codec)
            .with_context(|| format!("writing {}", pending.display()))?;
        sync_dir(&pending)?;
        place.stage(&pending).await?;
        // The revision, and a `key_event` for each old key version it is the first to retire
        // (so a run stopped by a later file still left every retirement recorded).
        let mut events = vec![Event::OutputsRevised {
            run_id: r.run_id.clone(),
            source: r.source.clone(),
            batch: r.batch,
            sink: sink.clone(),
            rows: now.rows,
            old_root: now.root,
            new_root,
            action: "reencrypt".into(),
            actor,
        }];
        events.extend(retirements(old_ids, &mut recorded_ids, actor));
        let seq = append(&mut log, &home, la, events)?;
        st.add_revision(&r, &sink, seq, &revised.encode()).await?;
        sealtrail_engine::debug_panic_in("reencrypt", rewritten as u64);
        place.put(&pending, &file, &r).await?;
        rewritten += 1;
        values += changed;
    }
    if rewritten == 0 {
        outln!(
            "nothing to re-encrypt: every value of {} in sink `{}` is under its key's active version (or a subject's key)",
            a.column.join(", "),
            sink
        );
    } else {
        let what = match place {
            Place::Postgres { .. } => "batch(es) of rows",
            _ => "file(s)",
        };
        outln!(
            "re-encrypted {values} value(s) in {rewritten} {what} of sink `{}` under the active keys (by {who}); each batch has an `outputs_revised` ledger entry, so `audit` and `prove` check the new rows",
            sink
        );
    }
    if finished > 0 {
        outln!("finished {finished} rewrite(s) an interrupted run of this command had recorded");
    }
    if lost > 0 {
        outln!(
            "{lost} recorded rewrite(s) of an interrupted run of this command were gone: recorded as not applied (`{LOST}`) and done again"
        );
    }
    if skipped > 0 {
        eprintln!(
            "warning: {skipped} batch(es) of sink `{}` were left as they are (see above)",
            sink
        );
    }
    if missing > 0 {
        eprintln!(
            "warning: {missing} committed batch(es) of sink `{}` have no file: `sealtrail audit` reports their rows",
            sink
        );
    }
    Ok(0)
}

/// The columns of `sink` that an `encrypt` policy makes and every transform passes on under
/// the same name (by the column lineage of the SQL plans, as `lineage` shows it).
async fn encrypted_columns(
    p: &sealtrail_spec::Pipeline,
    sink: &sealtrail_spec::Sink,
) -> Result<Vec<String>> {
    let (planned, diags) = sealtrail_engine::check_with(p, &Default::default()).await;
    if !diags.is_empty() {
        bail!(
            "the spec does not check ({} problem(s)): run `sealtrail check`, or name the columns with --column",
            diags.len()
        );
    }
    let Some(pl) = planned.get(&sink.root_source) else {
        return Ok(Vec::new());
    };
    let Some(schema) = pl.transforms.schema_of(&sink.from) else {
        return Ok(Vec::new());
    };
    Ok(schema
        .fields()
        .iter()
        .filter(|f| {
            let from = sealtrail_engine::trace_all(
                &sink.root_source,
                &pl.resolution.states,
                &pl.transforms,
                &sink.from,
                f.name(),
            );
            matches!(from.as_slice(), [(_, st)] if st.protected_by == Some("encrypt") && st.name == *f.name())
        })
        .map(|f| f.name().clone())
        .collect())
}

fn read(f: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    sealtrail_connectors::sink::read_parquet_with_schema(f)
        .with_context(|| format!("reading {}", f.display()))
}

/// How a sink's batch file is replaced.
enum Place {
    /// A Parquet folder: the new file is renamed over the old one.
    Parquet,
    /// A Delta table: one commit removes the old file and adds the new one; with `purge`, the
    /// old file is then deleted. `dir` is the table's folder, or for a table on S3 the folder
    /// of `copy`, its local copy, whose files are fetched from and uploaded to the table.
    Delta {
        dir: PathBuf,
        table: String,
        purge: bool,
        copy: Option<TableCopy>,
    },
    /// A PostgreSQL table: the batch's rows get the rewritten columns' values in one
    /// transaction, by lineage id; until then the rewrite (a Parquet file, worked on in `dir`
    /// in the home folder) waits in the database, in `sealtrail_reencrypt_pending`.
    Postgres {
        table: Box<tokio::sync::Mutex<PgTable>>,
        dir: PathBuf,
        columns: Vec<String>,
    },
}

impl Place {
    /// The sink's target as its files are read: a table on S3 through its local copy.
    fn target(&self, target: &Target) -> Target {
        match self {
            Place::Delta {
                dir, copy: Some(_), ..
            } => Target::Delta {
                uri: dir.display().to_string(),
                compression: target.compression().unwrap_or_default(),
            },
            _ => target.clone(),
        }
    }

    /// Makes sure data file `file` is on the local disk (a table on S3: fetched into the copy).
    async fn fetch(&self, file: &Path) -> Result<()> {
        if let Place::Delta { copy: Some(c), .. } = self {
            c.fetch(&[file.to_path_buf()])
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    }

    /// Whether the rewrite `pending` exists (on S3, or in PostgreSQL: fetched to the local
    /// disk if it does).
    async fn find_pending(&self, pending: &Path) -> Result<bool> {
        match self {
            Place::Postgres { table, .. } => {
                let Some(bytes) = table.lock().await.pending(&pending_name(pending)).await? else {
                    return Ok(false);
                };
                if let Some(d) = pending.parent() {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("creating {}", d.display()))?;
                }
                std::fs::write(pending, bytes)
                    .with_context(|| format!("writing {}", pending.display()))?;
                Ok(true)
            }
            Place::Delta { copy: Some(c), .. } => c
                .fetch_if_present(pending)
                .await
                .map_err(|e| anyhow!("{e}")),
            _ => Ok(pending.exists()),
        }
    }

    /// Removes the rewrite `pending`, if there is one.
    async fn drop_pending(&self, pending: &Path) -> Result<()> {
        if let Place::Postgres { table, .. } = self {
            table
                .lock()
                .await
                .drop_pending(&pending_name(pending))
                .await?;
        }
        match self {
            Place::Delta { copy: Some(c), .. } => {
                c.delete(pending).await.map_err(|e| anyhow!("{e}"))
            }
            _ => match std::fs::remove_file(pending) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", pending.display()))
                }
                _ => Ok(()),
            },
        }
    }

    /// Puts the rewrite `pending`, written and synced on the local disk, where `put` takes it
    /// from (a table on S3: uploaded beside the table's files, read by no reader until its
    /// commit).
    async fn stage(&self, pending: &Path) -> Result<()> {
        match self {
            Place::Delta { copy: Some(c), .. } => {
                c.upload(pending).await.map_err(|e| anyhow!("{e}"))?;
            }
            Place::Postgres { table, .. } => {
                let bytes = std::fs::read(pending)
                    .with_context(|| format!("reading {}", pending.display()))?;
                table
                    .lock()
                    .await
                    .stage_pending(&pending_name(pending), &bytes)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The name batch `r`'s rewrite as revision `n` of the batch is written under until it is
    /// put in place: a hidden name in a Parquet folder, a file of no commit in a Delta table
    /// (readers see only the files the log names).
    fn pending(&self, file: &Path, r: &CustodyRef, n: usize, codec: Codec) -> PathBuf {
        match self {
            Place::Parquet => hidden_beside(file),
            Place::Delta { dir, .. } => dir.join(format!(
                "part-sealtrail-{}-{}-{}-r{n}{}.parquet",
                r.run_id,
                r.source,
                r.batch,
                codec.file_infix()
            )),
            Place::Postgres { .. } => {
                let mut name = file.as_os_str().to_owned();
                name.push(format!("-r{n}.parquet"));
                PathBuf::from(name)
            }
        }
    }

    /// Puts `pending` in the place of `file`, durably.
    async fn put(&self, pending: &Path, file: &Path, r: &CustodyRef) -> Result<()> {
        match self {
            Place::Postgres { table, columns, .. } => {
                let (schema, batches) = read(pending)?;
                let new = arrow::compute::concat_batches(&schema, &batches)?;
                let text = |b: &RecordBatch, c: &str| -> Result<Vec<Option<String>>> {
                    let a = b
                        .column_by_name(c)
                        .and_then(|a| a.as_string_opt::<i32>())
                        .ok_or_else(|| anyhow!("{}: no text column `{c}`", pending.display()))?;
                    Ok(a.iter().map(|v| v.map(str::to_string)).collect())
                };
                let ids: Vec<String> = text(&new, sealtrail_engine::custody::ID_COLUMN)?
                    .into_iter()
                    .flatten()
                    .collect();
                let mut t = table.lock().await;
                let now = match t.rows_with_ids(&ids).await? {
                    Ok(now) if now.num_rows() == ids.len() && ids.len() == new.num_rows() => now,
                    _ => bail!(
                        "{} no longer holds the rows of batch {} of run {} once each: run `sealtrail audit`",
                        t.location(),
                        r.batch,
                        r.run_id
                    ),
                };
                let mut set = Vec::with_capacity(columns.len());
                for c in columns {
                    set.push(TextUpdate {
                        column: c.clone(),
                        old: text(&now, c)?,
                        new: text(&new, c)?,
                    });
                }
                t.update_text_columns(&ids, &set, Some(&pending_name(pending)))
                    .await?;
                std::fs::remove_file(pending)
                    .with_context(|| format!("removing {}", pending.display()))?;
                Ok(())
            }
            Place::Parquet => {
                std::fs::rename(pending, file)
                    .with_context(|| format!("replacing {}", file.display()))?;
                sync_dir(file)
            }
            Place::Delta {
                dir,
                table,
                purge,
                copy,
            } => {
                let key = sealtrail_connectors::sink::CommitKey {
                    pipeline: r.pipeline.clone(),
                    run_id: r.run_id.clone(),
                    source: r.source.clone(),
                    batch: r.batch,
                };
                let batch = Some((key.app_id(), r.batch as i64));
                replace_in_delta(dir, table, copy.as_ref(), *purge, file, pending, batch).await
            }
        }
    }
}

/// The action of an `outputs_revised` entry that records a batch's rows as they were before
/// its last revision, whose rewrite was lost before it was put in place.
const LOST: &str = "reencrypt_lost";

/// When the last revision of batch rows in force (`now`) was never put in place: the rows'
/// commitments `held` make exactly the root that revision started from. Then the custody
/// record of the rows as they are (`c` with `held` as sink `si`'s commitments) and that root.
fn lost_rewrite(
    signed: &Signed,
    now: &crate::custody_cmd::SinkState,
    c: &CustodyView,
    si: usize,
    held: &[Hash],
) -> Option<(sealtrail_engine::custody::BatchCustody, Hash)> {
    let Event::OutputsRevised { old_root, .. } = signed.entry(*now.revisions.last()?)?.event else {
        return None;
    };
    let mut back = c.to_owned();
    let rows = &mut back.outputs.get_mut(si)?.rows;
    if rows.len() != held.len() {
        return None;
    }
    for (row, h) in rows.iter_mut().zip(held) {
        row.1 = *h;
    }
    merkle::ct_eq(&back.seal().outputs[si], &old_root).then_some((back, old_root))
}

/// A `key_event` (`reencrypt`) for each of `old_ids` not in `recorded` yet (which then holds
/// them): each old key version is named once, by the first rewrite that retires it.
fn retirements(
    old_ids: BTreeSet<String>,
    recorded: &mut BTreeSet<String>,
    actor: [u8; 32],
) -> Vec<Event> {
    old_ids
        .into_iter()
        .filter(|id| recorded.insert(id.clone()))
        .map(|key_id| Event::KeyEvent {
            key_id,
            action: "reencrypt".into(),
            actor,
        })
        .collect()
}

/// Appends `events` to the ledger, opened on first use; the sequence number of the first.
fn append(
    log: &mut Option<Box<dyn sealtrail_ledger::log::LedgerLog>>,
    home: &Path,
    la: &LedgerArgs,
    events: Vec<Event>,
) -> Result<u64> {
    let w = match log {
        Some(w) => w,
        None => log.insert(
            ledger_cmd::open_writer(home, la, sealtrail_ledger::log::OpenMode::FailClosed)
                .context("opening the ledger to record the re-encryption")?,
        ),
    };
    Ok(w.append(events)
        .map_err(|e| anyhow!("recording in the ledger: {e}"))?
        .first_seq)
}

/// The name a PostgreSQL rewrite's file is kept under in the database.
fn pending_name(pending: &Path) -> String {
    pending
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Syncs the folder holding `f` (its entry for `f` is then on disk).
fn sync_dir(f: &Path) -> Result<()> {
    let dir = f.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Each row's commitment, in file order.
fn commitments(batches: &[RecordBatch], format: RowFormat, f: &str) -> Result<Vec<Hash>> {
    let mut out = Vec::new();
    for b in batches {
        let mut h = RowHasher::new(format, b).map_err(|e| anyhow!("{f}: {e}"))?;
        for r in 0..b.num_rows() {
            out.push(h.commitment(r).map_err(|e| anyhow!("{f}: {e}"))?);
        }
    }
    Ok(out)
}

/// `batches` with every `st1:` value of `columns` under a key version that is not its key's
/// active one sealed again under the active one (subject keys, shredded or not, are left
/// alone); with the number of values re-encrypted. The old key ids go into `old_ids`.
fn reencrypt_batches(
    ring: &mut Keyring,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    columns: &[String],
    f: &str,
    old_ids: &mut BTreeSet<String>,
) -> Result<(Vec<RecordBatch>, u64)> {
    let mut idx = Vec::with_capacity(columns.len());
    for c in columns {
        let i = schema
            .index_of(c)
            .map_err(|_| anyhow!("{f} has no column `{c}`"))?;
        idx.push((c, i));
    }
    let mut out = Vec::with_capacity(batches.len());
    let mut changed = 0u64;
    let mut text = String::new();
    for b in batches {
        let mut cols = b.columns().to_vec();
        for &(c, i) in &idx {
            let Some(a) = b.column(i).as_string_opt::<i32>() else {
                bail!("{f}: column `{c}` does not hold text");
            };
            let mut nb = StringBuilder::with_capacity(a.len(), a.values().len());
            for r in 0..a.len() {
                if a.is_null(r) {
                    nb.append_null();
                    continue;
                }
                let v = a.value(r);
                match active_if_older(ring, v.as_bytes())? {
                    Some((id, new_id, new_key)) => {
                        let plain = zeroize::Zeroizing::new(
                            Sealer::new(&id, &ring.by_id(&id)?)
                                .open(v)
                                .map_err(|e| anyhow!("{f}: {e}"))?,
                        );
                        text.clear();
                        Sealer::new(&new_id, &new_key).seal(&plain, &mut text);
                        nb.append_value(&text);
                        old_ids.insert(id);
                        changed += 1;
                    }
                    None => nb.append_value(v),
                }
            }
            cols[i] = std::sync::Arc::new(nb.finish());
        }
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    Ok((out, changed))
}

/// Stops the command before its next rewrite when the pipeline's run lock is gone (its
/// PostgreSQL session ended: a run could now be writing beside it). What it rewrote stays
/// recorded; running it again goes on from there.
async fn still_locked(
    lock: &mut sealtrail_engine::state::PipelineLock,
    pipeline: &str,
) -> Result<()> {
    lock.confirm().await.map_err(|why| {
        anyhow!(
            "the run lock of pipeline `{pipeline}` was lost: {why}; nothing more was re-encrypted (what was is recorded): run this again to go on"
        )
    })
}

/// `keys reencrypt --quarantine`: every record kept for repair in the pipeline's quarantine
/// (a Parquet folder, or a Delta table local or on S3) whose `raw` value is sealed under an
/// old version of its key is sealed again under the active one, file by file: in a Parquet
/// folder a complete new file is renamed over the old one; in a Delta table one commit
/// replaces the old file with the new one (deleted at once with `--purge`, else left to a
/// VACUUM). The records, reasons and positions stay as they are. Quarantine files are no sink
/// output (no custody record covers their bytes; a record's commitment covers its plain
/// bytes, which do not change), so a rewrite needs no revision; each old key version is
/// named by a `key_event` before the first file that retires it is put in place.
async fn quarantine(
    home: Option<PathBuf>,
    la: &LedgerArgs,
    p: &sealtrail_spec::Pipeline,
    a: &ReencryptArgs,
) -> Result<i32> {
    let state = crate::StateArgs {
        home,
        state_url: a.state_url.clone(),
        ledger: la.clone(),
    };
    let home = state.home(Some(&a.spec));
    let mut ring = open_keyring(&home, false)?;
    let st = crate::open_state(&state.url(&home)).await?;
    // No run of the pipeline writes into the quarantine meanwhile.
    let mut lock = st.lock_pipeline(&p.name).await?.map_err(|holder| {
        anyhow!(
            "pipeline `{}` is being run or re-encrypted by {holder}; run this again once it has finished",
            p.name
        )
    })?;
    let (who, actor) = actor(&a.by);
    let Some(q) = QuarantinePlace::open(&p.quarantine, a.purge).await? else {
        outln!(
            "nothing to re-encrypt: there is no quarantine at {} (no record was quarantined)",
            at(&p.quarantine)
        );
        return Ok(0);
    };
    let mut log = None;
    let mut recorded_ids = BTreeSet::new();
    let (mut rewritten, mut values) = (0usize, 0u64);
    // Runs the state store knows as another pipeline's (a quarantine folder may be shared, and
    // the other pipeline's records may be sealed under another keyring): their records are
    // left as they are, as `quarantine list` and `show` leave them out.
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut owner_of: HashMap<String, Option<String>> = HashMap::new();
    for file in q.files().await? {
        still_locked(&mut lock, &p.name).await?;
        q.fetch(&file).await?;
        let label = file.display().to_string();
        let (schema, batches) = read(&file)?;
        let mut old_ids = BTreeSet::new();
        let mut out = Vec::with_capacity(batches.len());
        let mut changed = 0u64;
        for b in batches {
            let runs = b
                .column_by_name("run_id")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| anyhow!("{label} is not a sealtrail quarantine file (no `run_id`)"))?
                .clone();
            let mut foreign = vec![false; b.num_rows()];
            for (r, f) in foreign.iter_mut().enumerate() {
                let run = runs.value(r);
                if !owner_of.contains_key(run) {
                    owner_of.insert(run.to_string(), st.run_pipeline(run).await?);
                }
                if let Some(Some(owner)) = owner_of.get(run)
                    && *owner != p.name
                    && *owner != sealtrail_spec::replay_name(&p.name)
                {
                    *f = true;
                    *others.entry(owner.clone()).or_default() += 1;
                }
            }
            let (b, n) = reencrypt_raw(&mut ring, b, &label, &foreign, &mut old_ids)?;
            out.push(b);
            changed += n;
        }
        if changed == 0 {
            continue;
        }
        let codec = kept_codec(&file, &p.quarantine)?;
        let pending = q.pending(&file, codec);
        sealtrail_connectors::sink::write_parquet_file(&pending, &schema, &out, codec)
            .with_context(|| format!("writing {}", pending.display()))?;
        sync_dir(&pending)?;
        q.stage(&pending).await?;
        let events = retirements(old_ids, &mut recorded_ids, actor);
        if !events.is_empty() {
            append(&mut log, &home, la, events)?;
        }
        sealtrail_engine::debug_panic_in("reencrypt-quarantine", rewritten as u64);
        q.put(&pending, &file).await?;
        rewritten += 1;
        values += changed;
    }
    if rewritten == 0 {
        outln!(
            "nothing to re-encrypt: every quarantined record in {} is under its key's active version",
            at(&p.quarantine)
        );
    } else {
        outln!(
            "re-encrypted {values} quarantined record(s) in {rewritten} file(s) of {} under the active key (by {who}); each old key version retired has a `key_event` ledger entry",
            at(&p.quarantine)
        );
    }
    for (owner, n) in &others {
        outln!(
            "left {n} record(s) quarantined by pipeline `{owner}`, which shares the quarantine, as they were: re-encrypt them with its spec"
        );
    }
    Ok(0)
}

/// A quarantine's folder or table location, for messages.
fn at(t: &Target) -> String {
    match t {
        Target::Parquet { dir, .. } => dir.display().to_string(),
        other => other.describe(),
    }
}

/// Where a quarantine's files are rewritten, and how a rewrite is put in place.
enum QuarantinePlace {
    /// A Parquet folder: the rewrite, under a hidden name beside the file, is renamed over it.
    Parquet(Target),
    /// A Delta table: the rewrite, a new data file of the table's folder (or of `copy`, the
    /// local copy of a table on S3, whose files are fetched and uploaded), replaces the old file
    /// in one commit. `dir` is the local folder, `table` the table's location, `batches` the
    /// batch each file of the log holds.
    Delta {
        dir: PathBuf,
        table: String,
        copy: Option<TableCopy>,
        batches: std::collections::HashMap<String, (String, u64)>,
        purge: bool,
    },
}

impl QuarantinePlace {
    /// The quarantine `t` as it is; None when nothing was ever quarantined there.
    async fn open(t: &Target, purge: bool) -> Result<Option<Self>> {
        use sealtrail_connectors::sink::delta_file_commits;
        Ok(match t {
            Target::Parquet { dir, .. } => dir.exists().then(|| Self::Parquet(t.clone())),
            Target::Delta { uri, .. } if sealtrail_connectors::s3::is_s3(uri) => {
                let (copy, _) = TableCopy::new(uri, false)
                    .await
                    .map_err(|e| anyhow!("the quarantine: {e}"))?;
                let dir = copy.dir().to_path_buf();
                let log = dir.join("_delta_log");
                let any = std::fs::read_dir(&log).is_ok_and(|mut d| d.next().is_some());
                any.then(|| Self::Delta {
                    batches: delta_file_commits(&dir.display().to_string()),
                    dir,
                    table: uri.clone(),
                    copy: Some(copy),
                    purge,
                })
            }
            Target::Delta { uri, .. } if !uri.contains("://") => {
                let dir = std::path::absolute(uri)?;
                dir.join("_delta_log").exists().then(|| Self::Delta {
                    batches: delta_file_commits(uri),
                    dir,
                    table: uri.clone(),
                    copy: None,
                    purge,
                })
            }
            Target::Delta { uri, .. } => bail!(
                "the quarantine is a Delta table at {uri}: `keys reencrypt --quarantine` rewrites Parquet folders and local and `s3://` Delta tables only"
            ),
            Target::Postgres { .. } => bail!(
                "the quarantine is a PostgreSQL table: `keys reencrypt --quarantine` rewrites Parquet folders and Delta tables only"
            ),
        })
    }

    /// The quarantine's data files: a Parquet folder's, or those the Delta log names now.
    async fn files(&self) -> Result<Vec<PathBuf>> {
        let t = match self {
            Self::Parquet(t) => t.clone(),
            Self::Delta { dir, .. } => Target::delta_at(dir.display().to_string()),
        };
        Ok(sealtrail_connectors::sink::sink_files("quarantine", &t).await?)
    }

    /// Makes sure `file` is on the local disk.
    async fn fetch(&self, file: &Path) -> Result<()> {
        if let Self::Delta { copy: Some(c), .. } = self {
            c.fetch(&[file.to_path_buf()])
                .await
                .map_err(|e| anyhow!("the quarantine: {e}"))?;
        }
        Ok(())
    }

    /// Where the rewrite of `file` is written: a hidden name beside it in a Parquet folder; in
    /// a Delta table a data file no commit names yet (no reader sees it), named after `file`
    /// (a digest of its name), so that a rewrite an interrupted run of the command left there
    /// is written over by the next run's, not left beside it, and a rewrite of the rewrite
    /// gets a name of its own.
    fn pending(&self, file: &Path, codec: Codec) -> PathBuf {
        match self {
            Self::Parquet(_) => hidden_beside(file),
            Self::Delta { dir, .. } => {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                let digest = sealtrail_core::sha256_hex(name.as_bytes());
                dir.join(format!(
                    "part-sealtrail-quarantine-{}{}.parquet",
                    &digest[..24],
                    codec.file_infix()
                ))
            }
        }
    }

    /// Puts the synced rewrite `pending` where the table's commit can name it.
    async fn stage(&self, pending: &Path) -> Result<()> {
        if let Self::Delta { copy: Some(c), .. } = self {
            c.upload(pending)
                .await
                .map_err(|e| anyhow!("the quarantine: {e}"))?;
        }
        Ok(())
    }

    /// Puts `pending` in the place of `file`, durably.
    async fn put(&self, pending: &Path, file: &Path) -> Result<()> {
        match self {
            Self::Parquet(_) => {
                std::fs::rename(pending, file)
                    .with_context(|| format!("replacing {}", file.display()))?;
                sync_dir(file)
            }
            Self::Delta {
                dir,
                table,
                copy,
                batches,
                purge,
            } => {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                let batch = name
                    .and_then(|n| batches.get(&n))
                    .map(|(app, v)| (app.clone(), *v as i64));
                replace_in_delta(dir, table, copy.as_ref(), *purge, file, pending, batch).await
            }
        }
    }
}

/// Replaces `file` of the Delta table at `table` (local folder `dir`, or the folder of `copy`
/// for a table on S3) with the complete rewrite `pending`, in one commit naming `batch` (its
/// application id and version) when known; with `purge`, then deletes `file`.
async fn replace_in_delta(
    dir: &Path,
    table: &str,
    copy: Option<&TableCopy>,
    purge: bool,
    file: &Path,
    pending: &Path,
    batch: Option<(String, i64)>,
) -> Result<()> {
    let size = std::fs::metadata(pending)?.len();
    sealtrail_connectors::sink::delta_replace_file(
        table,
        &relative(dir, file)?,
        &relative(dir, pending)?,
        size,
        batch.as_ref().map(|(app, v)| (app.as_str(), *v)),
    )
    .await?;
    if purge {
        match copy {
            Some(c) => c.delete(file).await.map_err(|e| anyhow!("{e}"))?,
            None => {
                std::fs::remove_file(file)
                    .with_context(|| format!("deleting {}", file.display()))?;
                sync_dir(file)?;
            }
        }
    }
    Ok(())
}

/// The compression a rewrite of `file` keeps: the file's codec, at the level `target` (the
/// spec) gives it when the spec names the same codec (a file does not record its level),
/// else at the codec's default level.
fn kept_codec(file: &Path, target: &Target) -> Result<Codec> {
    let codec = sealtrail_connectors::sink::file_codec(file)
        .with_context(|| format!("reading {}", file.display()))?;
    Ok(match target.compression() {
        Some(spec) if spec.name() == codec.name() => spec,
        _ => codec,
    })
}

/// The hidden name a rewrite of `file` in a Parquet folder is written under (readers of the
/// folder skip names that start with a dot) until it is renamed over `file`.
fn hidden_beside(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.reencrypt"))
}

/// `f`'s path inside the table folder `dir`, as a Delta log names it.
fn relative(dir: &Path, f: &Path) -> Result<String> {
    let r = f
        .strip_prefix(dir)
        .map_err(|_| anyhow!("{} is not inside the table", f.display()))?;
    r.to_str()
        .map(|s| s.replace(std::path::MAIN_SEPARATOR, "/"))
        .ok_or_else(|| anyhow!("{} is not a UTF-8 path", f.display()))
}

/// `b` (a quarantine batch) with each `raw` value sealed under a key version that is not its
/// key's active one sealed again under the active one, but for the rows `foreign` marks
/// (another pipeline's); with the number of values re-sealed. The old key ids go into
/// `old_ids`.
fn reencrypt_raw(
    ring: &mut Keyring,
    b: RecordBatch,
    f: &str,
    foreign: &[bool],
    old_ids: &mut BTreeSet<String>,
) -> Result<(RecordBatch, u64)> {
    let i = b
        .schema()
        .index_of("raw")
        .map_err(|_| anyhow!("{f} is not a sealtrail quarantine file (no column `raw`)"))?;
    let Some(a) = b.column(i).as_binary_opt::<i32>() else {
        bail!("{f} is not a sealtrail quarantine file (column `raw` does not hold bytes)");
    };
    let mut nb = arrow::array::BinaryBuilder::with_capacity(a.len(), a.values().len());
    let mut changed = 0u64;
    for r in 0..a.len() {
        if a.is_null(r) {
            nb.append_null();
            continue;
        }
        let v = a.value(r);
        if foreign.get(r).copied().unwrap_or(false) {
            nb.append_value(v);
            continue;
        }
        match active_if_older(ring, v)? {
            Some((id, new_id, new_key)) => {
                let plain = zeroize::Zeroizing::new(
                    Sealer::new(&id, &ring.by_id(&id)?)
                        .open_bytes(v)
                        .map_err(|e| anyhow!("{f}: {e}"))?,
                );
                nb.append_value(Sealer::new(&new_id, &new_key).seal_bytes(&plain));
                old_ids.insert(id);
                changed += 1;
            }
            None => nb.append_value(v),
        }
    }
    let mut cols = b.columns().to_vec();
    cols[i] = std::sync::Arc::new(nb.finish());
    Ok((RecordBatch::try_new(b.schema(), cols)?, changed))
}

/// For a `st1:` ciphertext under a version of a named key that is not the key's active one:
/// its key id, and the active version's id and key. None for anything else (plain values,
/// values under the active version, values under subject keys, shredded or not).
fn active_if_older(ring: &mut Keyring, v: &[u8]) -> Result<Option<(String, String, KeyBytes)>> {
    let Some(id) = key_id_of(v) else {
        return Ok(None);
    };
    let Some((name, _)) = id.rsplit_once('@').filter(|_| !id.starts_with("subject:")) else {
        return Ok(None);
    };
    let (new_id, new_key) = ring.active(name, Purpose::Encrypt)?;
    Ok((new_id != id).then(|| (id.to_string(), new_id, new_key)))
}
