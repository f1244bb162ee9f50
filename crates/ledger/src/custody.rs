//! Chain of custody: record commitments, per-batch record trees and offline proof bundles.
//!
//! Every input record has a commitment, SHA-256 of its canonical source bytes, and every output
//! row one of its canonical encoding (`docs/custody.md`). A batch's records form an RFC 6962
//! tree whose leaves carry their own prefix, so a record leaf can never be mistaken for a
//! ledger leaf (`0x00`) or an inner node (`0x01`):
//!
//! ```text
//!  record leaf = SHA-256(0x02 || u32be(len(id)) || id || commitment)
//! ```
//! The batch's `batch_committed` ledger entry holds the roots. A [`Bundle`] carries one row's
//! path from the row to a signed checkpoint; [`verify`] checks it with nothing but the
//! ledger's public key.

use crate::entry::{Entry, Event, Hash};
use crate::merkle::{self, ProofError};
use crate::note::{Checkpoint, NoteVerifier, unverified_text};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of record leaves (ledger leaves use `0x00`, inner nodes `0x01`).
pub const RECORD_LEAF_PREFIX: u8 = 0x02;
/// The `format` of the bundles this version writes: rows in the binary canonical encoding
/// (row format 2, [`crate::row`]).
pub const BUNDLE_FORMAT: &str = "sealtrail-proof/2";
/// The `format` of bundles of rows committed in the JSON canonical encoding (row format 1,
/// batches written before row format 2); still written for such rows and verified.
pub const BUNDLE_FORMAT_V1: &str = "sealtrail-proof/1";
/// The output column that names each row's source record.
pub const ID_COLUMN: &str = sealtrail_core::LINEAGE_ID_COLUMN;

/// The input part of lineage ids: 12 hex digits of SHA-256 of the input's name (a file path,
/// an encoded PostgreSQL range). Also how the ledger names a run's inputs.
pub fn input_key(input: &str) -> String {
    hex::encode(&Sha256::digest(input.as_bytes())[..6])
}

/// A record's commitment: SHA-256 of its canonical bytes.
pub fn commitment(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// The leaf of record `id` with `commitment` in a batch's record tree.
pub fn record_leaf(id: &str, commitment: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([RECORD_LEAF_PREFIX]);
    h.update((id.len() as u32).to_be_bytes());
    h.update(id.as_bytes());
    h.update(commitment);
    h.finalize().into()
}

/// Prefix of the lineage ids of many-to-one rows (aggregations, DISTINCT).
pub const GROUP_ID_PREFIX: &str = "agg:";

/// The lineage id of a row computed from several input records (an aggregation): `agg:` and
/// the hex SHA-256 over the contributing ids, in the order the row lists them, each as
/// `u32be(len(id)) || id`.
pub fn group_id<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update((id.len() as u32).to_be_bytes());
        h.update(id.as_bytes());
    }
    format!("{GROUP_ID_PREFIX}{}", hex::encode(h.finalize()))
}

/// Root over `(id, commitment)` records in order (the empty tree's root when there are none).
pub fn records_root<'a>(records: impl IntoIterator<Item = (&'a str, &'a Hash)>) -> Hash {
    let mut r = merkle::CompactRange::default();
    for (id, c) in records {
        r.push(record_leaf(id, c));
    }
    r.root()
}

/// Leaves under each chunk root a custody record keeps: the tree's level-8 nodes.
pub const CHUNK_LEAVES: usize = 256;
const CHUNK_LEVEL: u8 = 8;

/// The roots of the complete, aligned [`CHUNK_LEAVES`]-leaf subtrees of the tree over
/// `leaves` (its level-8 nodes, left to right; a trailing partial chunk has none). Stored with
/// a batch's custody, they let a proof hash the leaves of one chunk instead of the batch's.
pub fn chunk_roots(leaves: &[Hash]) -> Vec<Hash> {
    leaves
        .chunks_exact(CHUNK_LEAVES)
        .map(merkle::root)
        .collect()
}

/// The root of the tree over `leaves` and its chunk roots, each node hashed once.
pub fn chunked_root(leaves: &[Hash]) -> (Hash, Vec<Hash>) {
    let chunks = chunk_roots(leaves);
    let tree = ChunkedTree {
        size: leaves.len() as u64,
        top: merkle::MemTree::new(chunks.clone()),
        leaf: |i: u64| leaves[i as usize],
    };
    (tree.root(), chunks)
}

