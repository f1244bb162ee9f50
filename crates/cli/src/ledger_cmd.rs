//! `sealtrail ledger ...`: create, verify, prove, list and benchmark the tamper-evident ledger.
//!
//! Files under the home folder (default `.sealtrail`):
//! ```text
//!   ledger/            the log, in the C2SP tlog-tiles layout (publishable as is)
//!   ledger.key         the checkpoint signing key (mode 0600, never printed)
//!   ledger.pub         the verifier key: give it to auditors
//!   ledger.key.next    during `ledger rotate-key` only: the new signing key
//! ```

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use sealtrail_ledger::entry::{Entry, Event, kind_name};
use sealtrail_ledger::log::{LedgerLog, LogError, LogWriter, OpenMode};
use sealtrail_ledger::merkle::{self, NodeSource};
use sealtrail_ledger::note::{Checkpoint, NoteSigner, NoteVerifier};
use sealtrail_ledger::pg::PgLedger;
use sealtrail_ledger::tiles::{self, TILE_WIDTH, TileKind, TileReader};
use sealtrail_ledger::verify::{self, VerifyError};
use std::path::{Path, PathBuf};

/// Exit codes of `ledger verify`.
pub mod exit {
    pub const TAMPERED: i32 = 4;
    pub const UNREADABLE: i32 = 3;
    pub const STALE: i32 = 5;
}

/// Where the ledger lives: the tiles folder `<home>/ledger/` (default) or PostgreSQL.
#[derive(clap::Args, Debug, Clone)]
pub struct LedgerArgs {
    /// Keep the ledger in PostgreSQL (`postgres://...`) instead of `<home>/ledger/`, so writers
    /// on several machines share it. The signing key stays in `<home>/ledger.key` on each.
    #[arg(
        long,
        env = "SEALTRAIL_LEDGER_URL",
        hide_env_values = true,
        global = true
    )]
    pub ledger_url: Option<String>,
    /// Schema of the ledger tables in PostgreSQL.
    #[arg(
        long,
        env = "SEALTRAIL_LEDGER_SCHEMA",
        global = true,
        default_value = sealtrail_ledger::pg::DEFAULT_SCHEMA
    )]
    pub ledger_schema: String,
}

impl Default for LedgerArgs {
    fn default() -> Self {
        Self {
            ledger_url: None,
            ledger_schema: sealtrail_ledger::pg::DEFAULT_SCHEMA.into(),
        }
    }
}

/// This process, as named in the rows a PostgreSQL ledger writer inserts.
fn writer_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("sealtrail@{host}:{}", std::process::id())
}

impl LedgerArgs {
    fn pg(&self, signer: Option<NoteSigner>) -> Result<Option<PgLedger>> {
        self.ledger_url
            .as_deref()
            .map(|url| PgLedger::connect(url, &self.ledger_schema, signer, &writer_name()))
            .transpose()
            .map_err(anyhow::Error::from)
    }

