//! Typed audit events and the sink they go to.
//!
//! Every run emits, in order: one [`AuditEvent::RunStarted`], then per committed batch one
//! [`AuditEvent::BatchCommitted`] (and one [`AuditEvent::RecordsQuarantined`] when the batch
//! quarantined rows), then exactly one of [`AuditEvent::RunEnded`] or [`AuditEvent::RunFailed`].
//! Events hold counts, ids, positions and reason codes, never record values.
//!
//! The ledger (`sealtrail-ledger`, a tamper-evident Merkle log) implements [`AuditSink`] and
//! is what the CLI uses. [`JsonlAuditLog`] appends one JSON object per line to a file and
//! fsyncs each event: a plain sink for embedding the engine without a ledger.

use crate::{Counts, RunId};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One audit event. `at` is RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    RunStarted {
        run_id: RunId,
        pipeline: String,
        /// SHA-256 of the spec file bytes: which exact spec version ran.
        spec_sha256: String,
        /// True when this continues an interrupted run with the same id.
        resumed: bool,
        inputs: Vec<String>,
        at: String,
    },
    BatchCommitted {
        run_id: RunId,
        /// The source the batch was read from (batch numbers count per source).
        source: String,
        batch: u64,
        counts: Counts,
        /// Which versions were in force (lowercase hex SHA-256): the spec file, the
        /// transforms' SQL, the resolved protection policy.
        spec_sha256: String,
        transforms_sha256: String,
        policy_sha256: String,
        /// Merkle root of the batch's input record commitments (hex, `docs/custody.md`).
        input_root: String,
        /// Per sink: rows written and the Merkle root of their output commitments.
        outputs: Vec<SinkOutput>,
        at: String,
    },
    RecordsQuarantined {
        run_id: RunId,
        batch: u64,
        rows: u64,
        /// Reason code -> number of rows whose first failed rule had that code.
        by_reason: Vec<(String, u64)>,
        at: String,
    },
    RunFailed {
        run_id: RunId,
        pipeline: String,
        /// Error category and message; messages never contain record values or secrets.
        error: String,
        at: String,
    },
    RunEnded {
        run_id: RunId,
        pipeline: String,
        counts: Counts,
        at: String,
    },
    /// An unfinished run was given up (`run --abandon-unfinished`): it will never resume; the
    /// batches it committed (`counts`) stay loaded.
    RunAbandoned {
        run_id: RunId,
        pipeline: String,
        counts: Counts,
        at: String,
    },
}

/// What one batch wrote to one sink, as committed in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkOutput {
    pub sink: String,
    pub rows: u64,
    /// Lowercase hex of the Merkle root over the rows' record leaves.
    pub root: String,
}

impl AuditEvent {
    pub fn run_id(&self) -> &RunId {
        match self {
            AuditEvent::RunStarted { run_id, .. }
            | AuditEvent::BatchCommitted { run_id, .. }
            | AuditEvent::RecordsQuarantined { run_id, .. }
            | AuditEvent::RunFailed { run_id, .. }
            | AuditEvent::RunEnded { run_id, .. }
            | AuditEvent::RunAbandoned { run_id, .. } => run_id,
        }
    }
}

/// Current time, RFC 3339 UTC with milliseconds, as events carry it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Where audit events go. Implementations must be durable when `record` returns `Ok`.
pub trait AuditSink: Send + Sync {
    /// Records `event`; returns its position in the log when the log numbers its entries (the
    /// ledger's sequence number), so proofs can find it without a scan.
    fn record(&self, event: &AuditEvent) -> std::io::Result<Option<u64>>;
}

/// Append-only JSON Lines audit log, fsynced per event.
#[derive(Debug)]
pub struct JsonlAuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl JsonlAuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Reads every event back (for `sealtrail runs` and tests).
    pub fn read_all(path: &Path) -> std::io::Result<Vec<AuditEvent>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}

impl AuditSink for JsonlAuditLog {
    fn record(&self, event: &AuditEvent) -> std::io::Result<Option<u64>> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        // A poisoned lock means another thread panicked mid-write; refuse further appends.
        let mut f = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit log writer is poisoned"))?;
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = JsonlAuditLog::open(&path).unwrap();
        let run = RunId::new();
        let ev = AuditEvent::RunEnded {
            run_id: run.clone(),
            pipeline: "p".into(),
            counts: Counts {
                rows_in: 3,
                rows_loaded: 2,
                rows_quarantined: 1,
            },
            at: now(),
        };
        log.record(&ev).unwrap();
        log.record(&ev).unwrap();
        let back = JsonlAuditLog::read_all(&path).unwrap();
        assert_eq!(back, vec![ev.clone(), ev]);
        assert_eq!(back[0].run_id(), &run);
    }
}
