//! Ledger benchmark without building the whole `sealtrail` binary (the reference numbers in
//! BENCHMARKS.md come from it; `sealtrail ledger bench` measures the same appends):
//!
//! ```text
//! cargo run --profile bench -p sealtrail-ledger --example ledger_bench -- append DIR 10000000 256
//! cargo run --profile bench -p sealtrail-ledger --example ledger_bench -- verify DIR
//! cargo run --profile bench -p sealtrail-ledger --example ledger_bench -- pg URL 200000 256
//! ```
//! `append` writes DIR/ledger with durable group commits of 4096 entries; `verify` checks it
//! with 2 threads; `pg` appends to a scratch schema of a PostgreSQL database and drops it.
//! Each prints entries/s and the process's peak RSS.

use sealtrail_ledger::entry::Event;
use sealtrail_ledger::log::{LedgerLog, LogWriter, OpenMode};
use sealtrail_ledger::note::NoteSigner;
use std::path::Path;
use std::time::Instant;

const ORIGIN: &str = "bench.example/ledger";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[7; 32]).expect("key")
}

fn events(from: u64, n: u64, payload: usize) -> Vec<Event> {
    let pad = "x".repeat(payload.saturating_sub(100));
    (from..from + n)
        .map(|i| Event::RunFailed {
            run_id: format!("bench-{i}"),
            error: pad.clone(),
        })
        .collect()
}

fn append(log: &mut dyn LedgerLog, entries: u64, payload: usize, batch: u64) -> f64 {
    let t = Instant::now();
    let mut done = 0;
    while done < entries {
        let n = batch.min(entries - done);
        log.append(events(done, n, payload)).expect("append");
        done += n;
    }
    entries as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "append" => {
            let dir = Path::new(arg(1)).join("ledger");
            let n: u64 = arg(2).parse().expect("entries");
            let payload: usize = arg(3).parse().unwrap_or(256);
            let mut w =
                LogWriter::open(&dir, ORIGIN, signer(), OpenMode::FailClosed).expect("open");
            let rate = append(&mut w, n, payload, 4096);
            println!(
                "append: {n} entries of ~{payload} B, group commit 4096: {rate:.0} entries/s, peak RSS {:.0} MiB",
                sealtrail_core::peak_rss_mib()
            );
        }
        "verify" => {
            let dir = Path::new(arg(1)).join("ledger");
            let t = Instant::now();
            let v = sealtrail_ledger::verify::verify(&dir, &signer().verifier(), None, 2)
                .expect("the ledger verifies");
            println!(
                "verify: {} entries, 2 threads: {:.0} entries/s, peak RSS {:.0} MiB",
                v.size,
                v.size as f64 / t.elapsed().as_secs_f64(),
                sealtrail_core::peak_rss_mib()
            );
        }
        "pg" => {
            let url = arg(1);
            let n: u64 = arg(2).parse().expect("entries");
            let payload: usize = arg(3).parse().unwrap_or(256);
            let schema = format!("st_ledger_bench_{}", std::process::id());
            let mut l =
                sealtrail_ledger::pg::PgLedger::connect(url, &schema, Some(signer()), "bench")
                    .expect("connect");
            l.init().expect("init");
            let rate = append(&mut l, n, payload, 4096);
            println!(
                "pg append: {n} entries of ~{payload} B, one transaction per 4096: {rate:.0} entries/s"
            );
            let dir = std::env::temp_dir().join(&schema);
            let t = Instant::now();
            let v = l
                .verify(&dir, &signer().verifier(), None, 2)
                .expect("the ledger verifies");
            println!(
                "pg export + verify: {} entries: {:.0} entries/s",
                v.size,
                v.size as f64 / t.elapsed().as_secs_f64()
            );
            let _ = std::fs::remove_dir_all(&dir);
            drop(l);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&mut c)
                    .await
                    .expect("drop the scratch schema");
            });
        }
        _ => eprintln!(
            "usage: ledger_bench append DIR N [PAYLOAD] | verify DIR | pg URL N [PAYLOAD]"
        ),
    }
}
