//! Per-value cost of each protection action, in ns/value, on realistic values.
//!
//!   cargo run --profile bench -p sealtrail-protect --example protect_bench [N]
//!
//! Each action runs N times over a pool of 1,000 generated values; the figure is wall time
//! divided by N (single thread). BENCHMARKS.md records the results.

use arrow::array::Array;
use sealtrail_protect::detect;
use sealtrail_protect::keyring::KeyBytes;
use sealtrail_protect::ops::{self, Fpe, Mask, Sealer, Tokenizer};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let key = KeyBytes::from_slice(&[5; 32]).expect("32 bytes");
    let emails: Vec<String> = (0..1000)
        .map(|i| format!("person.{i}@example-bank.com"))
        .collect();
    let pans: Vec<String> = (0..1000u64)
        .map(|i| format!("4{:015}", i * 7_919_113))
        .collect();
    let phones: Vec<String> = (0..1000).map(|i| format!("+44 20 7946 {i:04}")).collect();
    let notes: Vec<String> = (0..1000)
        .map(|i| {
            if i % 20 == 0 {
                format!("client called about trade {i}, reach at person{i}@example.com")
            } else {
                format!("settled late, desk to confirm allocation {i} with counterparty")
            }
        })
        .collect();
    let mut out = String::with_capacity(256);
    let mut bench = |name: &str, pool: &[String], f: &mut dyn FnMut(&str, &mut String)| {
        let t = Instant::now();
        for i in 0..n {
            out.clear();
            f(black_box(&pool[i % pool.len()]), &mut out);
            black_box(&out);
        }
        println!(
            "{name:<28} {:>8.1} ns/value",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    };
    let tok = Tokenizer::new(&key);
    bench("token (HMAC-SHA256, hex)", &emails, &mut |v, o| {
        tok.token(v.as_bytes(), o)
    });
    let seal = Sealer::new("email@1", &key);
    bench("encrypt (AES-256-GCM, b64)", &emails, &mut |v, o| {
        seal.seal(v.as_bytes(), o)
    });
    let fpe = Fpe::new(&key, b"card");
    bench("fpe (FF1, 16 digits)", &pans, &mut |v, o| {
        o.push_str(&fpe.encrypt(v).unwrap_or_default())
    });
    bench("hash (SHA-256, hex)", &emails, &mut |v, o| {
        ops::hash(v.as_bytes(), o)
    });
    let m = Mask {
        keep_first: 0,
        keep_last: 2,
        fixed: None,
        digits_only: true,
        with: Some('*'),
    };
    bench("mask (digits, keep last 2)", &phones, &mut |v, o| {
        m.apply(v, o)
    });
    bench("derive email_domain", &emails, &mut |v, o| {
        o.push_str(&ops::email_domain(v).unwrap_or_default())
    });
    bench("generalise band", &pans, &mut |v, o| {
        o.push_str(&ops::band(v.len() as f64 * 1000.0, &[1e3, 1e4, 1e5]))
    });
    bench("redact (free text scan)", &notes, &mut |v, o| {
        ops::redact(v, "[REDACTED]", o)
    });
    bench("classify value", &emails, &mut |v, o| {
        if detect::value_kind(v).is_some() {
            o.push('x')
        }
    });
    // The release guard on a raw column bound for an `internal` sink, per value, on the
    // reference job's kinds of raw values and on values it stops.
    let spec = "version: 1\npipeline: p\nsources:\n  s:\n    csv: { path: x.csv }\n    columns: [{ name: c }]\nsinks:\n  o: { from: s, audience: internal, parquet: { path: o } }\nquarantine: { parquet: { path: q } }\n";
    let source = sealtrail_spec::parse_str(spec, "p.yaml".as_ref())
        .expect("spec")
        .sources
        .remove(0);
    let guard =
        sealtrail_protect::guard::Guard::new(&source, 0, sealtrail_spec::Audience::Internal, "o")
            .expect("a guard");
    let pools: [(&str, Vec<String>); 4] = [
        (
            "guard: short codes",
            (0..1000).map(|i| format!("TR{:05}", i * 7)).collect(),
        ),
        (
            "guard: trade ids",
            (0..1000)
                .map(|i| format!("TRD-{:012}", i * 7_919))
                .collect(),
        ),
        (
            "guard: LEIs (cleared)",
            (0..1000)
                .map(|_| "5493001KJTIIGC8Y1R12".to_string())
                .collect(),
        ),
        ("guard: emails (stopped)", emails.clone()),
    ];
    for (name, pool) in pools {
        let values = arrow::array::StringArray::from(pool);
        let rounds = (n / values.len()).max(1);
        let t = Instant::now();
        let mut stopped = 0;
        for _ in 0..rounds {
            stopped += black_box(guard.inspect(black_box(&values), |_| false)).len();
        }
        println!(
            "{name:<28} {:>8.1} ns/value ({stopped} stopped)",
            t.elapsed().as_nanos() as f64 / (rounds * values.len()) as f64
        );
    }
}
