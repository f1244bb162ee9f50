//! The keyring: envelope encryption of data keys under a master key.
//!
//! - The **master key** (32 bytes) never sits in a spec or the keyring. It comes from
//!   `SEALTRAIL_MASTER_KEY` (64 hex characters), or the file named by
//!   `SEALTRAIL_MASTER_KEY_FILE`, or, as the embedded default for a single machine, the file
//!   `master.key` in the sealtrail home (created with mode 0600 on first use, with a warning).
//! - **Data keys** are random 32-byte keys, each stored only wrapped: AES-256-GCM under the
//!   master key with the key's id (`name@version`) as associated data, so a wrapped key cannot be
//!   moved to another name or version. A named key has versions; new writes use the active one,
//!   old ciphertexts name theirs and stay decryptable (rotation).
//! - **Subject keys** encrypt one data subject's values (`encrypt` with `subject:`). A subject
//!   is known in the keyring only by a keyed hash of its id. `shred` deletes the subject's wrapped
//!   key: from then on nobody can decrypt that subject's values, while every other value, and
//!   the ledger, are untouched.
//!
//! The keyring file (`keyring.json`) is rewritten atomically (temporary file, fsync, rename)
//! under an exclusive lock, so concurrent runs and `keys` commands do not lose each other's keys.

use crate::mac::HmacSha256;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// 32 bytes of key material, zeroized on drop, never printed.
#[derive(Clone)]
pub struct KeyBytes(Zeroizing<[u8; 32]>);

impl KeyBytes {
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        Self(k)
    }
    /// From 64 hex characters. The error never repeats the input.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        let mut k = Zeroizing::new([0u8; 32]);
        if s.len() != 64 || hex::decode_to_slice(s, k.as_mut()).is_err() {
            return Err(KeyError::Malformed);
        }
        Ok(Self(k))
    }
    pub fn from_slice(b: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self(Zeroizing::new(arr)))
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(«redacted»)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key must be 64 hexadecimal characters (32 bytes)")]
    Malformed,
    /// The master key at hand is not a key (the value itself is never repeated).
    #[error(
        "the master key in {0} is not a key: it must be 64 hexadecimal characters (32 bytes), for example from `openssl rand -hex 32`"
    )]
    MalformedMaster(String),
    /// No key in the environment and none in the home folder (which may be the wrong one).
    #[error(
        "no master key: there is no {0}; pass --home (or set SEALTRAIL_HOME) for the folder whose keyring to open, or supply its master key in SEALTRAIL_MASTER_KEY (64 hex characters) or SEALTRAIL_MASTER_KEY_FILE"
    )]
    NoMaster(PathBuf),
    #[error("no master key: SEALTRAIL_MASTER_KEY_FILE names {0}, which does not exist")]
    NoMasterFile(PathBuf),
    /// A keyring exists but no master key was supplied: a new local one could never open it.
    #[error(
        "no master key for the keyring {0}: it was created under a master key that is neither in SEALTRAIL_MASTER_KEY, nor in a file SEALTRAIL_MASTER_KEY_FILE names, nor in {1}; supply that master key (a new one cannot open the keyring)"
    )]
    NoMasterForKeyring(PathBuf, PathBuf),
    #[error(
        "the master key does not open this keyring ({0}); supply the master key it is under (the one it was created with, or the one of its last `keys rewrap`)"
    )]
    WrongMaster(PathBuf),
    #[error("keyring {path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("no key `{0}` in the keyring; see `sealtrail keys list`")]
    Unknown(String),
    #[error("key `{0}` is used for {1}, not {2}")]
    Purpose(String, &'static str, &'static str),
    #[error("the key for this data subject was shredded; the value cannot be decrypted")]
    Shredded,
    #[error("key `{0}` cannot be rotated: {1}")]
    NoRotate(String, &'static str),
    #[error(
        "key `{0}` was retired (destroyed) at {1}; values under it can no longer be decrypted by anyone"
    )]
    Retired(String, String),
    #[error("key `{0}` cannot be retired: {1}")]
    NoRetire(String, String),
    #[error("the new master key is the one the keyring is under already")]
    SameMaster,
    #[error("a wrapped key in the keyring failed authentication: the keyring was altered")]
    Tampered,
}

/// What a data key is for. Token and FPE keys are deterministic by design, so rotating them
/// would change every output; only encryption keys rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Encrypt,
    Token,
    Fpe,
}

