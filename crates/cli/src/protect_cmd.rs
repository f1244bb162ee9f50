//! `sealtrail keys`, `decrypt`, `classify` and `quarantine`: the protection side of the CLI.
//! Every decryption and every key change is a ledger entry naming who did it.

use anyhow::{Context, Result, bail};
use sealtrail_ledger::entry::Event;
use sealtrail_protect::keyring::{KeyBytes, KeyError, Keyring, Master};
use sealtrail_protect::ops::{Sealer, key_id_of};
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// The keyring a run under `home` made, refusing a home that has none: opened there, a new
/// keyring would answer for the pipelines' own (a shredding recorded in the wrong place, a
/// subject with no records), `doing` says what could not be done.
fn existing_keyring(home: &Path, doing: &str) -> Result<Keyring> {
    let path = home.join("keyring.json");
    if !path.exists() {
        bail!(
            "there is no keyring at {}: no run under this home has made a key, so nothing here can be {doing}; name the pipelines' home with --home (or SEALTRAIL_HOME), the `.sealtrail` folder beside their specs by default",
            path.display()
        );
    }
    open_keyring(home, false)
}

pub fn shared_keyring(home: &Path) -> Result<Arc<Mutex<Keyring>>> {
    Ok(Arc::new(Mutex::new(open_keyring(home, true)?)))
}

/// Who is acting: `--by`, else `$USER` or `$LOGNAME`, else the account the process runs as
/// (containers, cron and services often set neither variable; "unknown" told an auditor
/// nothing). Recorded in the ledger as a SHA-256 (checkable by anyone who knows the name,
/// without spelling names out in the ledger).
pub(crate) fn actor(by: &Option<String>) -> (String, [u8; 32]) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let name = by
        .clone()
        .or_else(|| env("USER"))
        .or_else(|| env("LOGNAME"))
        .or_else(os_account)
        .unwrap_or_else(|| "unknown".into());
    let h = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    (name, h.into())
}

/// The name of the account the process runs as: the owner of `/proc/self` (Linux), named
/// by `/etc/passwd`, else `uid N`.
fn os_account() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let name = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.splitn(4, ':').collect();
            (f.len() == 4 && f[2] == uid).then(|| f[0].to_string())
        });
        Some(name.unwrap_or_else(|| format!("uid {uid}")))
    }
    #[cfg(not(unix))]
    None
}

pub(crate) fn record(home: &Path, la: &LedgerArgs, events: Vec<Event>) -> Result<()> {
    let mut log = ledger_cmd::open_writer(home, la, sealtrail_ledger::log::OpenMode::FailClosed)
        .context("opening the ledger to record this access")?;
    log.append(events)
        .map_err(|e| anyhow::anyhow!("recording in the ledger: {e}"))?;
    Ok(())
}

/// The longest `--reason` a decryption records.
pub(crate) const MAX_REASON_BYTES: usize = 1024;

/// Records a decryption: one `key_event` per key used and one `data_access` with the reason.
fn record_access<'a>(
    home: &Path,
    la: &LedgerArgs,
    by: &Option<String>,
    keys: impl Iterator<Item = &'a String>,
    dataset: String,
    reason: &str,
    rows: usize,
) -> Result<()> {
    // Kept in the ledger for good: a reference, not a story (an entry has 64 KiB at most, and
    // a longer text failed the command with a bare "entry is N bytes").
    if reason.len() > MAX_REASON_BYTES {
        bail!(
            "the reason is {} bytes; give one of at most {MAX_REASON_BYTES} (it is kept in the ledger for good: a ticket or case number, say)",
            reason.len()
        );
    }
    let (_, h) = actor(by);
    let mut events: Vec<Event> = keys
        .map(|id| Event::KeyEvent {
            key_id: id.clone(),
            action: "decrypt".into(),
            actor: h,
        })
        .collect();
    events.push(Event::DataAccess {
        actor: h,
        dataset,
        purpose: reason.to_string(),
        rows: rows as u64,
    });
    record(home, la, events)
}

#[derive(clap::Subcommand, Debug)]
pub enum KeysCmd {
    /// List the keyring's keys (names, purposes, versions; never material).
    List,
    /// Add a new version of an encryption key; new writes use it, old ciphertexts stay readable.
    Rotate {
        /// The key's name (as `keys list` shows it, without `@version`).
        name: String,
        /// Who is rotating (recorded in the ledger as a SHA-256 of the name; default `$USER`,
        /// `$LOGNAME` or the account the process runs as).
        #[arg(long)]
        by: Option<String>,
    },
    /// Re-encrypt a sink's `st1:` values (Parquet, Delta local or on S3, PostgreSQL) under the
    /// active version of their key (after `rotate`), batch by batch, each rewrite recorded in
    /// the ledger as a revision of the batch's rows (`outputs_revised`), so `audit` and `prove`
    /// go on checking them. Rows that are not as delivered are refused. Values of subject keys
    /// stay as they are. With `--quarantine`, the records kept for repair instead.
    Reencrypt(crate::reencrypt_cmd::ReencryptArgs),
    /// Change the master key: every data key is wrapped anew under the new one (no data
    /// changes; every value stays readable), in one atomic replacement of `keyring.json`.
    /// Afterwards only the new master key opens the keyring: supply it from then on
    /// (SEALTRAIL_MASTER_KEY or SEALTRAIL_MASTER_KEY_FILE) and destroy the old one. Recorded in
    /// the ledger. The run locks of every pipeline of the state store are held meanwhile, so
    /// no run is going.
    Rewrap {
        /// The new master key: `env:NAME` or `file:PATH` holding 64 hexadecimal characters
        /// (never the key itself on the command line).
        #[arg(long)]
        to: String,
        /// Who is re-wrapping (recorded in the ledger as a SHA-256 of the name; default
        /// `$USER`, `$LOGNAME` or the account the process runs as).
        #[arg(long)]
        by: Option<String>,
        /// Run state store whose pipelines' run locks are held meanwhile: `sqlite://PATH`
        /// (default `<home>/state.db`) or `postgres://...`.
        #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
        state_url: Option<String>,
    },
    /// Destroy an old version of an encryption key (`name@version`, not the active one), once
    /// no sink and no quarantine of the named specs holds a value under it (`keys reencrypt`
    /// moves them): any value still under it elsewhere (a table's earlier versions, a backup,
    /// a copy) can then no longer be decrypted by anyone. Recorded in the ledger.
    Retire {
        /// The version to destroy, as `name@version` (see `keys list`).
        id: String,
        /// A pipeline spec whose sinks and quarantine are checked for values under the
        /// version (every text and binary column of every row); repeat for every pipeline
        /// that encrypts with the key. The keyring is the one beside the first, unless --home.
        #[arg(long = "spec", required = true)]
        specs: Vec<PathBuf>,
        /// A pipeline of the state store that no --spec names and that never encrypts with
        /// the key (repeat for each): every pipeline the store has runs of must be named by a
        /// spec or by this, so that none is overlooked.
        #[arg(long = "not-using", value_name = "PIPELINE")]
        not_using: Vec<String>,
        /// Only check whether the version can be retired (exit 0) or what still holds values
        /// under it (exit 3): nothing is destroyed or recorded.
        #[arg(long)]
        check: bool,
        /// Who is retiring (recorded in the ledger as a SHA-256 of the name; default `$USER`,
        /// `$LOGNAME` or the account the process runs as).
        #[arg(long)]
        by: Option<String>,
        /// Run state store of the specs' pipelines, whose run locks are held meanwhile (no
        /// run or re-encryption writes under the version while it is checked): `sqlite://PATH`
        /// (default `<home>/state.db`) or `postgres://...`.
        #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
        state_url: Option<String>,
    },
    /// Destroy a data subject's key: their encrypted values, and their records kept in
    /// quarantine, can no longer be decrypted by anyone.
    Shred {
        /// The subject's id, as it appears in the policy's `subject:` column (as its type
        /// loads it: `7` for an int64 column's `007`).
        subject: String,
        /// Who is shredding (recorded in the ledger as a SHA-256 of the name; default `$USER`,
        /// `$LOGNAME` or the account the process runs as).
        #[arg(long)]
        by: Option<String>,
        /// A pipeline spec (repeatable) whose quarantine to count the subject's records in:
        /// they are erased with the key (counted by the key that seals them, nothing opened).
        #[arg(long)]
        spec: Vec<PathBuf>,
    },
}