/// A record tree known by its chunk roots, its leaves computed on demand by `leaf(index)`.
/// Inclusion paths then cost one chunk's leaves and the chunk roots, not the whole tree.
#[derive(Debug)]
pub struct ChunkedTree<F> {
    size: u64,
    top: merkle::MemTree,
    leaf: F,
}

impl<F: Fn(u64) -> Hash> ChunkedTree<F> {
    /// `None` when `chunks` is not the chunk roots of a tree of `size` leaves (a custody
    /// record written before chunk roots were kept has none).
    pub fn new(size: u64, chunks: Vec<Hash>, leaf: F) -> Option<Self> {
        (chunks.len() as u64 == size / CHUNK_LEAVES as u64).then(|| Self {
            size,
            top: merkle::MemTree::new(chunks),
            leaf,
        })
    }
    pub fn root(&self) -> Hash {
        if self.size == 0 {
            return merkle::empty_root();
        }
        merkle::subtree(self, 0, self.size).unwrap_or_else(|_| merkle::empty_root())
    }
    /// The inclusion of leaf `index`, whose record has commitment `c`.
    pub fn inclusion(&self, index: u64, c: &Hash) -> Result<Inclusion, ProofError> {
        if index >= self.size {
            return Err(ProofError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        Ok(Inclusion {
            commitment: hex::encode(c),
            index,
            size: self.size,
            path: merkle::inclusion_proof(self, index, self.size)?
                .iter()
                .map(hex::encode)
                .collect(),
        })
    }
}

impl<F: Fn(u64) -> Hash> merkle::NodeSource for ChunkedTree<F> {
    type Error = ProofError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        if level >= CHUNK_LEVEL {
            return merkle::NodeSource::node(&self.top, level - CHUNK_LEVEL, index);
        }
        let lo = index << level;
        let hi = lo + (1 << level);
        if hi > self.size {
            return Err(ProofError::IndexOutOfRange {
                index: hi - 1,
                size: self.size,
            });
        }
        let leaves: Vec<Hash> = (lo..hi).map(&self.leaf).collect();
        Ok(merkle::root(&leaves))
    }
}

/// A record's place in its batch tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inclusion {
    /// Lowercase hex SHA-256 of the record's canonical bytes.
    pub commitment: String,
    /// 0-based position of the record in the batch tree.
    pub index: u64,
    /// Leaves in the batch tree.
    pub size: u64,
    /// RFC 6962 inclusion path, lowercase hex, leaf to root.
    pub path: Vec<String>,
}

/// The output row: its canonical encoding (which holds its values, protected as they were
/// delivered) and its inclusion in the sink's tree of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowProof {
    pub sink: String,
    /// Format 1 only: the row's JSON canonical encoding, kept as text because its exact bytes
    /// are what is hashed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical: String,
    /// Format 2: the row's binary canonical encoding ([`crate::row`]), standard base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub row: String,
    /// Format 2: the row's columns in order, each `[name, type]`, which its bytes are read by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<(String, String)>,
    #[serde(flatten)]
    pub inclusion: Inclusion,
}

impl RowProof {
    /// The bytes the row's commitment is over (`None` when `row` is not base64).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        if self.row.is_empty() {
            return Some(self.canonical.as_bytes().to_vec());
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.row)
            .ok()
    }
}

/// One contributing input record of a many-to-one row: its id and place in the input tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contributor {
    pub id: String,
    #[serde(flatten)]
    pub inclusion: Inclusion,
}

/// The batch's ledger entry and its inclusion under the signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryProof {
    pub index: u64,
    /// The entry's exact bytes, standard base64.
    pub bytes: String,
    /// Inclusion path (lowercase hex) in the tree of the checkpoint's size.
    pub path: Vec<String>,
}

