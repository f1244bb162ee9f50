//! The PostgreSQL backend: writers on several machines append to one ledger.
//!
//! Three tables in a schema of their own (default `sealtrail_ledger`):
//! ```text
//!   entries(seq, leaf_hash, entry, written_by, written_at)        append-only
//!   checkpoints(id, size, root, note, signed_by, signed_at)       append-only
//!   head(id = 1, origin, size, range, last_leaf)                  the shared right edge
//! ```
//! **Append-only, twice.** Triggers refuse UPDATE, DELETE and TRUNCATE on `entries` and
//! `checkpoints` for every role, the owner included; `head` refuses DELETE, TRUNCATE and any
//! update that shrinks it or changes its origin. Privileges are revoked from PUBLIC, and a
//! writer role ([`PgLedger::grant_writer`]) gets only SELECT and INSERT on the two logs.
//!
//! **Sequencing.** Every append is one transaction that locks the head row
//! (`SELECT ... FOR UPDATE`), checks that the head agrees with the entries table, inserts the
//! entries numbered from the head, moves the head, signs the checkpoint and inserts it. Two
//! writers therefore take turns and each signs only the tree it extended. A writer that skipped
//! the lock would collide on the entries' primary key, and a trigger refuses any checkpoint
//! whose size is below the newest one or whose root differs from one already signed for its
//! size: two conflicting checkpoints can never both be stored.
//!
//! **Verification.** [`PgLedger::export`] writes the entries and the newest checkpoint as a
//! tlog-tiles folder (level-0 tiles from the *stored* leaf hashes, so a changed entry shows up
//! as modified rather than as a broken chain), which the same verifier checks.
//!
//! sqlx is async and the engine calls the ledger from inside its own Tokio runtime, where a
//! nested `block_on` would panic; so the connection lives on a worker thread with its own
//! single-threaded runtime, and calls hand it jobs over a channel.

use crate::entry::{Entry, Event};
use crate::log::{
    Appended, LedgerLog, LogError, ROTATIONS, TileBuilder, encode_events, now_micros,
    stamped_checkpoint,
};
use crate::merkle::{CompactRange, Hash};
use crate::note::{NoteSigner, NoteVerifier};
use crate::tiles::TileId;
use crate::verify::{self, Seen, Tamper, Verified, VerifyError};
use sealtrail_core::db::redact_db_error;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor, Row};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

/// The default schema of the ledger tables.
pub const DEFAULT_SCHEMA: &str = "sealtrail_ledger";

/// Entries read per query by [`PgLedger::export`].
const EXPORT_CHUNK: i64 = 16_384;

fn db(e: sqlx::Error) -> LogError {
    LogError::Db(redact_db_error(&e))
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

struct Worker {
    rt: tokio::runtime::Runtime,
    conn: PgConnection,
    target: sealtrail_core::db::PgTarget,
}

impl Worker {
    /// Runs `f` on the connection, connecting again first when the server ended it since the
    /// last job (a restart, a failover, `idle_session_timeout`, `pg_terminate_backend`): a run
    /// then goes on, where its next append failed before. A connection lost during a job is
    /// that job's error: whether an append's commit landed is not known then, and it is never
    /// retried blindly.
    fn block_on<R>(
        &mut self,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<R, LogError>,
    ) -> Result<R, LogError> {
        let Self { rt, conn, target } = self;
        rt.block_on(async move {
            if conn.ping().await.is_err() {
                *conn = target.connect().await.map_err(|e| {
                    LogError::Db(format!(
                        "the connection to the ledger database was lost, and connecting again failed: {e}"
                    ))
                })?;
                tracing::warn!(
                    "the connection to the ledger database was lost (a server restart, a failover, an idle timeout); connected again"
                );
            }
            f(conn).await
        })
    }
}

/// A connection to a ledger in PostgreSQL. With a signer it appends and signs; without one it
/// can only read and export.
pub struct PgLedger {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
    schema: String,
    signer: Option<Arc<NoteSigner>>,
    writer: String,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("schema", &self.schema)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// What [`PgLedger::export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The newest checkpoint's tree size.
    pub size: u64,
    /// Entries exported (fewer than `size` when rows are missing).
    pub entries: u64,
    /// The first number below `size` with no row, and the number found in its place (None
    /// when nothing follows): an entry deleted from the table.
    pub first_gap: Option<(u64, Option<u64>)>,
    /// Rows numbered at or beyond the checkpoint's size: the writer inserts entries and their
    /// checkpoint in one transaction, so any such row was put there by someone else.
    pub beyond_checkpoint: u64,
}

fn check_schema(schema: &str) -> Result<(), LogError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(LogError::Db(format!(
            "`{schema}` is not a usable schema name: use 1 to 63 lowercase letters, digits and _, not starting with a digit"
        )))
    }
}

