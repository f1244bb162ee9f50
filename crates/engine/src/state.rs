//! Run state: runs, their inputs, committed batches, loaded files and incremental cursors.
//!
//! Embedded SQLite by default (`sqlite://<home>/state.db`), PostgreSQL when a
//! `postgres://` URL is given; the same SQL serves both through sqlx's `Any` driver.
//!
//! Run lifecycle (the `status` column):
//! ```text
//!   running ──all batches committed, counts balance──▶ succeeded
//!      │  ├──error──▶ failed ──next run of the pipeline resumes it──▶ running
//!      │  └──error before any sink received a batch──▶ failed_before_load (never resumed:
//!      │       nothing to complete; the next run is a new one, under any spec)
//!      └──process killed: stays running; the next run resumes it (same id, same inputs)
//!   running/failed ──`--abandon-unfinished`──▶ abandoned
//! ```

use sealtrail_core::{Counts, RunId};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("run state store: {0}")]
pub struct StateError(String);

impl From<sqlx::Error> for StateError {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
            _ => None,
        };
        // SQLite's codes are numbers (an extended code's low byte is its primary code):
        // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), SQLITE_FULL (13). PostgreSQL's are
        // five-character SQLSTATEs: 53100 is disk_full.
        let sqlite = code
            .as_deref()
            .filter(|c| c.len() < 5)
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        match (sqlite, code.as_deref()) {
            (Some(11 | 26), _) => StateError(format!(
                "{e}: the SQLite file is damaged (truncated or overwritten); {DAMAGED_HINT}"
            )),
            (Some(13), _) | (_, Some("53100")) => StateError(format!(
                "{e}: the disk holding the state store is full; free space on it, then run the command again (a run stopped by it resumes where it stopped)"
            )),
            _ => StateError(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, StateError>;

#[derive(Debug, Clone)]
pub struct StateStore {
    pool: AnyPool,
    url_kind: &'static str,
    /// The SQLite file, when the store is one (not in memory).
    sqlite_file: Option<std::path::PathBuf>,
}

/// Held while a run of one pipeline goes on, so that no other process starts, resumes or
/// abandons a run of that pipeline meanwhile (it would take the running run for an
/// interrupted one). With SQLite, an OS file lock beside the store (`<store>.run-locks/`);
/// with PostgreSQL, a session advisory lock on a connection of its own, so that runs on other
/// machines sharing the store are kept out too. Either goes when it is dropped, and when the
/// process dies however it dies (the kernel drops the file lock, the server ends the session).
#[derive(Debug)]
pub struct PipelineLock {
    held: Held,
}

impl PipelineLock {
    /// Whether the lock is still this process's. A file lock is held as long as its file is
    /// open. A PostgreSQL advisory lock lives as long as its session: when the server closes
    /// the connection (a restart, a failover, `idle_session_timeout`, an administrator's
    /// `pg_terminate_backend`), the lock is gone and another process may start or resume the
    /// pipeline, so the holder must stop before it commits again. Err says why it is lost.
    pub async fn confirm(&mut self) -> std::result::Result<(), String> {
        let Held::Session { conn } = &mut self.held else {
            return Ok(());
        };
        // The connection is this lock's alone, so any advisory lock its session holds is it.
        let held = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted)",
        )
        .fetch_one(conn)
        .await;
        match held {
            Ok(row) if row.try_get::<bool, _>(0).unwrap_or(false) => Ok(()),
            Ok(_) => Err("its PostgreSQL session no longer holds it".into()),
            Err(e) => Err(format!(
                "its PostgreSQL connection is gone ({})",
                sealtrail_core::db::redact_db_error(&e)
            )),
        }
    }
}

/// What is held (never read but by [`PipelineLock::confirm`]: dropping it releases the lock).
#[derive(Debug)]
enum Held {
    File {
        _file: std::fs::File,
    },
    Session {
        conn: sqlx::AnyConnection,
    },
    /// An in-memory store is this process's own.
    Nothing,
}

/// What names a pipeline's run lock (a PostgreSQL advisory lock key, a lock file's name).
fn lock_digest(pipeline: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(format!("sealtrail run lock\0{pipeline}").as_bytes()).into()
}

/// A run that did not finish.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub run_id: RunId,
    pub spec_sha256: String,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub pipeline: String,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub counts: Counts,
    pub error: Option<String>,
}

/// The PostgreSQL advisory lock key under which a store's tables are created (any fixed
/// number; run locks are keyed by a digest of the pipeline name).
const SCHEMA_LOCK: i64 = 0x5ea1_7a11_0000_0001;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sealtrail_runs (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, spec_sha256 TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, rows_in BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT, error TEXT)",
    "CREATE TABLE IF NOT EXISTS sealtrail_run_inputs (run_id TEXT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL, input TEXT NOT NULL, fingerprint TEXT NOT NULL, PRIMARY KEY (run_id, source, seq))",
    "CREATE TABLE IF NOT EXISTS sealtrail_batches (run_id TEXT NOT NULL, source TEXT NOT NULL, batch BIGINT NOT NULL, rows_in BIGINT NOT NULL, rows_loaded BIGINT NOT NULL, rows_quarantined BIGINT NOT NULL, committed_at TEXT NOT NULL, PRIMARY KEY (run_id, source, batch))",
    // Inputs of a run that are files an earlier run loaded the first `skip` bytes of, before
    // they grew: only the records after them are read (a resumed run reads the same ones).
    "CREATE TABLE IF NOT EXISTS sealtrail_run_input_skips (run_id TEXT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL, skip BIGINT NOT NULL, PRIMARY KEY (run_id, source, seq))",
    "CREATE TABLE IF NOT EXISTS sealtrail_loaded_files (pipeline TEXT NOT NULL, source TEXT NOT NULL, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (pipeline, source, fingerprint))",
    // Incremental files by content: the name a file matched its pattern under and the SHA-256
    // of its bytes (a file touched, copied again or moved with its project is not new).
    "CREATE TABLE IF NOT EXISTS sealtrail_run_input_content (run_id TEXT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (run_id, source, seq))",
    "CREATE TABLE IF NOT EXISTS sealtrail_loaded_content (pipeline TEXT NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (pipeline, source, name, sha256))",
    // Chain of custody: per committed batch, the record commitments needed to prove any of
    // its rows (`custody::BatchCustody`), and the ledger entry that holds its roots.
    // (`input_key`, `first_pos` and `last_pos` are those of the batch's first input; every
    // input's are in `sealtrail_custody_inputs`.)
    "CREATE TABLE IF NOT EXISTS sealtrail_custody (run_id TEXT NOT NULL, source TEXT NOT NULL, batch BIGINT NOT NULL, pipeline TEXT NOT NULL, input_key TEXT NOT NULL, first_pos BIGINT NOT NULL, last_pos BIGINT NOT NULL, ledger_seq BIGINT, data BYTEA NOT NULL, PRIMARY KEY (run_id, source, batch))",
    // Per committed batch, each input it read records of (in reading order, `seq`), with the
    // range of their positions and their count: where `prove --id` finds a record's batch.
    "CREATE TABLE IF NOT EXISTS sealtrail_custody_inputs (run_id TEXT NOT NULL, source TEXT NOT NULL, batch BIGINT NOT NULL, seq BIGINT NOT NULL, input_key TEXT NOT NULL, first_pos BIGINT NOT NULL, last_pos BIGINT NOT NULL, records BIGINT NOT NULL, PRIMARY KEY (run_id, source, batch, seq))",
    "CREATE INDEX IF NOT EXISTS sealtrail_custody_inputs_by_key ON sealtrail_custody_inputs (source, input_key)",
    // Rows each committed batch delivered to each sink (a record a transform filters out, or
    // aggregates with others, is loaded but is not one row of every sink).
    "CREATE TABLE IF NOT EXISTS sealtrail_batch_outputs (run_id TEXT NOT NULL, source TEXT NOT NULL, batch BIGINT NOT NULL, sink TEXT NOT NULL, row_count BIGINT NOT NULL, PRIMARY KEY (run_id, source, batch, sink))",
    // Custody records of batches whose rows in a sink were rewritten in place after delivery
    // (`keys reencrypt`): the whole record as it stands after each revision, with the
    // `outputs_revised` ledger entry that carries the sink's new root. The newest revision is
    // the batch's record from then on; the original stays in `sealtrail_custody`.
    "CREATE TABLE IF NOT EXISTS sealtrail_custody_revisions (run_id TEXT NOT NULL, source TEXT NOT NULL, batch BIGINT NOT NULL, revision BIGINT NOT NULL, sink TEXT NOT NULL, ledger_seq BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (run_id, source, batch, revision))",
    // Records a replay run (`quarantine replay`) loaded, and the quarantined records they
    // repair, with the `records_repaired` ledger entry that holds the pair.
    "CREATE TABLE IF NOT EXISTS sealtrail_repairs (run_id TEXT NOT NULL, replayed_id TEXT NOT NULL, original_id TEXT NOT NULL, ledger_seq BIGINT NOT NULL, PRIMARY KEY (run_id, replayed_id))",
    // The `replay_declared` ledger entry that ties a replay's spec version to the spec it
    // replays under.
    "CREATE TABLE IF NOT EXISTS sealtrail_replays (replay_spec_sha256 TEXT PRIMARY KEY, ledger_seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sealtrail_classifications (pipeline TEXT NOT NULL, source TEXT NOT NULL, col TEXT NOT NULL, tag TEXT NOT NULL, kind TEXT, confidence DOUBLE PRECISION NOT NULL, evidence TEXT NOT NULL, run_id TEXT NOT NULL, classified_at TEXT NOT NULL, PRIMARY KEY (pipeline, source, col))",
];