/// `keys`; returns the exit code. `home` defaults to `.sealtrail` (for `reencrypt`, beside the
/// spec, as for `audit`).
pub async fn keys(home: Option<PathBuf>, la: &LedgerArgs, cmd: KeysCmd) -> Result<i32> {
    if let KeysCmd::Reencrypt(a) = cmd {
        return crate::reencrypt_cmd::run(home, la, a).await;
    }
    let home = &home.unwrap_or_else(|| match &cmd {
        // Beside the spec, as for `reencrypt` and `audit`.
        KeysCmd::Retire { specs, .. } => specs
            .first()
            .and_then(|s| s.parent())
            .map_or_else(|| PathBuf::from(".sealtrail"), |d| d.join(".sealtrail")),
        _ => PathBuf::from(".sealtrail"),
    });
    // Shredding, listing or rewrapping in a home without a keyring would make one there: an
    // erasure that never reached the pipelines' keyring (a command run from another folder,
    // with the master key in the environment), or an empty listing that misleads alike.
    let mut ring = match &cmd {
        KeysCmd::Shred { .. } => existing_keyring(home, "shredded")?,
        KeysCmd::List => existing_keyring(home, "listed")?,
        KeysCmd::Rewrap { .. } => existing_keyring(home, "rewrapped")?,
        _ => open_keyring(home, false)?,
    };
    match cmd {
        KeysCmd::List => {
            let list = |v: &[u32]| {
                let v: Vec<String> = v.iter().map(u32::to_string).collect();
                if v.is_empty() {
                    "-".into()
                } else {
                    v.join(",")
                }
            };
            let mut t =
                crate::table::Table::new(&["key", "purpose", ">active", "versions", "retired"]);
            for k in ring.list() {
                t.row(vec![
                    k.name.to_string(),
                    k.purpose.name().to_string(),
                    k.active.to_string(),
                    list(&k.versions),
                    list(&k.retired),
                ]);
            }
            t.print();
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
        KeysCmd::Reencrypt(_) => {} // above
        KeysCmd::Rewrap { to, by, state_url } => {
            let new = Master::new(key_from_ref("--to", &to)?, to.clone());
            if ring.is_under(&new) {
                return Err(KeyError::SameMaster.into());
            }
            let old = ring.master().origin.clone();
            // No run meanwhile: one would fail on the first key it creates after the change.
            let st = crate::open_state(&state_url_in(home, la, state_url)).await?;
            let mut locks = Vec::new();
            for p in st.pipelines().await? {
                locks.push(st.lock_pipeline(&p).await?.map_err(|holder| {
                    anyhow::anyhow!(
                        "pipeline `{p}` is being run or re-encrypted by {holder}; run this again once it has finished (nothing was re-wrapped)"
                    )
                })?);
            }
            let (who, h) = actor(&by);
            // In the ledger first, as for every key event that cannot be undone.
            record(
                home,
                la,
                vec![Event::KeyEvent {
                    key_id: "master".into(),
                    action: "rewrap".into(),
                    actor: h,
                }],
            )?;
            ring.rewrap(new)?;
            drop(locks);
            // The single-machine default reads `<home>/master.key`: the new key can go there.
            let local = home.join("master.key");
            let supply = if old == local.display().to_string() {
                format!(
                    "SEALTRAIL_MASTER_KEY, SEALTRAIL_MASTER_KEY_FILE, or in place of the old one in {}",
                    local.display()
                )
            } else {
                "SEALTRAIL_MASTER_KEY or SEALTRAIL_MASTER_KEY_FILE".into()
            };
            outln!(
                "re-wrapped every data key of {} under the master key from {to} (by {who}; recorded in the ledger); no data changed. The keyring now opens only with that key: supply it from now on ({supply}), and destroy the old one ({old})",
                ring.path().display()
            );
        }
        KeysCmd::Retire {
            id,
            specs,
            not_using,
            check,
            by,
            state_url,
        } => {
            let url = state_url_in(home, la, state_url);
            let named = crate::retire_cmd::Named {
                specs,
                not_using,
                check,
            };
            return crate::retire_cmd::run(home, la, &mut ring, &id, &named, &by, &url).await;
        }
        KeysCmd::Shred { subject, by, spec } => {
            // Every quarantine to count in is found before anything is shredded.
            let quarantines = spec
                .iter()
                .map(|s| match quarantine_named(s)? {
                    (at, Some((_, pipeline))) => Ok((at, pipeline)),
                    (_, None) => bail!(
                        "--spec {} is no pipeline spec (a .yaml or .yml file); name the spec whose quarantine to count in",
                        s.display()
                    ),
                })
                .collect::<Result<Vec<_>>>()?;
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
                    "shredded the key of subject:{h}; their encrypted values and quarantined records can no longer be decrypted (by {who}; recorded in the ledger)"
                );
            } else {
                outln!(
                    "subject:{h} had no key; it is marked shredded so none is ever created (by {who}; recorded in the ledger)"
                );
            }
            let id = format!("subject:{h}");
            for (at, pipeline) in quarantines {
                let local = at
                    .to_str()
                    .is_none_or(|p| !sealtrail_connectors::s3::is_s3(p));
                let n = if local && !at.exists() {
                    0
                } else {
                    read_quarantine(&at)
                        .await?
                        .iter()
                        .filter(|q| key_id_of(&q.raw) == Some(id.as_str()))
                        .count()
                };
                outln!(
                    "{n} record(s) of subject:{h} in the quarantine of pipeline `{pipeline}` ({}) are erased with it",
                    at.display()
                );
            }
        }
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    /// Ciphertexts (`st1:<key id>:...`); read one per line from stdin when none are given.
    values: Vec<String>,
    /// Why (recorded in the ledger).
    #[arg(long)]
    reason: String,
    /// Who is decrypting (default `$USER`, `$LOGNAME` or the account the process runs as).
    #[arg(long)]
    by: Option<String>,
    /// For `format: bare` ciphertexts, which carry no key id: the key as `env:NAME` or
    /// `file:PATH` (64 hex characters).
    #[arg(long)]
    key: Option<String>,
}

