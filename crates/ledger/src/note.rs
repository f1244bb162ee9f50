//! C2SP signed notes with Ed25519 keys (<https://c2sp.org/signed-note>), and the checkpoint
//! body they carry (<https://c2sp.org/tlog-checkpoint>).
//!
//! ```text
//!   <text, ending in \n>
//!   \n
//!   — <key name> <base64(key id[4] || Ed25519 signature[64])>\n     (one line per signature)
//! ```
//! Key id = first 4 bytes of SHA-256(key name || "\n" || 0x01 || public key), big-endian.
//! Verifier keys are written `<name>+<key id hex>+<base64(0x01 || public key)>`, signer keys
//! `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || 32-byte seed)>`.
//! Written here (a hundred lines) because the format must match the Go reference byte for
//! byte, which the test vector pins; the `signed_note` crate did not fit our key handling.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const ED25519: u8 = 0x01;
/// U+2014 EM DASH and a space: the start of every signature line.
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    BadKey(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by key {0} on the note")]
    NotSigned(String),
    #[error("the signature by key {0} does not verify")]
    BadSignature(String),
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::BadKey(
            "a key name is non-empty, without spaces or '+'",
        ));
    }
    Ok(())
}

/// The 4-byte key id of an Ed25519 key.
pub fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A note signer. The seed zeroizes on drop; Debug shows only the name and id.
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({}+{:08x})", self.name, self.id)
    }
}

impl NoteSigner {
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<id>+<base64>`.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let rest = s
            .trim_end()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadKey("a signer key starts with PRIVATE+KEY+"))?;
        // The base64 key may itself contain '+': split off the name and id only.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey(
                "a signer key has the form PRIVATE+KEY+name+id+key",
            ));
        };
        let raw = Zeroizing::new(
            B64.decode(b64)
                .map_err(|_| NoteError::BadKey("key is not base64"))?,
        );
        if raw.len() != 33 || raw[0] != ED25519 {
            return Err(NoteError::BadKey("not an Ed25519 signer key"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&raw[1..]);
        let signer = Self::from_seed(name, &seed)?;
        if format!("{:08x}", signer.id) != id {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// The signer key text. It is a secret: write it only to a file with restrictive rights.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(vec![ED25519]);
        raw.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            B64.encode(&*raw)
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must end in a newline) and returns the whole signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the text of a note ends with a newline",
            ));
        }
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }

    /// Adds this key's signature line to `note`, a note signed by others, over the same text.
    pub fn cosign(&self, note: &str) -> Result<String, NoteError> {
        let (text, _) = split(note)?;
        Ok(format!("{note}{}", self.signature_line(text)))
    }

    /// `— <name> <base64(key id || signature over text)>` and a line break.
    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// A signature line: key name, decoded `key id || signature`.
type SigLine<'a> = (&'a str, Vec<u8>);

/// The text of a signed note and its signature lines, unverified.
fn split(note: &str) -> Result<(&str, Vec<SigLine<'_>>), NoteError> {
    let at = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, sigs) = (&note[..at + 1], &note[at + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("signature lines end with a newline"));
    }
    let mut out = Vec::new();
    for line in sigs.lines() {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed(
            "a signature line starts with an em dash",
        ))?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "a signature line is: — name signature",
        ))?;
        let blob = B64
            .decode(b64)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        out.push((name, blob));
    }
    Ok((text, out))
}

/// The text of a signed note, its signatures not checked (to read what a note claims before
/// knowing which key must have signed it).
pub fn unverified_text(note: &str) -> Result<&str, NoteError> {
    split(note).map(|(text, _)| text)
}

/// A note verifier (public key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<id>+<base64>`.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let mut parts = s.trim_end().splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey("a verifier key has the form name+id+key"));
        };
        check_name(name)?;
        let raw = B64
            .decode(b64)
            .map_err(|_| NoteError::BadKey("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519 {
            return Err(NoteError::BadKey("not an Ed25519 verifier key"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let key = VerifyingKey::from_bytes(&pk)
            .map_err(|_| NoteError::BadKey("not a valid Ed25519 point"))?;
        let kid = key_id(name, &pk);
        if format!("{kid:08x}") != id {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_string(),
            id: kid,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name+id`, how messages name the key.
    pub fn who(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }

    /// Whether the last signature line of `note` is by this key (name and id), without
    /// checking it: the signer currently in charge of a log signs last (a checkpoint co-signed
    /// at a rotation lists the old key, then the new one).
    pub fn signed_last(&self, note: &str) -> bool {
        split(note).is_ok_and(|(_, sigs)| {
            sigs.last().is_some_and(|(name, blob)| {
                *name == self.name && blob.len() >= 4 && blob[..4] == self.id.to_be_bytes()
            })
        })
    }

    pub fn to_key_string(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }

    /// Verifies a signed note and returns its text. Signatures by other keys are ignored;
    /// one by this key (name and id) must be present and valid.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (text, sigs) = split(note)?;
        let who = self.who();
        for (name, blob) in sigs {
            if name != self.name || blob.len() < 4 || blob[..4] != self.id.to_be_bytes() {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(who.clone()))?;
            return self
                .key
                .verify(text.as_bytes(), &sig)
                .map(|_| text)
                .map_err(|_| NoteError::BadSignature(who));
        }
        Err(NoteError::NotSigned(who))
    }
}

/// A tlog checkpoint: origin, tree size, root hash, optional extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// The signing time from the `time` extension line (RFC 3339), when present.
    pub fn time(&self) -> Option<&str> {
        self.extensions.iter().find_map(|e| e.strip_prefix("time "))
    }

    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text
            .strip_suffix('\n')
            .ok_or(NoteError::Malformed("a checkpoint ends with a newline"))?
            .split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Malformed("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s.len() == 1 || !s.starts_with('0'))
            })
            .and_then(|s| s.parse().ok())
            .ok_or(NoteError::Malformed(
                "the tree size is not a decimal number",
            ))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r.as_slice()).ok())
            .ok_or(NoteError::Malformed(
                "the root hash is not 32 bytes of base64",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(NoteError::Malformed("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }
}
