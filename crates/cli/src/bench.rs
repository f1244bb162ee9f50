//! `sealtrail bench`: the reference trades job on a `gen_trades.py` file, timed.
//!
//! Prints rows/s and peak RSS (VmHWM) and compares the quarantine counts with the
//! generator's manifest, which must match exactly.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The CSV made by `gen_trades.py N`.
    #[arg(long)]
    csv: PathBuf,
    /// Its manifest (`trades_N.manifest.json`); default: beside the CSV.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Output format of the clean rows: parquet or delta.
    #[arg(long, default_value = "parquet")]
    sink: String,
    /// Work folder (emptied first).
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn run(a: BenchArgs) -> Result<()> {
    let csv = std::path::absolute(&a.csv)?;
    let manifest = a
        .manifest
        .clone()
        .unwrap_or_else(|| csv.with_extension("manifest.json"));
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?,
    )?;
    let _ = std::fs::remove_dir_all(&a.work);
    std::fs::create_dir_all(&a.work)?;
    let work = std::path::absolute(&a.work)?;
    let spec_text = include_str!("../../../examples/trades.yaml")
        .replace("data/trades_*.csv", &csv.display().to_string())
        .replace(
            "delta: { path: out/trades_clean }",
            &format!("{}: {{ path: out/clean }}", a.sink),
        );
    let spec_path = work.join("bench.yaml");
    std::fs::write(&spec_path, spec_text)?;
    let p = sealtrail_spec::load(&spec_path)?;
    let log = crate::ledger_cmd::open_writer(
        &work.join(".sealtrail"),
        &crate::ledger_cmd::LedgerArgs::default(),
        sealtrail_ledger::log::OpenMode::FailClosed,
    )?;
    let audit = sealtrail_ledger::audit::LedgerAudit::new(log);
    let opts = sealtrail_engine::RunOptions {
        state_url: format!("sqlite://{}", work.join("state.db").display()),
        keyring: crate::protect_cmd::shared_keyring(&work.join(".sealtrail"))?,
        audit: Arc::new(audit),
        abandon_unfinished: true,
        progress: None,
    };
    let t = std::time::Instant::now();
    let r = sealtrail_engine::run(&p, &opts).await?;
    let secs = t.elapsed().as_secs_f64();
    let rows = r.counts.rows_in as f64;
    outln!(
        "rows_in {}  loaded {}  quarantined {}",
        r.counts.rows_in,
        r.counts.rows_loaded,
        r.counts.rows_quarantined
    );
    outln!(
        "seconds {secs:.2}  rows/s {:.0}  peak RSS {:.0} MiB  sink {}",
        rows / secs,
        peak_rss_mib(),
        a.sink
    );
    let want = &m["expected"]["quarantine_by_reason"];
    let mut ok = r.counts.rows_in == m["expected"]["rows_in"].as_u64().unwrap_or(0);
    for (k, v) in want.as_object().into_iter().flatten() {
        let got = r.by_reason.get(k).copied().unwrap_or(0);
        if Some(got) != v.as_u64() {
            ok = false;
            outln!("  MISMATCH {k}: got {got}, manifest {v}");
        }
    }
    if !ok {
        bail!("quarantine counts differ from the manifest");
    }
    outln!("quarantine counts match the manifest exactly");
    Ok(())
}