fn hash32(b: &[u8]) -> Result<Hash, LogError> {
    <[u8; 32]>::try_from(b).map_err(|_| LogError::Db("a stored hash is not 32 bytes".into()))
}

impl PgLedger {
    /// Connects to the ledger in `schema` of the database at `url`. `writer` names this writer
    /// in the rows it inserts (for example `host:pid`). Errors never contain the URL.
    pub fn connect(
        url: &str,
        schema: &str,
        signer: Option<NoteSigner>,
        writer: &str,
    ) -> Result<Self, LogError> {
        check_schema(schema)?;
        let target = sealtrail_core::db::pg_connect_options(url, "the ledger")
            .map_err(|e| LogError::Db(format!("cannot use the ledger URL: {e}")))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), LogError>>(1);
        let worker = std::thread::Builder::new()
            .name("sealtrail-ledger-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(LogError::Db(format!(
                            "cannot start the ledger's database thread: {e}"
                        ))));
                        return;
                    }
                };
                let conn = match rt.block_on(target.connect()) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(LogError::Db(format!(
                            "cannot connect to the ledger database: {e}"
                        ))));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut w = Worker { rt, conn, target };
                while let Ok(job) = rx.recv() {
                    job(&mut w);
                }
            })
            .map_err(|e| LogError::Db(format!("cannot start the ledger's database thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| LogError::Db("the ledger's database thread stopped".into()))??;
        Ok(Self {
            jobs: Some(jobs),
            worker: Some(worker),
            schema: schema.to_string(),
            signer: signer.map(Arc::new),
            writer: writer.to_string(),
        })
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<R, LogError> + Send + 'static,
    ) -> Result<R, LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let stopped = || LogError::Db("the ledger's database thread stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(Box::new(move |w| {
                let _ = tx.send(f(w));
            }))
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    fn signer(&self) -> Result<Arc<NoteSigner>, LogError> {
        self.signer
            .clone()
            .ok_or_else(|| LogError::Db("this ledger connection has no signing key".into()))
    }

    /// Creates the schema, tables and triggers when missing (safe to run from several machines
    /// at once), and the empty log's first checkpoint, signed. An existing ledger must have
    /// this signer's origin.
    pub fn init(&self) -> Result<(), LogError> {
        let signer = self.signer()?;
        let s = self.schema.clone();
        let writer = self.writer.clone();
        self.call(move |w| {
            w.block_on(async move |c| {
                let mut tx = c.begin().await.map_err(db)?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(format!("sealtrail-ledger-init:{s}"))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.execute(AssertSqlSafe(SCHEMA_SQL.replace("{s}", &s)))
                    .await
                    .map_err(db)?;
                let empty = CompactRange::default();
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {s}.head (id, origin, size, range, last_leaf) VALUES (1, $1, 0, ''::bytea, $2) ON CONFLICT (id) DO NOTHING"
                )))
                .bind(signer.name())
                .bind(vec![0u8; 32])
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                let origin: String =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT origin FROM {s}.head WHERE id = 1")))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db)?;
                if origin != signer.name() {
                    return Err(LogError::Checkpoint(format!(
                        "the ledger in schema {s} has origin `{origin}`, but the signing key is for `{}`",
                        signer.name()
                    )));
                }
                let signed: i64 =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {s}.checkpoints")))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db)?;
                if signed == 0 {
                    insert_checkpoint(&mut tx, &s, &signer, None, &writer, 0, empty.root()).await?;
                }
                tx.commit().await.map_err(db)
            })
        })
    }

    /// Lets the existing role `role` append: SELECT and INSERT on the logs, SELECT and UPDATE
    /// on the head row. It gets no UPDATE, DELETE or TRUNCATE on the logs.
    pub fn grant_writer(&self, role: &str) -> Result<(), LogError> {
        let s = self.schema.clone();
        let role = format!("\"{}\"", role.replace('"', "\"\""));
        self.call(move |w| {
            w.block_on(async move |c| {
                c.execute(AssertSqlSafe(format!(
                    "GRANT USAGE ON SCHEMA {s} TO {role};
                         GRANT SELECT, INSERT ON {s}.entries, {s}.checkpoints TO {role};
                         GRANT SELECT, UPDATE ON {s}.head TO {role};
                         GRANT USAGE ON SEQUENCE {s}.checkpoints_id_seq TO {role};"
                )))
                .await
                .map_err(db)?;
                Ok(())
            })
        })
    }

    /// The newest checkpoint note, if any.
    pub fn checkpoint(&self) -> Result<Option<String>, LogError> {
        let s = self.schema.clone();
        self.call(move |w| {
            w.block_on(async move |c| {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT note FROM {s}.checkpoints ORDER BY size DESC, id DESC LIMIT 1"
                )))
                .fetch_optional(c)
                .await
                .map_err(|e| not_initialised(&s, e))
            })
        })
    }

    /// The `run_started` entries from entry `from` up to the newest checkpoint, in order: each
    /// one's seq, run id and pipeline, as the table holds them (not checked against the tree:
    /// `ledger verify` does that). Read in chunks in one snapshot, so that reading what was
    /// appended since an entry costs that.
    pub fn runs_started_from(&self, from: u64) -> Result<Vec<(u64, String, String)>, LogError> {
        let s = self.schema.clone();
        self.call(move |w| {
            w.block_on(async move |c| {
                let mut tx = snapshot(c).await?;
                let size: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT size FROM {s}.checkpoints ORDER BY size DESC, id DESC LIMIT 1"
                )))
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| not_initialised(&s, e))?;
                let mut started = Vec::new();
                let Some(size) = size else {
                    return Ok(started);
                };
                let mut after = from as i64 - 1;
                loop {
                    let rows = entries_after(&mut tx, &s, after, size).await?;
                    let n = rows.len() as i64;
                    for r in rows {
                        after = r.get(0);
                        let bytes: Vec<u8> = r.get(2);
                        if let Ok(Entry {
                            seq,
                            event:
                                Event::RunStarted {
                                    run_id, pipeline, ..
                                },
                            ..
                        }) = Entry::decode(&bytes)
                        {
                            started.push((seq, run_id, pipeline));
                        }
                    }
                    if n < EXPORT_CHUNK {
                        break;
                    }
                }
                tx.commit().await.map_err(db)?;
                Ok(started)
            })
        })
    }

    /// Writes the ledger as a tlog-tiles folder at `dir` (which must not hold a ledger yet):
    /// every entry up to the newest checkpoint, read in one consistent snapshot, and that
    /// checkpoint. `sealtrail ledger verify` then checks it like any other.
    pub fn export(&self, dir: &Path) -> Result<Exported, LogError> {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(LogError::Checkpoint(format!(
                "{} is not empty; export into an empty or new folder",
                dir.display()
            )));
        }
        let s = self.schema.clone();
        let dir = dir.to_path_buf();
        self.call(move |w| {
            w.block_on(async move |c| {
                let mut tx = snapshot(c).await?;
                let (size, note): (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT size, note FROM {s}.checkpoints ORDER BY size DESC, id DESC LIMIT 1"
                )))
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| not_initialised(&s, e))?
                .ok_or_else(|| {
                    LogError::Checkpoint(format!(
                        "the ledger in schema {s} has no checkpoint; run `sealtrail ledger init`"
                    ))
                })?;
                let mut tb = TileBuilder::default();
                let mut files: Vec<(TileId, Vec<u8>)> = Vec::new();
                let mut after = -1i64;
                let mut first_gap = None;
                let mut rotations = Vec::new();
                loop {
                    let rows = entries_after(&mut tx, &s, after, size).await?;
                    let n = rows.len() as i64;
                    for r in rows {
                        let seq: i64 = r.get(0);
                        if seq != after + 1 && first_gap.is_none() {
                            first_gap = Some(((after + 1) as u64, Some(seq as u64)));
                        }
                        after = seq;
                        let leaf: Vec<u8> = r.get(1);
                        // A damaged stored hash still exports (as zeros): the verifier then
                        // names the entry, instead of the export failing without a diagnosis.
                        let leaf = hash32(&leaf).unwrap_or([0; 32]);
                        let entry: Vec<u8> = r.get(2);
                        if entry.get(1) == Some(&crate::entry::SIGNER_ROTATED) {
                            rotations.push(seq + 1);
                        }
                        tb.push(entry, leaf, &mut files);
                    }
                    write_tiles(&dir, &mut files)?;
                    if n < EXPORT_CHUNK {
                        break;
                    }
                }
                if first_gap.is_none() && after + 1 < size {
                    first_gap = Some(((after + 1) as u64, None));
                }
                tb.edge_tiles(&mut files);
                write_tiles(&dir, &mut files)?;
                let beyond: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT count(*) FROM {s}.entries WHERE seq >= $1"
                )))
                .bind(size)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
                // Each hand-over's checkpoint: the first one signed for the tree ending with
                // its `signer_rotated` entry (inserted by the same transaction).
                for t in rotations {
                    let handover: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT note FROM {s}.checkpoints WHERE size = $1 ORDER BY id LIMIT 1"
                    )))
                    .bind(t)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                    if let Some(n) = handover {
                        let d = dir.join(ROTATIONS);
                        let p = d.join(t.to_string());
                        std::fs::create_dir_all(&d)
                            .and_then(|()| std::fs::write(&p, n))
                            .map_err(|e| io_err(&p, e))?;
                    }
                }
                let p = dir.join("checkpoint");
                std::fs::write(&p, note).map_err(|e| io_err(&p, e))?;
                tx.commit().await.map_err(db)?;
                Ok(Exported {
                    size: size as u64,
                    entries: tb.size(),
                    first_gap,
                    beyond_checkpoint: beyond as u64,
                })
            })
        })
    }
}

