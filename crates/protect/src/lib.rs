//! Data protection: classification, policies, tokens, encryption, the keyring.
//!
//! - [`detect`]: what a column holds, from its name and sampled values, with validators.
//! - [`ops`]: the actions on one value (token, FF1, AES-256-GCM, mask, redact, ...).
//! - [`guard`]: the release check on every value of the raw columns that reach an audience
//!   not cleared for all data.
//! - [`ff1`]: FF1 for values of up to 38 digits with machine integers.
//! - [`mac`]: HMAC-SHA256 with a keyed state that is zeroized on drop.
//! - [`keyring`]: envelope encryption of data keys, rotation, per-subject keys, shredding.
//! - [`plan`]: a source's policies resolved against its classification, applied to batches,
//!   and the tags each output column carries (for the release check).

pub mod corpus;
pub mod detect;
pub mod ff1;
pub mod guard;
pub mod keyring;
pub mod mac;
pub mod ops;
pub mod plan;
