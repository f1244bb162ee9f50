//! `sealtrail keys`, `decrypt`, `classify` and `quarantine`: the protection side of the CLI.
//! Every decryption and every key change is a ledger entry naming who did it.

use anyhow::{Context, Result, bail};
use sealtrail_ledger::entry::Event;
use sealtrail_protect::keyring::{KeyError, Keyring, Master};
use sealtrail_protect::ops::{Sealer, key_id_of};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::ledger_cmd::{self, LedgerArgs};

/// Opens the keyring of `home`. Runs may create a local master key (the embedded default);
/// commands that reveal data never do.
pub fn open_keyring(home: &Path, create_local: bool) -> Result<Keyring> {
    let (master, created) = Master::locate(home, create_local)?;
    if created {
        eprintln!(
            "note: created a local master key at {} (mode 0600) for this machine's keyring. For production, supply SEALTRAIL_MASTER_KEY or SEALTRAIL_MASTER_KEY_FILE and keep the master key away from the data.",
            master.origin
        );
    }
    Ok(Keyring::open(&home.join("keyring.json"), master)?)
}

pub fn shared_keyring(home: &Path) -> Result<Arc<Mutex<Keyring>>> {
    Ok(Arc::new(Mutex::new(open_keyring(home, true)?)))
}

/// Who is acting: `--by`, else `$USER`. Recorded in the ledger as a SHA-256 (checkable by
/// anyone who knows the name, without spelling names out in the ledger).
fn actor(by: &Option<String>) -> (String, [u8; 32]) {
    let name = by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let h = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    (name, h.into())
}

