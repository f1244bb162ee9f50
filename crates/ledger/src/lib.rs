//! The tamper-evident ledger: an RFC 6962 Merkle log stored in the C2SP tlog-tiles layout,
//! with C2SP signed checkpoints. See `docs/ledger-format.md`.

pub mod audit;
pub mod custody;
pub mod entry;
pub mod log;
pub mod merkle;
pub mod note;
pub mod pg;
pub mod row;
pub mod tiles;
pub mod verify;
