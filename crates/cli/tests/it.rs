//! End-to-end tests of the `sealtrail` binary: real files, real Delta/Parquet output read
//! back by Python's `deltalake`/`pyarrow`, real PostgreSQL, SIGKILL in the middle of runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sealtrail"));
    c.env_remove("SEALTRAIL_HOME")
        .env_remove("SEALTRAIL_STATE_URL");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("spawn sealtrail");
    assert!(
        out.status.success(),
        "failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Python with deltalake, pyarrow and Faker (installed from PyPI on first use).
fn python() -> Command {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = Command::new("python3")
            .args(["-c", "import deltalake, pyarrow, faker"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let st = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "deltalake",
                    "pyarrow",
                    "Faker==40.54.0",
                ])
                .status()
                .expect("python3 is required");
            assert!(
                st.success(),
                "pip install deltalake pyarrow Faker failed; the tests need PyPI"
            );
        }
    });
    Command::new("python3")
}

fn py(script: &str) -> String {
    let out = python().args(["-c", script]).output().expect("python3");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        script,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A folder with generated data and a copy of an example spec.
fn project(spec: &str, rows: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        bin()
            .args(["generate", "--rows", &rows.to_string(), "--dir"])
            .arg(dir.path().join("data")),
    );
    let text = std::fs::read_to_string(root().join("examples").join(spec)).unwrap();
    let path = dir.path().join(spec);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn counts(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("rows in"))
        .unwrap_or_else(|| panic!("no counts in {stdout}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn every_example_checks_and_runs() {
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".yaml") {
            continue;
        }
        let (_dir, spec) = project(&name, 4000);
        let out = run_ok(bin().arg("check").arg(&spec));
        assert!(out.contains(": ok"), "{out}");
        let out = run_ok(bin().arg("run").arg(&spec));
        let (rin, loaded, q) = counts(&out);
        assert!(rin > 0 && q > 0 && rin == loaded + q, "{name}: {out}");
    }
}

#[test]
fn outputs_are_readable_by_python_with_the_same_values() {
    let (dir, spec) = project("trades.yaml", 5000);
    let out = run_ok(bin().arg("run").arg(&spec));
    let (rin, loaded, q) = counts(&out);
    let d = dir.path().display();
    // Python parses the CSV itself and compares every loaded trade id and price with Delta,
    // and every quarantined line number and raw bytes with the file.
    let script = format!(
        r#"
import csv, deltalake, pyarrow.dataset as ds, decimal
t = deltalake.DeltaTable('{d}/out/trades_clean').to_pyarrow_table()
q = ds.dataset('{d}/out/quarantine/trades', format='parquet').to_table()
lines = open('{d}/data/trades_5000.csv', 'rb').read().split(b'\n')
bad = {{r['line']: r for r in q.to_pylist()}}
for ln, r in bad.items():
    assert r['raw'] == lines[ln - 1], (ln, r['raw'], lines[ln - 1])
good = {{}}
for i, raw in enumerate(lines[1:], start=2):
    if raw and i not in bad:
        row = next(csv.reader([raw.decode()]))
        good[row[0]] = decimal.Decimal(row[11])
got = dict(zip(t.column('trade_id').to_pylist(), t.column('price').to_pylist()))
assert got == good, (len(got), len(good))
assert 'customer_name' not in t.schema.names
print(t.num_rows, q.num_rows)
"#
    );
    assert_eq!(py(&script), format!("{loaded} {q}"));
    assert_eq!(rin, 5000);
}