impl PgLedger {
    /// Exports the ledger into `dir` and verifies it as [`crate::verify::verify`] does, also
    /// naming rows missing from the table or stored beyond the checkpoint.
    pub fn verify(
        &self,
        dir: &Path,
        key: &NoteVerifier,
        seen: Option<Seen>,
        threads: usize,
    ) -> Result<Verified, VerifyError> {
        let e = self
            .export(dir)
            .map_err(|e| VerifyError::Unreadable(e.to_string()))?;
        // A missing row shifts every later entry in the bundles; name it before the verifier
        // reports the shift as a consequence.
        if let Some((seq, found)) = e.first_gap {
            return Err(match found {
                Some(found) => Tamper::Deleted { seq, found },
                None => Tamper::Truncated {
                    want: e.size,
                    have: seq,
                },
            }
            .into());
        }
        let v = verify::verify(dir, key, seen, threads)?;
        if e.beyond_checkpoint > 0 {
            return Err(Tamper::BeyondCheckpoint {
                size: e.size,
                rows: e.beyond_checkpoint,
            }
            .into());
        }
        Ok(v)
    }
}

fn io_err(p: &Path, source: std::io::Error) -> LogError {
    LogError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// Writes (without fsync: an export is a copy, re-made at will) and clears `files`.
fn write_tiles(dir: &Path, files: &mut Vec<(TileId, Vec<u8>)>) -> Result<(), LogError> {
    for (id, bytes) in files.drain(..) {
        let p = dir.join(id.rel_path());
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        std::fs::write(&p, bytes).map_err(|e| io_err(&p, e))?;
    }
    Ok(())
}

fn not_initialised(s: &str, e: sqlx::Error) -> LogError {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => LogError::Db(format!(
            "there is no ledger in schema {s}; create it with `sealtrail ledger init --ledger-url ...`"
        )),
        _ => db(e),
    }
}