/// The state store of `home`: `state_url` when given, else `<home>/state.db`.
fn state_url_in(home: &Path, la: &LedgerArgs, state_url: Option<String>) -> String {
    crate::StateArgs {
        home: Some(home.to_path_buf()),
        state_url,
        ledger: la.clone(),
    }
    .url(home)
}

/// A key named on the command line by reference (`env:NAME` or `file:PATH`, 64 hex characters
/// there), never by its material.
fn key_from_ref(flag: &str, r: &str) -> Result<KeyBytes> {
    let r = match (r.strip_prefix("env:"), r.strip_prefix("file:")) {
        (Some(n), _) => sealtrail_spec::SecretRef::Env(n.into()),
        (_, Some(p)) => sealtrail_spec::SecretRef::File(p.into()),
        _ => bail!(
            "{flag} must be `env:NAME` or `file:PATH`; key material never goes on a command line"
        ),
    };
    let s = r.resolve().map_err(anyhow::Error::msg)?;
    Ok(KeyBytes::from_hex(s.expose())?)
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
        Some(k) => Some(Sealer::bare(&key_from_ref("--key", k)?)),
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
                    Err(e @ KeyError::Retired(..)) => bail!("value {}: {e}", i + 1),
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
        out.push(printable(&plain, encoding_rs::UTF_8));
    }
    record_access(
        home,
        la,
        &a.by,
        used.keys(),
        "decrypt".into(),
        &a.reason,
        out.len(),
    )?;
    for p in out {
        outln!("{p}");
    }
    Ok(())
}

/// A sample of up to `rows` records of each source of `p`, read as a run would read them
/// (every file the pattern matches now; a PostgreSQL table's or query's rows up to now).
pub async fn sample_sources(
    p: &sealtrail_spec::Pipeline,
    rows: usize,
) -> Result<sealtrail_engine::Samples> {
    let mut samples = sealtrail_engine::Samples::new();
    for s in &p.sources {
        let inputs: Vec<String> = match &s.connector {
            sealtrail_spec::SourceConnector::Csv(sealtrail_spec::CsvOptions {
                files: f, ..
            })
            | sealtrail_spec::SourceConnector::Jsonl(f)
            | sealtrail_spec::SourceConnector::Parquet(f) => {
                sealtrail_connectors::files::list(&f.pattern)?
                    .into_iter()
                    .map(|p| p.display().to_string())
                    .collect()
            }
            // The whole table or query (its rows up to now).
            sealtrail_spec::SourceConnector::Postgres(pg) => {
                vec![
                    sealtrail_connectors::pg::plan_input(s, pg, None)
                        .await?
                        .encode(),
                ]
            }
        };
        let source = s.clone();
        let sample =
            tokio::task::spawn_blocking(move || sealtrail_engine::sample(&source, &inputs, rows))
                .await??;
        samples.insert(s.name.clone(), sample);
    }
    Ok(samples)
}