/// A self-contained proof that one output row came, unchanged, from one input record under a
/// committed batch of the ledger. See `docs/custody.md` for every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    /// The record's lineage id (`source:input:position`).
    pub id: String,
    pub pipeline: String,
    pub run_id: String,
    pub source: String,
    pub batch: u64,
    pub output: RowProof,
    /// The input record of a one-to-one row (absent for a many-to-one row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Inclusion>,
    /// The contributing input records of a many-to-one row (an aggregation), in the order its
    /// `_sealtrail_id` lists them; `id` is their [`group_id`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Contributor>,
    pub entry: EntryProof,
    /// The `outputs_revised` entries of the batch's rows in the sink, oldest first, when they
    /// were rewritten in place after delivery (`keys reencrypt`): each replaces the previous
    /// root, and the row is proven under the last one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<EntryProof>,
    /// For a row of a replay of repaired records (pipeline `<pipeline>-replay`): the
    /// `replay_declared` entry that ties the batch's spec version to the pipeline's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<EntryProof>,
    /// The hand-overs of the ledger's signing key (`signer_rotated` entries) up to the
    /// checkpoint, oldest first: how a verifier holding an earlier key reaches the key that
    /// signed the checkpoint. Absent when the key was never rotated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handovers: Vec<Handover>,
    /// The signed checkpoint (C2SP signed note) the entry proof leads to.
    pub checkpoint: String,
}

/// One hand-over of the ledger's checkpoint signing key, proven offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The `signer_rotated` entry, with its inclusion path in the tree of the bundle's
    /// checkpoint.
    pub entry: EntryProof,
    /// The checkpoint of the tree ending with that entry, signed by its old key and its new one.
    pub checkpoint: String,
    /// Consistency proof (lowercase hex) from that tree to the tree of the bundle's checkpoint.
    pub consistency: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a {BUNDLE_FORMAT} or {BUNDLE_FORMAT_V1} bundle (format `{0}`)")]
    Format(String),
    #[error("the checkpoint's signature does not verify with this public key: {0}")]
    Signature(String),
    #[error("the checkpoint is malformed: {0}")]
    Checkpoint(String),
    #[error("field `{0}` is not valid hex of 32 bytes")]
    Hex(&'static str),
    #[error("the ledger entry does not decode: {0}")]
    Entry(String),
    #[error("the ledger entry is not the batch named by the bundle: {0}")]
    WrongEntry(String),
    #[error("the ledger entry is not in the signed tree: {0}")]
    EntryInclusion(ProofError),
    #[error("the input record is not in the batch's input tree: {0}")]
    InputInclusion(ProofError),
    #[error("the output row does not match its commitment: the row was changed")]
    RowChanged,
    #[error("the output row is not in the sink's tree of the batch: {0}")]
    OutputInclusion(ProofError),
    #[error("the output row does not read under its columns: {0}")]
    Row(String),
    #[error("the output row's `{ID_COLUMN}` is not the bundle's id")]
    IdMismatch,
    #[error("the bundle's input records do not match its id: {0}")]
    Contributors(String),
    #[error("revision {0} of the batch's rows does not chain: {1}")]
    Revision(usize, String),
    #[error("the replay entry does not declare the batch's spec version: {0}")]
    Replay(String),
    #[error("hand-over {0} of the signing key does not hold: {1}")]
    Handover(usize, String),
}

/// What a `replay_declared` entry of a bundle establishes about a replayed row's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOf {
    pub entry_index: u64,
    /// The pipeline's spec, and the replayed records' SHA-256.
    pub spec_sha256: Hash,
    pub records_sha256: Hash,
}

/// What a verified bundle establishes.
#[derive(Debug, Clone)]
pub struct Verified {
    pub entry_index: u64,
    pub tree_size: u64,
    pub checkpoint_time: Option<String>,
    pub spec_sha256: Hash,
    pub transforms_sha256: Hash,
    pub policy_sha256: Hash,
    pub time_micros: i64,
    /// The `outputs_revised` entries the row was proven through, oldest first.
    pub revisions: Vec<u64>,
    /// For a replayed row whose bundle carries it: the `replay_declared` entry.
    pub replay: Option<ReplayOf>,
    /// The key that signed the checkpoint (`name+id`): the given one, or the one its
    /// hand-overs lead to.
    pub signer: String,
}

fn hash_of(s: &str, field: &'static str) -> Result<Hash, BundleError> {
    let b = hex::decode(s).map_err(|_| BundleError::Hex(field))?;
    b.try_into().map_err(|_| BundleError::Hex(field))
}

fn path_of(p: &[String], field: &'static str) -> Result<Vec<Hash>, BundleError> {
    p.iter().map(|h| hash_of(h, field)).collect()
}

