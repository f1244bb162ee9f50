//! Ledger entries and their one binary encoding (version 1).
//!
//! ```text
//!  u8  version (1) | u8 kind | u64 seq | [32] prev | i64 time (µs since 1970, UTC) | body
//! ```
//! Integers are big-endian. `prev` is the leaf hash of entry `seq - 1` (zeros for entry 0),
//! so a row-by-row check works without tree math. Body fields are, in declared order:
//! `str` = u32 length + UTF-8, `u64`, `hash` = 32 bytes, `list<T>` = u32 count + items.
//! The encoding is deterministic (one value, one byte string) and decoding rejects anything
//! else: trailing bytes, unknown versions or kinds, invalid UTF-8, lengths past the end.
//!
//! No raw personal data goes in an entry: people appear as keyed pseudonyms (32-byte HMACs),
//! payloads as commitments (hashes), errors as texts that never carry record values.

/// The largest encoded entry: tlog-tiles bundles prefix each entry with a u16 length.
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;
pub const VERSION: u8 = 1;

pub type Hash = [u8; 32];

/// The spec version of a replay (`quarantine replay`) of records with SHA-256 `records`
/// under the spec with SHA-256 `spec`: the SHA-256 of the two digests' lowercase hex, spec
/// first (what a `replay_declared` entry declares).
pub fn replay_version(spec: &Hash, records: &Hash) -> Hash {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(hex::encode(spec));
    h.update(hex::encode(records));
    h.finalize().into()
}

/// Hashes as lowercase hex in JSON (`ledger show --format json`).
fn hex_hash<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(h))
}