/// `sealtrail classify SPEC`: each source column's tag, kind and confidence from a sample, the
/// policy that applies, and for a raw column bound for an audience not cleared for all data,
/// that the release guard checks its every value at run time (`guard:AUDIENCE`).
pub async fn classify(spec: &Path, rows: usize) -> Result<()> {
    let p = sealtrail_spec::load(spec)?;
    let samples = sample_sources(&p, rows).await?;
    // The guards of the sources that plan (one with a missing policy shows MISSING instead).
    let (planned, _) = sealtrail_engine::check_with(&p, &samples).await;
    let mut t = crate::table::Table::new(&[
        "source", "column", "tag", "kind", ">conf", "policy", "evidence",
    ]);
    for s in &p.sources {
        let (classes, guards) = match planned.get(&s.name) {
            Some(pl) => (pl.classes.clone(), pl.guards.as_slice()),
            None => {
                let sample = samples.get(&s.name).map_or(&[][..], Vec::as_slice);
                (sealtrail_protect::plan::classify_source(s, sample), &[][..])
            }
        };
        // `check` and `run` first classify from names alone: values can add a class, never
        // clear one the name suggests (a `note` column of harmless samples still needs a
        // policy or `class: none`). Shown here so that the table says what `check` will.
        let by_name = sealtrail_protect::plan::classify_source(s, &[]);
        for (i, (c, k)) in s.columns.iter().zip(&classes).enumerate() {
            let named = &by_name[i];
            let sensitive = sealtrail_protect::detect::Classification::is_sensitive;
            let k = if sensitive(named) && !sensitive(k) {
                &sealtrail_protect::detect::Classification {
                    evidence: format!(
                        "the name `{}` suggests {} (`check` and `run` go by names first: add a policy, or declare `class: none`); sampled: {}",
                        c.name,
                        named.kind.map_or(named.tag.to_string(), |x| x.to_string()),
                        k.evidence
                    ),
                    ..named.clone()
                }
            } else {
                k
            };
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
            let mut policy = if policy.is_empty() {
                if sensitive(k) {
                    "MISSING".to_string()
                } else {
                    "-".to_string()
                }
            } else {
                policy.join(",")
            };
            if let Some(g) = guards.iter().find(|g| g.column == i) {
                policy.push_str(&format!(" guard:{}", g.audience.name()));
            }
            t.row(vec![
                s.name.clone(),
                c.name.clone(),
                k.tag.to_string(),
                k.kind.map_or("-".to_string(), |k| k.to_string()),
                format!("{:.2}", k.confidence),
                policy,
                k.evidence.clone(),
            ]);
        }
    }
    t.print();
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum QuarantineCmd {
    /// List quarantined records: position and reasons, never their content.
    List {
        /// The quarantine: a pipeline spec (its `quarantine:`; the home then defaults to the
        /// `.sealtrail` folder beside it), the quarantine's folder (Parquet or Delta) or, for a
        /// Delta table on S3, its `s3://` URL.
        path: PathBuf,
        /// At most this many records, in source order.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only records quarantined by this run (its id as `sealtrail runs` prints it, or the
        /// start of it).
        #[arg(long)]
        run: Option<String>,
        /// Only the records of this data subject (its id as in the source's `subject:`
        /// column, as its type loads it), found by the key that seals them: no record is
        /// decrypted. Needs the keyring (and its master key).
        #[arg(long)]
        subject: Option<String>,
        /// `text`, or `json`: one object on standard output: `total` (records quarantined),
        /// `records` (at most `--limit`: `input`, `source`, `line`, `row`, `key`, `reason`,
        /// `reasons`, `rules`, `run_id`, `repaired_by`: the replay runs that repaired the
        /// record, `replayed_and_quarantined_again_by`: those whose replayed record failed
        /// again, both null without a state store; `erased`: sealed under the key of a data
        /// subject since shredded) and `left_out` (records of other pipelines sharing the
        /// quarantine, by pipeline).
        #[arg(long, value_enum, default_value = "text")]
        format: crate::Format,
        /// Run state store that knows which records were repaired and replayed, and which
        /// pipeline each run was: `sqlite://PATH` (default `<home>/state.db`, when it exists)
        /// or `postgres://...`.
        #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
        state_url: Option<String>,
    },
    /// Show quarantined records' raw content (decrypted; recorded in the ledger).
    Show {
        /// The quarantine: a pipeline spec (its `quarantine:`; the home then defaults to the
        /// `.sealtrail` folder beside it), the quarantine's folder (Parquet or Delta) or, for a
        /// Delta table on S3, its `s3://` URL.
        path: PathBuf,
        /// Line numbers (text inputs) of the records to show.
        #[arg(long, num_args = 1.., required_unless_present_any = ["key", "row", "subject"])]
        line: Vec<i64>,
        /// Keys (table inputs) of the records to show.
        #[arg(long, num_args = 1..)]
        key: Vec<String>,
        /// Row numbers (0-based: Parquet inputs, and table rows whose key is null) of the
        /// records to show.
        #[arg(long, num_args = 1..)]
        row: Vec<i64>,
        /// The records of this data subject (its id as in the source's `subject:` column):
        /// every record sealed under the subject's key, for an access request.
        #[arg(long)]
        subject: Option<String>,
        /// Only records of this input: its name as `quarantine list` prints it, or its last
        /// path components (`trades_01.csv`, `in/trades_01.csv`).
        #[arg(long)]
        input: Option<String>,
        /// Only records quarantined by this run (its id, or the start of it).
        #[arg(long)]
        run: Option<String>,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
        /// Who is looking (recorded in the ledger as a SHA-256 of the name; default `$USER`,
        /// `$LOGNAME` or the account the process runs as).
        #[arg(long)]
        by: Option<String>,
        /// Write the raw records to this file (one per line, mode 0600) for repair, instead
        /// of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The source's encoding (a WHATWG label such as windows-1252, shift_jis or
        /// utf-16le), to print records of a source declared in one (bytes that do not decode
        /// print as `\xNN`) and to end the lines of `--out` as that encoding does.
        #[arg(long, default_value = "utf-8")]
        encoding: String,
        /// Run state store that knows which pipeline each run was (to leave out the records
        /// of other pipelines sharing the quarantine): as for `list`.
        #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
        state_url: Option<String>,
    },
    /// Load repaired records: FILE holds them in the source's format and encoding, one per
    /// line (no CSV header; for a Parquet or PostgreSQL source, the JSON objects
    /// `quarantine show --out` writes). They go through the source's checks, protection, transforms and sinks as a
    /// run of `<pipeline>-replay`, recorded in the ledger like any run.
    Replay {
        /// The pipeline spec whose source the records belong to.
        spec: PathBuf,
        /// The source the records belong to (default: the one the origins file beside FILE
        /// names, else the spec's only source).
        #[arg(long)]
        source: Option<String>,
        /// The repaired records (for example what `quarantine show --out` wrote, edited).
        file: PathBuf,
        /// Load them even if the same records were replayed before under the same spec
        /// (by default that is refused: they are loaded already).
        #[arg(long)]
        again: bool,
        /// Run state store of the pipeline: `sqlite://PATH` (default `<home>/state.db`) or
        /// `postgres://...`, as its runs use.
        #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
        state_url: Option<String>,
    },
}

struct QRow {
    run_id: String,
    source: String,
    input: String,
    line: Option<i64>,
    row: Option<i64>,
    key: Option<String>,
    reason: String,
    reasons: String,
    /// Each reason's rule (`regex(quantity)`, the column and kind a release check found...),
    /// `;`-separated: labels from the spec and the engine, never a value.
    rules: String,
    raw: Vec<u8>,
}

/// The data files of the quarantine at `path`: a Parquet folder's, or those a Delta table's log
/// names now (a file a rewrite or a compaction replaced stays in the folder until a VACUUM and
/// is not read), local or on S3 (`s3://...`: copied whole into the returned folder first).
async fn quarantine_files(
    path: &Path,
) -> Result<(Vec<PathBuf>, Option<sealtrail_connectors::s3::TableCopy>)> {
    use sealtrail_connectors::sink::sink_files;
    let delta = |uri: &Path| sealtrail_spec::Target::delta_at(uri.display().to_string());
    if let Some(uri) = path.to_str().filter(|p| sealtrail_connectors::s3::is_s3(p)) {
        let (copy, _) = sealtrail_connectors::s3::TableCopy::new(uri, true)
            .await
            .map_err(|e| anyhow::anyhow!("the quarantine: {e}"))?;
        let files = sink_files("quarantine", &delta(copy.dir())).await?;
        return Ok((files, Some(copy)));
    }
    let target = if path.join("_delta_log").is_dir() {
        delta(path)
    } else {
        sealtrail_spec::Target::parquet_at(path.to_path_buf())
    };
    Ok((sink_files("quarantine", &target).await?, None))
}

async fn read_quarantine(path: &Path) -> Result<Vec<QRow>> {
    use arrow::array::AsArray;
    let mut out = Vec::new();
    // The copy of a table on S3 lives as long as its files are read.
    let (files, _copy) = quarantine_files(path).await?;
    for f in files {
        let batches = sealtrail_connectors::sink::read_parquet(&f)
            .with_context(|| format!("reading {}", f.display()))?;
        // Columns of the wrong type are refused, not downcast with a panic: the folder may
        // hold any Parquet file.
        let not_quarantine = |n: &str| {
            anyhow::anyhow!(
                "{} is not a sealtrail quarantine file (column `{n}` is missing or of another type)",
                f.display()
            )
        };
        for b in batches {
            let col = |n: &str| b.column_by_name(n).ok_or_else(|| not_quarantine(n));
            let text = |n: &str| {
                col(n)?
                    .as_string_opt::<i32>()
                    .cloned()
                    .ok_or_else(|| not_quarantine(n))
            };
            let run_id = text("run_id")?;
            let source = text("source")?;
            let input = text("input")?;
            let line = col("line")?
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .cloned()
                .ok_or_else(|| not_quarantine("line"))?;
            let row = col("row")?
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .cloned()
                .ok_or_else(|| not_quarantine("row"))?;
            let key = text("key")?;
            let reason = text("reason")?;
            let reasons = text("reasons")?;
            let rules = text("rules")?;
            let raw = col("raw")?
                .as_binary_opt::<i32>()
                .cloned()
                .ok_or_else(|| not_quarantine("raw"))?;
            for r in 0..b.num_rows() {
                out.push(QRow {
                    run_id: run_id.value(r).to_string(),
                    source: source.value(r).to_string(),
                    input: input.value(r).to_string(),
                    line: arrow::array::Array::is_valid(&line, r).then(|| line.value(r)),
                    row: arrow::array::Array::is_valid(&row, r).then(|| row.value(r)),
                    key: arrow::array::Array::is_valid(&key, r).then(|| key.value(r).to_string()),
                    reason: reason.value(r).to_string(),
                    reasons: reasons.value(r).to_string(),
                    rules: rules.value(r).to_string(),
                    raw: raw.value(r).to_vec(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.input, a.line, a.row).cmp(&(&b.input, b.line, b.row)));
    Ok(out)
}

/// The quarantine `named` on the command line: a pipeline spec's (its `quarantine:`), or a
/// folder or URL as it is; with the spec and its pipeline's name, when it was one.
fn quarantine_named(named: &Path) -> Result<(PathBuf, Option<(PathBuf, String)>)> {
    let spec = named.is_file() && named.extension().is_some_and(|x| x == "yaml" || x == "yml");
    if !spec {
        return Ok((named.to_path_buf(), None));
    }
    let p = sealtrail_spec::load(named)?;
    let at = match &p.quarantine {
        sealtrail_spec::Target::Parquet { dir, .. } => dir.clone(),
        sealtrail_spec::Target::Delta { uri, .. } => PathBuf::from(uri),
        other => bail!(
            "the quarantine of pipeline `{}` is a {}, which `quarantine` does not read",
            p.name,
            other.describe()
        ),
    };
    Ok((at, Some((named.to_path_buf(), p.name))))
}

/// The records of `rows` that a listing of the quarantine asked for: those of `run` (an id or
/// its start) when one is named, and, for a quarantine named by its pipeline's spec, those of
/// that pipeline's runs and its replays. A quarantine several pipelines share holds each one's
/// records; those of runs the state store `st` knows as another pipeline's are left out and
/// counted by pipeline (runs it does not know, of another state store, are kept).
async fn of_run_and_pipeline(
    rows: Vec<QRow>,
    run: Option<&str>,
    pipeline: Option<&str>,
    st: Option<&sealtrail_engine::state::StateStore>,
) -> Result<(Vec<QRow>, BTreeMap<String, usize>)> {
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut owners: HashMap<String, Option<String>> = HashMap::new();
    let mut kept = Vec::with_capacity(rows.len());
    for q in rows {
        if run.is_some_and(|r| !q.run_id.starts_with(r.trim())) {
            continue;
        }
        if let (Some(pipeline), Some(st)) = (pipeline, st) {
            if !owners.contains_key(&q.run_id) {
                let owner = st.run_pipeline(&q.run_id).await?;
                owners.insert(q.run_id.clone(), owner);
            }
            if let Some(Some(owner)) = owners.get(&q.run_id)
                && owner != pipeline
                && *owner != sealtrail_spec::replay_name(pipeline)
            {
                *others.entry(owner.clone()).or_default() += 1;
                continue;
            }
        }
        kept.push(q);
    }
    Ok((kept, others))
}

/// Runs `quarantine list` and `show` (`replay` runs a pipeline: `main` dispatches it). `home`
/// is `--home`; without it, the `.sealtrail` folder beside a spec named as the quarantine, or
/// in the working folder.
pub async fn quarantine(home: Option<PathBuf>, la: &LedgerArgs, cmd: QuarantineCmd) -> Result<()> {
    let named = match &cmd {
        QuarantineCmd::List { path, .. } | QuarantineCmd::Show { path, .. } => path.clone(),
        QuarantineCmd::Replay { .. } => unreachable!("dispatched by main (it runs a pipeline)"),
    };
    let (path, spec) = quarantine_named(&named)?;
    // A spec's quarantine that nothing was written to yet (a folder named on the command line
    // that does not exist is more likely a typo, and an error below).
    let local = path
        .to_str()
        .is_none_or(|p| !sealtrail_connectors::s3::is_s3(p));
    if spec.is_some() && local && !path.exists() {
        let none = format!(
            "no record was quarantined: there is no quarantine at {} yet",
            path.display()
        );
        match cmd {
            QuarantineCmd::List { format, .. } => {
                match format {
                    crate::Format::Json => outln!(
                        "{}",
                        serde_json::json!({"total": 0, "records": [], "left_out": {}})
                    ),
                    crate::Format::Text => outln!("0 quarantined record(s) ({none})"),
                }
                return Ok(());
            }
            _ => bail!("{none}"),
        }
    }
    if spec.is_none() && local && !path.exists() {
        bail!(
            "there is no quarantine at {}: no such folder (is the path mistyped? Name the pipeline's spec instead, to use the quarantine it declares)",
            path.display()
        );
    }
    let home = crate::StateArgs {
        home,
        state_url: None,
        ledger: la.clone(),
    }
    .home(spec.as_ref().map(|(s, _)| s.as_path()));
    let home = home.as_path();
    let pipeline = spec.as_ref().map(|(_, name)| name.as_str());
    // The records asked for ([`of_run_and_pipeline`]), with the state store that knows which
    // pipeline each run was and which records were repaired and replayed, when one is at hand.
    let records = async |run: Option<String>, state_url: Option<String>| -> Result<_> {
        let st = if state_url.is_some() || home.join("state.db").exists() {
            Some(crate::open_state(&state_url_in(home, la, state_url)).await?)
        } else {
            None
        };
        let rows = read_quarantine(&path).await?;
        let (rows, others) =
            of_run_and_pipeline(rows, run.as_deref(), pipeline, st.as_ref()).await?;
        Ok((rows, others, st))
    };
    let say_others = |others: &BTreeMap<String, usize>| {
        for (owner, n) in others {
            outln!(
                "left out {n} record(s) quarantined by pipeline `{owner}`, which shares the quarantine: list them with its spec"
            );
        }
    };
    // The key id sealing a subject's records (`subject:H`), and whether it was shredded.
    let subject_key = |ring: &Keyring, subject: &str| -> Result<(String, bool)> {
        let id = format!("subject:{}", ring.subject_id(subject)?);
        let shredded = matches!(ring.by_id(&id), Err(KeyError::Shredded));
        Ok((id, shredded))
    };
    let of_subject = |q: &QRow, id: &Option<(String, bool)>| {
        id.as_ref()
            .is_none_or(|(id, _)| key_id_of(&q.raw) == Some(id.as_str()))
    };
    match cmd {
        QuarantineCmd::List {
            limit,
            run,
            subject,
            state_url,
            format,
            ..
        } => {
            let subject = match subject {
                Some(sub) => Some(subject_key(
                    &existing_keyring(home, "found by subject")?,
                    &sub,
                )?),
                None => None,
            };
            let (rows, others, st) = records(run, state_url).await?;
            let rows: Vec<QRow> = rows
                .into_iter()
                .filter(|q| of_subject(q, &subject))
                .collect();
            // Records of subjects shredded since: erased (known without the master key).
            let shredded = match Keyring::shredded_subjects(&home.join("keyring.json")) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "warning: cannot tell which records are erased (records of shredded subjects): {e}"
                    );
                    Default::default()
                }
            };
            let erased = |q: &QRow| key_id_of(&q.raw).is_some_and(|id| shredded.contains(id));
            let any_erased = rows.iter().take(limit).any(erased);
            let json = format == crate::Format::Json;
            let mut listed = Vec::new();
            // The last column only when a state store can say which records were repaired.
            let mut heads = vec!["input", ">position", "reason", "reasons", "rules", "run"];
            if st.is_some() {
                heads.push("repaired by");
            }
            if any_erased {
                heads.push("erased");
            }
            let mut t = crate::table::Table::new(&heads);
            let mut repaired = 0;
            // A replayed record that failed again is in the quarantine too: its original is
            // not repaired by that replay.
            let quarantined: HashSet<String> = match st {
                Some(_) => rows
                    .iter()
                    .flat_map(|q| q.origin().candidate_ids())
                    .collect(),
                None => HashSet::new(),
            };
            for q in rows.iter().take(limit) {
                let (mut by, mut failed) = (Vec::new(), Vec::new());
                if let Some(st) = &st {
                    for id in q.origin().candidate_ids() {
                        for (run, replayed, original, _) in st.repairs_of(&id).await? {
                            if original == id {
                                match quarantined.contains(&replayed) {
                                    false => by.push(run),
                                    true => failed.push(run),
                                }
                            }
                        }
                    }
                }
                repaired += usize::from(!by.is_empty());
                if json {
                    listed.push(serde_json::json!({
                        "input": printable(q.input.as_bytes(), encoding_rs::UTF_8),
                        "source": q.source,
                        "line": q.line,
                        "row": q.row,
                        "key": q.key.as_deref().map(|k| printable(k.as_bytes(), encoding_rs::UTF_8)),
                        "reason": q.reason,
                        "reasons": q.reasons.split(';').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
                        "rules": printable(q.rules.as_bytes(), encoding_rs::UTF_8).split(';').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
                        "run_id": q.run_id,
                        "repaired_by": st.as_ref().map(|_| by.clone()),
                        "replayed_and_quarantined_again_by": st.as_ref().map(|_| failed.clone()),
                        "erased": erased(q),
                    }));
                    continue;
                }
                let mut cells = vec![
                    printable(q.input.as_bytes(), encoding_rs::UTF_8),
                    position(q),
                    q.reason.clone(),
                    q.reasons.clone(),
                    printable(q.rules.as_bytes(), encoding_rs::UTF_8),
                    q.run_id.clone(),
                ];
                if st.is_some() {
                    let mut cell: Vec<String> = Vec::new();
                    if !by.is_empty() {
                        cell.push(format!("replay run {}", by.join(", ")));
                    }
                    if !failed.is_empty() {
                        cell.push(format!(
                            "not by replay run {} (quarantined again)",
                            failed.join(", ")
                        ));
                    }
                    cells.push(match cell.is_empty() {
                        true => "-".to_string(),
                        false => cell.join("; "),
                    });
                }
                if any_erased {
                    cells.push(match erased(q) {
                        true => "erased (subject's key shredded)".into(),
                        false => "-".into(),
                    });
                }
                t.row(cells);
            }
            let shown = rows.len().min(limit);
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "total": rows.len(),
                        "records": listed,
                        "left_out": others,
                        "subject": subject.as_ref().map(|(id, shredded)| serde_json::json!({"key": id, "shredded": shredded})),
                    }))?
                );
                return Ok(());
            }
            t.print();
            if let Some((id, shredded)) = &subject {
                outln!(
                    "of data subject {id}{}",
                    match shredded {
                        true =>
                            ": its key was shredded, these records are erased (positions and reasons stay, their bytes cannot be read)",
                        false => "",
                    }
                );
            }
            outln!(
                "{} quarantined record(s){}",
                rows.len(),
                match &st {
                    Some(_) => format!(
                        "; {repaired} of the {shown} listed repaired and replayed (`quarantine replay` with the origins file of `quarantine show --out`)"
                    ),
                    None => String::new(),
                }
            );
            say_others(&others);
        }
        QuarantineCmd::Replay { .. } => unreachable!("dispatched by main (it runs a pipeline)"),
        QuarantineCmd::Show {
            line,
            key,
            row,
            subject,
            input,
            run,
            reason,
            by,
            out,
            encoding,
            state_url,
            ..
        } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why the raw records are needed");
            }
            let Some(encoding) =
                encoding_rs::Encoding::for_label_no_replacement(encoding.trim().as_bytes())
            else {
                bail!(
                    "--encoding `{encoding}` is not a known encoding; use the source's `encoding:` \
                     label from the spec (e.g. utf-8, windows-1252, shift_jis)"
                );
            };
            let ring = match subject {
                Some(_) => existing_keyring(home, "found by subject")?,
                None => open_keyring(home, false)?,
            };
            let subject = subject
                .as_deref()
                .map(|sub| subject_key(&ring, sub))
                .transpose()?;
            let (rows, others, _) = records(run.clone(), state_url).await?;
            let mut shown = Vec::new();
            let mut keys: BTreeMap<String, u64> = BTreeMap::new();
            let of_input = |q: &QRow| match &input {
                None => true,
                Some(i) => {
                    let i = i.trim_start_matches('/');
                    q.input == *i || q.input.ends_with(&format!("/{i}"))
                }
            };
            let wanted = |q: &QRow| {
                of_input(q)
                    && (subject.is_some() && of_subject(q, &subject)
                        || q.line.is_some_and(|l| line.contains(&l))
                        || q.key.as_ref().is_some_and(|k| key.contains(k))
                        || (q.line.is_none() && q.key.is_none())
                            && q.row.is_some_and(|r| row.contains(&r)))
            };
            // Records of a data subject whose key `keys shred` destroyed: erased with it.
            let mut erased = Vec::new();
            for q in rows.iter().filter(|q| wanted(q)) {
                let id = key_id_of(&q.raw)
                    .context("a quarantined record is not encrypted as sealtrail writes it")?;
                let key = match ring.by_id(id) {
                    Err(KeyError::Shredded) => {
                        erased.push(q);
                        continue;
                    }
                    k => k?,
                };
                let plain = Sealer::new(id, &key)
                    .open_bytes(&q.raw)
                    .map_err(|e| anyhow::anyhow!("{}:{:?}: {e}", q.input, q.line))?;
                *keys.entry(id.to_string()).or_default() += 1;
                shown.push((q, plain));
            }
            for q in &erased {
                eprintln!(
                    "{}:{} [{}] erased: the key of its data subject was shredded (`keys shred`), so the record can no longer be read",
                    printable(q.input.as_bytes(), encoding_rs::UTF_8),
                    position(q),
                    q.reasons
                );
            }
            if shown.is_empty() && !erased.is_empty() {
                bail!(
                    "every chosen record ({}) belongs to a data subject whose key was shredded: erased, nothing to show",
                    erased.len()
                );
            }
            if shown.is_empty() {
                say_others(&others);
                bail!(
                    "no quarantined record {}with line(s) {line:?}, key(s) {key:?} or row(s) {row:?}{}{}; see `sealtrail quarantine list`",
                    subject.as_ref().map_or(String::new(), |(id, _)| format!(
                        "of data subject {id}, nor "
                    )),
                    input
                        .as_ref()
                        .map_or(String::new(), |i| format!(" in input `{i}`")),
                    run.as_ref()
                        .map_or(String::new(), |r| format!(" of run `{r}`"))
                );
            }
            record_access(
                home,
                la,
                &by,
                keys.keys(),
                format!("quarantine {}", path.display()),
                &reason,
                shown.len(),
            )?;
            if let Some(out) = out {
                if origins_path(&out).exists() {
                    bail!(
                        "{} exists (from an earlier export): remove it, or export to another file",
                        origins_path(&out).display()
                    );
                }
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                let mut f = o
                    .open(&out)
                    .with_context(|| format!("creating {} (it must not exist)", out.display()))?;
                // One record a line, the line end in the records' encoding (two bytes in
                // UTF-16), so that the file can be repaired and replayed as it is.
                let newline = encode_text(encoding, "\n").unwrap_or_else(|| b"\n".to_vec());
                for (_, plain) in &shown {
                    std::io::Write::write_all(&mut f, plain)?;
                    std::io::Write::write_all(&mut f, &newline)?;
                }
                f.sync_all()?;
                // Where each record was quarantined (positions, never content), so that a
                // replay links each repaired record to the one it repairs.
                let origins = Origins {
                    format: ORIGINS_FORMAT.into(),
                    records: shown.iter().map(|(q, _)| q.origin()).collect(),
                };
                let side = origins_path(&out);
                let created = sealtrail_core::secret::create_private_once(
                    &side,
                    serde_json::to_string_pretty(&origins)?.as_bytes(),
                )
                .with_context(|| format!("writing {}", side.display()))?;
                if !created {
                    bail!(
                        "{} exists (from an earlier export): remove it and {}, then export again",
                        side.display(),
                        out.display()
                    );
                }
                outln!(
                    "wrote {} raw record(s) to {}, and where each was quarantined to {} (keep it beside the file: `quarantine replay` links each repaired record to the one it repairs)",
                    shown.len(),
                    out.display(),
                    side.display()
                );
                return Ok(());
            }
            for (q, plain) in shown {
                outln!(
                    "{}:{} [{}] {}",
                    printable(q.input.as_bytes(), encoding_rs::UTF_8),
                    position(q),
                    q.reasons,
                    printable(&plain, encoding)
                );
            }
        }
    }
    Ok(())
}