#[test]
fn quarantine_matches_the_reference_generator_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let st = python()
        .arg(root().join("bench/gen_trades.py"))
        .args(["20000", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    if !st.status.success() && !root().join("bench/gen_trades.py").exists() {
        panic!("bench/gen_trades.py is missing from the checkout");
    }
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let spec = dir.path().join("trades.yaml");
    std::fs::write(
        &spec,
        std::fs::read_to_string(root().join("examples/trades.yaml")).unwrap(),
    )
    .unwrap();
    let out = run_ok(bin().arg("run").arg(&spec));
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("trades_20000.manifest.json")).unwrap(),
    )
    .unwrap();
    let (rin, loaded, q) = counts(&out);
    assert_eq!(rin, m["expected"]["rows_in"].as_u64().unwrap());
    assert_eq!(loaded, m["expected"]["rows_valid"].as_u64().unwrap());
    assert_eq!(q, m["expected"]["rows_quarantined"].as_u64().unwrap());
    for (reason, n) in m["expected"]["quarantine_by_reason"].as_object().unwrap() {
        assert!(
            out.contains(&format!("{:>6} × {reason}", n.as_u64().unwrap())),
            "{reason}: {out}"
        );
    }
}

/// Kills the run with SIGKILL at several points, re-runs, and checks every record is loaded
/// or quarantined exactly once.
#[test]
fn sigkill_then_rerun_loads_every_record_exactly_once() {
    let (dir, spec) = project("trades.yaml", 30_000);
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("batch_rows: 65536", "batch_rows: 400");
    std::fs::write(&spec, text).unwrap();
    let audit = dir.path().join(".sealtrail/audit.jsonl");
    let committed = || {
        std::fs::read_to_string(&audit)
            .map(|s| s.matches("\"batch_committed\"").count())
            .unwrap_or(0)
    };
    let mut kills = 0;
    for target in [1usize, 4, 9, 17, 26, 40] {
        let mut child = bin()
            .arg("run")
            .arg(&spec)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if committed() >= target || start.elapsed().as_secs() > 120 {
                child.kill().unwrap(); // SIGKILL on Unix
                kills += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.wait().unwrap();
    }
    assert!(kills >= 3, "the runs finished before they could be killed");
    let out = run_ok(bin().arg("run").arg(&spec));
    assert!(out.contains("(resumed)"), "{out}");
    let d = dir.path().display();
    let res = py(&format!(
        r#"
import deltalake, pyarrow.dataset as ds
t = deltalake.DeltaTable('{d}/out/trades_clean').to_pyarrow_table()
q = ds.dataset('{d}/out/quarantine/trades', format='parquet').to_table()
ids = t.column('trade_id').to_pylist()
lines = q.column('line').to_pylist()
assert len(ids) == len(set(ids)), 'duplicate loads'
assert len(lines) == len(set(lines)), 'duplicate quarantine rows'
print(len(ids) + len(lines), len(lines))
"#
    ));
    let n: Vec<u64> = res.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(n[0], 30_000, "every record loaded or quarantined once");
    // The generator injects 0.5% defects: round(30000 * 0.005 / 9) = 17 per kind, 153 in all.
    assert_eq!(n[1], 153);
}

#[test]
fn spec_errors_are_reported_all_at_once_with_locations() {
    let (dir, spec) = project("trades.yaml", 100);
    let text = std::fs::read_to_string(&spec).unwrap();
    let bad = text
        .replace("column: isin, scheme: isin", "column: isinn, scheme: isin")
        .replace("type: int64", "type: integer")
        .replace("FROM trades", "FROM trade");
    std::fs::write(&spec, bad).unwrap();
    let out = bin().arg("check").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "`isinn`, which is not declared",
        "unknown type `integer`",
        "reads `trade`",
        "hint:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("trades.yaml:"), "{err}");
    // A typo in a key is an error too, with its line.
    std::fs::write(&spec, text.replace("batch_rows:", "batch_row:")).unwrap();
    let out = bin().arg("check").arg(&spec).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("trades.yaml:6:1: unknown field `batch_row`"),
        "{err}"
    );
    drop(dir);
}

