//! The engine's audit events, recorded in the ledger.

use crate::entry::{Event, Hash, SinkRoot};
use crate::log::LedgerLog;
use sealtrail_core::audit::{AuditEvent, AuditSink};
use std::sync::Mutex;

/// An [`AuditSink`] that appends every event to the ledger, durably and signed, before the
/// engine goes on.
#[derive(Debug)]
pub struct LedgerAudit {
    log: Mutex<Box<dyn LedgerLog>>,
}

impl LedgerAudit {
    /// Records into any ledger backend: the tiles folder or PostgreSQL.
    pub fn new(log: Box<dyn LedgerLog>) -> Self {
        Self {
            log: Mutex::new(log),
        }
    }
}

fn hash_from_hex(s: &str) -> Hash {
    let mut h = [0u8; 32];
    if let Ok(b) = hex::decode(s)
        && b.len() == 32
    {
        h.copy_from_slice(&b);
    }
    h
}

/// The ledger entry for an audit event.
pub fn to_event(e: &AuditEvent) -> Event {
    match e {
        AuditEvent::RunStarted {
            run_id,
            pipeline,
            spec_sha256,
            resumed,
            inputs,
            ..
        } => Event::RunStarted {
            run_id: run_id.to_string(),
            pipeline: pipeline.clone(),
            spec_sha256: hash_from_hex(spec_sha256),
            resumed: *resumed,
            // Commitments, not names: a file's name can hold a person's name, and the ledger
            // is never rewritten (the state store keeps the names).
            inputs: inputs
                .iter()
                .map(|i| {
                    use sha2::Digest as _;
                    hex::encode(sha2::Sha256::digest(i.as_bytes()))
                })
                .collect(),
        },
        AuditEvent::BatchCommitted {
            run_id,
            source,
            batch,
            counts,
            spec_sha256,
            transforms_sha256,
            policy_sha256,
            input_root,
            outputs,
            ..
        } => Event::BatchCommitted {
            run_id: run_id.to_string(),
            source: source.clone(),
            batch: *batch,
            rows_in: counts.rows_in,
            rows_loaded: counts.rows_loaded,
            rows_quarantined: counts.rows_quarantined,
            spec_sha256: hash_from_hex(spec_sha256),
            transforms_sha256: hash_from_hex(transforms_sha256),
            policy_sha256: hash_from_hex(policy_sha256),
            input_root: hash_from_hex(input_root),
            outputs: outputs
                .iter()
                .map(|o| SinkRoot {
                    sink: o.sink.clone(),
                    rows: o.rows,
                    root: hash_from_hex(&o.root),
                })
                .collect(),
        },
        AuditEvent::RecordsQuarantined {
            run_id,
            batch,
            by_reason,
            ..
        } => Event::RecordsQuarantined {
            run_id: run_id.to_string(),
            batch: *batch,
            by_reason: by_reason.clone(),
        },
        AuditEvent::RunFailed { run_id, error, .. } => Event::RunFailed {
            run_id: run_id.to_string(),
            error: error.clone(),
        },
        AuditEvent::RunEnded { run_id, counts, .. } => Event::RunEnded {
            run_id: run_id.to_string(),
            rows_in: counts.rows_in,
            rows_loaded: counts.rows_loaded,
            rows_quarantined: counts.rows_quarantined,
        },
        AuditEvent::RunAbandoned { run_id, counts, .. } => Event::RunAbandoned {
            run_id: run_id.to_string(),
            rows_in: counts.rows_in,
            rows_loaded: counts.rows_loaded,
            rows_quarantined: counts.rows_quarantined,
        },
    }
}

impl AuditSink for LedgerAudit {
    fn record(&self, event: &AuditEvent) -> std::io::Result<Option<u64>> {
        let mut log = self
            .log
            .lock()
            .map_err(|_| std::io::Error::other("the ledger lock is poisoned"))?;
        log.append(vec![to_event(event)])
            .map(|a| Some(a.first_seq))
            .map_err(std::io::Error::other)
    }
}