/// Checks every link of `b`: row -> commitment -> sink root, record -> input root, both
/// roots in the batch entry, entry -> checkpoint root, checkpoint signature.
pub fn verify(b: &Bundle, key: &NoteVerifier) -> Result<Verified, BundleError> {
    let binary = match b.format.as_str() {
        BUNDLE_FORMAT => true,
        BUNDLE_FORMAT_V1 => false,
        _ => return Err(BundleError::Format(b.format.clone())),
    };
    let text = unverified_text(&b.checkpoint).map_err(|e| BundleError::Signature(e.to_string()))?;
    let cp = Checkpoint::parse(text).map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    let signer = key_in_charge(b, &cp, key)?;
    signer
        .open(&b.checkpoint)
        .map_err(|e| BundleError::Signature(e.to_string()))?;

    let entry = included(&b.entry, &cp)?;
    let Event::BatchCommitted {
        run_id,
        source,
        batch,
        rows_in,
        spec_sha256,
        transforms_sha256,
        policy_sha256,
        input_root,
        outputs,
        ..
    } = &entry.event
    else {
        return Err(BundleError::WrongEntry(format!(
            "entry {} is a {} entry",
            entry.seq,
            entry.event.name()
        )));
    };
    if (run_id, source, *batch) != (&b.run_id, &b.source, b.batch) {
        return Err(BundleError::WrongEntry(format!(
            "it commits run {run_id} source {source} batch {batch}"
        )));
    }

    // The input record, or for a many-to-one row every contributing record.
    let records: Vec<(&str, &Inclusion)> = match (&b.input, b.inputs.as_slice()) {
        (Some(i), []) => vec![(b.id.as_str(), i)],
        (None, many) if !many.is_empty() => {
            if group_id(many.iter().map(|c| c.id.as_str())) != b.id {
                return Err(BundleError::Contributors(
                    "the id is not the group id of the listed records".into(),
                ));
            }
            many.iter().map(|c| (c.id.as_str(), &c.inclusion)).collect()
        }
        _ => {
            return Err(BundleError::Contributors(
                "a bundle has either `input` or a non-empty `inputs`".into(),
            ));
        }
    };
    for (id, inc) in &records {
        if inc.size != *rows_in {
            return Err(BundleError::WrongEntry(format!(
                "the input tree has {} leaves, the batch read {rows_in} records",
                inc.size
            )));
        }
        let c_in = hash_of(&inc.commitment, "input.commitment")?;
        merkle::verify_inclusion(
            inc.index,
            inc.size,
            &record_leaf(id, &c_in),
            &path_of(&inc.path, "input.path")?,
            input_root,
        )
        .map_err(BundleError::InputInclusion)?;
    }

    // The output row: its bytes, its id, its place under the sink's root.
    let c_out = hash_of(&b.output.inclusion.commitment, "output.commitment")?;
    let row_bytes = match (
        binary,
        b.output.canonical.is_empty(),
        b.output.row.is_empty(),
    ) {
        (true, true, false) | (false, false, true) => b.output.bytes(),
        _ => None,
    }
    .ok_or(BundleError::RowChanged)?;
    if !merkle::ct_eq(&commitment(&row_bytes), &c_out) {
        return Err(BundleError::RowChanged);
    }
    let ids_match = |ids: Vec<&str>| {
        ids.len() == records.len() && ids.iter().zip(&records).all(|(v, (id, _))| v == id)
    };
    let listed = if binary {
        let values = crate::row::parse(&row_bytes, &b.output.columns)
            .map_err(|e| BundleError::Row(e.to_string()))?;
        let at = b.output.columns.iter().position(|(n, _)| n == ID_COLUMN);
        match at.map(|i| values[i]) {
            Some(v) if b.input.is_some() => crate::row::string(v) == Some(b.id.as_str()),
            Some(v) => crate::row::strings(v).is_some_and(ids_match),
            None => false,
        }
    } else {
        let row: serde_json::Value =
            serde_json::from_slice(&row_bytes).map_err(|_| BundleError::RowChanged)?;
        match row.get(ID_COLUMN) {
            Some(serde_json::Value::String(id)) if b.input.is_some() => id == &b.id,
            Some(serde_json::Value::Array(ids)) if b.input.is_none() => {
                let ids: Option<Vec<&str>> = ids.iter().map(|v| v.as_str()).collect();
                ids.is_some_and(ids_match)
            }
            _ => false,
        }
    };
    if !listed {
        return Err(BundleError::IdMismatch);
    }
    let Some(sink) = outputs.iter().find(|o| o.sink == b.output.sink) else {
        return Err(BundleError::WrongEntry(format!(
            "the batch wrote nothing to sink `{}`",
            b.output.sink
        )));
    };
    if b.output.inclusion.size != sink.rows {
        return Err(BundleError::WrongEntry(format!(
            "the output tree has {} leaves, the batch wrote {} rows to `{}`",
            b.output.inclusion.size, sink.rows, sink.sink
        )));
    }
    // Rows rewritten in place since: each revision names this batch and sink, keeps the row
    // count and replaces the root in force.
    let mut state = RowsState {
        rows: sink.rows,
        root: sink.root,
        after: entry.seq,
    };
    for (i, ep) in b.revisions.iter().enumerate() {
        let e = included(ep, &cp)?;
        state = state
            .revised(&e, (&b.run_id, &b.source, b.batch, &sink.sink))
            .map_err(|why| BundleError::Revision(i + 1, why))?;
    }
    let replay = match &b.replay {
        Some(ep) => Some(replay_of(
            &included(ep, &cp)?,
            &b.pipeline,
            entry.seq,
            spec_sha256,
        )?),
        None => None,
    };
    let root = state.root;
    merkle::verify_inclusion(
        b.output.inclusion.index,
        b.output.inclusion.size,
        &record_leaf(&b.id, &c_out),
        &path_of(&b.output.inclusion.path, "output.path")?,
        &root,
    )
    .map_err(BundleError::OutputInclusion)?;

    Ok(Verified {
        entry_index: entry.seq,
        tree_size: cp.size,
        checkpoint_time: cp.time().map(str::to_owned),
        spec_sha256: *spec_sha256,
        transforms_sha256: *transforms_sha256,
        policy_sha256: *policy_sha256,
        time_micros: entry.time_micros,
        revisions: b.revisions.iter().map(|r| r.index).collect(),
        replay,
        signer: signer.who(),
    })
}