    /// A folder to read the ledger from: `<home>/ledger/`, or a fresh export of the PostgreSQL
    /// ledger (kept alive by the returned guard).
    pub(crate) fn readable(&self, home: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
        match self.pg(None)? {
            None => Ok((paths(home).dir, None)),
            Some(l) => {
                let t = tempfile::tempdir()?;
                let e = l.export(t.path())?;
                if e.first_gap.is_some() || e.beyond_checkpoint > 0 {
                    bail!(
                        "the PostgreSQL ledger was changed outside sealtrail; run `sealtrail ledger verify` for the diagnosis"
                    );
                }
                Ok((t.path().to_path_buf(), Some(t)))
            }
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCmd {
    /// Create the ledger and its signing key (the key is written with mode 0600, never shown).
    Init {
        /// Checkpoint origin: a name for this log, e.g. `bank.example/sealtrail/prod`.
        #[arg(long, default_value = "sealtrail.local/ledger")]
        origin: String,
        /// With --ledger-url: let this existing database role append (SELECT and INSERT only;
        /// never UPDATE, DELETE or TRUNCATE).
        #[arg(long)]
        writer_role: Option<String>,
    },
    /// Recompute everything from the stored bytes and check it: signature, entries, chain,
    /// tiles, root, and consistency with the last checkpoint this verifier accepted.
    /// Exit 0: verified; 4: tampered; 3: could not read; 5: older than --max-age.
    Verify {
        /// Verifier key (`name+id+key`), or a file holding it (default `<home>/ledger.pub`).
        #[arg(long)]
        key: Option<String>,
        /// The verifier's own memory of the last accepted checkpoint (default: a file per log
        /// under `~/.sealtrail-verifier/`).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also require the checkpoint to have been signed within this many minutes (a live
        /// writer re-signs at least that often, see `ledger sign --every`). Exit 5 when older.
        #[arg(long)]
        max_age: Option<u64>,
    },
    /// Sign a fresh checkpoint of the current tree, stamped with the time; with --every, keep
    /// doing so, so an idle ledger still proves it is alive and unchanged.
    Sign {
        /// Re-sign every this many minutes until stopped.
        #[arg(long)]
        every: Option<u64>,
    },
    /// Write the PostgreSQL ledger as a tlog-tiles folder (for publishing, or for any
    /// tlog-tiles client). The tiles folder ledger is already in that layout.
    Export {
        /// An empty or new folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print an inclusion proof for an entry, or a consistency proof between two tree sizes.
    Prove {
        /// The entry's sequence number.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        entry: Option<u64>,
        /// Older tree size.
        #[arg(long, requires = "to")]
        from: Option<u64>,
        /// Newer tree size (at most the current one).
        #[arg(long, requires = "from")]
        to: Option<u64>,
    },
    /// List entries, optionally filtered.
    Show {
        /// Only entries of this type (run_started, batch_committed, run_ended, ...).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only entries of this run.
        #[arg(long)]
        run: Option<String>,
        /// Only entries of this pipeline: those naming it, and those of its runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many entries (the latest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `text`: a line an entry; `json`: one document, `{"checkpoint": {"origin", "size",
        /// "root"}, "entries": [{"seq", "time", "prev", "type", ...the entry's fields}]}`,
        /// hashes in lowercase hex (for a SIEM or an auditor's scripts). Entries are read up to
        /// the signed checkpoint; `ledger verify` checks them against it.
        #[arg(long, value_enum, default_value = "text")]
        format: crate::Format,
    },
    /// Discard an unacknowledged tail left by a crash, recording the discard as an entry.
    Recover,
    /// Replace the checkpoint signing key (`ledger.key` leaked, or due for renewal). The log
    /// records the hand-over in a `signer_rotated` entry whose checkpoint both keys sign, so
    /// verifiers holding the old verifier key follow it to the new one; `ledger.pub` becomes
    /// the new key and the old signing key is deleted, and it can no longer sign for the log.
    /// Stop runs first: a writer still holding the old key fails at its next append (and
    /// resumes when run again). Interrupted, run it again: it finishes with the same new key.
    RotateKey {
        /// Who rotates (recorded as a SHA-256 of the name; default `$USER`).
        #[arg(long)]
        by: Option<String>,
    },
    /// Append synthetic entries with durable group commits and print entries/s.
    Bench {
        /// Number of entries to append.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Entries per group commit.
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        /// Approximate entry size in bytes.
        #[arg(long, default_value_t = 256)]
        payload: usize,
        /// Then generate and verify this many inclusion proofs (random entries).
        #[arg(long, default_value_t = 0)]
        proofs: u64,
    },
}

pub struct Paths {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub public: PathBuf,
}

pub fn paths(home: &Path) -> Paths {
    Paths {
        dir: home.join("ledger"),
        key: home.join("ledger.key"),
        public: home.join("ledger.pub"),
    }
}

/// Creates the signing key if missing; returns the signer. Processes starting at once on a
/// new home agree on one key (the first to create it), and the public key file is written
/// whole whenever it is missing.
pub fn init(home: &Path, origin: &str) -> Result<NoteSigner> {
    let p = paths(home);
    let signer = if p.key.exists() {
        load_signer(home)?
    } else {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let signer = NoteSigner::from_seed(origin, &random_seed()).map_err(|e| anyhow!("{e}"))?;
        let created = sealtrail_core::secret::create_private_once(
            &p.key,
            signer.to_secret_string().as_bytes(),
        )
        .with_context(|| format!("creating {}", p.key.display()))?;
        if created { signer } else { load_signer(home)? }
    };
    if !p.public.exists() {
        let text = format!("{}\n", signer.verifier().to_key_string());
        let tmp = home.join(format!(".ledger.pub.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &p.public))
            .with_context(|| format!("writing {}", p.public.display()))?;
    }
    Ok(signer)
}

pub fn load_signer(home: &Path) -> Result<NoteSigner> {
    let p = paths(home).key;
    if !p.exists() {
        bail!(
            "no ledger key at {}; create it with `sealtrail ledger init`",
            p.display()
        );
    }
    // The parse error never includes the key text.
    load_key_file(&p)
}

pub(crate) fn load_verifier(home: &Path, key: Option<&str>) -> Result<NoteVerifier> {
    let text = match key {
        Some(k) if k.contains('+') && !Path::new(k).exists() => k.to_string(),
        Some(k) => std::fs::read_to_string(k).with_context(|| format!("reading {k}"))?,
        None => {
            let p = paths(home).public;
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?
        }
    };
    NoteVerifier::parse(text.trim()).map_err(|e| anyhow!("verifier key: {e}"))
}

/// Opens the ledger for writing: the tiles folder, created (with its key) on first use, or the
/// PostgreSQL ledger, which `sealtrail ledger init --ledger-url ...` must have created.
pub fn open_writer(home: &Path, la: &LedgerArgs, mode: OpenMode) -> Result<Box<dyn LedgerLog>> {
    if la.ledger_url.is_some() {
        let signer = load_signer(home)?;
        if let Some(l) = la.pg(Some(signer))? {
            return Ok(Box::new(l));
        }
    }
    Ok(Box::new(open_file_writer(home, mode)?))
}

/// Opens the tiles folder for writing, creating it (and its key) on first use.
pub fn open_file_writer(home: &Path, mode: OpenMode) -> Result<LogWriter> {
    let signer = init(home, "sealtrail.local/ledger")?;
    let origin = signer.name().to_string();
    LogWriter::open(&paths(home).dir, &origin, signer, mode).map_err(anyhow::Error::from)
}

fn b64(h: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

fn default_state(v: &NoteVerifier) -> PathBuf {
    let base = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let id = sealtrail_core::sha256_hex(v.to_key_string().as_bytes());
    base.join(".sealtrail-verifier")
        .join(format!("{}.seen", &id[..16]))
}

fn parse_seen(s: &str) -> Option<verify::Seen> {
    let (size, root) = s.trim().split_once(' ')?;
    let root = base64::engine::general_purpose::STANDARD
        .decode(root)
        .ok()?;
    Some((
        size.parse().ok()?,
        <[u8; 32]>::try_from(root.as_slice()).ok()?,
    ))
}

/// Result of `ledger verify`, for the exit code.
pub enum Outcome {
    Verified,
    Tampered,
    Unreadable,
    Stale,
}

pub fn verify_cmd(
    home: &Path,
    la: &LedgerArgs,
    key: Option<&str>,
    state: Option<PathBuf>,
    threads: usize,
    max_age: Option<u64>,
) -> Result<Outcome> {
    let v = load_verifier(home, key)?;
    let state = state.unwrap_or_else(|| default_state(&v));
    // No state file: first verification. A damaged one is an error, not a fresh start: ignoring
    // it would silently switch off the check against rewritten history.
    let seen = match std::fs::read_to_string(&state) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read the verifier state {}: {e}", state.display()),
        Ok(s) => Some(parse_seen(&s).ok_or_else(|| {
            anyhow!(
                "the verifier state {} is damaged (expected `<size> <base64 root>`); restore it, or delete it to trust the current log from scratch",
                state.display()
            )
        })?),
    };
    let t = std::time::Instant::now();
    let result = match la.pg(None) {
        Ok(None) => verify::verify(&paths(home).dir, &v, seen, threads),
        Ok(Some(l)) => {
            let tmp = tempfile::tempdir()?;
            l.verify(tmp.path(), &v, seen, threads)
        }
        Err(e) => Err(VerifyError::Unreadable(format!("{e:#}"))),
    };
    match result {
        Ok(ok) => {
            let secs = t.elapsed().as_secs_f64();
            outln!(
                "verified: {} entries, root {}, signed by {} ({:.0} entries/s)",
                ok.size,
                b64(&ok.root),
                ok.signer.who(),
                ok.size as f64 / secs.max(1e-9)
            );
            if !ok.handovers.is_empty() {
                outln!(
                    "the log handed its signing over from the given key (entries {}); the key in charge now is {}: verify with it from now on",
                    ok.handovers
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    ok.signer.to_key_string()
                );
            }
            if let Some(parent) = state.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&state, format!("{} {}\n", ok.size, b64(&ok.root)))
                .with_context(|| format!("saving the verifier state {}", state.display()))?;
            outln!("{}", ok.checkpoint.trim_end());
            if let Some(minutes) = max_age {
                let signed = ok
                    .signer
                    .open(&ok.checkpoint)
                    .ok()
                    .and_then(|t| Checkpoint::parse(t).ok())
                    .and_then(|cp| {
                        cp.time()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    });
                let age = signed.map(|t| chrono::Utc::now().signed_duration_since(t));
                match age {
                    Some(a) if a.num_seconds() <= (minutes as i64) * 60 => {}
                    Some(a) => {
                        outln!(
                            "STALE: the checkpoint was signed {} minutes ago (limit {minutes}); is the writer re-signing (`sealtrail ledger sign --every`)?",
                            a.num_minutes()
                        );
                        return Ok(Outcome::Stale);
                    }
                    None => {
                        outln!("STALE: the checkpoint carries no signing time");
                        return Ok(Outcome::Stale);
                    }
                }
            }
            Ok(Outcome::Verified)
        }
        Err(VerifyError::Tampered(t)) => {
            outln!("TAMPERED: {t}");
            Ok(Outcome::Tampered)
        }
        Err(VerifyError::Unreadable(e)) => {
            outln!("could not read the ledger: {e}");
            Ok(Outcome::Unreadable)
        }
    }
}

/// `ledger rotate-key`. The new key is made durable (`ledger.key.next`) before the log names
/// it, the log's hand-over is one commit (a checkpoint signed by both keys), and only then does
/// the new key replace `ledger.key`: interrupted anywhere, a second run finishes the same
/// rotation (after `ledger recover` when a crash tore the append itself).
fn rotate_key(home: &Path, la: &LedgerArgs, by: &Option<String>) -> Result<i32> {
    let p = paths(home);
    let old = load_signer(home)?;
    let next = home.join("ledger.key.next");
    let new = if next.exists() {
        load_key_file(&next)?
    } else {
        let fresh =
            NoteSigner::from_seed(old.name(), &random_seed()).map_err(|e| anyhow!("{e}"))?;
        let created =
            sealtrail_core::secret::create_private_once(&next, fresh.to_secret_string().as_bytes())
                .with_context(|| format!("creating {}", next.display()))?;
        if created {
            fresh
        } else {
            load_key_file(&next)?
        }
    };
    if new.name() != old.name() {
        bail!(
            "{} is a key for `{}`, not for this ledger's origin `{}`; remove it and run the command again",
            next.display(),
            new.name(),
            old.name()
        );
    }
    let (new_pub, old_pub) = (new.verifier(), old.verifier());
    let (_, actor) = crate::protect_cmd::actor(by);
    // Done already (the checkpoint is the new key's) when an earlier run stopped after the
    // hand-over committed.
    let current = match la.pg(None)? {
        Some(l) => l.checkpoint()?,
        None => std::fs::read_to_string(p.dir.join("checkpoint")).ok(),
    };
    if current.is_some_and(|n| new_pub.signed_last(&n)) {
        outln!(
            "finishing a rotation that an earlier run left half done: the log already hands the signing over to {}",
            new_pub.who()
        );
    } else {
        let a = if la.ledger_url.is_some() {
            la.pg(Some(old))?
                .ok_or_else(|| anyhow!("--ledger-url is required here"))?
                .rotate_signer(new, actor)?
        } else {
            LogWriter::open(&p.dir, old_pub.name(), old, OpenMode::FailClosed)?
                .rotate_signer(new, actor)?
        };
        outln!(
            "entry {} hands the signing over from {} to {}; the checkpoint of the tree ending with it is signed by both",
            a.first_seq,
            old_pub.who(),
            new_pub.who()
        );
    }
    // The new key replaces the old one (a rename: one or the other, never neither).
    std::fs::rename(&next, &p.key)
        .and_then(|()| std::fs::File::open(home)?.sync_all())
        .with_context(|| format!("putting the new key in place of {}", p.key.display()))?;
    let tmp = home.join(format!(".ledger.pub.{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", new_pub.to_key_string()))
        .and_then(|()| std::fs::rename(&tmp, &p.public))
        .with_context(|| format!("writing {}", p.public.display()))?;
    outln!(
        "new verifier key, now in {} (give it to auditors): {}",
        p.public.display(),
        new_pub.to_key_string()
    );
    outln!(
        "verifiers holding the old key still verify the log: they follow the hand-over to the new one"
    );
    outln!(
        "the old signing key is deleted from {}; any copy of it (a backup, another writer machine) can no longer sign for this log{}",
        p.key.display(),
        if la.ledger_url.is_some() {
            ": copy the new ledger.key and ledger.pub to every writer machine"
        } else {
            ""
        }
    );
    Ok(0)
}

fn random_seed() -> zeroize::Zeroizing<[u8; 32]> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut *seed);
    seed
}

/// Reads a signing key file; errors name the file, never the key.
fn load_key_file(p: &Path) -> Result<NoteSigner> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
    );
    NoteSigner::parse(&text)
        .map_err(|e| anyhow!("the ledger key {} is not valid: {e}", p.display()))
}

/// Runs a ledger subcommand; returns the process exit code.
pub fn run(home: &Path, la: &LedgerArgs, cmd: LedgerCmd) -> Result<i32> {
    match cmd {
        LedgerCmd::Init {
            origin,
            writer_role,
        } if la.ledger_url.is_some() => {
            // Each writer machine holds a copy of the key; an existing one is reused.
            let signer = init(home, &origin)?;
            let l = la
                .pg(Some(signer))?
                .ok_or_else(|| anyhow!("--ledger-url is required here"))?;
            l.init()?;
            outln!(
                "the ledger is ready in PostgreSQL, schema {}",
                la.ledger_schema
            );
            if let Some(role) = writer_role {
                l.grant_writer(&role)?;
                outln!("role {role} may append (SELECT, INSERT); it cannot change or delete");
            }
            outln!(
                "signing key: {} (mode 0600; copy it to each writer machine, keep it secret)",
                paths(home).key.display()
            );
            outln!(
                "verifier key (give it to auditors): {}",
                std::fs::read_to_string(paths(home).public)?.trim()
            );
            Ok(0)
        }
        LedgerCmd::Init { origin, .. } => {
            if paths(home).key.exists() {
                bail!(
                    "a ledger key already exists at {}; refusing to replace it",
                    paths(home).key.display()
                );
            }
            let signer = init(home, &origin)?;
            let mut w = LogWriter::open(&paths(home).dir, &origin, signer, OpenMode::FailClosed)?;
            w.sign_checkpoint()?;
            outln!("created the ledger in {}", paths(home).dir.display());
            outln!(
                "signing key: {} (mode 0600; keep it secret)",
                paths(home).key.display()
            );
            outln!(
                "verifier key (give it to auditors): {}",
                std::fs::read_to_string(paths(home).public)?.trim()
            );
            Ok(0)
        }
        LedgerCmd::Verify {
            key,
            state,
            threads,
            max_age,
        } => Ok(
            match verify_cmd(home, la, key.as_deref(), state, threads, max_age)? {
                Outcome::Verified => 0,
                Outcome::Tampered => exit::TAMPERED,
                Outcome::Unreadable => exit::UNREADABLE,
                Outcome::Stale => exit::STALE,
            },
        ),
        LedgerCmd::Sign { every } => {
            let mut w = open_writer(home, la, OpenMode::FailClosed)?;
            loop {
                let note = w.resign()?;
                outln!("{}", note.trim_end());
                let Some(minutes) = every else { break };
                std::thread::sleep(std::time::Duration::from_secs(minutes.max(1) * 60));
            }
            Ok(0)
        }
        LedgerCmd::Export { out } => {
            let Some(l) = la.pg(None)? else {
                bail!(
                    "{} is already a tlog-tiles folder; publish it as is (export is for --ledger-url)",
                    paths(home).dir.display()
                );
            };
            let e = l.export(&out)?;
            outln!(
                "exported {} entries (checkpoint size {}) to {}",
                e.entries,
                e.size,
                out.display()
            );
            if e.first_gap.is_some() || e.beyond_checkpoint > 0 {
                outln!("the table was changed outside sealtrail; run `sealtrail ledger verify`");
                return Ok(exit::TAMPERED);
            }
            Ok(0)
        }
        LedgerCmd::RotateKey { by } => rotate_key(home, la, &by),
        LedgerCmd::Recover if la.ledger_url.is_some() => {
            outln!(
                "nothing to recover: a PostgreSQL ledger appends each group in one transaction, so a crash leaves no torn tail"
            );
            Ok(0)
        }
        LedgerCmd::Recover => {
            if !paths(home).key.exists() {
                bail!(
                    "no ledger key at {}; nothing to recover",
                    paths(home).key.display()
                );
            }
            match open_file_writer(home, OpenMode::FailClosed) {
                Ok(w) => outln!(
                    "nothing to recover: the ledger has {} entries and no torn tail",
                    w.size()
                ),
                Err(e)
                    if matches!(
                        e.downcast_ref::<LogError>(),
                        Some(LogError::TornTail { .. })
                    ) =>
                {
                    let w = open_file_writer(home, OpenMode::Recover)?;
                    outln!(
                        "recovered: discarded the unacknowledged tail; the discard is entry {}",
                        w.size() - 1
                    );
                }
                Err(e) => return Err(e),
            }
            Ok(0)
        }
        LedgerCmd::Prove { entry, from, to } => {
            let v = load_verifier(home, None)?;
            let (dir, _export) = la.readable(home)?;
            let (cp, note) = sealtrail_ledger::log::read_checkpoint(&dir, &v)?
                .ok_or_else(|| anyhow!("the ledger has no checkpoint"))?;
            let r = TileReader::new(&dir, cp.size);
            if let Some(i) = entry {
                if i >= cp.size {
                    bail!("entry {i} is not in the ledger (size {})", cp.size);
                }
                let leaf = r.node(0, i)?;
                let proof = merkle::inclusion_proof(&r, i, cp.size)?;
                merkle::verify_inclusion(i, cp.size, &leaf, &proof, &cp.root)?;
                let out = serde_json::json!({
                    "type": "inclusion",
                    "index": i,
                    "tree_size": cp.size,
                    "leaf_hash": b64(&leaf),
                    "proof": proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
                    "root": b64(&cp.root),
                    "checkpoint": note,
                });
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else if let (Some(a), Some(b)) = (from, to) {
                if a == 0 || a > b || b > cp.size {
                    bail!("need 0 < --from <= --to <= {} (the current size)", cp.size);
                }
                let rb = TileReader::new(&dir, b);
                let ra = TileReader::new(&dir, a);
                let root_a = merkle::subtree(&ra, 0, a)?;
                let root_b = merkle::subtree(&rb, 0, b)?;
                let proof = merkle::consistency_proof(&rb, a, b)?;
                merkle::verify_consistency(a, b, &root_a, &root_b, &proof)?;
                let out = serde_json::json!({
                    "type": "consistency",
                    "size1": a,
                    "size2": b,
                    "root1": b64(&root_a),
                    "root2": b64(&root_b),
                    "proof": proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
                });
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                bail!("pass --entry N, or --from A --to B");
            }
            Ok(0)
        }
        LedgerCmd::Show {
            kind,
            run,
            pipeline,
            since,
            until,
            limit,
            format,
        } => {
            let v = load_verifier(home, None)?;
            let (dir, _export) = la.readable(home)?;
            let (cp, _) = sealtrail_ledger::log::read_checkpoint(&dir, &v)?
                .ok_or_else(|| anyhow!("the ledger has no checkpoint"))?;
            let parse_t = |s: &Option<String>| -> Result<Option<i64>> {
                s.as_deref()
                    .map(|s| {
                        chrono::DateTime::parse_from_rfc3339(s)
                            .map(|t| t.timestamp_micros())
                            .map_err(|e| anyhow!("`{s}` is not an RFC 3339 time: {e}"))
                    })
                    .transpose()
            };
            let (since, until) = (parse_t(&since)?, parse_t(&until)?);
            if let Some(k) = &kind
                && !sealtrail_ledger::entry::KINDS
                    .filter_map(kind_name)
                    .any(|n| n == k)
            {
                bail!(
                    "unknown entry type `{k}`; types: {}",
                    sealtrail_ledger::entry::KINDS
                        .filter_map(kind_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let mut shown = std::collections::VecDeque::new();
            // The runs of `pipeline` met so far: a run's entries follow its `run_started`.
            let mut runs_of = std::collections::HashSet::new();
            each_entry_from(&dir, 0, cp.size, |e| {
                if let Some(p) = &pipeline {
                    if e.event.pipeline() == Some(p.as_str())
                        && let Some(r) = e.event.run_id()
                    {
                        runs_of.insert(r.to_string());
                    }
                    let of_it = e.event.pipeline() == Some(p.as_str())
                        || e.event.run_id().is_some_and(|r| runs_of.contains(r));
                    if !of_it {
                        return;
                    }
                }
                if kind.as_deref().is_some_and(|k| k != e.event.name())
                    || run.as_deref().is_some_and(|r| e.event.run_id() != Some(r))
                    || since.is_some_and(|s| e.time_micros < s)
                    || until.is_some_and(|u| e.time_micros >= u)
                {
                    return;
                }
                shown.push_back(e);
                if shown.len() > limit {
                    shown.pop_front();
                }
            })?;
            if format == crate::Format::Json {
                let entries: Vec<serde_json::Value> = shown
                    .iter()
                    .map(|e| {
                        let mut v = serde_json::json!({
                            "seq": e.seq,
                            "time": time_of(e),
                            "prev": hex::encode(e.prev),
                        });
                        if let (Some(v), Ok(serde_json::Value::Object(fields))) =
                            (v.as_object_mut(), serde_json::to_value(&e.event))
                        {
                            v.extend(fields);
                        }
                        v
                    })
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "checkpoint": {
                            "origin": cp.origin,
                            "size": cp.size,
                            "root": base64::engine::general_purpose::STANDARD.encode(cp.root),
                        },
                        "entries": entries,
                    }))?
                );
                return Ok(0);
            }
            for e in shown {
                outln!("{}", describe(&e));
            }
            Ok(0)
        }
        LedgerCmd::Bench {
            entries,
            batch,
            payload,
            proofs,
        } => {
            if proofs > 0 && la.ledger_url.is_some() {
                bail!("--proofs measures proofs from tiles on disk; use it without --ledger-url");
            }
            let mut w = open_writer(home, la, OpenMode::FailClosed)?;
            let pad = "x".repeat(payload.saturating_sub(100));
            let t = std::time::Instant::now();
            let mut done = 0u64;
            while done < entries {
                let n = (entries - done).min(batch as u64);
                let evs = (0..n)
                    .map(|i| Event::RunFailed {
                        run_id: format!("bench-{}", done + i),
                        error: pad.clone(),
                    })
                    .collect();
                let a = w.append(evs)?;
                done += n;
                // Acknowledged: durable and signed. The crash tests read these lines.
                outln!("acknowledged {}", a.size);
            }
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "appended {entries} entries of ~{payload} B in {secs:.2} s: {:.0} entries/s (group commit of {batch})",
                entries as f64 / secs
            );
            if proofs > 0 {
                drop(w);
                let w = open_file_writer(home, OpenMode::FailClosed)?;
                let (size, root) = (w.size(), w.root());
                let r = TileReader::new(&paths(home).dir, size);
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                let mut made = Vec::with_capacity(proofs as usize);
                let t = std::time::Instant::now();
                for _ in 0..proofs {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = x % size;
                    made.push((i, r.node(0, i)?, merkle::inclusion_proof(&r, i, size)?));
                }
                let gen_secs = t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                for (i, leaf, p) in &made {
                    merkle::verify_inclusion(*i, size, leaf, p, &root)?;
                }
                let ver_secs = t.elapsed().as_secs_f64();
                eprintln!(
                    "inclusion proofs over {size} entries: generated {:.0}/s (from tiles on disk), verified {:.0}/s",
                    proofs as f64 / gen_secs,
                    proofs as f64 / ver_secs
                );
            }
            Ok(0)
        }
    }
}