#[test]
fn unreadable_or_mismatched_sources_fail_and_write_nothing() {
    let (dir, spec) = project("trades.yaml", 100);
    // A header that lacks a required column: nothing may be written anywhere.
    let csv = dir.path().join("data/trades_100.csv");
    let body = std::fs::read_to_string(&csv)
        .unwrap_or_else(|_| String::from_utf8_lossy(&std::fs::read(&csv).unwrap()).into_owned());
    std::fs::write(
        dir.path().join("data/trades_zz.csv"),
        body.replacen("trade_id,", "tradeid,", 1),
    )
    .unwrap();
    let out = bin().arg("run").arg(&spec).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("required column(s) trade_id missing") && err.contains("trades_zz.csv"),
        "{err}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "output written by a failed run"
    );
    // A path without wildcards that does not exist.
    std::fs::write(
        &spec,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("data/trades_*.csv", "data/nope.csv"),
    )
    .unwrap();
    let out = bin().arg("run").arg(&spec).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("nope.csv") && err.contains("no such file"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}

#[test]
fn secrets_in_specs_are_refused_without_being_echoed() {
    let (_dir, spec) = project("trades.yaml", 100);
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "delta: { path: out/trades_clean }",
        "postgres: { url: 'postgres://etl:Sup3rS3cret@db/x', table: trades }",
    );
    std::fs::write(&spec, text).unwrap();
    let out = bin().arg("check").arg(&spec).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("password in clear") && all.contains("env:NAME"),
        "{all}"
    );
    assert!(!all.contains("Sup3rS3cret"), "{all}");
}

#[test]
fn incremental_files_are_loaded_once() {
    let (dir, spec) = project("customers.yaml", 2000);
    let (a, ..) = counts(&run_ok(bin().arg("run").arg(&spec)));
    assert_eq!(a, 200);
    let (b, ..) = counts(&run_ok(bin().arg("run").arg(&spec)));
    assert_eq!(b, 0, "nothing new to load");
    let src = dir.path().join("data/customers_200.jsonl");
    std::fs::copy(&src, dir.path().join("data/customers_new.jsonl")).unwrap();
    // Only the new file is read (`unique` state is per run, so its ids load again).
    let (c, l, q) = counts(&run_ok(bin().arg("run").arg(&spec)));
    assert_eq!((c, l + q), (200, 200));
}

#[test]
fn run_state_works_in_postgres() {
    let url = std::env::var("SEALTRAIL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (dir, spec) = project("trades.yaml", 3000);
    // A pipeline name unique to this test run: the state tables are shared.
    let name = format!("trades_pg_{}", std::process::id());
    std::fs::write(
        &spec,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("pipeline: trades", &format!("pipeline: {name}")),
    )
    .unwrap();
    let out = run_ok(bin().arg("run").arg(&spec).args(["--state-url", &url]));
    let (rin, ..) = counts(&out);
    assert_eq!(rin, 3000);
    let runs = run_ok(bin().args(["runs", "--pipeline", &name, "--state-url", &url]));
    assert!(
        runs.contains("succeeded") && runs.contains("3000"),
        "{runs}"
    );
    drop(dir);
}

#[test]
fn schema_is_json_and_describes_the_spec() {
    let out = run_ok(bin().arg("schema"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["title"], "PipelineSpec");
    assert!(v["properties"]["sources"].is_object());
}

#[test]
fn audit_events_cover_the_run() {
    let (dir, spec) = project("trades.yaml", 1000);
    run_ok(bin().arg("run").arg(&spec));
    let text = std::fs::read_to_string(dir.path().join(".sealtrail/audit.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "run_started");
    assert_eq!(events.last().unwrap()["event"], "run_ended");
    assert!(events.iter().any(|e| e["event"] == "records_quarantined"));
    // No record values in the audit log: no e-mail, IBAN or trade id from the input.
    for leak in ["@example", "@bank.example", "WEST", "TRD-"] {
        assert!(
            !text.contains(leak),
            "record values ({leak}) leaked into the audit log"
        );
    }
}