/// What happened. Each variant's fields are encoded in the order written here. In JSON (for
/// reading the ledger back: `ledger show --format json`), a variant is an object whose `type`
/// is its [`kind_name`], hashes in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// 1: a run started (or resumed).
    RunStarted {
        run_id: String,
        pipeline: String,
        #[serde(serialize_with = "hex_hash")]
        spec_sha256: Hash,
        resumed: bool,
        /// The inputs' keys (the input part of their records' lineage ids), never their
        /// names: a file's name can hold a person's, and the ledger is never rewritten; a run
        /// of many inputs is named by one digest ([`crate::audit::input_commitments`]).
        /// (Entries written before 2026-12-05 hold the names.)
        inputs: Vec<String>,
    },
    /// 2: a run ended with balanced counts.
    RunEnded {
        run_id: String,
        rows_in: u64,
        rows_loaded: u64,
        rows_quarantined: u64,
    },
    /// 3: a batch was committed to every sink.
    BatchCommitted {
        run_id: String,
        source: String,
        batch: u64,
        rows_in: u64,
        rows_loaded: u64,
        rows_quarantined: u64,
        /// SHA-256 of the spec file, of the transforms' SQL and of the resolved protection
        /// policy in force (see `docs/custody.md`).
        #[serde(serialize_with = "hex_hash")]
        spec_sha256: Hash,
        #[serde(serialize_with = "hex_hash")]
        transforms_sha256: Hash,
        #[serde(serialize_with = "hex_hash")]
        policy_sha256: Hash,
        /// Merkle root (record leaves, `docs/custody.md`) of every input record of the batch,
        /// loaded or quarantined, in source order.
        #[serde(serialize_with = "hex_hash")]
        input_root: Hash,
        /// Per sink, in spec order: rows written and the Merkle root of their commitments.
        outputs: Vec<SinkRoot>,
    },
    /// 4: records of a batch were quarantined, counted by reason code.
    RecordsQuarantined {
        run_id: String,
        batch: u64,
        by_reason: Vec<(String, u64)>,
    },
    /// 5: a run failed.
    RunFailed { run_id: String, error: String },
    /// 6: a version of a pipeline spec was registered.
    SpecRegistered { pipeline: String, spec_sha256: Hash },
    /// 7: a spec version was approved.
    Approval {
        pipeline: String,
        #[serde(serialize_with = "hex_hash")]
        spec_sha256: Hash,
        #[serde(serialize_with = "hex_hash")]
        approver: Hash,
    },
    /// 8: someone read protected data.
    DataAccess {
        #[serde(serialize_with = "hex_hash")]
        actor: Hash,
        dataset: String,
        purpose: String,
        rows: u64,
    },
    /// 9: a key was rotated, used to decrypt, re-encrypted away from, retired, or shredded, or
    /// the master key changed (`master`, `rewrap`).
    KeyEvent {
        key_id: String,
        action: String,
        #[serde(serialize_with = "hex_hash")]
        actor: Hash,
    },
    /// 10: data reached its retention limit and was removed.
    Retention {
        dataset: String,
        action: String,
        rows: u64,
    },
    /// 11: a data subject's data was erased (their keys shredded).
    Erasure { subject: Hash, keys: u64 },
    /// 12: the writer recovered from a crash and discarded an unacknowledged tail.
    Recovery {
        discarded_entries: u64,
        /// SHA-256 over the discarded bytes, so what was dropped can be matched later.
        #[serde(serialize_with = "hex_hash")]
        discarded_sha256: Hash,
        note: String,
    },
    /// 13: a batch's rows in one sink were rewritten in place by an authorised operation
    /// (`keys reencrypt`: the same rows, ids and order, values under another key version).
    /// The sink's output root of the batch becomes `new_root`; `old_root` is the root it
    /// replaces (the batch entry's, or the previous revision's), so revisions chain.
    OutputsRevised {
        run_id: String,
        source: String,
        batch: u64,
        sink: String,
        rows: u64,
        #[serde(serialize_with = "hex_hash")]
        old_root: Hash,
        #[serde(serialize_with = "hex_hash")]
        new_root: Hash,
        /// What rewrote them (`reencrypt`).
        action: String,
        #[serde(serialize_with = "hex_hash")]
        actor: Hash,
    },
    /// 14: an unfinished run was given up (`--abandon-unfinished`): it never resumes; the
    /// records its committed batches hold (these counts) stay loaded.
    RunAbandoned {
        run_id: String,
        rows_in: u64,
        rows_loaded: u64,
        rows_quarantined: u64,
    },
    /// 15: records a replay run (`quarantine replay`) loaded repair quarantined records:
    /// (the replayed record's lineage id, the quarantined record's), in replay order.
    RecordsRepaired {
        run_id: String,
        pairs: Vec<(String, String)>,
    },
    /// 16: repaired records of `pipeline` are about to be replayed (`quarantine replay`):
    /// the replay's batches carry spec version `replay_spec_sha256`, which is the SHA-256 of
    /// the ASCII hex of `spec_sha256` (the pipeline's spec) followed by the ASCII hex of
    /// `records_sha256` (the replay's input bytes). Ties a replay's batches to the spec they
    /// ran under.
    ReplayDeclared {
        pipeline: String,
        #[serde(serialize_with = "hex_hash")]
        spec_sha256: Hash,
        #[serde(serialize_with = "hex_hash")]
        records_sha256: Hash,
        #[serde(serialize_with = "hex_hash")]
        replay_spec_sha256: Hash,
    },
    /// 17: the ledger's checkpoint signing key changed (`ledger rotate-key`): from the tree
    /// that holds this entry on, checkpoints are signed by `new_key`. Both are verifier keys
    /// (`name+id+base64`). The checkpoint of the tree ending with this entry is signed by both
    /// keys and kept (`rotations/<size>`), so a verifier trusting the old key learns the new
    /// one from the log itself (`docs/ledger-format.md` section 4a).
    SignerRotated {
        old_key: String,
        new_key: String,
        #[serde(serialize_with = "hex_hash")]
        actor: Hash,
    },
}

impl Event {
    pub fn kind(&self) -> u8 {
        match self {
            Event::RunStarted { .. } => 1,
            Event::RunEnded { .. } => 2,
            Event::BatchCommitted { .. } => 3,
            Event::RecordsQuarantined { .. } => 4,
            Event::RunFailed { .. } => 5,
            Event::SpecRegistered { .. } => 6,
            Event::Approval { .. } => 7,
            Event::DataAccess { .. } => 8,
            Event::KeyEvent { .. } => 9,
            Event::Retention { .. } => 10,
            Event::Erasure { .. } => 11,
            Event::Recovery { .. } => 12,
            Event::OutputsRevised { .. } => 13,
            Event::RunAbandoned { .. } => 14,
            Event::RecordsRepaired { .. } => 15,
            Event::ReplayDeclared { .. } => 16,
            Event::SignerRotated { .. } => 17,
        }
    }