/// A read-only transaction on one snapshot, so that the reads in it agree with each other.
async fn snapshot(c: &mut PgConnection) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, LogError> {
    let mut tx = c.begin().await.map_err(db)?;
    tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db)?;
    Ok(tx)
}

/// Up to [`EXPORT_CHUNK`] stored entries with `after < seq < size`, in order: each row's
/// `seq`, `leaf_hash` and `entry`. Fewer than a chunk: the last.
async fn entries_after(
    tx: &mut PgConnection,
    s: &str,
    after: i64,
    size: i64,
) -> Result<Vec<sqlx::postgres::PgRow>, LogError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT seq, leaf_hash, entry FROM {s}.entries WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3"
    )))
    .bind(after)
    .bind(size)
    .bind(EXPORT_CHUNK)
    .fetch_all(tx)
    .await
    .map_err(db)
}

/// Signs the checkpoint of the tree (`size`, `root`) and inserts it; with `cosigner` it is a
/// hand-over, signed by the current key and then the new one.
async fn insert_checkpoint(
    tx: &mut PgConnection,
    s: &str,
    signer: &NoteSigner,
    cosigner: Option<&NoteSigner>,
    writer: &str,
    size: u64,
    root: Hash,
) -> Result<String, LogError> {
    let cp = stamped_checkpoint(signer.name(), size, root);
    let bad = |e: crate::note::NoteError| LogError::Checkpoint(e.to_string());
    let mut note = signer.sign(&cp.to_text()).map_err(bad)?;
    if let Some(new) = cosigner {
        note = new.cosign(&note).map_err(bad)?;
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {s}.checkpoints (size, root, note, signed_by) VALUES ($1, $2, $3, $4)"
    )))
    .bind(size as i64)
    .bind(root.to_vec())
    .bind(&note)
    .bind(writer)
    .execute(tx)
    .await
    .map_err(db)?;
    Ok(note)
}