/// What `quarantine show --out FILE` writes to `FILE.origins`: where each record of FILE was
/// quarantined, in FILE's order. Positions only, never content.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Origins {
    pub format: String,
    pub records: Vec<Origin>,
}

pub const ORIGINS_FORMAT: &str = "sealtrail-origins/1";

#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Origin {
    pub run_id: String,
    pub source: String,
    pub input: String,
    pub line: Option<i64>,
    pub row: Option<i64>,
    pub key: Option<String>,
}

/// The origins file beside repaired records `file`.
pub fn origins_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".origins");
    PathBuf::from(name)
}

impl QRow {
    /// Where the record was quarantined, as an origins file records it.
    fn origin(&self) -> Origin {
        Origin {
            run_id: self.run_id.clone(),
            source: self.source.clone(),
            input: self.input.clone(),
            line: self.line,
            row: self.row,
            key: self.key.clone(),
        }
    }
}

impl Origin {
    /// The lineage ids the record may have had: one, except for a row number alone, which
    /// names a Parquet row or (with a `#`) a table row without a key.
    fn candidate_ids(&self) -> Vec<String> {
        use sealtrail_core::record::PosKind;
        use sealtrail_engine::custody::{input_key, record_id};
        let k = input_key(&self.input);
        let id =
            |kind, pos: i64, key: Option<&str>| record_id(&self.source, &k, kind, pos as u64, key);
        match (self.line, &self.key, self.row) {
            (Some(l), ..) => vec![id(PosKind::Line, l, None)],
            (None, Some(key), _) => vec![id(PosKind::Key, 0, Some(key))],
            (None, None, Some(r)) => vec![id(PosKind::Row, r, None), id(PosKind::Key, r, None)],
            (None, None, None) => Vec::new(),
        }
    }