    /// The snake_case name used by `ledger show --type`.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind()).unwrap_or("unknown")
    }

    /// The run this entry belongs to, if any.
    /// The pipeline the event names itself, for the kinds that do (a run's other events name
    /// its run, whose `run_started` names the pipeline).
    pub fn pipeline(&self) -> Option<&str> {
        match self {
            Event::RunStarted { pipeline, .. }
            | Event::SpecRegistered { pipeline, .. }
            | Event::Approval { pipeline, .. }
            | Event::ReplayDeclared { pipeline, .. } => Some(pipeline),
            _ => None,
        }
    }

    pub fn run_id(&self) -> Option<&str> {
        match self {
            Event::RunStarted { run_id, .. }
            | Event::RunEnded { run_id, .. }
            | Event::BatchCommitted { run_id, .. }
            | Event::RecordsQuarantined { run_id, .. }
            | Event::RunFailed { run_id, .. }
            | Event::OutputsRevised { run_id, .. }
            | Event::RunAbandoned { run_id, .. }
            | Event::RecordsRepaired { run_id, .. } => Some(run_id),
            _ => None,
        }
    }
}

/// Every entry kind, in order.
pub const KINDS: std::ops::RangeInclusive<u8> = 1..=17;

/// The kind byte of a `signer_rotated` entry (the verifier spots them by it).
pub const SIGNER_ROTATED: u8 = 17;

pub fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        1 => "run_started",
        2 => "run_ended",
        3 => "batch_committed",
        4 => "records_quarantined",
        5 => "run_failed",
        6 => "spec_registered",
        7 => "approval",
        8 => "data_access",
        9 => "key_event",
        10 => "retention",
        11 => "erasure",
        12 => "recovery",
        13 => "outputs_revised",
        14 => "run_abandoned",
        15 => "records_repaired",
        16 => "replay_declared",
        17 => "signer_rotated",
        _ => return None,
    })
}

/// What one batch wrote to one sink.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SinkRoot {
    pub sink: String,
    pub rows: u64,
    #[serde(serialize_with = "hex_hash")]
    pub root: Hash,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub prev: Hash,
    pub time_micros: i64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry ends early (needed {0} more bytes)")]
    Short(usize),
    #[error("unknown entry format version {0}")]
    Version(u8),
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("a text field is not UTF-8")]
    Utf8,
    #[error("a boolean is neither 0 nor 1")]
    Bool,
    #[error("{0} bytes after the end of the entry")]
    Trailing(usize),
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn hash(&mut self, h: &Hash) {
        self.0.extend_from_slice(h);
    }
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn strs(&mut self, v: &[String]) {
        self.0.extend_from_slice(&(v.len() as u32).to_be_bytes());
        for s in v {
            self.str(s);
        }
    }
}