/// Checks that `e` is a `replay_declared` entry, before batch entry `batch_seq`, of the
/// pipeline whose replay is named `replay` ([`sealtrail_core::replay_name`]), declaring
/// `version` (the batch entry's spec version) as the digests it holds make it.
pub fn replay_of(
    e: &Entry,
    replay: &str,
    batch_seq: u64,
    version: &Hash,
) -> Result<ReplayOf, BundleError> {
    let Event::ReplayDeclared {
        pipeline,
        spec_sha256,
        records_sha256,
        replay_spec_sha256,
    } = &e.event
    else {
        return Err(BundleError::Replay(format!(
            "entry {} is a {} entry",
            e.seq,
            e.event.name()
        )));
    };
    let why = if e.seq >= batch_seq {
        "it does not precede the batch entry"
    } else if replay != sealtrail_core::replay_name(pipeline) {
        "it declares a replay of another pipeline"
    } else if replay_spec_sha256 != version {
        "it declares another version"
    } else if crate::entry::replay_version(spec_sha256, records_sha256) != *version {
        "its spec and records digests do not make the version it declares"
    } else {
        return Ok(ReplayOf {
            entry_index: e.seq,
            spec_sha256: *spec_sha256,
            records_sha256: *records_sha256,
        });
    };
    Err(BundleError::Replay(format!("entry {}: {why}", e.seq)))
}

/// A batch's rows in one sink as the ledger leaves them after some of its entries: the row
/// count and root of its `batch_committed` entry, then of each `outputs_revised` entry that
/// follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsState {
    pub rows: u64,
    /// The root in force.
    pub root: Hash,
    /// The sequence number of the entry that set it.
    pub after: u64,
}

impl RowsState {
    /// The state after revision entry `e` of the rows of (run, source, batch, sink), or why
    /// `e` is not such a revision: it must be an `outputs_revised` entry of that batch and
    /// sink, later than the entry in force, of the same row count, starting from the root in
    /// force.
    pub fn revised(
        self,
        e: &Entry,
        (run, src, at, sink): (&str, &str, u64, &str),
    ) -> Result<Self, String> {
        let Event::OutputsRevised {
            run_id,
            source,
            batch,
            sink: revised,
            rows,
            old_root,
            new_root,
            ..
        } = &e.event
        else {
            return Err(format!("entry {} is a {} entry", e.seq, e.event.name()));
        };
        if (run_id.as_str(), source.as_str(), *batch, revised.as_str()) != (run, src, at, sink) {
            return Err(format!(
                "entry {} revises run {run_id} source {source} batch {batch} sink `{revised}`",
                e.seq
            ));
        }
        if e.seq <= self.after || *rows != self.rows || !merkle::ct_eq(old_root, &self.root) {
            return Err(format!(
                "entry {} does not follow the root in force before it",
                e.seq
            ));
        }
        Ok(Self {
            rows: self.rows,
            root: *new_root,
            after: e.seq,
        })
    }
}