/// Stores written before batches could read several inputs kept one input per batch in
/// `sealtrail_custody` only: each such batch gets its one input in `sealtrail_custody_inputs`
/// when the store is opened (once; a batch's rows there are written in one transaction, so a
/// batch with any has them all). Looked for first, so that opening a store writes nothing
/// once it is done.
const CUSTODY_INPUTS_MISSING: &str = "SELECT 1 FROM sealtrail_custody c WHERE NOT EXISTS (SELECT 1 FROM sealtrail_custody_inputs i WHERE i.run_id = c.run_id AND i.source = c.source AND i.batch = c.batch) LIMIT 1";
const CUSTODY_INPUTS_FILL: &str = "INSERT INTO sealtrail_custody_inputs (run_id, source, batch, seq, input_key, first_pos, last_pos, records) SELECT c.run_id, c.source, c.batch, 0, c.input_key, c.first_pos, c.last_pos, b.rows_in FROM sealtrail_custody c JOIN sealtrail_batches b ON b.run_id = c.run_id AND b.source = c.source AND b.batch = c.batch WHERE NOT EXISTS (SELECT 1 FROM sealtrail_custody_inputs i WHERE i.run_id = c.run_id AND i.source = c.source AND i.batch = c.batch) ON CONFLICT DO NOTHING";

/// An input a new run chose to read.
#[derive(Debug, Clone)]
pub struct ChosenInput {
    /// The file's path, or an encoded PostgreSQL range.
    pub input: String,
    /// Path, size and modification time (or the range's upper bound).
    pub fingerprint: String,
    /// For incremental files: the name the file matched its pattern under, and the SHA-256 of
    /// its bytes (empty when the run computes it while reading the file:
    /// [`StateStore::set_content_digests`]).
    pub content: Option<(String, String)>,
    /// For an incremental file that grew since a run loaded its first bytes: how many, whose
    /// records this run reads past (0: the whole file is read).
    pub skip: u64,
}

/// A file a succeeded run of an incremental source loaded, as [`StateStore::loaded_versions`]
/// finds it by the name it matched its pattern under.
#[derive(Debug, Clone)]
pub struct LoadedVersion {
    /// Its size then (from its fingerprint), when known.
    pub size: Option<u64>,
    /// SHA-256 of its bytes then, lowercase hex.
    pub sha256: String,
    pub run_id: String,
    /// The input as that run recorded it (its lineage ids' input key is of this).
    pub input: String,
}

/// The records of one input in a committed batch: the input part of their lineage ids, the
/// range of their positions and how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyInput {
    pub input_key: String,
    pub first_pos: u64,
    pub last_pos: u64,
    pub records: u64,
}

/// What [`StateStore::commit_batch`] stores for proofs.
#[derive(Debug, Clone)]
pub struct CustodyRow {
    pub pipeline: String,
    /// The inputs the batch read records of, in reading order (a batch of small files reads
    /// several).
    pub inputs: Vec<CustodyInput>,
    /// The `batch_committed` ledger entry, when the audit sink numbers its entries.
    pub ledger_seq: Option<u64>,
    /// `custody::BatchCustody::encode`.
    pub data: Vec<u8>,
    /// Rows delivered to each sink, by sink name.
    pub delivered: Vec<(String, u64)>,
}

/// Names a stored custody record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyRef {
    /// The pipeline whose run committed the batch (the spec's, or its replay's).
    pub pipeline: String,
    pub run_id: String,
    pub source: String,
    pub batch: u64,
    pub ledger_seq: Option<u64>,
}

/// A column's classification as stored with the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClass {
    pub source: String,
    pub column: String,
    pub tag: String,
    pub kind: Option<String>,
    pub confidence: f64,
    pub evidence: String,
    pub run_id: String,
}

/// SQLite settings, on every connection. 64 KiB pages (they take effect when the file is
/// created): a batch's custody record is megabytes, stored as a chain of overflow pages; memory-
/// mapped reads spare a copy of each (BENCHMARKS.md, `prove`). WAL with full syncs: a commit
/// the engine reports is on disk.
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA page_size=65536",
    "PRAGMA mmap_size=268435456",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
];

/// SQLite's "database is locked" / "database table is locked" (SQLITE_BUSY, SQLITE_LOCKED).
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        // Primary codes 5 and 6, and their extended forms (BUSY_RECOVERY = 261, ...).
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

