//! `sealtrail keys retire`: destroys an old version of an encryption key, once no sink and no
//! quarantine of the named specs holds a value under it. Rotation alone leaves every old
//! version in the keyring, so old ciphertexts (in a table's earlier versions, a backup, an
//! export) stay readable by whoever gets the keyring and its master key; retiring the version
//! ends that, the last step of `rotate` -> `reencrypt` -> `retire`.

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use sealtrail_connectors::s3::{TableCopy, is_s3};
use sealtrail_connectors::sink::read_parquet;
use sealtrail_ledger::entry::Event;
use sealtrail_protect::keyring::Keyring;
use sealtrail_spec::{Action, KeySource, Target};
use std::path::{Path, PathBuf};

use crate::custody_cmd::SinkTable;
use crate::ledger_cmd::LedgerArgs;
use crate::protect_cmd::{actor, record};

/// Exit code when values under the version remain (the work could not be done).
const HELD: i32 = 3;
/// Exit code when a pipeline of the state store is not accounted for (the command is wrong).
const UNNAMED: i32 = 2;

/// The pipelines the command is told about: by their specs (read), or as not using the key.
pub struct Named {
    pub specs: Vec<PathBuf>,
    pub not_using: Vec<String>,
    /// Only check: report whether the version could be retired, change nothing.
    pub check: bool,
}