    /// The lineage id the record had, as its source reads it: a row number alone is a table
    /// row without a key for a PostgreSQL source, a Parquet row otherwise.
    pub fn lineage_id(&self, connector: &sealtrail_spec::SourceConnector) -> Option<String> {
        let mut ids = self.candidate_ids();
        if ids.len() == 2 && matches!(connector, sealtrail_spec::SourceConnector::Postgres(_)) {
            return ids.pop();
        }
        ids.into_iter().next()
    }
}

/// Where a quarantined record was: its line, its key, or `row N` (a Parquet row, or a table
/// row whose key was null), as `quarantine show` selects it (`--line`, `--key`, `--row`). Keys
/// are data: escaped.
fn position(q: &QRow) -> String {
    match (q.line, &q.key, q.row) {
        (Some(l), ..) => l.to_string(),
        (None, Some(k), _) => printable(k.as_bytes(), encoding_rs::UTF_8),
        (None, None, Some(r)) => format!("row {r}"),
        (None, None, None) => "-".into(),
    }
}

/// A raw record as one line of terminal text: decoded from its source's encoding, with the
/// bytes of a record that does not decode shown as `\xNN` (printable ASCII bytes as themselves),
/// and backslashes, control characters and bidirectional overrides
/// escaped. A quarantined record is untrusted input: printed as is, an escape sequence in it
/// could drive the terminal, and a lossy decode would hide the very bytes that failed.
fn printable(raw: &[u8], encoding: &'static encoding_rs::Encoding) -> String {
    use std::fmt::Write;
    fn bytes(out: &mut String, raw: &[u8]) {
        for &b in raw {
            match b {
                b'\\' => out.push_str("\\\\"),
                0x20..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
    fn text(out: &mut String, text: &str) {
        for c in text.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    let mut out = String::with_capacity(raw.len() + 8);
    if encoding == encoding_rs::UTF_8 {
        // Valid stretches as text, each invalid byte as itself.
        for chunk in raw.utf8_chunks() {
            text(&mut out, chunk.valid());
            bytes(&mut out, chunk.invalid());
        }
    } else {
        match encoding.decode_without_bom_handling_and_without_replacement(raw) {
            Some(t) => text(&mut out, &t),
            None => bytes(&mut out, raw),
        }
    }
    out
}

/// `text` as a file in `enc` holds it; `None` when a character has no encoding in it.
/// (`Encoding::encode` writes UTF-8 for the UTF-16 encodings, as the WHATWG standard does for
/// web forms; a UTF-16 CSV file needs its own code units.)
fn encode_text(enc: &'static encoding_rs::Encoding, text: &str) -> Option<Vec<u8>> {
    if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
        let le = enc == encoding_rs::UTF_16LE;
        return Some(
            text.encode_utf16()
                .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() })
                .collect(),
        );
    }
    let (bytes, _, unmappable) = enc.encode(text);
    (!unmappable).then(|| bytes.into_owned())
}

/// The source repaired records `file` belong to: `given`, else the one source the origins
/// file beside `file` names (what `quarantine show --out` wrote), else the spec's only source.
pub fn replay_source(spec: &Path, file: &Path, given: Option<String>) -> Result<String> {
    if let Some(s) = given {
        return Ok(s);
    }
    let p = sealtrail_spec::load(spec)?;
    let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
    let origins = std::fs::read(origins_path(file))
        .ok()
        .and_then(|b| serde_json::from_slice::<Origins>(&b).ok())
        .filter(|o| o.format == ORIGINS_FORMAT);
    let mut named: Vec<&str> = origins
        .iter()
        .flat_map(|o| o.records.iter().map(|r| r.source.as_str()))
        .collect();
    named.sort_unstable();
    named.dedup();
    match (named.as_slice(), names.as_slice()) {
        ([one], _) if names.contains(one) => Ok((*one).to_string()),
        ([], [only]) => Ok((*only).to_string()),
        ([], _) => bail!(
            "name the source the repaired records belong to with --source: the spec has sources {}",
            names.join(", ")
        ),
        _ => bail!(
            "{} names records of sources {} (of the spec's {}): replay each source's records from a file of their own, with --source",
            origins_path(file).display(),
            named.join(", "),
            names.join(", ")
        ),
    }
}

/// The pipeline narrowed to one source, reading a copy of `file` (repaired records, plus the
/// header a CSV source expects) written into `work/<pipeline>/` (a folder per pipeline: an
/// interrupted replay keeps its copy there to resume from), under the name
/// `<pipeline>-replay`; with that copy's path and the `replay_declared` ledger event that ties
/// the replay's spec version to the spec's own.
pub fn replay_pipeline(
    spec: &Path,
    source: &str,
    file: &Path,
    work: &Path,
) -> Result<(
    sealtrail_spec::Pipeline,
    PathBuf,
    sealtrail_ledger::entry::Event,
)> {
    use sealtrail_spec::SourceConnector as C;
    let mut p = sealtrail_spec::load(spec)?;
    let Some(s) = p.sources.iter_mut().find(|s| s.name == source) else {
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "the spec has no source `{source}`; its sources: {}",
            names.join(", ")
        );
    };
    let mut body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let work = work.join(&p.name);
    std::fs::create_dir_all(&work)?;
    let input = work.join(format!("replay-{}", sealtrail_core::RunId::new()));
    let mut text = Vec::new();
    if let C::Csv(o) = &s.connector {
        if o.header {
            let names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
            // The header in the source's encoding, like the repaired lines that follow it.
            let header = names.join(&(o.delimiter as char).to_string()) + "\n";
            text.extend(encode_text(o.encoding, &header).ok_or_else(|| {
                anyhow::anyhow!(
                    "the column names of source `{source}` cannot be written in its encoding {}",
                    o.encoding.name()
                )
            })?);
        }
        // A byte order mark an editor put before the repaired records would otherwise
        // become part of the first record's first field.
        if let Some((enc, bom)) = encoding_rs::Encoding::for_bom(&body)
            && enc == o.encoding
        {
            body.drain(..bom);
        }
    }
    text.extend(&body);
    // Repaired records in clear: readable by their owner only, and removed once loaded.
    {
        use std::io::Write as _;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        o.mode(0o600);
        o.open(&input)
            .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
            .with_context(|| format!("writing {}", input.display()))?;
    }
    let files = sealtrail_spec::FileSet {
        pattern: input.display().to_string(),
        incremental: false,
        // Written just now, and whole: never left for later.
        min_age: None,
    };
    match &mut s.connector {
        C::Csv(o) => o.files = files,
        // JSON Lines; and a Parquet or PostgreSQL record, which is quarantined in the canonical
        // row encoding (docs/spec.md): a JSON object of the declared columns' text, read back,
        // repaired, as a JSON Lines record with the same values.
        c => *c = C::Jsonl(files),
    }
    p.sources.retain(|s| s.name == source);
    p.transforms.retain(|t| t.root_source == source);
    p.sinks.retain(|k| k.root_source == source);
    let records = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&text).into()
    };
    let spec_sha256 = hex::decode(&p.spec_sha256)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("the spec's SHA-256 is not 64 hex digits (a bug)"))?;
    let replay_spec_sha256 = sealtrail_ledger::entry::replay_version(&spec_sha256, &records);
    let declared = sealtrail_ledger::entry::Event::ReplayDeclared {
        pipeline: p.name.clone(),
        spec_sha256,
        records_sha256: records,
        replay_spec_sha256,
    };
    p.name = sealtrail_spec::replay_name(&p.name);
    p.spec_sha256 = hex::encode(replay_spec_sha256);
    Ok((p, input, declared))
}

