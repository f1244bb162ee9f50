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
    /// Output format of the clean rows.
    #[arg(long, value_enum, default_value_t = SinkKind::Parquet)]
    sink: SinkKind,
    /// Compression of the clean rows' files (the sink's `compression`), at its default level.
    #[arg(long, value_enum, default_value_t = Codec::Zstd)]
    compression: Codec,
    /// Work folder (emptied first).
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
    /// `on`: the reference job with A.4 protection (tokens, AES-GCM, masks, redaction,
    /// digests). `off`: the same checks and columns delivered raw to a restricted sink.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    protection: Switch,
    /// `on`: record commitments, batch Merkle roots and custody records (what every run
    /// does). `off`: without them, to measure their cost; rows of such a run cannot be proven.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    custody: Switch,
    /// Records per batch, instead of the reference spec's `batch_rows` (65,536)
    #[arg(long)]
    batch_rows: Option<usize>,
    /// `warm`: read the CSV once before the clock starts, so that the job reads it from the
    /// page cache (repeatable figures: a kernel may reclaim idle cached pages within minutes,
    /// as the project's benchmark VM does, and a cold read there cost the decode stage up to
    /// ~0.5 s a million rows). `as-is`: time the job with the file wherever it is.
    #[arg(long, value_enum, default_value_t = Input::Warm)]
    input: Input,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SinkKind {
    Parquet,
    Delta,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Zstd,
    Snappy,
    Lz4,
    Gzip,
    None,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Switch {
    On,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Warm,
    AsIs,
}

/// The name a value has on the command line (`as-is`, not `AsIs`).
fn name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// The bytes of every file under `dir` (a Delta table's log included).
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Reads `path` to its end, returning the bytes read and the seconds taken.
fn read_through(path: &std::path::Path) -> Result<(u64, f64)> {
    let t = std::time::Instant::now();
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    // `copy` reads through the buffered reader's 4 MiB buffer.
    let n = std::io::copy(
        &mut std::io::BufReader::with_capacity(4 << 20, f),
        &mut std::io::sink(),
    )
    .with_context(|| format!("reading {}", path.display()))?;
    Ok((n, t.elapsed().as_secs_f64()))
}

/// The reference job without protection: every sensitive column kept raw (restricted sink).
fn without_protection(spec: &str) -> String {
    let start = spec.find("    protect:\n").unwrap_or(spec.len());
    let end = spec.find("transforms:\n").unwrap_or(spec.len());
    let keep: String = [
        "account_iban",
        "customer_name",
        "customer_email",
        "customer_phone",
        "card_pan",
        "notes",
        "counterparty_lei",
    ]
    .iter()
    .map(|c| format!("      - {{ column: {c}, action: keep }}\n"))
    .collect();
    let sql = "  clean:\n    sql: |\n      SELECT trade_id, trade_ts, trade_date, account_iban, customer_email,\n             customer_phone, card_pan, isin, side, quantity, price, currency, venue_mic,\n             trader_id, counterparty_lei, notes, record_digest\n      FROM trades\nsinks:\n";
    let after = &spec[end..];
    let sinks = after.find("sinks:\n").map_or("", |i| &after[i + 7..]);
    format!(
        "{}    protect:\n{keep}transforms:\n{sql}{}",
        &spec[..start],
        sinks.replace("audience: internal", "audience: restricted")
    )
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
    // The reference keys come from the environment (WORKLOAD.md A.2); without them the
    // benchmark uses fixed test-only keys written to files in the work folder.
    let mut spec_text = include_str!("../../../examples/reference_trades.yaml")
        .replace("data/trades_*.csv", &csv.display().to_string())
        .replace(
            "parquet: { path: out/clean.parquet }",
            &format!(
                "{}: {{ path: out/clean, compression: {} }}",
                name(a.sink),
                name(a.compression)
            ),
        );
    for (var, fill) in [("PEERS_HMAC_KEY", "11"), ("PEERS_AES_KEY", "22")] {
        if std::env::var_os(var).is_none() {
            let f = work.join(var.to_lowercase());
            std::fs::write(&f, fill.repeat(32))?;
            spec_text = spec_text.replace(&format!("env:{var}"), &format!("file:{}", f.display()));
        }
    }
    let spec_text = match a.protection {
        Switch::On => spec_text,
        Switch::Off => without_protection(&spec_text),
    };
    let spec_text = match a.batch_rows {
        None => spec_text,
        Some(0) => bail!("--batch-rows must be at least 1"),
        Some(_) if !spec_text.contains("batch_rows: 65536") => {
            bail!("the reference spec no longer says `batch_rows: 65536`; update the bench")
        }
        Some(n) => spec_text.replace("batch_rows: 65536", &format!("batch_rows: {n}")),
    };
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
        skip_commitments_for_benchmark: a.custody == Switch::Off,
        openlineage: None,
        stop: None,
        row_format: Default::default(),
        reload_inputs_of: Vec::new(),
    };
    if a.input == Input::Warm {
        // The pre-read's speed says how much of the file was cached before it.
        let (n, s) = read_through(&csv)?;
        outln!(
            "input read once before timing: {:.0} MB in {s:.2} s ({:.0} MB/s)",
            n as f64 / 1e6,
            n as f64 / 1e6 / s.max(1e-9)
        );
    }
    let (user0, sys0) = sealtrail_core::cpu_seconds();
    let t = std::time::Instant::now();
    let r = sealtrail_engine::run(&p, &opts).await?;
    let secs = t.elapsed().as_secs_f64();
    let (user1, sys1) = sealtrail_core::cpu_seconds();
    let rows = r.counts.rows_in as f64;
    outln!(
        "rows_in {}  loaded {}  quarantined {}",
        r.counts.rows_in,
        r.counts.rows_loaded,
        r.counts.rows_quarantined
    );
    outln!(
        "seconds {secs:.2}  rows/s {:.0}  peak RSS {:.0} MiB  sink {} ({})  protection {}  custody {}  input {}",
        rows / secs,
        sealtrail_core::peak_rss_mib(),
        name(a.sink),
        name(a.compression),
        name(a.protection),
        name(a.custody),
        name(a.input)
    );
    outln!(
        "CPU {:.2} s user + {:.2} s system: {:.2} CPU-s per million rows, {:.2} cores busy",
        user1 - user0,
        sys1 - sys0,
        (user1 - user0 + sys1 - sys0) / rows.max(1.0) * 1e6,
        (user1 - user0 + sys1 - sys0) / secs
    );
    outln!(
        "clean rows on disk: {:.1} MB",
        bytes_under(&work.join("out/clean")) as f64 / 1e6
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
