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

/// Inputs a `run_started` entry names one by one; a run of more is named by one digest.
pub const MAX_LISTED_INPUTS: usize = 1024;

/// The longest `run_failed` error a ledger entry keeps (entries are at most 65,535 bytes).
pub const MAX_ERROR_BYTES: usize = 8192;

/// How a `run_started` entry names a run's inputs: never by their names (a file's name can
/// hold a person's, and the ledger is never rewritten; the state store keeps the names), but
/// by their keys ([`crate::custody::input_key`], the input part of their records' lineage
/// ids), in order; a run of more than [`MAX_LISTED_INPUTS`] by one element,
/// `sha256:<hex>`, the SHA-256 of the keys each followed by `\n`, so that the entry stays
/// within the ledger's entry size whatever the number of inputs.
pub fn input_commitments(inputs: &[String]) -> Vec<String> {
    let keys = inputs.iter().map(|i| crate::custody::input_key(i));
    if inputs.len() <= MAX_LISTED_INPUTS {
        return keys.collect();
    }
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update(b"\n");
    }
    vec![format!("sha256:{}", hex::encode(h.finalize()))]
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` where it was cut.
fn at_most(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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
            inputs: input_commitments(inputs),
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
            error: at_most(error, MAX_ERROR_BYTES),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;
    use sealtrail_core::RunId;

    fn encoded_len(event: Event) -> usize {
        Entry {
            seq: 0,
            prev: [0; 32],
            time_micros: 0,
            event,
        }
        .encode()
        .len()
    }

    /// A run's inputs are named by their lineage-id keys, never by name; a run of thousands
    /// of files (each its own long path) still makes an entry within the ledger's limit, as
    /// does the longest error.
    #[test]
    fn run_entries_fit_the_ledger_whatever_the_run() {
        let started = |n: usize| {
            let inputs: Vec<String> = (0..n)
                .map(|i| format!("/data/landing/customers/statement_{i:06}_of_a_person.csv"))
                .collect();
            to_event(&AuditEvent::RunStarted {
                run_id: RunId::new(),
                pipeline: "p".into(),
                spec_sha256: "00".repeat(32),
                resumed: false,
                inputs,
                at: String::new(),
            })
        };
        let few = started(3);
        let Event::RunStarted { inputs, .. } = &few else {
            panic!("{few:?}")
        };
        assert_eq!(inputs.len(), 3);
        assert_eq!(
            inputs[0],
            crate::custody::input_key("/data/landing/customers/statement_000000_of_a_person.csv")
        );
        assert!(inputs.iter().all(|k| k.len() == 12));
        assert!(encoded_len(started(MAX_LISTED_INPUTS)) < 65_535);
        let many = started(20_000);
        let Event::RunStarted { inputs, .. } = &many else {
            panic!("{many:?}")
        };
        assert!(inputs.len() == 1 && inputs[0].starts_with("sha256:") && inputs[0].len() == 71);
        assert!(encoded_len(many) < 65_535);
        let failed = to_event(&AuditEvent::RunFailed {
            run_id: RunId::new(),
            pipeline: "p".into(),
            error: "é".repeat(100_000),
            at: String::new(),
        });
        let Event::RunFailed { error, .. } = &failed else {
            panic!("{failed:?}")
        };
        assert!(error.len() <= MAX_ERROR_BYTES && error.ends_with('…'));
        assert!(encoded_len(failed) < 65_535);
    }
}