#[cfg(test)]
mod tests {
    use super::printable;

    /// A quarantined record's id from where it was: a row number alone names a table row
    /// without a key (`#N`) for a PostgreSQL source and a Parquet row otherwise; lines and keys
    /// name themselves, as the engine's ids do.
    #[test]
    fn origins_give_the_ids_the_engine_gave() {
        use sealtrail_core::record::PosKind;
        use sealtrail_engine::custody::{input_key, record_id};
        let spec = |src: &str| {
            sealtrail_spec::parse_str(
                &format!("version: 1\npipeline: p\nsources:\n  s:\n    {src}\n    columns:\n      - {{ name: id, class: none }}\nsinks:\n  o: {{ from: s, audience: restricted, parquet: {{ path: out/o }} }}\nquarantine:\n  parquet: {{ path: out/q }}\n"),
                std::path::Path::new("/p/t.yaml"),
            )
            .unwrap()
        };
        let pg = spec("postgres: { url: env:PGURL, table: t, key: id }");
        let parquet = spec("parquet: { path: in/*.parquet }");
        let csv = spec("csv: { path: in/*.csv }");
        let at = |line, row, key: Option<&str>| super::Origin {
            run_id: "r".into(),
            source: "s".into(),
            input: "in".into(),
            line,
            row,
            key: key.map(str::to_string),
        };
        let k = input_key("in");
        let c = |p: &sealtrail_spec::Pipeline| p.sources[0].connector.clone();
        assert_eq!(
            at(None, Some(7), None).lineage_id(&c(&pg)),
            Some(record_id("s", &k, PosKind::Key, 7, None))
        );
        assert_eq!(
            at(None, Some(7), None).lineage_id(&c(&parquet)),
            Some(record_id("s", &k, PosKind::Row, 7, None))
        );
        assert_eq!(
            at(None, None, Some("K1")).lineage_id(&c(&pg)),
            Some(record_id("s", &k, PosKind::Key, 0, Some("K1")))
        );
        assert_eq!(
            at(Some(4), None, None).lineage_id(&c(&csv)),
            Some(record_id("s", &k, PosKind::Line, 4, None))
        );
        assert_ne!(
            record_id("s", &k, PosKind::Key, 7, None),
            record_id("s", &k, PosKind::Row, 7, None)
        );
    }