/// The locked head row: size, compact range, last leaf.
async fn lock_head(
    tx: &mut PgConnection,
    s: &str,
    signer: &NoteSigner,
) -> Result<(CompactRange, Hash), LogError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT origin, size, range, last_leaf FROM {s}.head WHERE id = 1 FOR UPDATE"
    )))
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| not_initialised(s, e))?
    .ok_or_else(|| {
        LogError::Db(format!(
            "the ledger in schema {s} is not initialised; run `sealtrail ledger init --ledger-url ...`"
        ))
    })?;
    let origin: String = row.get(0);
    if origin != signer.name() {
        return Err(LogError::Checkpoint(format!(
            "the ledger in schema {s} has origin `{origin}`, but the signing key is for `{}`",
            signer.name()
        )));
    }
    // After a hand-over (`ledger rotate-key` on another machine) this key no longer signs.
    let newest: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT note FROM {s}.checkpoints ORDER BY size DESC, id DESC LIMIT 1"
    )))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let me = signer.verifier();
    if newest.is_some_and(|n| !me.signed_last(&n)) {
        return Err(LogError::NotSigner { key: me.who() });
    }
    let size: i64 = row.get(1);
    let range: Vec<u8> = row.get(2);
    let last: Vec<u8> = row.get(3);
    let next: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(max(seq) + 1, 0) FROM {s}.entries"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(db)?;
    let size = size as u64;
    if next as u64 != size
        || !range.len().is_multiple_of(32)
        || range.len() / 32 != size.count_ones() as usize
    {
        return Err(LogError::Db(format!(
            "the head of the ledger in schema {s} (size {size}) does not match its entries table (next number {next}): the database was changed outside sealtrail; run `sealtrail ledger verify`"
        )));
    }
    let parts = range
        .chunks_exact(32)
        .map(hash32)
        .collect::<Result<_, _>>()?;
    Ok((CompactRange::from_parts(size, parts), hash32(&last)?))
}

impl PgLedger {
    /// Hands the signing over to `new`, as [`crate::log::LogWriter::rotate_signer`] does: the
    /// `signer_rotated` entry and its checkpoint, signed by both keys, in one transaction.
    /// Writers elsewhere that still hold the old key are refused from then on.
    pub fn rotate_signer(&mut self, new: NoteSigner, actor: Hash) -> Result<Appended, LogError> {
        let old = self.signer()?;
        let new = Arc::new(new);
        let event = Event::SignerRotated {
            old_key: old.verifier().to_key_string(),
            new_key: new.verifier().to_key_string(),
            actor,
        };
        let a = self.append_with(vec![event], Some(new.clone()))?;
        self.signer = Some(new);
        Ok(a)
    }