/// Reads an entry. With `keep == false` text fields are checked (length, UTF-8) but not
/// copied: [`Entry::check`] validates without allocating per field.
struct R<'a>(&'a [u8], bool);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short(n - self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn hash(&mut self) -> Result<Hash, DecodeError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Bool),
        }
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::Utf8)?;
        Ok(if self.1 { s.to_owned() } else { String::new() })
    }
    /// A count, bounded by the bytes left (each item takes at least `min` bytes), so a
    /// hostile count cannot make the decoder allocate.
    fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(DecodeError::Short(n * min - self.0.len()));
        }
        Ok(n)
    }
    fn strs(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(128));
        w.u8(VERSION);
        w.u8(self.event.kind());
        w.u64(self.seq);
        w.hash(&self.prev);
        w.u64(self.time_micros as u64);
        match &self.event {
            Event::RunStarted {
                run_id,
                pipeline,
                spec_sha256,
                resumed,
                inputs,
            } => {
                w.str(run_id);
                w.str(pipeline);
                w.hash(spec_sha256);
                w.u8(u8::from(*resumed));
                w.strs(inputs);
            }
            Event::RunEnded {
                run_id,
                rows_in,
                rows_loaded,
                rows_quarantined,
            }
            | Event::RunAbandoned {
                run_id,
                rows_in,
                rows_loaded,
                rows_quarantined,
            } => {
                w.str(run_id);
                w.u64(*rows_in);
                w.u64(*rows_loaded);
                w.u64(*rows_quarantined);
            }
            Event::BatchCommitted {
                run_id,
                source,
                batch,
                rows_in,
                rows_loaded,
                rows_quarantined,
                spec_sha256,
                transforms_sha256,
                policy_sha256,
                input_root,
                outputs,
            } => {
                w.str(run_id);
                w.str(source);
                w.u64(*batch);
                w.u64(*rows_in);
                w.u64(*rows_loaded);
                w.u64(*rows_quarantined);
                w.hash(spec_sha256);
                w.hash(transforms_sha256);
                w.hash(policy_sha256);
                w.hash(input_root);
                w.0.extend_from_slice(&(outputs.len() as u32).to_be_bytes());
                for o in outputs {
                    w.str(&o.sink);
                    w.u64(o.rows);
                    w.hash(&o.root);
                }
            }
            Event::RecordsQuarantined {
                run_id,
                batch,
                by_reason,
            } => {
                w.str(run_id);
                w.u64(*batch);
                w.0.extend_from_slice(&(by_reason.len() as u32).to_be_bytes());
                for (r, n) in by_reason {
                    w.str(r);
                    w.u64(*n);
                }
            }
            Event::RunFailed { run_id, error } => {
                w.str(run_id);
                w.str(error);
            }
            Event::SpecRegistered {
                pipeline,
                spec_sha256,
            } => {
                w.str(pipeline);
                w.hash(spec_sha256);
            }
            Event::Approval {
                pipeline,
                spec_sha256,
                approver,
            } => {
                w.str(pipeline);
                w.hash(spec_sha256);
                w.hash(approver);
            }
            Event::DataAccess {
                actor,
                dataset,
                purpose,
                rows,
            } => {
                w.hash(actor);
                w.str(dataset);
                w.str(purpose);
                w.u64(*rows);
            }
            Event::KeyEvent {
                key_id,
                action,
                actor,
            } => {
                w.str(key_id);
                w.str(action);
                w.hash(actor);
            }
            Event::Retention {
                dataset,
                action,
                rows,
            } => {
                w.str(dataset);
                w.str(action);
                w.u64(*rows);
            }
            Event::Erasure { subject, keys } => {
                w.hash(subject);
                w.u64(*keys);
            }
            Event::Recovery {
                discarded_entries,
                discarded_sha256,
                note,
            } => {
                w.u64(*discarded_entries);
                w.hash(discarded_sha256);
                w.str(note);
            }
            Event::OutputsRevised {
                run_id,
                source,
                batch,
                sink,
                rows,
                old_root,
                new_root,
                action,
                actor,
            } => {
                w.str(run_id);
                w.str(source);
                w.u64(*batch);
                w.str(sink);
                w.u64(*rows);
                w.hash(old_root);
                w.hash(new_root);
                w.str(action);
                w.hash(actor);
            }
            Event::RecordsRepaired { run_id, pairs } => {
                w.str(run_id);
                w.0.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
                for (a, b) in pairs {
                    w.str(a);
                    w.str(b);
                }
            }
            Event::ReplayDeclared {
                pipeline,
                spec_sha256,
                records_sha256,
                replay_spec_sha256,
            } => {
                w.str(pipeline);
                w.hash(spec_sha256);
                w.hash(records_sha256);
                w.hash(replay_spec_sha256);
            }
            Event::SignerRotated {
                old_key,
                new_key,
                actor,
            } => {
                w.str(old_key);
                w.str(new_key);
                w.hash(actor);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::read(bytes, true)
    }

    /// Validates `bytes` exactly as [`Entry::decode`] does and returns the entry's sequence
    /// number and `prev`, without copying its text fields (the verifier's fast path).
    pub fn check(bytes: &[u8]) -> Result<(u64, Hash), DecodeError> {
        Self::read(bytes, false).map(|e| (e.seq, e.prev))
    }

    fn read(bytes: &[u8], keep: bool) -> Result<Self, DecodeError> {
        let mut r = R(bytes, keep);
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Version(v));
        }
        let kind = r.u8()?;
        let seq = r.u64()?;
        let prev = r.hash()?;
        let time_micros = r.u64()? as i64;
        let event = match kind {
            1 => Event::RunStarted {
                run_id: r.str()?,
                pipeline: r.str()?,
                spec_sha256: r.hash()?,
                resumed: r.bool()?,
                inputs: r.strs()?,
            },
            2 => Event::RunEnded {
                run_id: r.str()?,
                rows_in: r.u64()?,
                rows_loaded: r.u64()?,
                rows_quarantined: r.u64()?,
            },
            3 => Event::BatchCommitted {
                run_id: r.str()?,
                source: r.str()?,
                batch: r.u64()?,
                rows_in: r.u64()?,
                rows_loaded: r.u64()?,
                rows_quarantined: r.u64()?,
                spec_sha256: r.hash()?,
                transforms_sha256: r.hash()?,
                policy_sha256: r.hash()?,
                input_root: r.hash()?,
                outputs: {
                    let n = r.count(44)?;
                    (0..n)
                        .map(|_| {
                            Ok(SinkRoot {
                                sink: r.str()?,
                                rows: r.u64()?,
                                root: r.hash()?,
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?
                },
            },
            4 => Event::RecordsQuarantined {
                run_id: r.str()?,
                batch: r.u64()?,
                by_reason: {
                    let n = r.count(12)?;
                    (0..n)
                        .map(|_| Ok((r.str()?, r.u64()?)))
                        .collect::<Result<_, DecodeError>>()?
                },
            },
            5 => Event::RunFailed {
                run_id: r.str()?,
                error: r.str()?,
            },
            6 => Event::SpecRegistered {
                pipeline: r.str()?,
                spec_sha256: r.hash()?,
            },
            7 => Event::Approval {
                pipeline: r.str()?,
                spec_sha256: r.hash()?,
                approver: r.hash()?,
            },
            8 => Event::DataAccess {
                actor: r.hash()?,
                dataset: r.str()?,
                purpose: r.str()?,
                rows: r.u64()?,
            },
            9 => Event::KeyEvent {
                key_id: r.str()?,
                action: r.str()?,
                actor: r.hash()?,
            },
            10 => Event::Retention {
                dataset: r.str()?,
                action: r.str()?,
                rows: r.u64()?,
            },
            11 => Event::Erasure {
                subject: r.hash()?,
                keys: r.u64()?,
            },
            12 => Event::Recovery {
                discarded_entries: r.u64()?,
                discarded_sha256: r.hash()?,
                note: r.str()?,
            },
            13 => Event::OutputsRevised {
                run_id: r.str()?,
                source: r.str()?,
                batch: r.u64()?,
                sink: r.str()?,
                rows: r.u64()?,
                old_root: r.hash()?,
                new_root: r.hash()?,
                action: r.str()?,
                actor: r.hash()?,
            },
            14 => Event::RunAbandoned {
                run_id: r.str()?,
                rows_in: r.u64()?,
                rows_loaded: r.u64()?,
                rows_quarantined: r.u64()?,
            },
            15 => Event::RecordsRepaired {
                run_id: r.str()?,
                pairs: {
                    let n = r.count(8)?;
                    (0..n)
                        .map(|_| Ok((r.str()?, r.str()?)))
                        .collect::<Result<_, DecodeError>>()?
                },
            },
            16 => Event::ReplayDeclared {
                pipeline: r.str()?,
                spec_sha256: r.hash()?,
                records_sha256: r.hash()?,
                replay_spec_sha256: r.hash()?,
            },
            17 => Event::SignerRotated {
                old_key: r.str()?,
                new_key: r.str()?,
                actor: r.hash()?,
            },
            k => return Err(DecodeError::Kind(k)),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing(r.0.len()));
        }
        Ok(Entry {
            seq,
            prev,
            time_micros,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Event> {
        vec![
            Event::RunStarted {
                run_id: "r1".into(),
                pipeline: "trades".into(),
                spec_sha256: [1; 32],
                resumed: true,
                inputs: vec!["a".into(), "b".into()],
            },
            Event::RunEnded {
                run_id: "r1".into(),
                rows_in: 10,
                rows_loaded: 9,
                rows_quarantined: 1,
            },
            Event::BatchCommitted {
                run_id: "r1".into(),
                source: "s".into(),
                batch: 3,
                rows_in: 10,
                rows_loaded: 9,
                rows_quarantined: 1,
                spec_sha256: [4; 32],
                transforms_sha256: [5; 32],
                policy_sha256: [6; 32],
                input_root: [2; 32],
                outputs: vec![SinkRoot {
                    sink: "out".into(),
                    rows: 9,
                    root: [3; 32],
                }],
            },
            Event::RecordsQuarantined {
                run_id: "r1".into(),
                batch: 3,
                by_reason: vec![("bad".into(), 1)],
            },
            Event::RunFailed {
                run_id: "r1".into(),
                error: "x".into(),
            },
            Event::SpecRegistered {
                pipeline: "p".into(),
                spec_sha256: [4; 32],
            },
            Event::Approval {
                pipeline: "p".into(),
                spec_sha256: [4; 32],
                approver: [5; 32],
            },
            Event::DataAccess {
                actor: [6; 32],
                dataset: "d".into(),
                purpose: "audit".into(),
                rows: 2,
            },
            Event::KeyEvent {
                key_id: "k1".into(),
                action: "rotate".into(),
                actor: [7; 32],
            },
            Event::Retention {
                dataset: "d".into(),
                action: "delete".into(),
                rows: 5,
            },
            Event::Erasure {
                subject: [8; 32],
                keys: 1,
            },
            Event::Recovery {
                discarded_entries: 2,
                discarded_sha256: [9; 32],
                note: "torn tail".into(),
            },
            Event::OutputsRevised {
                run_id: "r1".into(),
                source: "s".into(),
                batch: 3,
                sink: "o".into(),
                rows: 9,
                old_root: [10; 32],
                new_root: [11; 32],
                action: "reencrypt".into(),
                actor: [12; 32],
            },
            Event::RunAbandoned {
                run_id: "r0".into(),
                rows_in: 5,
                rows_loaded: 4,
                rows_quarantined: 1,
            },
            Event::RecordsRepaired {
                run_id: "r2".into(),
                pairs: vec![("s:ab:2".into(), "s:cd:17".into())],
            },
            Event::ReplayDeclared {
                pipeline: "p".into(),
                spec_sha256: [13; 32],
                records_sha256: [14; 32],
                replay_spec_sha256: [15; 32],
            },
            Event::SignerRotated {
                old_key: "o+00000000+AQ==".into(),
                new_key: "o+11111111+AQ==".into(),
                actor: [16; 32],
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_and_names_itself() {
        for (i, event) in sample().into_iter().enumerate() {
            let e = Entry {
                seq: i as u64,
                prev: [i as u8; 32],
                time_micros: -5 + i as i64,
                event,
            };
            let b = e.encode();
            assert_eq!(Entry::decode(&b).unwrap(), e);
            assert_eq!(Entry::check(&b).unwrap(), (e.seq, e.prev));
            assert_eq!(e.event.kind() as usize, i + 1);
            assert_ne!(e.event.name(), "unknown");
            // Every strict prefix is rejected, and so is any trailing byte.
            for n in 0..b.len() {
                assert!(Entry::decode(&b[..n]).is_err());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(Entry::decode(&longer), Err(DecodeError::Trailing(1)));
        }
        // The sample has one event of every kind, and no kind lies outside `KINDS`.
        assert_eq!(sample().len(), KINDS.count());
        assert!(kind_name(*KINDS.end() + 1).is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(Entry::decode(&b).map(|e| (e.seq, e.prev)), Entry::check(&b));
        }

        #[test]
        fn decode_then_encode_is_identity(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(e) = Entry::decode(&b) {
                prop_assert_eq!(e.encode(), b);
            }
        }
    }
}