/// The entry `ep` carries, checked to be entry `ep.index` of the checkpoint's tree.
/// The key that must have signed the bundle's checkpoint `cp`: `key`, or the key its chain of
/// hand-overs leads to from `key`. Each hand-over's entry is in `cp`'s tree, hands over from
/// the previous one's new key, and has a checkpoint of the tree ending with it, signed by both
/// keys, that `cp`'s tree extends.
fn key_in_charge(
    b: &Bundle,
    cp: &Checkpoint,
    key: &NoteVerifier,
) -> Result<NoteVerifier, BundleError> {
    let mut links: Vec<(NoteVerifier, NoteVerifier)> = Vec::with_capacity(b.handovers.len());
    for (i, h) in b.handovers.iter().enumerate() {
        let bad = |what: String| BundleError::Handover(i + 1, what);
        let entry = included(&h.entry, cp)?;
        let Event::SignerRotated {
            old_key, new_key, ..
        } = &entry.event
        else {
            return Err(bad(format!(
                "entry {} is a {} entry",
                entry.seq,
                entry.event.name()
            )));
        };
        let parse = |k: &str| NoteVerifier::parse(k).map_err(|e| bad(e.to_string()));
        let (old, new) = (parse(old_key)?, parse(new_key)?);
        if links.last().is_some_and(|(_, prev)| *prev != old) {
            return Err(bad(
                "it does not hand over from the previous hand-over's key".into(),
            ));
        }
        let mut text = "";
        for k in [&old, &new] {
            text = k.open(&h.checkpoint).map_err(|e| bad(e.to_string()))?;
        }
        let at = Checkpoint::parse(text).map_err(|e| bad(e.to_string()))?;
        if at.size != entry.seq + 1 {
            return Err(bad(
                "its checkpoint is not of the tree ending with its entry".into(),
            ));
        }
        merkle::verify_consistency(
            at.size,
            cp.size,
            &at.root,
            &cp.root,
            &path_of(&h.consistency, "handovers.consistency")?,
        )
        .map_err(|e| {
            bad(format!(
                "the checkpoint's tree does not extend its tree: {e}"
            ))
        })?;
        links.push((old, new));
    }
    if crate::verify::taking_charge(links.iter().map(|(old, new)| (old, new)), key).is_none() {
        return Err(BundleError::Signature(format!(
            "key {} is none of the keys the bundle's hand-overs name",
            key.who()
        )));
    }
    Ok(links.last().map_or(key, |(_, new)| new).clone())
}

fn included(ep: &EntryProof, cp: &Checkpoint) -> Result<Entry, BundleError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&ep.bytes)
        .map_err(|e| BundleError::Entry(e.to_string()))?;
    let entry = Entry::decode(&bytes).map_err(|e| BundleError::Entry(e.to_string()))?;
    if entry.seq != ep.index {
        return Err(BundleError::WrongEntry(format!(
            "entry {} claims to be entry {}",
            ep.index, entry.seq
        )));
    }
    merkle::verify_inclusion(
        ep.index,
        cp.size,
        &merkle::leaf_hash(&bytes),
        &path_of(&ep.path, "entry.path")?,
        &cp.root,
    )
    .map_err(BundleError::EntryInclusion)?;
    Ok(entry)
}

/// Builds the [`Inclusion`] of leaf `index` among `leaves` (record leaves).
pub fn inclusion(
    leaves: Vec<Hash>,
    index: u64,
    commitment: &Hash,
) -> Result<Inclusion, ProofError> {
    Ok(inclusions(leaves, &[(index, *commitment)])?.remove(0))
}