/// An entry's time, RFC 3339 to the millisecond.
/// `name+id` of a verifier key text (`name+id+base64`), how messages name keys.
fn key_who(key: &str) -> String {
    key.splitn(3, '+').take(2).collect::<Vec<_>>().join("+")
}

fn time_of(e: &Entry) -> String {
    chrono::DateTime::from_timestamp_micros(e.time_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn describe(e: &Entry) -> String {
    let t = time_of(e);
    let body = match &e.event {
        Event::RunStarted {
            run_id,
            pipeline,
            resumed,
            inputs,
            ..
        } => format!(
            "run {run_id} pipeline {pipeline} resumed={resumed} inputs={}",
            inputs.len()
        ),
        Event::RunEnded {
            run_id,
            rows_in,
            rows_loaded,
            rows_quarantined,
        } => {
            format!("run {run_id} in={rows_in} loaded={rows_loaded} quarantined={rows_quarantined}")
        }
        Event::RunAbandoned {
            run_id,
            rows_in,
            rows_loaded,
            rows_quarantined,
        } => format!(
            "run {run_id} given up; its committed batches stay: in={rows_in} loaded={rows_loaded} quarantined={rows_quarantined}"
        ),
        Event::BatchCommitted {
            run_id,
            source,
            batch,
            rows_in,
            rows_loaded,
            rows_quarantined,
            input_root,
            outputs,
            ..
        } => format!(
            "run {run_id} {source}#{batch} in={rows_in} loaded={rows_loaded} quarantined={rows_quarantined} input_root={} sinks={}",
            &hex::encode(input_root)[..16],
            outputs
                .iter()
                .map(|o| format!("{}:{}:{}", o.sink, o.rows, &hex::encode(o.root)[..16]))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Event::RecordsQuarantined {
            run_id,
            batch,
            by_reason,
        } => format!(
            "run {run_id} batch {batch} {}",
            by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Event::RunFailed { run_id, error } => format!("run {run_id} error: {error}"),
        Event::SignerRotated {
            old_key,
            new_key,
            actor,
        } => format!(
            "checkpoint signing handed over from {} to {} by actor {}",
            key_who(old_key),
            key_who(new_key),
            &hex::encode(actor)[..16]
        ),
        Event::Recovery {
            discarded_entries,
            note,
            ..
        } => format!("discarded {discarded_entries} entries: {note}"),
        Event::KeyEvent {
            key_id,
            action,
            actor,
        } => format!(
            "key {key_id} {action} by actor {}",
            &hex::encode(actor)[..16]
        ),
        Event::RecordsRepaired { run_id, pairs } => format!(
            "run {run_id}: {} replayed record(s) repair quarantined ones",
            pairs.len()
        ),
        Event::OutputsRevised {
            run_id,
            source,
            batch,
            sink,
            rows,
            old_root,
            new_root,
            action,
            ..
        } => format!(
            "run {run_id} {source}#{batch} sink {sink}: {rows} rows rewritten ({action}) root {} -> {}",
            &hex::encode(old_root)[..16],
            &hex::encode(new_root)[..16]
        ),
        Event::ReplayDeclared {
            pipeline,
            spec_sha256,
            records_sha256,
            replay_spec_sha256,
        } => format!(
            "pipeline {pipeline}: repaired records {} replayed under spec {} as spec version {}",
            &hex::encode(records_sha256)[..16],
            &hex::encode(spec_sha256)[..16],
            &hex::encode(replay_spec_sha256)[..16]
        ),
        Event::DataAccess {
            actor,
            dataset,
            purpose,
            rows,
        } => format!(
            "{dataset}: {rows} item(s) read by actor {}, purpose {purpose:?}",
            &hex::encode(actor)[..16]
        ),
        Event::SpecRegistered {
            pipeline,
            spec_sha256,
        } => format!(
            "pipeline {pipeline} spec {}",
            &hex::encode(spec_sha256)[..16]
        ),
        Event::Approval {
            pipeline,
            spec_sha256,
            approver,
        } => format!(
            "pipeline {pipeline} spec {} approved by {}",
            &hex::encode(spec_sha256)[..16],
            &hex::encode(approver)[..16]
        ),
        Event::Retention {
            dataset,
            action,
            rows,
        } => format!("{dataset}: {rows} row(s) {action}"),
        Event::Erasure { subject, keys } => format!(
            "subject {}: {keys} key(s) shredded",
            &hex::encode(subject)[..16]
        ),
    };
    format!("{:>8}  {t}  {:<19}  {body}", e.seq, e.event.name())
}

/// Calls `f` with each entry of the ledger folder `dir` from entry `from` up to `size`, in
/// order (the bundles before `from` are not read).
fn each_entry_from(dir: &Path, from: u64, size: u64, mut f: impl FnMut(Entry)) -> Result<()> {
    for id in tiles::tiles_for(TileKind::Entries, size) {
        if (id.index + 1) * TILE_WIDTH <= from {
            continue;
        }
        let p = dir.join(id.rel_path());
        let b = std::fs::read(&p).or_else(|_| {
            std::fs::read(
                dir.join(
                    tiles::TileId {
                        width: TILE_WIDTH as u16,
                        ..id
                    }
                    .rel_path(),
                ),
            )
        })?;
        let list = tiles::parse_bundle(&b).ok_or_else(|| {
            anyhow!(
                "{} is damaged; run `sealtrail ledger verify`",
                id.rel_path()
            )
        })?;
        for (i, e) in list.into_iter().take(usize::from(id.width)).enumerate() {
            if id.index * TILE_WIDTH + i as u64 >= from {
                f(Entry::decode(e)?);
            }
        }
    }
    Ok(())
}

/// The runs of `pipeline` the ledger records from entry `from` on: the entry of each
/// `run_started` (a resumed run's every start) and its run id, in order. None when there is no
/// ledger yet. Reads the ledger's entries from `from` to its end.
pub fn runs_started_since(
    home: &Path,
    la: &LedgerArgs,
    pipeline: &str,
    from: u64,
) -> Result<Option<Vec<(u64, String)>>> {
    if let Some(l) = la.pg(None)? {
        // Read in place: only the entries since `from`, not an export of the whole ledger.
        return Ok(Some(
            l.runs_started_from(from)?
                .into_iter()
                .filter(|(_, _, p)| p == pipeline)
                .map(|(seq, run, _)| (seq, run))
                .collect(),
        ));
    }
    if !paths(home).dir.join("checkpoint").exists() {
        return Ok(None);
    }
    let v = load_verifier(home, None)?;
    let (dir, _export) = la.readable(home)?;
    let Some((cp, _)) = sealtrail_ledger::log::read_checkpoint(&dir, &v)? else {
        return Ok(None);
    };
    let mut runs = Vec::new();
    each_entry_from(&dir, from, cp.size, |e| {
        if let Event::RunStarted {
            run_id,
            pipeline: p,
            ..
        } = &e.event
            && p == pipeline
        {
            runs.push((e.seq, run_id.clone()));
        }
    })?;
    Ok(Some(runs))
}