impl StateStore {
    /// Opens the store at `url` (`sqlite://path` or `postgres://...`), creating tables.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url_kind = if url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        let url = if url_kind == "sqlite" && !url.contains("mode=") {
            if let Some(path) = url.strip_prefix("sqlite://")
                && let Some(dir) = Path::new(path).parent()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StateError(format!("cannot create {}: {e}", dir.display())))?;
            }
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let sqlite = url_kind == "sqlite";
        let sqlite_file = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.contains(":memory:") && !url.contains("mode=memory"))
            .map(std::path::PathBuf::from);
        if sqlite {
            // One connection first, whose errors are reported as they are: the pool would
            // retry a connection its settings fail on (a damaged file) until its timeout,
            // and then report only that.
            use sqlx::Connection;
            let file = sqlite_file
                .as_deref()
                .map_or_else(|| "in memory".to_string(), |f| f.display().to_string());
            let named = |e: sqlx::Error| StateError(format!("{file}: {}", StateError::from(e).0));
            let mut conn = sqlx::AnyConnection::connect(&url).await.map_err(|e| {
                StateError(format!(
                    "cannot open the run state store (sqlite): {}; check --state-url / SEALTRAIL_STATE_URL",
                    named(e).0
                ))
            })?;
            sqlite_settings(&mut conn).await.map_err(named)?;
            sqlx::query("SELECT count(*) FROM sqlite_master")
                .execute(&mut conn)
                .await
                .map_err(named)?;
            conn.close().await.map_err(named)?;
        }
        // A PostgreSQL store's URL is checked as every connection's; the pool takes it without
        // the settings read here, and waits for a connection as long as its `connect_timeout`
        // says (10 s without one).
        let mut wait = std::time::Duration::from_secs(10);
        let url = if sqlite {
            url
        } else {
            let target = sealtrail_core::db::pg_connect_options(&url, "the state store")
                .map_err(|e| {
                    StateError(format!(
                        "cannot open the run state store (postgres): {e}; check --state-url / SEALTRAIL_STATE_URL"
                    ))
                })?;
            wait = target.connect_timeout.unwrap_or(wait);
            let url = target.url.expose().to_string();
            // One connection first, as for SQLite: the pool would retry a refused connection
            // until its timeout and then say only "timed out".
            use sqlx::Connection;
            let failed = |why: String| {
                StateError(format!(
                    "cannot open the run state store (postgres): {why}; check --state-url / SEALTRAIL_STATE_URL"
                ))
            };
            match tokio::time::timeout(wait, sqlx::AnyConnection::connect(&url)).await {
                Ok(Ok(c)) => {
                    let _ = c.close().await;
                }
                Ok(Err(e)) => return Err(failed(sealtrail_core::db::redact_db_error(&e))),
                Err(_) => {
                    return Err(failed(format!(
                        "no answer within {} s (`connect_timeout` in the URL sets how long to wait)",
                        wait.as_secs()
                    )));
                }
            }
            url
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 4 })
            .acquire_timeout(wait)
            // No idle timeout and no lifetime, so the pool starts no maintenance task: the
            // store's connections live as long as the process, which closes them at its end.
            // (In sqlx 0.8.6 that task could spin forever once a race wrapped the pool's idle
            // count below zero, issue #3645: a test's `keys reencrypt` hung so for 20 minutes.
            // 0.9.1, our lock since, has the fix, pull request #4289; the task is still not
            // needed.)
            .idle_timeout(None)
            .max_lifetime(None)
            .min_connections(0)
            // Per-connection settings go on every connection the pool opens, including one
            // that replaces a connection it dropped (broken).
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlite_settings(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                // A PostgreSQL store's error as every connection's (what failed, never the URL).
                let why = if sqlite {
                    e.to_string()
                } else {
                    sealtrail_core::db::redact_db_error(&e)
                };
                StateError(format!(
                    "cannot open the run state store ({url_kind}): {why}; check --state-url / SEALTRAIL_STATE_URL"
                ))
            })?;
        // PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not safe against another session
        // creating the same table at that moment (a unique violation in its catalogue): stores
        // opened at once (runs of several pipelines, tests) create the tables one at a time.
        let mut conn = pool.acquire().await?;
        if !sqlite {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(SCHEMA_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let mut created = Ok(());
        for ddl in SCHEMA {
            if let Err(e) = sqlx::query(*ddl).execute(&mut *conn).await {
                created = Err(e);
                break;
            }
        }
        if created.is_ok() {
            created = match sqlx::query(CUSTODY_INPUTS_MISSING)
                .fetch_optional(&mut *conn)
                .await
            {
                Ok(Some(_)) => sqlx::query(CUSTODY_INPUTS_FILL)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ()),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
        }
        if !sqlite {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(SCHEMA_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        created?;
        drop(conn);
        Ok(Self {
            pool,
            url_kind,
            sqlite_file,
        })
    }

    /// Closes the store's connections, waiting (up to 30 s) for those in use. A SQLite store's
    /// last connection checkpoints the write-ahead log into the database and deletes it (a
    /// process that exits without closing leaves the log for the next opener to fold in, so
    /// giving up on a connection that is never returned costs nothing but the file).
    pub async fn close(&self) {
        let closed = tokio::time::timeout(std::time::Duration::from_secs(30), self.pool.close());
        if closed.await.is_err() {
            tracing::warn!("a state store connection was still in use after 30 s; not closed");
        }
    }

    /// Whether a process holds the run lock of `pipeline` now ([`StateStore::lock_pipeline`]),
    /// found without taking it where the backend allows (PostgreSQL's `pg_locks`); `None`
    /// when it cannot be told (an in-memory store). A run recorded as running whose lock
    /// nobody holds was interrupted (killed, or its machine stopped).
    pub async fn pipeline_running(&self, pipeline: &str) -> Result<Option<bool>> {
        let digest = lock_digest(pipeline);
        if self.url_kind == "postgres" {
            // pg_try_advisory_lock(bigint) shows as classid = high 32 bits, objid = low 32.
            let key = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
            let held: bool = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid::text::bigint = $1 AND objid::text::bigint = $2 AND objsubid = 1 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            )
            .bind((key >> 32) as i64)
            .bind((key & 0xffff_ffff) as i64)
            .fetch_one(&self.pool)
            .await?
            .get(0);
            return Ok(Some(held));
        }
        let Some(path) = self.lock_file(&digest) else {
            return Ok(None);
        };
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(false)),
            Err(e) => {
                return Err(StateError(format!("run lock {}: {e}", path.display())));
            }
        };
        // A shared lock is granted only while no run holds the exclusive one; it is given back
        // at once ([`StateStore::lock_pipeline`] tries again before it calls a pipeline busy).
        Ok(Some(match f.try_lock_shared() {
            Ok(()) => {
                let _ = f.unlock();
                false
            }
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StateError(format!("run lock {}: {e}", path.display())));
            }
        }))
    }

    /// The SQLite store's lock file for a pipeline's lock digest; `None` for an in-memory store.
    fn lock_file(&self, digest: &[u8]) -> Option<std::path::PathBuf> {
        let mut dir = self.sqlite_file.clone()?.into_os_string();
        dir.push(".run-locks");
        Some(std::path::PathBuf::from(dir).join(format!("{}.lock", hex::encode(&digest[..8]))))
    }

    /// Takes the run lock of `pipeline`, or says who holds it: `Err(holder)` names the other
    /// process when it can be told (its pid, for SQLite).
    pub async fn lock_pipeline(
        &self,
        pipeline: &str,
    ) -> Result<std::result::Result<PipelineLock, String>> {
        let digest = lock_digest(pipeline);
        if self.url_kind == "postgres" {
            let mut conn = self.pool.acquire().await?.detach();
            let key = i64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
            let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?
                .get(0);
            return Ok(if got {
                Ok(PipelineLock {
                    held: Held::Session { conn },
                })
            } else {
                Err("another process, here or on another machine sharing this state store".into())
            });
        }
        let Some(path) = self.lock_file(&digest) else {
            return Ok(Ok(PipelineLock {
                held: Held::Nothing,
            }));
        };
        let dir = path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let io = |e: std::io::Error| StateError(format!("run lock in {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // `runs` looks whether a run holds the lock by taking it shared for an instant
        // ([`StateStore::pipeline_running`]): a few tries tell that from a run.
        let mut locked = f.try_lock();
        for _ in 0..5 {
            if !matches!(locked, Err(std::fs::TryLockError::WouldBlock)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            locked = f.try_lock();
        }
        match locked {
            Ok(()) => {
                // Who holds it, for the message another process gives.
                use std::io::{Seek, Write};
                f.set_len(0).map_err(io)?;
                f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
                writeln!(f, "{}", std::process::id()).map_err(io)?;
                Ok(Ok(PipelineLock {
                    held: Held::File { _file: f },
                }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                // A pid, unless the holder has not written it yet.
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                Ok(Err(match pid.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid} on this machine"),
                    Err(_) => "another process on this machine".to_string(),
                }))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.url_kind
    }

    pub async fn unfinished_run(&self, pipeline: &str) -> Result<Option<Unfinished>> {
        let row = sqlx::query("SELECT run_id, spec_sha256, status FROM sealtrail_runs WHERE pipeline = $1 AND status IN ('running', 'failed') ORDER BY started_at DESC LIMIT 1")
            .bind(pipeline)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Unfinished {
            run_id: RunId::from_string(r.get(0)),
            spec_sha256: r.get(1),
            status: r.get(2),
        }))
    }

    /// The newest succeeded run of `pipeline` under spec version `spec_sha256`, with when it
    /// ended: a `quarantine replay` of the same repaired records under the same spec has one.
    pub async fn succeeded_with_spec(
        &self,
        pipeline: &str,
        spec_sha256: &str,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT run_id, ended_at FROM sealtrail_runs WHERE pipeline = $1 AND spec_sha256 = $2 AND status = 'succeeded' ORDER BY started_at DESC LIMIT 1")
            .bind(pipeline)
            .bind(spec_sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get::<Option<String>, _>(1).unwrap_or_default())))
    }

    /// Records that replay run `run` loaded `pairs` (replayed id, quarantined id) under the
    /// `records_repaired` ledger entry `ledger_seq`.
    pub async fn add_repairs(
        &self,
        run: &str,
        pairs: &[(String, String)],
        ledger_seq: u64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (replayed, original) in pairs {
            sqlx::query("INSERT INTO sealtrail_repairs (run_id, replayed_id, original_id, ledger_seq) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(run)
                .bind(replayed)
                .bind(original)
                .bind(ledger_seq as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The `replay_declared` ledger entry of replay spec version `replay_spec_sha256`.
    pub async fn replay_declaration(&self, replay_spec_sha256: &str) -> Result<Option<u64>> {
        let row =
            sqlx::query("SELECT ledger_seq FROM sealtrail_replays WHERE replay_spec_sha256 = $1")
                .bind(replay_spec_sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Records that ledger entry `ledger_seq` declares replay spec version `replay_spec_sha256`
    /// (the first declaration stays).
    pub async fn add_replay_declaration(
        &self,
        replay_spec_sha256: &str,
        ledger_seq: u64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO sealtrail_replays (replay_spec_sha256, ledger_seq) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(replay_spec_sha256)
            .bind(ledger_seq as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The replayed ids of replay run `run` already linked to the records they repair.
    pub async fn linked_by(&self, run: &str) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT replayed_id FROM sealtrail_repairs WHERE run_id = $1")
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The repairs that involve record `id`, as (replay run, replayed id, quarantined id,
    /// ledger entry): the one it is (a replayed record) or those it had (a quarantined one).
    pub async fn repairs_of(&self, id: &str) -> Result<Vec<(String, String, String, u64)>> {
        let rows = sqlx::query("SELECT run_id, replayed_id, original_id, ledger_seq FROM sealtrail_repairs WHERE replayed_id = $1 OR original_id = $1 ORDER BY ledger_seq")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<i64, _>(3) as u64))
            .collect())
    }

    pub async fn abandon(&self, run: &RunId) -> Result<()> {
        sqlx::query(
            "UPDATE sealtrail_runs SET status = 'abandoned', ended_at = $2 WHERE run_id = $1",
        )
        .bind(run.as_str())
        .bind(sealtrail_core::audit::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a new run with its inputs, in one transaction.
    pub async fn start_run(
        &self,
        run: &RunId,
        pipeline: &str,
        spec_sha: &str,
        inputs: &[(String, Vec<ChosenInput>)],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO sealtrail_runs (run_id, pipeline, spec_sha256, status, started_at) VALUES ($1, $2, $3, 'running', $4)")
            .bind(run.as_str())
            .bind(pipeline)
            .bind(spec_sha)
            .bind(sealtrail_core::audit::now())
            .execute(&mut *tx)
            .await?;
        for (source, files) in inputs {
            for (seq, i) in files.iter().enumerate() {
                sqlx::query("INSERT INTO sealtrail_run_inputs (run_id, source, seq, input, fingerprint) VALUES ($1, $2, $3, $4, $5)")
                    .bind(run.as_str())
                    .bind(source.as_str())
                    .bind(seq as i64)
                    .bind(i.input.as_str())
                    .bind(i.fingerprint.as_str())
                    .execute(&mut *tx)
                    .await?;
                if i.skip > 0 {
                    sqlx::query("INSERT INTO sealtrail_run_input_skips (run_id, source, seq, skip) VALUES ($1, $2, $3, $4)")
                        .bind(run.as_str())
                        .bind(source.as_str())
                        .bind(seq as i64)
                        .bind(i.skip as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some((name, sha256)) = &i.content {
                    sqlx::query("INSERT INTO sealtrail_run_input_content (run_id, source, seq, name, sha256) VALUES ($1, $2, $3, $4, $5)")
                        .bind(run.as_str())
                        .bind(source.as_str())
                        .bind(seq as i64)
                        .bind(name.as_str())
                        .bind(sha256.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn mark_running(&self, run: &RunId) -> Result<()> {
        sqlx::query("UPDATE sealtrail_runs SET status = 'running', error = NULL WHERE run_id = $1")
            .bind(run.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The inputs recorded for a run's source, in read order.
    pub async fn run_inputs(&self, run: &RunId, source: &str) -> Result<Vec<String>> {
        let inputs = self.run_inputs_fingerprinted(run, source).await?;
        Ok(inputs.into_iter().map(|(input, _)| input).collect())
    }

    /// The inputs of a run's source whose first bytes an earlier run loaded (they grew since),
    /// with how many: the run reads only the records after them.
    pub async fn run_input_skips(&self, run: &RunId, source: &str) -> Result<HashMap<String, u64>> {
        let rows = sqlx::query(
            "SELECT i.input, s.skip FROM sealtrail_run_input_skips s JOIN sealtrail_run_inputs i ON i.run_id = s.run_id AND i.source = s.source AND i.seq = s.seq WHERE s.run_id = $1 AND s.source = $2",
        )
        .bind(run.as_str())
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// [`Self::run_inputs`] with the fingerprint each input had when the run chose it.
    pub async fn run_inputs_fingerprinted(
        &self,
        run: &RunId,
        source: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT input, fingerprint FROM sealtrail_run_inputs WHERE run_id = $1 AND source = $2 ORDER BY seq",
        )
        .bind(run.as_str())
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Whether a run of `pipeline` succeeded with this store.
    pub async fn has_succeeded_run(&self, pipeline: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM sealtrail_runs WHERE pipeline = $1 AND status = 'succeeded' LIMIT 1",
        )
        .bind(pipeline)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The pipelines other than `pipeline` that loaded, under a source named `source`, a file
    /// of this fingerprint, or of this matched name and content digest (`content`).
    pub async fn loaded_by_others(
        &self,
        pipeline: &str,
        source: &str,
        fingerprint: &str,
        content: Option<&(String, String)>,
    ) -> Result<Vec<String>> {
        let (name, sha256) = content.map_or(("", ""), |(n, d)| (n.as_str(), d.as_str()));
        let rows = sqlx::query(
            "SELECT pipeline FROM sealtrail_loaded_files WHERE source = $1 AND fingerprint = $2 AND pipeline <> $3 UNION SELECT pipeline FROM sealtrail_loaded_content WHERE source = $1 AND name = $4 AND sha256 = $5 AND pipeline <> $3 ORDER BY 1",
        )
        .bind(source)
        .bind(fingerprint)
        .bind(pipeline)
        .bind(name)
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// For each pipeline other than `pipeline`, the last input of its source named `source`
    /// that a succeeded run read (as [`Self::last_loaded_input`]).
    pub async fn last_loaded_inputs_of_others(
        &self,
        pipeline: &str,
        source: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT r.pipeline, i.input FROM sealtrail_run_inputs i JOIN sealtrail_runs r ON r.run_id = i.run_id WHERE r.pipeline <> $1 AND i.source = $2 AND r.status = 'succeeded' ORDER BY r.pipeline, r.ended_at DESC, i.seq DESC")
            .bind(pipeline)
            .bind(source)
            .fetch_all(&self.pool)
            .await?;
        let mut last: Vec<(String, String)> = Vec::new();
        for r in rows {
            let other: String = r.get(0);
            if last.last().is_none_or(|(o, _)| *o != other) {
                last.push((other, r.get(1)));
            }
        }
        Ok(last)
    }

    /// The last input of `source` read by a succeeded run of `pipeline` (for database sources:
    /// where the incremental cursor stands).
    pub async fn last_loaded_input(&self, pipeline: &str, source: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT i.input FROM sealtrail_run_inputs i JOIN sealtrail_runs r ON r.run_id = i.run_id WHERE r.pipeline = $1 AND i.source = $2 AND r.status = 'succeeded' ORDER BY r.ended_at DESC, i.seq DESC LIMIT 1")
            .bind(pipeline)
            .bind(source)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn is_loaded(&self, pipeline: &str, source: &str, fingerprint: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM sealtrail_loaded_files WHERE pipeline = $1 AND source = $2 AND fingerprint = $3")
            .bind(pipeline)
            .bind(source)
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The sizes of the files loaded by succeeded runs under this name for `source` (`None`
    /// for one whose size cannot be read back): a file of another size cannot hold the same
    /// bytes, so the run need not hash it before reading it.
    pub async fn loaded_versions(
        &self,
        pipeline: &str,
        source: &str,
        name: &str,
    ) -> Result<Vec<LoadedVersion>> {
        let rows = sqlx::query("SELECT i.fingerprint, l.sha256, l.run_id, i.input FROM sealtrail_loaded_content l JOIN sealtrail_run_input_content c ON c.run_id = l.run_id AND c.source = l.source AND c.name = l.name AND c.sha256 = l.sha256 JOIN sealtrail_run_inputs i ON i.run_id = c.run_id AND i.source = c.source AND i.seq = c.seq WHERE l.pipeline = $1 AND l.source = $2 AND l.name = $3")
            .bind(pipeline)
            .bind(source)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| LoadedVersion {
                size: sealtrail_connectors::files::fingerprint_size(&r.get::<String, _>(0)),
                sha256: r.get(1),
                run_id: r.get(2),
                input: r.get(3),
            })
            .collect())
    }

    /// The last ledger entry a committed batch of `pipeline` was recorded under, if any.
    pub async fn last_ledger_seq(&self, pipeline: &str) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT max(ledger_seq) FROM sealtrail_custody WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.map(|s| s as u64))
    }

    /// The ids of every run of `pipeline` the store knows.
    pub async fn run_ids(&self, pipeline: &str) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT run_id FROM sealtrail_runs WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether `run` committed any record of the input whose lineage ids start with
    /// `source:input_key:` (loaded or quarantined: every record read has custody).
    pub async fn read_records_of(&self, run: &str, source: &str, input_key: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM sealtrail_custody_inputs WHERE run_id = $1 AND source = $2 AND input_key = $3 LIMIT 1",
        )
        .bind(run)
        .bind(source)
        .bind(input_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Records the content digests (input, SHA-256) of inputs of `run` whose digests were left
    /// to be computed while the run read them (recorded empty when the run started), in one
    /// transaction: a source of 20,000 small files made 20,000 commits (each a sync to disk)
    /// and as many scans of the run's inputs, a minute and more.
    pub async fn set_content_digests(
        &self,
        run: &RunId,
        source: &str,
        digests: &[(String, String)],
    ) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT seq, input FROM sealtrail_run_inputs WHERE run_id = $1 AND source = $2",
        )
        .bind(run.as_str())
        .bind(source)
        .fetch_all(&mut *tx)
        .await?;
        let mut seqs: HashMap<String, Vec<i64>> = HashMap::new();
        for r in rows {
            seqs.entry(r.get(1)).or_default().push(r.get(0));
        }
        for (input, sha256) in digests {
            for seq in seqs.get(input).into_iter().flatten() {
                sqlx::query("UPDATE sealtrail_run_input_content SET sha256 = $4 WHERE run_id = $1 AND source = $2 AND seq = $3 AND sha256 = ''")
                    .bind(run.as_str())
                    .bind(source)
                    .bind(*seq)
                    .bind(sha256)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The succeeded run that loaded a file of this name and content for `source`, if any.
    pub async fn loaded_content(
        &self,
        pipeline: &str,
        source: &str,
        name: &str,
        sha256: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query("SELECT run_id FROM sealtrail_loaded_content WHERE pipeline = $1 AND source = $2 AND name = $3 AND sha256 = $4")
            .bind(pipeline)
            .bind(source)
            .bind(name)
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Records `fingerprint` as loaded by `run`: a file found to hold bytes that run loaded
    /// (touched, or copied again) is then skipped without being read again.
    pub async fn alias_loaded(
        &self,
        pipeline: &str,
        source: &str,
        fingerprint: &str,
        run: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO sealtrail_loaded_files (pipeline, source, fingerprint, run_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(pipeline)
            .bind(source)
            .bind(fingerprint)
            .bind(run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The pipeline a run belongs to, if this store knows the run.
    pub async fn run_pipeline(&self, run: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT pipeline FROM sealtrail_runs WHERE run_id = $1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Counts of a committed batch, if it was committed.
    pub async fn batch(&self, run: &RunId, source: &str, batch: u64) -> Result<Option<Counts>> {
        let row = sqlx::query("SELECT rows_in, rows_loaded, rows_quarantined FROM sealtrail_batches WHERE run_id = $1 AND source = $2 AND batch = $3")
            .bind(run.as_str())
            .bind(source)
            .bind(batch as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| counts(r.get(0), r.get(1), r.get(2))))
    }

    /// Records a batch as committed to every sink, with its custody record, in one
    /// transaction: the commit point of a batch.
    pub async fn commit_batch(
        &self,
        run: &RunId,
        source: &str,
        batch: u64,
        c: Counts,
        custody: &CustodyRow,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO sealtrail_batches (run_id, source, batch, rows_in, rows_loaded, rows_quarantined, committed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(run.as_str())
            .bind(source)
            .bind(batch as i64)
            .bind(c.rows_in as i64)
            .bind(c.rows_loaded as i64)
            .bind(c.rows_quarantined as i64)
            .bind(sealtrail_core::audit::now())
            .execute(&mut *tx)
            .await?;
        let first = custody.inputs.first();
        sqlx::query("INSERT INTO sealtrail_custody (run_id, source, batch, pipeline, input_key, first_pos, last_pos, ledger_seq, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(run.as_str())
            .bind(source)
            .bind(batch as i64)
            .bind(&custody.pipeline)
            .bind(first.map_or("", |i| i.input_key.as_str()))
            .bind(first.map_or(0, |i| i.first_pos as i64))
            .bind(first.map_or(0, |i| i.last_pos as i64))
            .bind(custody.ledger_seq.map(|s| s as i64))
            .bind(&custody.data)
            .execute(&mut *tx)
            .await?;
        for (seq, i) in custody.inputs.iter().enumerate() {
            sqlx::query("INSERT INTO sealtrail_custody_inputs (run_id, source, batch, seq, input_key, first_pos, last_pos, records) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(run.as_str())
                .bind(source)
                .bind(batch as i64)
                .bind(seq as i64)
                .bind(&i.input_key)
                .bind(i.first_pos as i64)
                .bind(i.last_pos as i64)
                .bind(i.records as i64)
                .execute(&mut *tx)
                .await?;
        }
        for (sink, rows) in &custody.delivered {
            sqlx::query("INSERT INTO sealtrail_batch_outputs (run_id, source, batch, sink, row_count) VALUES ($1, $2, $3, $4, $5)")
                .bind(run.as_str())
                .bind(source)
                .bind(batch as i64)
                .bind(sink)
                .bind(*rows as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Custody records of `pipeline` and of its replays (`quarantine replay`:
    /// [`sealtrail_spec::replay_name`]), optionally only those of `source` and input key whose
    /// position range holds `pos`; newest run first.
    pub async fn custody_index(
        &self,
        pipeline: &str,
        at: Option<(&str, &str, Option<u64>)>,
    ) -> Result<Vec<CustodyRef>> {
        let (source, key, pos) = at.unwrap_or(("", "", None));
        let rows = sqlx::query("SELECT c.run_id, c.source, c.batch, c.ledger_seq, c.pipeline FROM sealtrail_custody c JOIN sealtrail_runs r ON r.run_id = c.run_id WHERE (c.pipeline = $1 OR c.pipeline = $5) AND ($2 = '' OR EXISTS (SELECT 1 FROM sealtrail_custody_inputs i WHERE i.run_id = c.run_id AND i.source = c.source AND i.batch = c.batch AND i.source = $2 AND i.input_key = $3 AND ($4 < 0 OR (i.first_pos <= $4 AND i.last_pos >= $4)))) ORDER BY r.started_at DESC, c.run_id DESC, c.source, c.batch")
            .bind(pipeline)
            .bind(source)
            .bind(key)
            .bind(pos.map_or(-1, |p| p as i64))
            .bind(sealtrail_spec::replay_name(pipeline))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| CustodyRef {
                pipeline: r.get(4),
                run_id: r.get(0),
                source: r.get(1),
                batch: r.get::<i64, _>(2) as u64,
                ledger_seq: r.get::<Option<i64>, _>(3).map(|s| s as u64),
            })
            .collect())
    }

    /// The indexes, among the records of batch `at`, of those read from input `key` (the
    /// input part of their lineage ids): inputs are stored in reading order with their record
    /// counts. `None` when the batch lists no such input.
    pub async fn input_records_of(
        &self,
        at: &CustodyRef,
        key: &str,
    ) -> Result<Option<std::ops::Range<u64>>> {
        let rows = sqlx::query("SELECT input_key, records FROM sealtrail_custody_inputs WHERE run_id = $1 AND source = $2 AND batch = $3 ORDER BY seq")
            .bind(&at.run_id)
            .bind(&at.source)
            .bind(at.batch as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut first = 0u64;
        for r in rows {
            let n = r.get::<i64, _>(1).max(0) as u64;
            if r.get::<String, _>(0) == key {
                return Ok(Some(first..first + n));
            }
            first += n;
        }
        Ok(None)
    }

    /// The pipelines whose committed batches read records of input `key` of `source` (lineage
    /// ids `source:key:...`), to tell apart the rows of a table several pipelines load.
    pub async fn pipelines_reading(&self, source: &str, key: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.pipeline FROM sealtrail_custody c JOIN sealtrail_custody_inputs i ON i.run_id = c.run_id AND i.source = c.source AND i.batch = c.batch WHERE i.source = $1 AND i.input_key = $2 ORDER BY c.pipeline",
        )
        .bind(source)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The stored custody record of one batch: its newest revision's, if its rows were
    /// rewritten in place since ([`StateStore::revisions`]).
    pub async fn custody(&self, r: &CustodyRef) -> Result<Vec<u8>> {
        let row = sqlx::query(
            "SELECT COALESCE((SELECT data FROM sealtrail_custody_revisions WHERE run_id = $1 AND source = $2 AND batch = $3 ORDER BY revision DESC LIMIT 1), (SELECT data FROM sealtrail_custody WHERE run_id = $1 AND source = $2 AND batch = $3))",
        )
        .bind(&r.run_id)
        .bind(&r.source)
        .bind(r.batch as i64)
        .fetch_one(&self.pool)
        .await?;
        row.get::<Option<Vec<u8>>, _>(0).ok_or_else(|| {
            StateError(format!(
                "no custody record of run {} batch {}",
                r.run_id, r.batch
            ))
        })
    }

    /// The revisions of a batch's record, oldest first: (sink, `outputs_revised` ledger entry).
    pub async fn revisions(&self, r: &CustodyRef) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT sink, ledger_seq FROM sealtrail_custody_revisions WHERE run_id = $1 AND source = $2 AND batch = $3 ORDER BY revision",
        )
        .bind(&r.run_id)
        .bind(&r.source)
        .bind(r.batch as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get::<i64, _>(1) as u64))
            .collect())
    }

    /// Stores `data` as the batch's record after its rows in `sink` were rewritten in place,
    /// under the `outputs_revised` ledger entry `ledger_seq`.
    pub async fn add_revision(
        &self,
        r: &CustodyRef,
        sink: &str,
        ledger_seq: u64,
        data: &[u8],
    ) -> Result<()> {
        sqlx::query("INSERT INTO sealtrail_custody_revisions (run_id, source, batch, revision, sink, ledger_seq, data) SELECT $1, $2, $3, COALESCE(MAX(revision), 0) + 1, $4, $5, $6 FROM sealtrail_custody_revisions WHERE run_id = $1 AND source = $2 AND batch = $3")
            .bind(&r.run_id)
            .bind(&r.source)
            .bind(r.batch as i64)
            .bind(sink)
            .bind(ledger_seq as i64)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Bytes `[offset, offset + len)` of a stored custody record (fewer at its end): `prove`
    /// reads the parts of a batch's record one row's proof needs, not its megabytes.
    pub async fn custody_range(&self, r: &CustodyRef, offset: u64, len: u64) -> Result<Vec<u8>> {
        // `substr` counts from 1 (SQLite and PostgreSQL alike); both stop at the value's end.
        let row = sqlx::query(
            "SELECT COALESCE((SELECT substr(data, CAST($4 AS INTEGER), CAST($5 AS INTEGER)) FROM sealtrail_custody_revisions WHERE run_id = $1 AND source = $2 AND batch = $3 ORDER BY revision DESC LIMIT 1), (SELECT substr(data, CAST($4 AS INTEGER), CAST($5 AS INTEGER)) FROM sealtrail_custody WHERE run_id = $1 AND source = $2 AND batch = $3))",
        )
        .bind(&r.run_id)
        .bind(&r.source)
        .bind(r.batch as i64)
        .bind(offset.saturating_add(1).min(i32::MAX as u64) as i64)
        .bind(len.min(i32::MAX as u64) as i64)
        .fetch_one(&self.pool)
        .await?;
        row.get::<Option<Vec<u8>>, _>(0).ok_or_else(|| {
            StateError(format!(
                "no custody record of run {} batch {}",
                r.run_id, r.batch
            ))
        })
    }

    /// Sum over the committed batches of a run (of one source, or all with `None`).
    pub async fn totals(&self, run: &RunId, source: Option<&str>) -> Result<Counts> {
        let row = sqlx::query("SELECT CAST(COALESCE(SUM(rows_in), 0) AS BIGINT), CAST(COALESCE(SUM(rows_loaded), 0) AS BIGINT), CAST(COALESCE(SUM(rows_quarantined), 0) AS BIGINT) FROM sealtrail_batches WHERE run_id = $1 AND ($2 = '' OR source = $2)")
            .bind(run.as_str())
            .bind(source.unwrap_or(""))
            .fetch_one(&self.pool)
            .await?;
        Ok(counts(row.get(0), row.get(1), row.get(2)))
    }

    /// Rows the run's committed batches delivered to each sink, by sink name. Batches committed
    /// before sealtrail recorded them count none.
    pub async fn delivered(&self, run: &RunId) -> Result<BTreeMap<String, u64>> {
        let rows = sqlx::query("SELECT sink, CAST(SUM(row_count) AS BIGINT) FROM sealtrail_batch_outputs WHERE run_id = $1 GROUP BY sink")
            .bind(run.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// Records the run's committed batches read, by source and the input key of their lineage
    /// ids. Batches without a custody record count none.
    pub async fn read_per_input(&self, run: &RunId) -> Result<BTreeMap<(String, String), u64>> {
        let rows = sqlx::query("SELECT i.source, i.input_key, CAST(SUM(i.records) AS BIGINT) FROM sealtrail_custody_inputs i WHERE i.run_id = $1 GROUP BY i.source, i.input_key")
            .bind(run.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    (r.get::<String, _>(0), r.get::<String, _>(1)),
                    r.get::<i64, _>(2) as u64,
                )
            })
            .collect())
    }

    /// Marks the run succeeded and its files loaded, in one transaction.
    pub async fn succeed(&self, run: &RunId, pipeline: &str, c: Counts) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE sealtrail_runs SET status = 'succeeded', ended_at = $2, rows_in = $3, rows_loaded = $4, rows_quarantined = $5, error = NULL WHERE run_id = $1")
            .bind(run.as_str())
            .bind(sealtrail_core::audit::now())
            .bind(c.rows_in as i64)
            .bind(c.rows_loaded as i64)
            .bind(c.rows_quarantined as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sealtrail_loaded_files (pipeline, source, fingerprint, run_id) SELECT $1, source, fingerprint, run_id FROM sealtrail_run_inputs WHERE run_id = $2 ON CONFLICT DO NOTHING")
            .bind(pipeline)
            .bind(run.as_str())
            .execute(&mut *tx)
            .await?;
        // A digest still empty was never computed (it cannot be after a whole read): such a
        // file is known by its fingerprint alone.
        sqlx::query("INSERT INTO sealtrail_loaded_content (pipeline, source, name, sha256, run_id) SELECT $1, source, name, sha256, run_id FROM sealtrail_run_input_content WHERE run_id = $2 AND sha256 <> '' ON CONFLICT DO NOTHING")
            .bind(pipeline)
            .bind(run.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the classification a run acted on, per column (the latest run's wins).
    pub async fn save_classifications(
        &self,
        pipeline: &str,
        run: &RunId,
        rows: &[StoredClass],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query("INSERT INTO sealtrail_classifications (pipeline, source, col, tag, kind, confidence, evidence, run_id, classified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (pipeline, source, col) DO UPDATE SET tag = excluded.tag, kind = excluded.kind, confidence = excluded.confidence, evidence = excluded.evidence, run_id = excluded.run_id, classified_at = excluded.classified_at")
                .bind(pipeline)
                .bind(&r.source)
                .bind(&r.column)
                .bind(&r.tag)
                .bind(r.kind.as_deref())
                .bind(r.confidence)
                .bind(&r.evidence)
                .bind(run.as_str())
                .bind(sealtrail_core::audit::now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored classification of a pipeline's columns.
    pub async fn classifications(&self, pipeline: &str) -> Result<Vec<StoredClass>> {
        let rows = sqlx::query("SELECT source, col, tag, kind, confidence, evidence, run_id FROM sealtrail_classifications WHERE pipeline = $1 ORDER BY source, col")
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredClass {
                    source: r.try_get(0)?,
                    column: r.try_get(1)?,
                    tag: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    confidence: r.try_get(4)?,
                    evidence: r.try_get(5)?,
                    run_id: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Records that `run` failed with `error`.
    ///
    /// `before_delivery`: the run failed before it began committing its first batch to a sink,
    /// so no sink holds anything of it. It is recorded as `failed_before_load`, which the next
    /// run does not resume: that one starts afresh, under whatever spec it is given.
    pub async fn fail(&self, run: &RunId, error: &str, before_delivery: bool) -> Result<()> {
        // The counts of the batches committed before the failure: they stay loaded, and
        // `runs` shows how far the run got.
        let c = self.totals(run, None).await?;
        sqlx::query("UPDATE sealtrail_runs SET status = $7, ended_at = $2, error = $3, rows_in = $4, rows_loaded = $5, rows_quarantined = $6 WHERE run_id = $1")
            .bind(run.as_str())
            .bind(sealtrail_core::audit::now())
            .bind(error)
            .bind(c.rows_in as i64)
            .bind(c.rows_loaded as i64)
            .bind(c.rows_quarantined as i64)
            .bind(if before_delivery {
                "failed_before_load"
            } else {
                "failed"
            })
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Recent runs, newest first.
    /// Every pipeline the store has a run of, in name order.
    pub async fn pipelines(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT pipeline FROM sealtrail_runs ORDER BY pipeline")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    pub async fn runs(&self, pipeline: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
        let rows = sqlx::query("SELECT run_id, pipeline, status, started_at, ended_at, rows_in, rows_loaded, rows_quarantined, error FROM sealtrail_runs WHERE ($1 = '' OR pipeline = $1) ORDER BY started_at DESC LIMIT $2")
            .bind(pipeline.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                run_id: r.get(0),
                pipeline: r.get(1),
                status: r.get(2),
                started_at: r.get(3),
                ended_at: r.get(4),
                counts: counts(
                    r.get::<Option<i64>, _>(5).unwrap_or(0),
                    r.get::<Option<i64>, _>(6).unwrap_or(0),
                    r.get::<Option<i64>, _>(7).unwrap_or(0),
                ),
                error: r.get(8),
            })
            .collect())
    }
}

/// The settings of every SQLite connection ([`SQLITE_PRAGMAS`]).
async fn sqlite_settings(conn: &mut sqlx::AnyConnection) -> std::result::Result<(), sqlx::Error> {
    for pragma in SQLITE_PRAGMAS {
        // Another process opening a new store at the same moment holds the file's lock while
        // it switches it to WAL; SQLite then answers "database is locked" at once rather than
        // waiting.
        let mut tries = 0;
        loop {
            match sqlx::query(pragma).execute(&mut *conn).await {
                Ok(_) => break,
                Err(e) if is_busy(&e) && tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// What to do about a damaged SQLite store.
const DAMAGED_HINT: &str = "restore it, with its -wal file, from a backup. Do not delete it: a new store would not know which inputs were loaded, and would load them again";

fn counts(a: i64, b: i64, c: i64) -> Counts {
    Counts {
        rows_in: a as u64,
        rows_loaded: b as u64,
        rows_quarantined: c as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PostgreSQL store that refuses connections is reported as such at once, not as the
    /// pool's "timed out" ten seconds later.
    #[tokio::test]
    async fn a_refused_postgres_store_says_so() {
        let err = match StateStore::open("postgres://postgres@127.0.0.1:1/test").await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("nothing listens on port 1"),
        };
        assert!(
            err.contains("cannot open the run state store (postgres): network error:")
                && err.to_lowercase().contains("refused")
                && !err.contains("timed out"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_damaged_sqlite_file_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.db");
        let url = format!("sqlite://{}", file.display());
        let st = StateStore::open(&url).await.unwrap();
        for i in 0..2_000 {
            sqlx::query("INSERT INTO sealtrail_runs (run_id, pipeline, spec_sha256, status, started_at) VALUES ($1, 'p', $2, 'succeeded', '2026-12-04')")
                .bind(format!("run-{i}"))
                .bind("0".repeat(400))
                .execute(&st.pool)
                .await
                .unwrap();
        }
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&st.pool)
            .await
            .unwrap();
        st.pool.close().await;
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let err = match StateStore::open(&url).await {
            Err(e) => e,
            Ok(st) => st.runs(None, 10_000).await.unwrap_err(),
        }
        .to_string();
        assert!(
            err.contains("malformed") && err.contains("the SQLite file is damaged"),
            "{err}"
        );
        // Bytes that are no database at all.
        std::fs::write(&file, vec![7u8; 70_000]).unwrap();
        let err = match StateStore::open(&url).await {
            Err(e) => e,
            Ok(st) => st.runs(None, 1).await.unwrap_err(),
        }
        .to_string();
        assert!(
            err.contains("not a database")
                && err.contains("the SQLite file is damaged")
                && err.contains(&file.display().to_string()),
            "{err}"
        );
        // An empty file is a new store.
        std::fs::write(&file, b"").unwrap();
        std::fs::remove_file(dir.path().join("state.db-wal")).ok();
        std::fs::remove_file(dir.path().join("state.db-shm")).ok();
        let st = StateStore::open(&url).await.unwrap();
        assert!(st.runs(None, 1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sqlite_settings_hold_on_every_connection_the_pool_opens() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        let st = StateStore::open(&url).await.unwrap();
        // The pool's connection is closed and replaced, as after an idle timeout.
        for _ in 0..2 {
            let mut c = st.pool.acquire().await.unwrap();
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            let mmap: i64 = sqlx::query_scalar("PRAGMA mmap_size")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            assert_eq!(
                (sync, mmap, journal.as_str(), page),
                (2, 268_435_456, "wal", 65_536)
            );
            sqlx::Connection::close(c.detach()).await.unwrap();
        }
    }

    /// One run of a pipeline at a time, in both backends: a second holder is refused (a store
    /// opened again stands for another process: the lock belongs to a file description or a
    /// session), other pipelines are not, and the lock goes with its holder.
    #[tokio::test]
    async fn a_pipeline_runs_once_at_a_time_in_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        let pg = std::env::var("SEALTRAIL_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let sqlite = format!("sqlite://{}", dir.path().join("state.db").display());
        for url in [sqlite, pg] {
            // The PostgreSQL server is shared by every test run.
            let name = format!("lock_{}", RunId::new());
            let (a, b) = (
                StateStore::open(&url).await.unwrap(),
                StateStore::open(&url).await.unwrap(),
            );
            assert_eq!(
                b.pipeline_running(&name).await.unwrap(),
                Some(false),
                "{url}"
            );
            let held = a.lock_pipeline(&name).await.unwrap().unwrap();
            assert_eq!(
                b.pipeline_running(&name).await.unwrap(),
                Some(true),
                "{url}"
            );
            let holder = b.lock_pipeline(&name).await.unwrap().unwrap_err();
            if url.starts_with("sqlite") {
                assert_eq!(
                    holder,
                    format!("process {} on this machine", std::process::id())
                );
            } else {
                assert!(holder.starts_with("another process"), "{holder}");
            }
            let other = b.lock_pipeline(&format!("{name}_other")).await.unwrap();
            assert!(other.is_ok(), "{url}: another pipeline is free");
            drop(held);
            // The server ends the dropped session as soon as it reads the closed socket.
            let mut free = false;
            for _ in 0..100 {
                if b.lock_pipeline(&name).await.unwrap().is_ok() {
                    free = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(free, "{url}: released with its holder");
            // Nobody holds it now (a PostgreSQL session ends as the server reads its socket).
            let mut seen_free = false;
            for _ in 0..100 {
                if a.pipeline_running(&name).await.unwrap() == Some(false) {
                    seen_free = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(seen_free, "{url}");
        }
    }

    /// A file's content identity is recorded when its run succeeds, in SQLite and PostgreSQL.
    #[tokio::test]
    async fn loaded_content_is_recorded_when_the_run_succeeds_in_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        let pg = std::env::var("SEALTRAIL_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let sqlite = format!("sqlite://{}", dir.path().join("state.db").display());
        for url in [sqlite, pg] {
            let st = StateStore::open(&url).await.unwrap();
            // The PostgreSQL tables are shared by every test run.
            let pipeline = format!("content_{}", RunId::new());
            let run = RunId::new();
            let inputs = vec![(
                "s".to_string(),
                vec![
                    ChosenInput {
                        input: "/p/data/a.csv".into(),
                        fingerprint: "/p/data/a.csv|3|1".into(),
                        content: Some(("a.csv".into(), "d1".into())),
                        skip: 0,
                    },
                    ChosenInput {
                        input: "/p/data/b.csv".into(),
                        fingerprint: "/p/data/b.csv|3|1".into(),
                        content: None,
                        skip: 0,
                    },
                ],
            )];
            st.start_run(&run, &pipeline, "spec", &inputs)
                .await
                .unwrap();
            let known = |name: &'static str, digest: &'static str| {
                let (st, pipeline) = (&st, &pipeline);
                async move {
                    st.loaded_content(pipeline, "s", name, digest)
                        .await
                        .unwrap()
                }
            };
            assert_eq!(
                known("a.csv", "d1").await,
                None,
                "{url}: not before success"
            );
            st.succeed(&run, &pipeline, Counts::default())
                .await
                .unwrap();
            assert_eq!(known("a.csv", "d1").await, Some(run.to_string()), "{url}");
            assert_eq!(known("a.csv", "d2").await, None, "{url}: other bytes");
            assert_eq!(known("b.csv", "d1").await, None, "{url}: other name");
            assert!(
                st.is_loaded(&pipeline, "s", "/p/data/b.csv|3|1")
                    .await
                    .unwrap()
            );
            st.alias_loaded(&pipeline, "s", "/p/data/a.csv|3|2", run.as_str())
                .await
                .unwrap();
            assert!(
                st.is_loaded(&pipeline, "s", "/p/data/a.csv|3|2")
                    .await
                    .unwrap()
            );
        }
    }

    /// A batch of several inputs is found by any of its inputs' keys and positions; a store
    /// written before batches could span files (custody rows in `sealtrail_custody` only) gets
    /// each batch's one input row when it is opened, once, in SQLite and PostgreSQL alike.
    #[tokio::test]
    async fn stores_before_batches_spanned_files_get_their_custody_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let pg = std::env::var("SEALTRAIL_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let sqlite = format!("sqlite://{}", dir.path().join("state.db").display());
        for url in [sqlite, pg] {
            let mut st = StateStore::open(&url).await.unwrap();
            let pipeline = format!("span_{}", RunId::new());
            let run = RunId::new();
            st.start_run(&run, &pipeline, "spec", &[]).await.unwrap();
            let part = |k: &str, first_pos, last_pos, records| CustodyInput {
                input_key: k.into(),
                first_pos,
                last_pos,
                records,
            };
            let row = |inputs| CustodyRow {
                pipeline: pipeline.clone(),
                inputs,
                ledger_seq: None,
                data: b"x".to_vec(),
                delivered: Vec::new(),
            };
            let n = |rows_in| Counts {
                rows_in,
                rows_loaded: rows_in,
                rows_quarantined: 0,
            };
            let two = row(vec![part("ka", 2, 4, 3), part("kb", 2, 3, 2)]);
            st.commit_batch(&run, "s", 0, n(5), &two).await.unwrap();
            let one = row(vec![part("kc", 2, 5, 4)]);
            st.commit_batch(&run, "s", 1, n(4), &one).await.unwrap();
            macro_rules! found {
                ($key:expr, $pos:expr) => {
                    st.custody_index(&pipeline, Some(("s", $key, Some($pos))))
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.batch)
                        .collect::<Vec<_>>()
                };
            }
            assert_eq!(found!("ka", 4), [0], "{url}");
            assert_eq!(found!("kb", 3), [0], "{url}");
            assert_eq!(found!("kc", 5), [1], "{url}");
            assert!(found!("kb", 4).is_empty(), "{url}");
            assert!(st.read_records_of(run.as_str(), "s", "kb").await.unwrap());
            let per_input = |m: BTreeMap<(String, String), u64>| {
                m.into_iter().map(|((_, k), n)| (k, n)).collect::<Vec<_>>()
            };
            let expected = vec![("ka".into(), 3), ("kb".into(), 2), ("kc".into(), 4)];
            assert_eq!(per_input(st.read_per_input(&run).await.unwrap()), expected);
            // As an older store holds it: batch 1's input in `sealtrail_custody` only.
            sqlx::query("DELETE FROM sealtrail_custody_inputs WHERE run_id = $1 AND batch = 1")
                .bind(run.as_str())
                .execute(&st.pool)
                .await
                .unwrap();
            assert!(found!("kc", 5).is_empty(), "{url}");
            st.close().await;
            for _ in 0..2 {
                st = StateStore::open(&url).await.unwrap();
                assert_eq!(found!("kc", 5), [1], "{url}");
                assert_eq!(found!("kb", 3), [0], "{url}");
                assert_eq!(per_input(st.read_per_input(&run).await.unwrap()), expected);
                st.close().await;
            }
        }
    }

    /// A batch's newest revision is its custody record from then on (whole and in ranges),
    /// revisions are numbered per batch in order, in SQLite and PostgreSQL alike.
    #[tokio::test]
    async fn revisions_supersede_a_custody_record_in_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        let pg = std::env::var("SEALTRAIL_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let sqlite = format!("sqlite://{}", dir.path().join("state.db").display());
        for url in [sqlite, pg] {
            let st = StateStore::open(&url).await.unwrap();
            let pipeline = format!("rev_{}", RunId::new());
            let run = RunId::new();
            st.start_run(&run, &pipeline, "spec", &[]).await.unwrap();
            let custody = CustodyRow {
                pipeline: pipeline.clone(),
                inputs: vec![CustodyInput {
                    input_key: "k".into(),
                    first_pos: 1,
                    last_pos: 2,
                    records: 2,
                }],
                ledger_seq: Some(7),
                data: b"original".to_vec(),
                delivered: vec![("o".into(), 2)],
            };
            st.commit_batch(&run, "s", 0, Counts::default(), &custody)
                .await
                .unwrap();
            let r = CustodyRef {
                pipeline: pipeline.clone(),
                run_id: run.to_string(),
                source: "s".into(),
                batch: 0,
                ledger_seq: Some(7),
            };
            assert_eq!(st.custody(&r).await.unwrap(), b"original", "{url}");
            assert!(st.revisions(&r).await.unwrap().is_empty(), "{url}");
            st.add_revision(&r, "o", 9, b"first revision")
                .await
                .unwrap();
            st.add_revision(&r, "p", 12, b"second").await.unwrap();
            assert_eq!(st.custody(&r).await.unwrap(), b"second", "{url}");
            assert_eq!(st.custody_range(&r, 1, 3).await.unwrap(), b"eco", "{url}");
            assert_eq!(
                st.revisions(&r).await.unwrap(),
                vec![("o".to_string(), 9), ("p".to_string(), 12)],
                "{url}"
            );
            let other = CustodyRef {
                batch: 1,
                ..r.clone()
            };
            assert!(st.custody(&other).await.is_err(), "{url}: no such batch");
        }
    }
}