fn record(home: &Path, la: &LedgerArgs, events: Vec<Event>) -> Result<()> {
    let mut log = ledger_cmd::open_writer(home, la, sealtrail_ledger::log::OpenMode::FailClosed)
        .context("opening the ledger to record this access")?;
    log.append(events)
        .map_err(|e| anyhow::anyhow!("recording in the ledger: {e}"))?;
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum KeysCmd {
    /// List the keyring's keys (names, purposes, versions; never material).
    List,
    /// Add a new version of an encryption key; new writes use it, old ciphertexts stay readable.
    Rotate {
        name: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Destroy a data subject's key: their encrypted values can no longer be decrypted by anyone.
    Shred {
        /// The subject's id, as it appears in the policy's `subject:` column.
        subject: String,
        #[arg(long)]
        by: Option<String>,
    },
}

pub fn keys(home: &Path, la: &LedgerArgs, cmd: KeysCmd) -> Result<()> {
    let mut ring = open_keyring(home, false)?;
    match cmd {
        KeysCmd::List => {
            outln!("{:<24} {:<8} {:>6}  versions", "key", "purpose", "active");
            for k in ring.list() {
                let v: Vec<String> = k.versions.iter().map(u32::to_string).collect();
                outln!(
                    "{:<24} {:<8} {:>6}  {}",
                    k.name,
                    k.purpose.name(),
                    k.active,
                    v.join(",")
                );
            }
            let (live, shredded) = ring.subject_counts();
            outln!("subject keys: {live} live, {shredded} shredded");
            outln!("master key: {}", ring.master().origin);
        }
        KeysCmd::Rotate { name, by } => {
            let id = ring.rotate(&name)?;
            let (who, h) = actor(&by);
            record(
                home,
                la,
                vec![Event::KeyEvent {
                    key_id: id.clone(),
                    action: "rotate".into(),
                    actor: h,
                }],
            )?;
            outln!("{name}: new writes use {id} (rotated by {who}; recorded in the ledger)");
        }
        KeysCmd::Shred { subject, by } => {
            let (h, had) = ring.shred(&subject)?;
            let (who, a) = actor(&by);
            record(
                home,
                la,
                vec![Event::KeyEvent {
                    key_id: format!("subject:{h}"),
                    action: "shred".into(),
                    actor: a,
                }],
            )?;
            if had {
                outln!(
                    "shredded the key of subject:{h}; their encrypted values can no longer be decrypted (by {who}; recorded in the ledger)"
                );
            } else {
                outln!(
                    "subject:{h} had no key; it is marked shredded so none is ever created (by {who}; recorded in the ledger)"
                );
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    /// Ciphertexts (`st1:<key id>:...`); read one per line from stdin when none are given.
    values: Vec<String>,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
    /// Who is decrypting (default `$USER`).
    #[arg(long)]
    by: Option<String>,
    /// For `format: bare` ciphertexts, which carry no key id: the key as `env:NAME` or
    /// `file:PATH` (64 hex characters).
    #[arg(long)]
    key: Option<String>,
}

pub fn decrypt(home: &Path, la: &LedgerArgs, a: DecryptArgs) -> Result<()> {
    let values: Vec<String> = if a.values.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()?
    } else {
        a.values
    };
    if a.reason.trim().is_empty() {
        bail!("--reason must say why the values are needed");
    }
    let bare = match &a.key {
        Some(k) => {
            let r = match (k.strip_prefix("env:"), k.strip_prefix("file:")) {
                (Some(n), _) => sealtrail_spec::SecretRef::Env(n.into()),
                (_, Some(p)) => sealtrail_spec::SecretRef::File(p.into()),
                _ => bail!(
                    "--key must be `env:NAME` or `file:PATH`; key material never goes on a command line"
                ),
            };
            let s = r.resolve().map_err(anyhow::Error::msg)?;
            Some(Sealer::bare(
                &sealtrail_protect::keyring::KeyBytes::from_hex(s.expose())?,
            ))
        }
        None => None,
    };
    let ring = if bare.is_none() {
        Some(open_keyring(home, false)?)
    } else {
        None
    };
    // Decrypt everything first, so the ledger records exactly the keys used.
    let mut out = Vec::with_capacity(values.len());
    let mut used: BTreeMap<String, u64> = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        let v = v.trim();
        let plain = match (&bare, key_id_of(v.as_bytes())) {
            (Some(s), _) => {
                *used.entry(a.key.clone().unwrap_or_default()).or_default() += 1;
                s.open(v)
                    .map_err(|e| anyhow::anyhow!("value {}: {e}", i + 1))?
            }
            (None, Some(id)) => {
                let ring = ring.as_ref().context("no keyring")?;
                let key = match ring.by_id(id) {
                    Ok(k) => k,
                    Err(KeyError::Shredded) => {
                        bail!(
                            "value {}: the key of {id} was shredded; it cannot be decrypted",
                            i + 1
                        )
                    }
                    Err(e) => return Err(e.into()),
                };
                *used.entry(id.to_string()).or_default() += 1;
                Sealer::new(id, &key)
                    .open(v)
                    .map_err(|e| anyhow::anyhow!("value {}: {e}", i + 1))?
            }
            (None, None) => bail!(
                "value {} is not a sealtrail ciphertext (`st1:<key id>:...`); for `format: bare` values pass --key env:NAME",
                i + 1
            ),
        };
        out.push(String::from_utf8_lossy(&plain).into_owned());
    }
    let (_, h) = actor(&a.by);
    let mut events: Vec<Event> = used
        .keys()
        .map(|id| Event::KeyEvent {
            key_id: id.clone(),
            action: "decrypt".into(),
            actor: h,
        })
        .collect();
    events.push(Event::DataAccess {
        actor: h,
        dataset: "decrypt".into(),
        purpose: a.reason.clone(),
        rows: out.len() as u64,
    });
    record(home, la, events)?;
    for p in out {
        outln!("{p}");
    }
    Ok(())
}

/// `sealtrail classify SPEC`: each source column's tag, kind and confidence from a sample.
pub fn classify(spec: &Path, rows: usize) -> Result<()> {
    let p = sealtrail_spec::load(spec)?;
    outln!(
        "{:<12} {:<20} {:<12} {:<15} {:>5}  {:<22} evidence",
        "source",
        "column",
        "tag",
        "kind",
        "conf",
        "policy"
    );
    for s in &p.sources {
        let files = match &s.connector {
            sealtrail_spec::SourceConnector::Csv(o) => Some(&o.files),
            sealtrail_spec::SourceConnector::Jsonl(f)
            | sealtrail_spec::SourceConnector::Parquet(f) => Some(f),
            sealtrail_spec::SourceConnector::Postgres(_) => None,
        };
        let inputs: Vec<String> = match files {
            Some(f) => sealtrail_connectors::files::list(&f.pattern)?
                .into_iter()
                .map(|p| p.display().to_string())
                .collect(),
            None => Vec::new(),
        };
        let sample = sealtrail_engine::sample(s, &inputs, rows);
        let classes = sealtrail_protect::plan::classify_source(s, &sample);
        for (c, k) in s.columns.iter().zip(&classes) {
            let policy: Vec<&str> = s
                .protect
                .iter()
                .filter(|r| match &r.selector {
                    sealtrail_spec::Selector::Column(n) => *n == c.name,
                    sealtrail_spec::Selector::Kind(x) => Some(*x) == k.kind,
                    sealtrail_spec::Selector::Tag(t) => *t == k.tag,
                })
                .map(|r| r.action.name())
                .collect();
            outln!(
                "{:<12} {:<20} {:<12} {:<15} {:>5.2}  {:<22} {}",
                s.name,
                c.name,
                k.tag,
                k.kind.map_or("-".to_string(), |k| k.to_string()),
                k.confidence,
                if policy.is_empty() {
                    if k.tag.is_sensitive() && k.confidence >= sealtrail_protect::detect::THRESHOLD
                    {
                        "MISSING".to_string()
                    } else {
                        "-".to_string()
                    }
                } else {
                    policy.join(",")
                },
                k.evidence
            );
        }
    }
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum QuarantineCmd {
    /// List quarantined records: position and reasons, never their content.
    List {
        /// The quarantine folder (a Parquet quarantine sink).
        path: PathBuf,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show quarantined records' raw content (decrypted; recorded in the ledger).
    Show {
        path: PathBuf,
        /// Line numbers (text inputs) of the records to show.
        #[arg(long, num_args = 1.., required_unless_present = "key")]
        line: Vec<i64>,
        /// Keys (table inputs) of the records to show.
        #[arg(long, num_args = 1..)]
        key: Vec<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
}

struct QRow {
    input: String,
    line: Option<i64>,
    key: Option<String>,
    reason: String,
    reasons: String,
    raw: Vec<u8>,
}

fn read_quarantine(path: &Path) -> Result<Vec<QRow>> {
    use arrow::array::AsArray;
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading quarantine folder {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    for f in files {
        let file = std::fs::File::open(&f)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?;
        for b in reader {
            let b = b?;
            let col = |n: &str| b.column_by_name(n).context("not a sealtrail quarantine");
            let input = col("input")?.as_string::<i32>().clone();
            let line = col("line")?
                .as_primitive::<arrow::datatypes::Int64Type>()
                .clone();
            let key = col("key")?.as_string::<i32>().clone();
            let reason = col("reason")?.as_string::<i32>().clone();
            let reasons = col("reasons")?.as_string::<i32>().clone();
            let raw = col("raw")?.as_binary::<i32>().clone();
            for r in 0..b.num_rows() {
                out.push(QRow {
                    input: input.value(r).to_string(),
                    line: arrow::array::Array::is_valid(&line, r).then(|| line.value(r)),
                    key: arrow::array::Array::is_valid(&key, r).then(|| key.value(r).to_string()),
                    reason: reason.value(r).to_string(),
                    reasons: reasons.value(r).to_string(),
                    raw: raw.value(r).to_vec(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.input, a.line).cmp(&(&b.input, b.line)));
    Ok(out)
}

pub fn quarantine(home: &Path, la: &LedgerArgs, cmd: QuarantineCmd) -> Result<()> {
    match cmd {
        QuarantineCmd::List { path, limit } => {
            let rows = read_quarantine(&path)?;
            outln!("{:<40} {:>8}  {:<22} reasons", "input", "line", "reason");
            for q in rows.iter().take(limit) {
                outln!(
                    "{:<40} {:>8}  {:<22} {}",
                    q.input,
                    q.line.map_or("-".into(), |l| l.to_string()),
                    q.reason,
                    q.reasons
                );
            }
            outln!("{} quarantined record(s)", rows.len());
        }
        QuarantineCmd::Show {
            path,
            line,
            key,
            reason,
            by,
        } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why the raw records are needed");
            }
            let ring = open_keyring(home, false)?;
            let rows = read_quarantine(&path)?;
            let mut shown = Vec::new();
            let mut keys: BTreeMap<String, u64> = BTreeMap::new();
            let wanted = |q: &QRow| {
                q.line.is_some_and(|l| line.contains(&l))
                    || q.key.as_ref().is_some_and(|k| key.contains(k))
            };
            for q in rows.iter().filter(|q| wanted(q)) {
                let id = key_id_of(&q.raw)
                    .context("a quarantined record is not encrypted as sealtrail writes it")?;
                let plain = Sealer::new(id, &ring.by_id(id)?)
                    .open_bytes(&q.raw)
                    .map_err(|e| anyhow::anyhow!("{}:{:?}: {e}", q.input, q.line))?;
                *keys.entry(id.to_string()).or_default() += 1;
                shown.push((q, plain));
            }
            if shown.is_empty() {
                bail!(
                    "no quarantined record with line(s) {line:?} or key(s) {key:?}; see `sealtrail quarantine list`"
                );
            }
            let (_, h) = actor(&by);
            let mut events: Vec<Event> = keys
                .keys()
                .map(|id| Event::KeyEvent {
                    key_id: id.clone(),
                    action: "decrypt".into(),
                    actor: h,
                })
                .collect();
            events.push(Event::DataAccess {
                actor: h,
                dataset: format!("quarantine {}", path.display()),
                purpose: reason,
                rows: shown.len() as u64,
            });
            record(home, la, events)?;
            for (q, plain) in shown {
                outln!(
                    "{}:{} [{}] {}",
                    q.input,
                    q.line
                        .map(|l| l.to_string())
                        .or(q.key.clone())
                        .unwrap_or_else(|| "-".into()),
                    q.reasons,
                    String::from_utf8_lossy(&plain)
                );
            }
        }
    }
    Ok(())
}