impl Purpose {
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Encrypt => "encrypt",
            Purpose::Token => "token",
            Purpose::Fpe => "fpe",
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    /// HMAC of a fixed label under the master key: tells a wrong master key apart from damage.
    check: String,
    keys: BTreeMap<String, Named>,
    subjects: BTreeMap<String, Wrapped>,
    /// Subject hash -> when it was shredded (kept so a later write cannot resurrect it).
    shredded: BTreeMap<String, String>,
    /// The key that names data subjects ([`Keyring::subject_id`]), wrapped under the master
    /// key. Absent until the first `rewrap`: until then it is derived from the master key, and
    /// `rewrap` keeps that one (subject hashes are in the file and in every subject-keyed
    /// ciphertext, so they must outlive the master key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject_key: Option<String>,
}

/// The id the subject-naming key is wrapped under (bound to it as associated data).
const SUBJECT_KEY_ID: &str = "sealtrail subject id key";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    purpose: Purpose,
    active: u32,
    versions: BTreeMap<u32, Wrapped>,
    /// Versions destroyed by `keys retire` -> when (kept so that their values are told
    /// apart from values under a key this keyring never had, and no version is reused).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    retired: BTreeMap<u32, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    /// base64(nonce ‖ ciphertext ‖ tag) of the key under the master key.
    wrapped: String,
    created: String,
}

/// One key as listed (no material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub purpose: Purpose,
    pub active: u32,
    pub versions: Vec<u32>,
    /// Versions destroyed by `keys retire`.
    pub retired: Vec<u32>,
}

/// The master key and where it came from.
#[derive(Debug)]
pub struct Master {
    key: KeyBytes,
    pub origin: String,
}