    fn append_with(
        &mut self,
        events: Vec<Event>,
        cosigner: Option<Arc<NoteSigner>>,
    ) -> Result<Appended, LogError> {
        let signer = self.signer()?;
        let s = self.schema.clone();
        let writer = self.writer.clone();
        self.call(move |w| {
            w.block_on(async move |c| {
                let mut tx = c.begin().await.map_err(db)?;
                let (mut range, last) = lock_head(&mut tx, &s, &signer).await?;
                let first_seq = range.size();
                let encoded = encode_events(first_seq, last, now_micros(), events)?;
                let mut seqs = Vec::with_capacity(encoded.len());
                let mut leaves = Vec::with_capacity(encoded.len());
                let mut bytes = Vec::with_capacity(encoded.len());
                for (i, (b, leaf)) in encoded.into_iter().enumerate() {
                    range.push(leaf);
                    seqs.push((first_seq + i as u64) as i64);
                    leaves.push(leaf.to_vec());
                    bytes.push(b);
                }
                let last = leaves.last().cloned().unwrap_or_else(|| last.to_vec());
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {s}.entries (seq, leaf_hash, entry, written_by) SELECT seq, leaf, entry, $4 FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[]) AS t(seq, leaf, entry)"
                )))
                .bind(&seqs)
                .bind(&leaves)
                .bind(&bytes)
                .bind(&writer)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {s}.head SET size = $1, range = $2, last_leaf = $3 WHERE id = 1"
                )))
                .bind(range.size() as i64)
                .bind(range.parts().concat())
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                let checkpoint = insert_checkpoint(
                    &mut tx,
                    &s,
                    &signer,
                    cosigner.as_deref(),
                    &writer,
                    range.size(),
                    range.root(),
                )
                .await?;
                tx.commit().await.map_err(db)?;
                Ok(Appended {
                    first_seq,
                    size: range.size(),
                    root: range.root(),
                    checkpoint,
                })
            })
        })
    }
}

impl LedgerLog for PgLedger {
    fn append(&mut self, events: Vec<Event>) -> Result<Appended, LogError> {
        self.append_with(events, None)
    }

    fn resign(&mut self) -> Result<String, LogError> {
        let signer = self.signer()?;
        let s = self.schema.clone();
        let writer = self.writer.clone();
        self.call(move |w| {
            w.block_on(async move |c| {
                let mut tx = c.begin().await.map_err(db)?;
                let (range, _) = lock_head(&mut tx, &s, &signer).await?;
                let note = insert_checkpoint(
                    &mut tx,
                    &s,
                    &signer,
                    None,
                    &writer,
                    range.size(),
                    range.root(),
                )
                .await?;
                tx.commit().await.map_err(db)?;
                Ok(note)
            })
        })
    }
}

impl Drop for PgLedger {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The ledger's tables, triggers and privileges; `{s}` is the schema. Idempotent.
const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.entries (
    seq        bigint PRIMARY KEY CHECK (seq >= 0),
    leaf_hash  bytea NOT NULL CHECK (octet_length(leaf_hash) = 32),
    entry      bytea NOT NULL,
    written_by text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.checkpoints (
    id        bigserial PRIMARY KEY,
    size      bigint NOT NULL CHECK (size >= 0),
    root      bytea NOT NULL CHECK (octet_length(root) = 32),
    note      text NOT NULL,
    signed_by text NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS checkpoints_size ON {s}.checkpoints (size);
CREATE TABLE IF NOT EXISTS {s}.head (
    id        smallint PRIMARY KEY CHECK (id = 1),
    origin    text NOT NULL,
    size      bigint NOT NULL,
    range     bytea NOT NULL,
    last_leaf bytea NOT NULL CHECK (octet_length(last_leaf) = 32)
);
CREATE OR REPLACE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the sealtrail ledger is append-only: % on %.% is refused',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME;
END $$;
CREATE OR REPLACE FUNCTION {s}.check_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {s}.checkpoints
               WHERE size > NEW.size OR (size = NEW.size AND root <> NEW.root)) THEN
        RAISE EXCEPTION 'the sealtrail ledger refuses a checkpoint of size % that conflicts with one already signed', NEW.size;
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION {s}.check_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.size < OLD.size OR NEW.origin <> OLD.origin THEN
        RAISE EXCEPTION 'the sealtrail ledger head may only grow';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON {s}.entries
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON {s}.entries
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON {s}.checkpoints
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON {s}.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER no_conflict BEFORE INSERT ON {s}.checkpoints
    FOR EACH ROW EXECUTE FUNCTION {s}.check_checkpoint();
CREATE OR REPLACE TRIGGER only_grows BEFORE UPDATE ON {s}.head
    FOR EACH ROW EXECUTE FUNCTION {s}.check_head();
CREATE OR REPLACE TRIGGER no_delete BEFORE DELETE ON {s}.head
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change();
CREATE OR REPLACE TRIGGER no_truncate BEFORE TRUNCATE ON {s}.head
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change();
REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC;
"#;