/// Runs `keys retire ID --spec ...`; returns the exit code.
pub async fn run(
    home: &Path,
    la: &LedgerArgs,
    ring: &mut Keyring,
    id: &str,
    named: &Named,
    by: &Option<String>,
    state_url: &str,
) -> Result<i32> {
    let specs = &named.specs;
    let (name, _) = ring.retirable(id)?;
    let pipelines = specs
        .iter()
        .map(|s| Ok((s, sealtrail_spec::load(s)?)))
        .collect::<Result<Vec<_>>>()?;
    // No run (which may have protected a batch with the version before the rotation) and no
    // re-encryption of these pipelines meanwhile.
    let st = crate::open_state(state_url).await?;
    let mut locks = Vec::new();
    for (_, p) in &pipelines {
        locks.push(st.lock_pipeline(&p.name).await?.map_err(|holder| {
            anyhow!(
                "pipeline `{}` is being run or re-encrypted by {holder}; run this again once it has finished (nothing was retired)",
                p.name
            )
        })?);
    }
    // Every pipeline that ran with this state store is accounted for: a forgotten one could
    // hold values under the version that nothing here reads. A replay pipeline writes into
    // its spec's sinks, which are read with them.
    let unnamed: Vec<String> = st
        .pipelines()
        .await?
        .into_iter()
        .filter(|run| {
            let base = run
                .strip_suffix(sealtrail_spec::REPLAY_SUFFIX)
                .unwrap_or(run);
            !pipelines
                .iter()
                .any(|(_, p)| p.name == *run || p.name == base)
                && !named.not_using.iter().any(|n| n == run || n == base)
        })
        .collect();
    if !unnamed.is_empty() {
        eprintln!(
            "error: the state store has runs of pipeline(s) {} that no --spec names: name their specs with --spec (their sinks and quarantines are read too), or pass --not-using PIPELINE for each that never encrypts with key `{name}`; nothing was retired",
            unnamed
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(UNNAMED);
    }
    let mut held = Vec::new();
    let mut places = 0;
    for (spec, p) in &pipelines {
        // A bare ciphertext does not name its key version: whether it is under this one
        // cannot be told, so the version cannot be shown to be unused.
        for s in &p.sources {
            for r in &s.protect {
                if let Action::Encrypt {
                    key: KeySource::Keyring(k),
                    bare: true,
                    ..
                } = &r.action
                    && *k == name
                {
                    bail!(
                        "{}:{}:{}: source `{}` encrypts with key `{name}` in the `bare` format, whose values do not name their key version, so whether any is under {id} cannot be told; nothing was retired",
                        spec.display(),
                        r.at.0,
                        r.at.1,
                        s.name
                    );
                }
            }
        }
        let targets = p
            .sinks
            .iter()
            .map(|s| (Some(s.name.as_str()), &s.target))
            .chain([(None, &p.quarantine)]);
        for (sink, target) in targets {
            places += 1;
            let what = sink.map_or_else(|| "the quarantine".to_string(), |s| format!("sink `{s}`"));
            let n = values_under(sink.unwrap_or("quarantine"), target, id)
                .await
                .with_context(|| format!("{}: reading {what}", spec.display()))?;
            if n > 0 {
                let fix = match sink {
                    Some(s) => format!("--sink {s}"),
                    None => "--quarantine".into(),
                };
                held.push(format!(
                    "{}: {what} holds {n} value(s) under {id}; `sealtrail keys reencrypt {} {fix}` moves them to the active version",
                    spec.display(),
                    spec.display()
                ));
            }
        }
    }
    if !held.is_empty() {
        for h in &held {
            eprintln!("error: {h}");
        }
        eprintln!("nothing was retired: retiring {id} would make those values unreadable for good");
        return Ok(HELD);
    }
    if named.check {
        outln!(
            "{id} can be retired: the {places} sink(s) and quarantine(s) of {} spec(s) hold no value under it (checked only: nothing was retired or recorded)",
            specs.len()
        );
        return Ok(0);
    }
    // In the ledger first: a key is never destroyed without a trace.
    let (who, a) = actor(by);
    record(
        home,
        la,
        vec![Event::KeyEvent {
            key_id: id.to_string(),
            action: "retire".into(),
            actor: a,
        }],
    )?;
    ring.retire(id)?;
    drop(locks);
    outln!(
        "retired {id}: its key is destroyed, so any value still under it (in a table's earlier versions, a backup, a copy) can no longer be decrypted by anyone; the {places} sink(s) and quarantine(s) of {} spec(s) held none (by {who}; recorded in the ledger)",
        specs.len()
    );
    Ok(0)
}

/// How many values of the sink or quarantine at `target` are ciphertexts under key `id`: every
/// text and binary column of every row, as readers see the table now. A sink with no table or
/// folder (never written, or removed) holds none.
async fn values_under(name: &str, target: &Target, id: &str) -> Result<u64> {
    let prefix = format!("st1:{id}:");
    let prefix = prefix.as_bytes();
    let in_file = |f: &Path| -> Result<u64> {
        let batches = read_parquet(f).with_context(|| format!("reading {}", f.display()))?;
        Ok(batches.iter().map(|b| count(b, prefix)).sum())
    };
    // A table on S3: through a copy of its log, each data file fetched, read and removed in
    // turn, so that the local disk holds one file at a time.
    let copy = match target {
        Target::Delta { uri, .. } if is_s3(uri) => {
            Some(TableCopy::new(uri, false).await.map_err(|e| anyhow!(e))?.0)
        }
        _ => None,
    };
    let local = copy
        .as_ref()
        .map(|c| Target::delta_at(c.dir().display().to_string()));
    match SinkTable::open_existing(name, local.as_ref().unwrap_or(target)).await? {
        None => Ok(0),
        Some(SinkTable::Files(files)) => {
            let mut n = 0;
            for f in files {
                if let Some(c) = &copy {
                    c.fetch(std::slice::from_ref(&f))
                        .await
                        .map_err(|e| anyhow!(e))?;
                }
                n += in_file(&f)?;
                if copy.is_some() {
                    let _ = std::fs::remove_file(&f);
                }
            }
            Ok(n)
        }
        Some(SinkTable::Pg(mut t)) => {
            t.scan().await?;
            let mut n = 0;
            while let Some(b) = t.next(65_536).await? {
                n += count(&b, prefix);
            }
            Ok(n)
        }
    }
}

/// Values of `b`'s text and binary columns that start with `prefix`.
fn count(b: &RecordBatch, prefix: &[u8]) -> u64 {
    fn under<'a>(vals: impl Iterator<Item = Option<&'a [u8]>>, prefix: &[u8]) -> u64 {
        vals.flatten().filter(|v| v.starts_with(prefix)).count() as u64
    }
    b.columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8 => under(
                c.as_string::<i32>().iter().map(|v| v.map(str::as_bytes)),
                prefix,
            ),
            DataType::LargeUtf8 => under(
                c.as_string::<i64>().iter().map(|v| v.map(str::as_bytes)),
                prefix,
            ),
            DataType::Utf8View => under(
                c.as_string_view().iter().map(|v| v.map(str::as_bytes)),
                prefix,
            ),
            DataType::Binary => under(c.as_binary::<i32>().iter(), prefix),
            DataType::LargeBinary => under(c.as_binary::<i64>().iter(), prefix),
            DataType::BinaryView => under(c.as_binary_view().iter(), prefix),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn only_values_under_the_version_count() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Binary, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("st1:email@1:AAAA"),
                    Some("st1:email@12:AAAA"),
                    None,
                    Some("st1:email@1"),
                ])),
                Arc::new(BinaryArray::from(vec![
                    Some(&b"st1:email@1:\x00\x01"[..]),
                    Some(&b"st1:email@2:\x00"[..]),
                    None,
                    Some(&b"plain"[..]),
                ])),
            ],
        )
        .unwrap();
        assert_eq!(count(&b, b"st1:email@1:"), 2);
        assert_eq!(count(&b, b"st1:email@12:"), 1);
        assert_eq!(count(&b, b"st1:other@1:"), 0);
    }
}