impl Master {
    pub fn new(key: KeyBytes, origin: impl Into<String>) -> Self {
        Self {
            key,
            origin: origin.into(),
        }
    }
    /// From `SEALTRAIL_MASTER_KEY`, `SEALTRAIL_MASTER_KEY_FILE`, or `<home>/master.key`
    /// (created when `create_local` and no other source is set). Returns whether a local key
    /// was just created, so the caller can warn.
    pub fn locate(home: &Path, create_local: bool) -> Result<(Self, bool), KeyError> {
        if let Ok(hex) = std::env::var("SEALTRAIL_MASTER_KEY") {
            return Ok((
                Self::new(
                    KeyBytes::from_hex(&hex)
                        .map_err(|_| KeyError::MalformedMaster("SEALTRAIL_MASTER_KEY".into()))?,
                    "SEALTRAIL_MASTER_KEY",
                ),
                false,
            ));
        }
        let (path, named) = match std::env::var_os("SEALTRAIL_MASTER_KEY_FILE") {
            Some(p) => (PathBuf::from(p), true),
            None => (home.join("master.key"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(mut s) => {
                let k = KeyBytes::from_hex(&s);
                s.zeroize();
                let k = k.map_err(|_| KeyError::MalformedMaster(path.display().to_string()))?;
                Ok((Self::new(k, path.display().to_string()), false))
            }
            // A keyring made under another master key (from the environment, say) can never
            // be opened by a new local one: refuse rather than leave a useless key file behind.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !named
                    && home.join("keyring.json").exists() =>
            {
                Err(KeyError::NoMasterForKeyring(
                    home.join("keyring.json"),
                    path,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_local && !named => {
                let k = KeyBytes::random();
                let mut hex = Zeroizing::new(hex::encode(k.expose()));
                hex.push('\n');
                let created = sealtrail_core::secret::create_private_once(&path, hex.as_bytes())
                    .map_err(|e| KeyError::File {
                        path: path.clone(),
                        msg: e.to_string(),
                    })?;
                if !created {
                    // Another process created it a moment ago: use that one.
                    return Self::locate(home, false);
                }
                Ok((Self::new(k, path.display().to_string()), true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && named => {
                Err(KeyError::NoMasterFile(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyError::NoMaster(path)),
            Err(e) => Err(KeyError::File {
                path,
                msg: e.to_string(),
            }),
        }
    }

    fn check_value(&self) -> String {
        hex::encode(&hmac(self.key.expose(), b"sealtrail keyring check v1")[..16])
    }

    /// The subject-naming key of a keyring that was never re-wrapped: derived from this
    /// master key.
    fn derived_subject_key(&self) -> KeyBytes {
        KeyBytes(Zeroizing::new(hmac(
            self.key.expose(),
            b"sealtrail subject id key v1",
        )))
    }

    fn wrap(&self, id: &str, key: &KeyBytes) -> String {
        B64.encode(seal(&self.key, id.as_bytes(), key.expose()))
    }

    fn unwrap(&self, id: &str, wrapped: &str) -> Result<KeyBytes, KeyError> {
        let bytes = B64.decode(wrapped).map_err(|_| KeyError::Tampered)?;
        let plain =
            Zeroizing::new(open(&self.key, id.as_bytes(), &bytes).ok_or(KeyError::Tampered)?);
        KeyBytes::from_slice(&plain)
    }
}

fn subject_hash(key: &KeyBytes, subject: &str) -> String {
    hex::encode(&hmac(key.expose(), subject.as_bytes())[..16])
}

pub(crate) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    HmacSha256::new(key).mac(msg)
}

/// AES-256-GCM with a fresh random nonce: nonce ‖ ciphertext ‖ tag.
pub(crate) fn seal(key: &KeyBytes, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    seal_with(&Aes256Gcm::new(key.expose().into()), aad, plain)
}

pub(crate) fn seal_with(c: &Aes256Gcm, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let ct = c
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        // Only fails for inputs beyond 64 GiB.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

pub(crate) fn open(key: &KeyBytes, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    open_with(&Aes256Gcm::new(key.expose().into()), aad, sealed)
}

/// Authenticates and decrypts; the tag comparison inside aes-gcm is constant-time.
pub(crate) fn open_with(c: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(12);
    c.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// An open keyring.
#[derive(Debug)]
pub struct Keyring {
    path: PathBuf,
    master: Master,
    file: File,
}

impl Keyring {
    /// Opens (or creates) the keyring at `path`; a wrong master key is told apart from a
    /// damaged file.
    pub fn open(path: &Path, master: Master) -> Result<Self, KeyError> {
        let mut k = Self {
            path: path.to_path_buf(),
            master,
            file: File::default(),
        };
        k.modify(|_, _| Ok(()))?;
        Ok(k)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn master(&self) -> &Master {
        &self.master
    }

    fn err(&self, msg: impl std::fmt::Display) -> KeyError {
        KeyError::File {
            path: self.path.clone(),
            msg: msg.to_string(),
        }
    }

    fn load(&self) -> Result<File, KeyError> {
        match std::fs::read(&self.path) {
            Ok(b) => {
                let f: File = serde_json::from_slice(&b).map_err(|e| self.err(e))?;
                if f.check != self.master.check_value() {
                    return Err(KeyError::WrongMaster(self.path.clone()));
                }
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File {
                format: 1,
                check: self.master.check_value(),
                ..Default::default()
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Re-reads the file under an exclusive lock, applies `f`, and writes it back if `f` says
    /// it changed something.
    fn modify<T>(
        &mut self,
        f: impl FnOnce(&Master, &mut File) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(|e| self.err(e))?;
        lock.lock().map_err(|e| self.err(e))?;
        let mut file = self.load()?;
        let before = serde_json::to_vec(&file).map_err(|e| self.err(e))?;
        let out = f(&self.master, &mut file)?;
        let after = serde_json::to_vec_pretty(&file).map_err(|e| self.err(e))?;
        if !self.path.exists() || serde_json::to_vec(&file).map_err(|e| self.err(e))? != before {
            let tmp = self.path.with_extension("json.tmp");
            let _ = std::fs::remove_file(&tmp);
            // A write that fails (a full disk) leaves no part of the keyring behind.
            if let Err(e) =
                write_private(&tmp, &after).and_then(|()| std::fs::rename(&tmp, &self.path))
            {
                let _ = std::fs::remove_file(&tmp);
                return Err(self.err(e));
            }
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = file;
        Ok(out)
    }

    /// The active version of key `name` for `purpose`, created on first use.
    pub fn active(&mut self, name: &str, purpose: Purpose) -> Result<(String, KeyBytes), KeyError> {
        if let Some(n) = self.file.keys.get(name) {
            if n.purpose != purpose {
                return Err(KeyError::Purpose(
                    name.into(),
                    n.purpose.name(),
                    purpose.name(),
                ));
            }
            let id = format!("{name}@{}", n.active);
            let w = n.versions.get(&n.active).ok_or(KeyError::Tampered)?;
            return Ok((id.clone(), self.master.unwrap(&id, &w.wrapped)?));
        }
        let name = name.to_string();
        self.modify(move |m, f| {
            let n = f.keys.entry(name.clone()).or_insert_with(|| {
                let id = format!("{name}@1");
                Named {
                    purpose,
                    retired: BTreeMap::new(),
                    active: 1,
                    versions: BTreeMap::from([(
                        1,
                        Wrapped {
                            wrapped: m.wrap(&id, &KeyBytes::random()),
                            created: sealtrail_core::audit::now(),
                        },
                    )]),
                }
            });
            if n.purpose != purpose {
                return Err(KeyError::Purpose(
                    name.clone(),
                    n.purpose.name(),
                    purpose.name(),
                ));
            }
            let id = format!("{name}@{}", n.active);
            let w = n.versions.get(&n.active).ok_or(KeyError::Tampered)?;
            Ok((id.clone(), m.unwrap(&id, &w.wrapped)?))
        })
    }

    /// A key by its id (`name@version`), for decryption.
    pub fn by_id(&self, id: &str) -> Result<KeyBytes, KeyError> {
        if let Some(h) = id.strip_prefix("subject:") {
            if self.file.shredded.contains_key(h) {
                return Err(KeyError::Shredded);
            }
            // Neither live nor shredded: not this keyring's subject (another home's keyring,
            // or a value from elsewhere); saying "shredded" would tell an erasure that never
            // happened.
            let w = self
                .file
                .subjects
                .get(h)
                .ok_or_else(|| KeyError::Unknown(id.into()))?;
            return self.master.unwrap(id, &w.wrapped);
        }
        let (name, v) = id
            .rsplit_once('@')
            .and_then(|(n, v)| Some((n, v.parse::<u32>().ok()?)))
            .ok_or_else(|| KeyError::Unknown(id.into()))?;
        let named = self.file.keys.get(name);
        if let Some(at) = named.and_then(|n| n.retired.get(&v)) {
            return Err(KeyError::Retired(id.into(), at.clone()));
        }
        let w = named
            .and_then(|n| n.versions.get(&v))
            .ok_or_else(|| KeyError::Unknown(id.into()))?;
        self.master.unwrap(id, &w.wrapped)
    }

    /// Checks that `id` (`name@version`) names a version of an encryption key that may be
    /// retired: it exists and is not the active one (new writes use that). Returns the name
    /// and version.
    pub fn retirable(&self, id: &str) -> Result<(String, u32), KeyError> {
        let no = |why: &str| KeyError::NoRetire(id.into(), why.into());
        let (name, v) = id
            .rsplit_once('@')
            .and_then(|(n, v)| Some((n, v.parse::<u32>().ok()?)))
            .ok_or_else(|| no("name a version, as `name@version` (see `sealtrail keys list`)"))?;
        let n = self
            .file
            .keys
            .get(name)
            .ok_or_else(|| KeyError::Unknown(name.into()))?;
        if let Some(at) = n.retired.get(&v) {
            return Err(KeyError::Retired(id.into(), at.clone()));
        }
        if !n.versions.contains_key(&v) {
            return Err(KeyError::Unknown(id.into()));
        }
        if n.purpose != Purpose::Encrypt {
            return Err(no(
                "token and FPE keys have one version, which every output depends on",
            ));
        }
        if n.active == v {
            return Err(no(&format!(
                "it is the active version, which new writes use; `sealtrail keys rotate {name}` first, then `keys reencrypt` what is under it"
            )));
        }
        Ok((name.into(), v))
    }

    /// Destroys version `id` of an encryption key ([`Keyring::retirable`]): its wrapped key
    /// leaves the file for good, and the version is kept as retired.
    pub fn retire(&mut self, id: &str) -> Result<(), KeyError> {
        let (name, v) = self.retirable(id)?;
        self.modify(move |_, f| {
            let n = f
                .keys
                .get_mut(&name)
                .ok_or_else(|| KeyError::Unknown(name.clone()))?;
            if n.active == v {
                return Err(KeyError::NoRetire(
                    format!("{name}@{v}"),
                    "it became the active version meanwhile".into(),
                ));
            }
            n.versions.remove(&v);
            n.retired.insert(v, sealtrail_core::audit::now());
            Ok(())
        })
    }

    /// Keys of these subjects, created for those that have none. Returns (key id, key) per
    /// subject, or `None` for a subject that was shredded (its new values cannot be encrypted
    /// either: they are written as null). One write for the whole set.
    pub fn subject_keys(
        &mut self,
        subjects: &[&str],
    ) -> Result<Vec<Option<(String, KeyBytes)>>, KeyError> {
        let k = self.subject_key()?;
        let ids: Vec<String> = subjects.iter().map(|s| subject_hash(&k, s)).collect();
        let missing = ids
            .iter()
            .any(|h| !self.file.subjects.contains_key(h) && !self.file.shredded.contains_key(h));
        if missing {
            let ids2 = ids.clone();
            self.modify(move |m, f| {
                for h in ids2 {
                    if !f.subjects.contains_key(&h) && !f.shredded.contains_key(&h) {
                        let w = m.wrap(&format!("subject:{h}"), &KeyBytes::random());
                        f.subjects.insert(
                            h,
                            Wrapped {
                                wrapped: w,
                                created: sealtrail_core::audit::now(),
                            },
                        );
                    }
                }
                Ok(())
            })?;
        }
        ids.into_iter()
            .map(|h| {
                if self.file.shredded.contains_key(&h) {
                    return Ok(None);
                }
                let id = format!("subject:{h}");
                let w = self.file.subjects.get(&h).ok_or(KeyError::Tampered)?;
                Ok(Some((id.clone(), self.master.unwrap(&id, &w.wrapped)?)))
            })
            .collect()
    }

    /// Deletes a subject's key. Returns its keyed hash and whether it had a key.
    pub fn shred(&mut self, subject: &str) -> Result<(String, bool), KeyError> {
        let h = subject_hash(&self.subject_key()?, subject);
        let h2 = h.clone();
        let had = self.modify(move |_, f| {
            let had = f.subjects.remove(&h2).is_some();
            f.shredded.insert(h2, sealtrail_core::audit::now());
            Ok(had)
        })?;
        Ok((h, had))
    }

    fn subject_key(&self) -> Result<KeyBytes, KeyError> {
        match &self.file.subject_key {
            Some(w) => self.master.unwrap(SUBJECT_KEY_ID, w),
            None => Ok(self.master.derived_subject_key()),
        }
    }

    /// The key ids (`subject:H`) of the subjects shredded in the keyring at `path` (none when
    /// there is no keyring). Read without the master key: the keyring names shredded subjects
    /// by their keyed hash only, as their ciphertexts do.
    pub fn shredded_subjects(path: &Path) -> Result<std::collections::BTreeSet<String>, KeyError> {
        match std::fs::read(path) {
            Ok(b) => {
                let f: File = serde_json::from_slice(&b).map_err(|e| KeyError::File {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                })?;
                Ok(f.shredded
                    .into_keys()
                    .map(|h| format!("subject:{h}"))
                    .collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(KeyError::File {
                path: path.to_path_buf(),
                msg: e.to_string(),
            }),
        }
    }

    /// Keyed hash naming a data subject in the keyring (never the subject id itself); the
    /// same before and after a `rewrap`.
    pub fn subject_id(&self, subject: &str) -> Result<String, KeyError> {
        Ok(subject_hash(&self.subject_key()?, subject))
    }

    /// Whether `m` is the master key the keyring is under.
    pub fn is_under(&self, m: &Master) -> bool {
        m.check_value() == self.master.check_value()
    }

    /// Wraps every data key (every version, every subject's, the subject-naming key) anew
    /// under `new`, in one atomic replacement of the file: the master key changes, the data
    /// keys and so every ciphertext stay. Afterwards only `new` opens the keyring.
    pub fn rewrap(&mut self, new: Master) -> Result<(), KeyError> {
        if self.is_under(&new) {
            return Err(KeyError::SameMaster);
        }
        self.modify(|old, f| {
            let subject_key = match &f.subject_key {
                Some(w) => old.unwrap(SUBJECT_KEY_ID, w)?,
                None => old.derived_subject_key(),
            };
            for (name, n) in &mut f.keys {
                for (v, w) in &mut n.versions {
                    let id = format!("{name}@{v}");
                    w.wrapped = new.wrap(&id, &old.unwrap(&id, &w.wrapped)?);
                }
            }
            for (h, w) in &mut f.subjects {
                let id = format!("subject:{h}");
                w.wrapped = new.wrap(&id, &old.unwrap(&id, &w.wrapped)?);
            }
            f.subject_key = Some(new.wrap(SUBJECT_KEY_ID, &subject_key));
            f.check = new.check_value();
            Ok(())
        })?;
        self.master = new;
        Ok(())
    }

    /// Adds a new version of an encryption key and makes it active. Returns the new key id.
    pub fn rotate(&mut self, name: &str) -> Result<String, KeyError> {
        let name = name.to_string();
        self.modify(move |m, f| {
            let n = f
                .keys
                .get_mut(&name)
                .ok_or_else(|| KeyError::Unknown(name.clone()))?;
            if n.purpose != Purpose::Encrypt {
                return Err(KeyError::NoRotate(
                    name.clone(),
                    "token and FPE keys are deterministic; a new version would change every output and break joins",
                ));
            }
            let v = n
                .versions
                .keys()
                .chain(n.retired.keys())
                .max()
                .copied()
                .unwrap_or(0)
                + 1;
            let id = format!("{name}@{v}");
            n.versions.insert(v, Wrapped {
                wrapped: m.wrap(&id, &KeyBytes::random()),
                created: sealtrail_core::audit::now(),
            });
            n.active = v;
            Ok(id)
        })
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.file
            .keys
            .iter()
            .map(|(name, n)| KeyInfo {
                name: name.clone(),
                purpose: n.purpose,
                active: n.active,
                versions: n.versions.keys().copied().collect(),
                retired: n.retired.keys().copied().collect(),
            })
            .collect()
    }

    /// (subjects with a key, subjects shredded).
    pub fn subject_counts(&self) -> (usize, usize) {
        (self.file.subjects.len(), self.file.shredded.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(dir: &Path) -> Keyring {
        let k = KeyBytes::from_hex(&"11".repeat(32)).unwrap();
        Keyring::open(&dir.join("keyring.json"), Master::new(k, "test")).unwrap()
    }

    #[test]
    fn rewrapping_changes_the_master_key_and_keeps_every_data_key() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("keyring.json");
        let master = |b: &str| Master::new(KeyBytes::from_hex(&b.repeat(32)).unwrap(), "test");
        let mut r = ring(d.path());
        let (id1, k1) = r.active("email", Purpose::Encrypt).unwrap();
        let id2 = r.rotate("email").unwrap();
        let k2 = r.by_id(&id2).unwrap();
        let (_, t) = r.active("tok", Purpose::Token).unwrap();
        let subject = r.subject_keys(&["C-1"]).unwrap().remove(0).unwrap();
        let h = r.subject_id("C-1").unwrap();
        assert!(matches!(r.rewrap(master("11")), Err(KeyError::SameMaster)));
        r.rewrap(master("22")).unwrap();
        // The old master key no longer opens it; the new one opens every key as it was.
        assert!(matches!(
            Keyring::open(&path, master("11")),
            Err(KeyError::WrongMaster(_))
        ));
        for mut r in [r, Keyring::open(&path, master("22")).unwrap()] {
            assert_eq!(r.by_id(&id1).unwrap().expose(), k1.expose());
            assert_eq!(r.by_id(&id2).unwrap().expose(), k2.expose());
            assert_eq!(
                r.active("tok", Purpose::Token).unwrap().1.expose(),
                t.expose()
            );
            // Subjects keep their names (in the file and in their ciphertexts) and their keys.
            assert_eq!(r.subject_id("C-1").unwrap(), h);
            let again = r.subject_keys(&["C-1"]).unwrap().remove(0).unwrap();
            assert_eq!(
                (&again.0, again.1.expose()),
                (&subject.0, subject.1.expose())
            );
        }
        // And again, from the stored subject-naming key; shredding still finds the subject.
        let mut r = Keyring::open(&path, master("22")).unwrap();
        r.rewrap(master("33")).unwrap();
        assert_eq!(r.subject_id("C-1").unwrap(), h);
        let (shredded, had) = r.shred("C-1").unwrap();
        assert_eq!((shredded, had), (h, true));
        assert!(matches!(r.by_id(&subject.0), Err(KeyError::Shredded)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&hex::encode(k1.expose())), "no key in clear");
    }

    #[test]
    fn a_retired_version_is_gone_for_good_and_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let mut r = ring(d.path());
        let (id1, _) = r.active("email", Purpose::Encrypt).unwrap();
        assert!(matches!(r.retirable(&id1), Err(KeyError::NoRetire(..))));
        let id2 = r.rotate("email").unwrap();
        assert_eq!(r.retirable(&id1).unwrap(), ("email".to_string(), 1));
        assert!(matches!(r.retirable("email"), Err(KeyError::NoRetire(..))));
        assert!(matches!(r.retirable("email@9"), Err(KeyError::Unknown(_))));
        r.active("tok", Purpose::Token).unwrap();
        assert!(matches!(r.retirable("tok@1"), Err(KeyError::NoRetire(..))));
        r.retire(&id1).unwrap();
        // Reopened from the file: the version is retired, its material gone from the file.
        let r = &mut ring(d.path());
        assert!(matches!(r.by_id(&id1), Err(KeyError::Retired(..))));
        assert!(matches!(r.retire(&id1), Err(KeyError::Retired(..))));
        assert!(r.by_id(&id2).is_ok());
        let text = std::fs::read_to_string(d.path().join("keyring.json")).unwrap();
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            file["keys"]["email"]["versions"].get("1").is_none(),
            "{text}"
        );
        let info = r.list().into_iter().find(|k| k.name == "email").unwrap();
        assert_eq!((info.versions, info.retired), (vec![2], vec![1]));
        assert_eq!(r.rotate("email").unwrap(), "email@3");
        r.retire(&id2).unwrap();
        assert_eq!(r.rotate("email").unwrap(), "email@4");
    }

    #[test]
    fn keys_persist_rotate_and_stay_readable() {
        let d = tempfile::tempdir().unwrap();
        let mut r = ring(d.path());
        let (id1, k1) = r.active("email", Purpose::Encrypt).unwrap();
        assert_eq!(id1, "email@1");
        let id2 = r.rotate("email").unwrap();
        assert_eq!(id2, "email@2");
        let r2 = ring(d.path());
        assert_eq!(r2.by_id("email@1").unwrap().expose(), k1.expose());
        assert_ne!(r2.by_id("email@2").unwrap().expose(), k1.expose());
        let raw = std::fs::read_to_string(d.path().join("keyring.json")).unwrap();
        assert!(!raw.contains(&hex::encode(k1.expose())));
        r.active("acct", Purpose::Token).unwrap();
        assert!(matches!(r.rotate("acct"), Err(KeyError::NoRotate(..))));
        assert!(matches!(
            r.active("acct", Purpose::Fpe),
            Err(KeyError::Purpose(..))
        ));
    }

    #[test]
    fn wrong_master_and_tampering_are_named() {
        let d = tempfile::tempdir().unwrap();
        ring(d.path()).active("email", Purpose::Encrypt).unwrap();
        let other = Master::new(KeyBytes::from_hex(&"22".repeat(32)).unwrap(), "other");
        assert!(matches!(
            Keyring::open(&d.path().join("keyring.json"), other),
            Err(KeyError::WrongMaster(_))
        ));
        // Move version 1's wrapped key to a new name: the AAD binding refuses it.
        let p = d.path().join("keyring.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"email\"", "\"other\"");
        std::fs::write(&p, s).unwrap();
        assert!(matches!(
            ring(d.path()).by_id("other@1"),
            Err(KeyError::Tampered)
        ));
    }

    #[test]
    fn shredding_forgets_one_subject() {
        let d = tempfile::tempdir().unwrap();
        let mut r = ring(d.path());
        let ks = r.subject_keys(&["c-1", "c-2"]).unwrap();
        let (id1, _) = ks[0].clone().unwrap();
        let (id2, _) = ks[1].clone().unwrap();
        assert!(!id1.contains("c-1"));
        r.shred("c-1").unwrap();
        let r = ring(d.path());
        assert!(matches!(r.by_id(&id1), Err(KeyError::Shredded)));
        assert!(r.by_id(&id2).is_ok());
        let mut r = r;
        assert!(r.subject_keys(&["c-1"]).unwrap()[0].is_none());
    }

    #[test]
    fn malformed_keys_are_not_echoed() {
        let e = KeyBytes::from_hex("not-a-key-secret")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"));
    }
}