/// The [`Inclusion`]s of several leaves `(index, commitment)` of one tree, built once.
pub fn inclusions(leaves: Vec<Hash>, wanted: &[(u64, Hash)]) -> Result<Vec<Inclusion>, ProofError> {
    let t = merkle::MemTree::new(leaves);
    wanted
        .iter()
        .map(|(index, c)| {
            Ok(Inclusion {
                commitment: hex::encode(c),
                index: *index,
                size: t.size(),
                path: t.inclusion_proof(*index)?.iter().map(hex::encode).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_trees_prove_like_whole_trees() {
        for n in [0u64, 1, 2, 255, 256, 257, 511, 512, 1000, 1024, 3000] {
            let records: Vec<(String, Hash)> = (0..n)
                .map(|i| (format!("s:0123456789ab:{i}"), commitment(&i.to_le_bytes())))
                .collect();
            let leaf = |i: u64| {
                let (id, c) = &records[i as usize];
                record_leaf(id, c)
            };
            let leaves: Vec<Hash> = (0..n).map(leaf).collect();
            let whole = merkle::MemTree::new(leaves.clone());
            let t = ChunkedTree::new(n, chunk_roots(&leaves), leaf).expect("chunks fit");
            assert_eq!(
                t.root(),
                records_root(records.iter().map(|(i, c)| (i.as_str(), c)))
            );
            assert_eq!(chunked_root(&leaves), (t.root(), chunk_roots(&leaves)));
            assert!(ChunkedTree::new(n + 256, chunk_roots(&leaves), leaf).is_none());
            for i in [0, 1, n / 2, n.saturating_sub(2), n.saturating_sub(1)] {
                if i >= n {
                    continue;
                }
                let c = &records[i as usize].1;
                let got = t.inclusion(i, c).unwrap();
                let want = inclusions(leaves.clone(), &[(i, *c)]).unwrap().remove(0);
                assert_eq!(got, want, "n={n} i={i}");
                assert_eq!(whole.inclusion_proof(i).unwrap().len(), got.path.len());
            }
            assert!(t.inclusion(n, &[0; 32]).is_err());
        }
    }

    #[test]
    fn record_leaves_differ_from_ledger_leaves_and_bind_the_id() {
        let c = commitment(b"a,b,c");
        let l = record_leaf("s:0123:2", &c);
        let mut data = Vec::new();
        data.extend_from_slice(&(8u32).to_be_bytes());
        data.extend_from_slice(b"s:0123:2");
        data.extend_from_slice(&c);
        assert_ne!(l, merkle::leaf_hash(&data));
        assert_ne!(l, record_leaf("s:0123:3", &c));
        let mut pre = vec![RECORD_LEAF_PREFIX];
        pre.extend_from_slice(&data);
        assert_eq!(l, commitment(&pre));
    }

    #[test]
    fn records_root_matches_the_tree_and_proofs_verify() {
        let recs: Vec<(String, Hash)> = (0..7)
            .map(|i| {
                (
                    format!("s:k:{i}"),
                    commitment(format!("row {i}").as_bytes()),
                )
            })
            .collect();
        let root = records_root(recs.iter().map(|(i, c)| (i.as_str(), c)));
        let leaves: Vec<Hash> = recs.iter().map(|(i, c)| record_leaf(i, c)).collect();
        assert_eq!(root, merkle::root(&leaves));
        for (k, (id, c)) in recs.iter().enumerate() {
            let inc = inclusion(leaves.clone(), k as u64, c).unwrap();
            let path = path_of(&inc.path, "p").unwrap();
            merkle::verify_inclusion(k as u64, 7, &record_leaf(id, c), &path, &root).unwrap();
            // The same commitment under another id does not verify.
            assert!(
                merkle::verify_inclusion(k as u64, 7, &record_leaf("s:k:99", c), &path, &root)
                    .is_err()
            );
        }
        assert_eq!(records_root(std::iter::empty()), merkle::empty_root());
    }

    #[test]
    fn group_ids_bind_every_member_and_their_order() {
        let g = group_id(["s:k:1", "s:k:2"]);
        assert!(g.starts_with(GROUP_ID_PREFIX) && g.len() == 4 + 64);
        assert_ne!(g, group_id(["s:k:2", "s:k:1"]));
        assert_ne!(g, group_id(["s:k:1"]));
        // Length prefixes: moving a boundary changes the id.
        assert_ne!(group_id(["ab", "c"]), group_id(["a", "bc"]));
    }
}