    #[test]
    fn records_print_as_one_harmless_unambiguous_line() {
        let utf8 = encoding_rs::UTF_8;
        assert_eq!(printable("Zürich,12".as_bytes(), utf8), "Zürich,12");
        // Invalid bytes show as themselves between the valid text around them.
        assert_eq!(
            printable(b"Z\xfcrich,\xff\xfe,\xc3\xa9", utf8),
            "Z\\xfcrich,\\xff\\xfe,é"
        );
        // Terminal escapes, other controls, tabs, bidi overrides and backslashes are escaped.
        assert_eq!(
            printable("a\x1b]0;x\x07\tb\u{202e}c\\x00\r\n".as_bytes(), utf8),
            "a\\u{1b}]0;x\\u{7}\\tb\\u{202e}c\\\\x00\\u{d}\\u{a}"
        );
        // A legacy encoding decodes; a record that does not decode keeps ASCII, escapes the rest.
        let cp1252 = encoding_rs::WINDOWS_1252;
        assert_eq!(printable(b"Z\xfcrich \x80 5", cp1252), "Zürich € 5");
        let sjis = encoding_rs::SHIFT_JIS;
        assert_eq!(printable(b"\x93\x8c\x8b\x9e,1", sjis), "東京,1");
        assert_eq!(
            printable(b"\x93\x8c\x82,\x1b", sjis),
            "\\x93\\x8c\\x82,\\x1b"
        );
    }
}
