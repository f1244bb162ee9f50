//! `sealtrail`: the command-line interface. Thin: parsing arguments, printing, exit codes.

/// `println!` that ends the process quietly when stdout is closed (`sealtrail ... | head`)
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod bench;
mod custody_cmd;
mod ledger_cmd;
mod protect_cmd;
mod reencrypt_cmd;
mod retire_cmd;
mod synth;
mod table;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sealtrail_engine::custody::RowFormat;
use sealtrail_engine::{RunOptions, RunReport};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "sealtrail",
    version,
    about = "Move sensitive financial data with checks, quarantine and a chain of custody.",
    long_about = None,
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate a synthetic financial dataset and run the bundled example pipelines on it.
    Demo {
        /// Folder to create the demo in.
        #[arg(long, default_value = "sealtrail-demo")]
        dir: PathBuf,
        /// Number of trades to generate (customers: a tenth of it).
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
    },
    /// Run (or resume) a pipeline.
    Run {
        /// The pipeline spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        state: StateArgs,
        /// Give up an unfinished earlier run instead of resuming it.
        #[arg(long)]
        abandon_unfinished: bool,
        /// Run although the ledger records runs of the pipeline that the state store does not
        /// know (a lost store, another one, an older copy): go on with this store, loading
        /// again the inputs those runs loaded.
        #[arg(long)]
        fresh_state: bool,
        /// The first run of a pipeline is refused when it would load inputs that another
        /// pipeline of the state store loaded under a source of the same name (a renamed
        /// pipeline would load them all again): load them again anyway, naming that pipeline
        /// (repeatable).
        #[arg(long, value_name = "PIPELINE")]
        reload_inputs_of: Vec<String>,
        /// Send OpenLineage run events (START, COMPLETE, FAIL) to this file (JSON Lines,
        /// appended) or HTTP endpoint (`http(s)://...`, POST per event; an API key in
        /// SEALTRAIL_OPENLINEAGE_API_KEY, or in the file SEALTRAIL_OPENLINEAGE_API_KEY_FILE
        /// names, is sent as `Authorization: Bearer`).
        #[arg(long, env = "SEALTRAIL_OPENLINEAGE", hide_env_values = true)]
        openlineage: Option<String>,
        /// Row format of the output commitments: 2 (binary, the default) or 1 (JSON, as
        /// versions before row format 2 wrote them; for compatibility tests only).
        #[arg(long, hide = true, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        row_format: u8,
        /// `text` for people; `json` for schedulers: one document on standard output, `{"ok":
        /// true, "pipeline", "run_id", "resumed", "rows_in", "loaded", "quarantined",
        /// "by_reason", "sources", "sinks": [{"name", "rows", "location"}], "quarantine", "grown":
        /// [{"source", "input", "read_past_bytes"}], "deferred": [{"source", "files"}]}`
        /// (`by_reason` counts the batches this process committed: a resumed run's earlier ones
        /// are in `quarantined` only; `grown` lists files that grew since a run loaded them, of
        /// which only the records added were loaded; `deferred` counts files younger than the
        /// source's `min_age`, left for a later run), or `{"ok": false, "error", "exit_code"}` when it
        /// fails (the error goes to standard error too; the exit code is the same either way).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Check specs: report every error with file, line, column and a hint.
    Check {
        /// The pipeline specs (YAML) to check.
        #[arg(required = true)]
        specs: Vec<PathBuf>,
        /// `text` for people; `json` for editors and CI: one document on standard output,
        /// `{"ok": .., "specs": [{"file", "ok", "errors": [{"line", "column", "message",
        /// "hint"}], "notes": [..]}]}` (line and column are null for a spec that cannot be
        /// read). The exit code is 2 when any spec has errors, in both formats.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Also classify each source's columns from a sample of its data (its first 1,000
        /// records, as a run samples them), so that a column whose values are sensitive and
        /// that has no policy is reported here, not first by `run`. Without it, `check` reads
        /// no data (columns are classified by name and declaration). A source that cannot be
        /// read is an error of its spec.
        #[arg(long)]
        data: bool,
    },
    /// Print the JSON Schema of pipeline specs (for editor autocompletion).
    Schema,
    /// List recent runs with their counts and status.
    Runs {
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many runs, the newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// `text`, or `json`: one array on standard output, a run an object (`run_id`,
        /// `pipeline`, `status`, `started_at`, `ended_at`, `rows_in`, `loaded`, `quarantined`,
        /// `error`), the newest first. Status: `running`, `succeeded`, `failed` (the next
        /// `run` resumes it), `failed_before_load` (failed before any sink received a batch:
        /// the next `run` starts afresh, under any spec), `abandoned`, or `interrupted`
        /// (recorded as running, but no process runs it: killed; the next `run` resumes it).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run the reference trades job on a gen_trades.py file and print rows/s and peak memory.
    Bench(bench::BenchArgs),
    /// The tamper-evident ledger: init, verify, sign, export, prove, show, recover, bench.
    Ledger {
        /// Folder holding `ledger/`, `ledger.key` and `ledger.pub` (default `.sealtrail`).
        #[arg(long, env = "SEALTRAIL_HOME", global = true)]
        home: Option<PathBuf>,
        #[command(flatten)]
        ledger: ledger_cmd::LedgerArgs,
        #[command(subcommand)]
        cmd: ledger_cmd::LedgerCmd,
    },
    /// Classify every source column of a spec (tag, kind, confidence) from a sample of its data,
    /// and show which policy protects it.
    Classify {
        /// The pipeline spec whose sources to sample.
        spec: PathBuf,
        /// Records to sample from each source's first input.
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        /// Show instead the classification the last run stored with the dataset.
        #[arg(long)]
        stored: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// The keyring: list keys, rotate an encryption key, re-encrypt and retire old versions,
    /// change the master key, shred a data subject's key.
    Keys {
        /// Folder holding `keyring.json` (and `master.key`, unless the master key comes from
        /// the environment) and the ledger that records key events (default `.sealtrail`).
        #[arg(long, env = "SEALTRAIL_HOME", global = true)]
        home: Option<PathBuf>,
        #[command(flatten)]
        ledger: ledger_cmd::LedgerArgs,
        #[command(subcommand)]
        cmd: protect_cmd::KeysCmd,
    },
    /// Decrypt values for an authorised user; every use is recorded in the ledger.
    Decrypt {
        /// Folder holding the keyring and the ledger that records the decryption (default
        /// `.sealtrail`).
        #[arg(long, env = "SEALTRAIL_HOME")]
        home: Option<PathBuf>,
        #[command(flatten)]
        ledger: ledger_cmd::LedgerArgs,
        #[command(flatten)]
        args: protect_cmd::DecryptArgs,
    },
    /// Quarantined records: list them, or show their (encrypted) raw content to an authorised
    /// user, recorded in the ledger.
    Quarantine {
        /// Folder holding the keyring and the ledger that records who saw what (default: the
        /// `.sealtrail` folder beside the spec when the quarantine is named by one, else
        /// `.sealtrail` in the working folder).
        #[arg(long, env = "SEALTRAIL_HOME", global = true)]
        home: Option<PathBuf>,
        #[command(flatten)]
        ledger: ledger_cmd::LedgerArgs,
        #[command(subcommand)]
        cmd: protect_cmd::QuarantineCmd,
    },
    /// Prove one delivered row: write a self-contained bundle linking the row, its source
    /// record and its batch to a signed ledger checkpoint (check it with `verify-proof`).
    Prove {
        /// The pipeline spec that delivered the row.
        spec: PathBuf,
        /// The sink holding the row.
        #[arg(long)]
        sink: String,
        #[command(flatten)]
        row: custody_cmd::RowSelector,
        /// The run whose delivery of the record to prove, when several runs delivered it (a
        /// file read again keeps its records' ids); default: the newest.
        #[arg(long, requires = "id")]
        run: Option<String>,
        /// Write the bundle here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Check a proof bundle offline with the ledger's public key; with --table (or --spec),
    /// also check that the row still sits unchanged in the sink.
    /// Exit 0: verified; 4: the proof or the row does not check out.
    VerifyProof {
        /// The proof bundle (JSON) that `prove` wrote.
        bundle: PathBuf,
        /// Ledger verifier key (`name+id+key`) or a file holding it (default
        /// `<home>/ledger.pub`).
        #[arg(long)]
        key: Option<String>,
        /// Folder holding `ledger.pub`, when --key is not given (default `.sealtrail`).
        #[arg(long, env = "SEALTRAIL_HOME")]
        home: Option<PathBuf>,
        /// The sink's table as it is now (a Delta table or a folder of Parquet files, or an
        /// `s3://` Delta table, with the `AWS_*` environment).
        #[arg(long, conflicts_with = "spec")]
        table: Option<PathBuf>,
        /// The pipeline spec: check the row in the bundle's sink as that spec names it (any
        /// sink, PostgreSQL included; credentials come from the spec's `env:`/`file:`
        /// references).
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Recompute every row commitment of a sink and compare with the ledger: lists each row
    /// changed, deleted or added since delivery. Exit 0: as delivered; 4: differences.
    Audit {
        /// The pipeline spec that delivered the sink's rows.
        spec: PathBuf,
        /// The sink to audit (a name under the spec's `sinks:`).
        #[arg(long)]
        sink: String,
        /// Print the findings as JSON (every row, and the counts per batch).
        #[arg(long)]
        json: bool,
        /// List every changed, deleted and added row (by default the first 20 of each kind;
        /// the counts, per batch and in all, are always whole).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Lineage: every sink column traced through the SQL and the protection policies to its
    /// source column; with --id, one record's path through each batch that carried it.
    Lineage {
        /// The pipeline spec.
        spec: PathBuf,
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
        /// A record's lineage id (`source:input:position`, the `_sealtrail_id` of its rows).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Generate synthetic input files without running anything.
    Generate {
        /// Folder to write into.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
        /// Number of trades (customers: a tenth of it).
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Seed of the generator: the same seed makes the same files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct StateArgs {
    /// Folder for run state and the audit log (default: `.sealtrail` beside the spec, or in
    /// the current folder).
    #[arg(long, env = "SEALTRAIL_HOME")]
    home: Option<PathBuf>,
    /// Run state store: `sqlite://PATH` (default `<home>/state.db`) or `postgres://...`.
    #[arg(long, env = "SEALTRAIL_STATE_URL", hide_env_values = true)]
    state_url: Option<String>,
    #[command(flatten)]
    ledger: ledger_cmd::LedgerArgs,
}

impl StateArgs {
    fn home(&self, spec: Option<&Path>) -> PathBuf {
        self.home.clone().unwrap_or_else(|| {
            spec.and_then(Path::parent)
                .map(|d| d.join(".sealtrail"))
                .unwrap_or_else(|| PathBuf::from(".sealtrail"))
        })
    }
    fn url(&self, home: &Path) -> String {
        self.state_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                std::path::absolute(home.join("state.db"))
                    .unwrap_or_else(|_| home.join("state.db"))
                    .display()
            )
        })
    }
}

/// The exit codes, as `--help` and the README state them.
const EXIT_CODES: &str = "Exit codes (for schedulers and scripts):
  0   done: run loaded, verified, nothing changed
  2   the command or a spec is wrong: every problem is listed, fix them and run it again
  3   the work could not be done (a source, sink, database or file; the message says which)
  4   integrity: a run that does not balance, a ledger, proof or sink whose data was changed
  5   the ledger's checkpoint is older than `--max-age` (stale)
  70  a bug in sealtrail: its location is printed; an interrupted run resumes when run again
  130, 143  stopped by SIGINT or SIGTERM: a run ends at the next batch boundary, recorded as
      stopped, and resumes when run again (a second signal stops it at once)";

/// Exit codes: what kind of failure it was, for schedulers and scripts.
mod exit {
    pub const USER: i32 = 2;
    pub const EXECUTION: i32 = 3;
    pub const INTEGRITY: i32 = 4;
    pub const INTERNAL: i32 = 70;
    /// Stopped by a signal (128 + its number, as a shell reports it).
    pub const SIGINT: i32 = 130;
    pub const SIGTERM: i32 = 143;
}

/// A connection URL with a password given on the command line, where every user of the
/// machine can read it (`ps`, `/proc/PID/cmdline`) and shell histories keep it: refused, naming
/// the option and the environment variable to use instead, never the value. The same value from
/// that variable is accepted: clap says where each value came from.
fn password_on_command_line(m: &clap::ArgMatches) -> Option<String> {
    for (id, flag, var) in [
        ("state_url", "--state-url", "SEALTRAIL_STATE_URL"),
        ("ledger_url", "--ledger-url", "SEALTRAIL_LEDGER_URL"),
        ("openlineage", "--openlineage", "SEALTRAIL_OPENLINEAGE"),
    ] {
        // `try_get_one` first: it is an error (not a panic) for an id the level does not define
        // (a global option propagated to the top), which `value_source` panics on.
        let given = matches!(
            m.try_get_one::<String>(id),
            Ok(Some(v)) if sealtrail_core::secret::url_has_password(v)
        ) && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        if given {
            return Some(format!(
                "{flag} holds a password on the command line, where every user of this machine can read it (ps) and shell histories keep it; set {var} instead (or authenticate without a password in the URL: a .pgpass file, a client certificate)"
            ));
        }
    }
    m.subcommand()
        .and_then(|(_, sub)| password_on_command_line(sub))
}

/// A command line whose value is wrong (exit code 2): the message says what to fix.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn exit_code(e: &anyhow::Error) -> i32 {
    use sealtrail_engine::Error as E;
    if e.downcast_ref::<UsageError>().is_some() {
        return exit::USER;
    }
    if let Some(e) = e.downcast_ref::<E>() {
        return match e {
            E::Spec(_) | E::UnfinishedRun { .. } | E::LoadedByAnotherPipeline { .. } => exit::USER,
            E::Integrity { .. } => exit::INTEGRITY,
            E::Internal(_) | E::StageStopped { .. } => exit::INTERNAL,
            E::Stopped { signal, .. } | E::NotStarted { signal, .. } => match signal.as_str() {
                "SIGINT" => exit::SIGINT,
                _ => exit::SIGTERM,
            },
            _ => exit::EXECUTION,
        };
    }
    if e.downcast_ref::<sealtrail_spec::Error>().is_some() {
        return exit::USER;
    }
    exit::EXECUTION
}

/// Panic reports say where, never what. A panic's message can quote a value (an `unwrap` of
/// an error that names its input, a card number or a key among them), and stderr ends up in CI
/// logs and tickets. The location is enough to find the bug; a developer reproducing it on test
/// data sets `SEALTRAIL_PANIC_DETAILS=1` for the full report (message and backtrace).
fn withhold_panic_messages() {
    if std::env::var_os("SEALTRAIL_PANIC_DETAILS").is_some_and(|v| v == "1") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        if caught_by_design(info) {
            return;
        }
        let at = info.location().map_or_else(
            || "an unknown place".to_string(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        eprintln!(
            "error: internal error (a bug in sealtrail) at {at}; its message is withheld because it may quote data. Please report it with the command you ran; SEALTRAIL_PANIC_DETAILS=1 shows the message (on test data only)"
        );
    }));
}

/// A panic a library raises and catches itself, by design, so that it is no bug and nothing
/// to report: `object_store`'s `BufWriter::abort` panics once a write has begun to shut down,
/// which is where a Delta data file whose last bytes could not be written (a full disk) leaves
/// it, and delta-rs aborts it under `catch_unwind` and warns (`deltalake_core::datafile`). The
/// run fails with the write's own error either way.
fn caught_by_design(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let Some(at) = info.location() else {
        return false;
    };
    at.file().contains("object_store-")
        && at.file().ends_with("buffered.rs")
        && info.payload().downcast_ref::<&str>() == Some(&"Already shut down")
}

/// `SEALTRAIL_LOG`, default `warn`; what it enables is then capped by [`log_cap`].
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("SEALTRAIL_LOG")
        // delta-kernel logs an ERROR when it opens a table folder that has no log yet, which
        // is how every new Delta sink starts; it is not an error for us.
        .unwrap_or_else(|_| "warn,buoyant_kernel::snapshot::builder=off".into())
}

/// What must never be logged, whatever `SEALTRAIL_LOG` asks: a second filter, so that a
/// target is logged only at levels both allow (a directive added to the first would raise
/// these targets to its level when `SEALTRAIL_LOG` asks less).
fn log_cap() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::TRACE)
        // sqlx warns of a URL setting it does not read with the setting's value, which can be
        // a secret, at any level. `core::db::pg_connect_options` refuses such URLs before sqlx
        // parses them; this keeps that warning out should one slip by.
        .with_target("sqlx_postgres::options::parse", LevelFilter::OFF)
        // The Delta Lake libraries' debug and trace events print a table's log as they read
        // it, column statistics included: the smallest and largest delivered value of every
        // column, raw ones for a restricted sink. Logs reach wider than a sink's audience.
        .with_target("buoyant_kernel", LevelFilter::INFO)
        .with_target("delta_kernel", LevelFilter::INFO)
        .with_target("deltalake_core", LevelFilter::INFO)
        .with_target("deltalake", LevelFilter::INFO)
}

fn main() {
    withhold_panic_messages();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let json = match std::env::var("SEALTRAIL_LOG_FORMAT").as_deref() {
            Err(_) | Ok("" | "text") => false,
            Ok("json") => true,
            Ok(other) => {
                eprintln!(
                    "error: SEALTRAIL_LOG_FORMAT is `{other}`, which is no log format: `text` (the default) or `json` (one JSON object a line, for log collectors)"
                );
                std::process::exit(exit::USER);
            }
        };
        let _ = JSON_LOGS.set(json);
        tracing_subscriber::registry()
            .with((!json).then(|| {
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only on a terminal: logs piped to a file or a collector stay
                    // plain text.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            }))
            .with(json.then(|| {
                // One object a line: `timestamp`, `level`, `target`, `fields` (with `message`)
                // and the spans the event is in, as collectors (Loki, Elastic, Splunk) take
                // them. The same filters decide what is logged.
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
            }))
            .with(log_filter())
            .with(log_cap())
            .init();
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(e) = password_on_command_line(&matches) {
        eprintln!("error: {e}");
        std::process::exit(exit::USER);
    }
    // Debug builds only (the tests' binary): a command still running after
    // `SEALTRAIL_DEBUG_DEADLINE_SECS` is a hang (a deadlock, a task spinning without
    // yielding) and ends with the internal-error code, saying so, so that the test fails
    // within minutes instead of stalling the whole suite until CI's time runs out.
    #[cfg(debug_assertions)]
    if let Some(secs) = std::env::var("SEALTRAIL_DEBUG_DEADLINE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            eprintln!(
                "error: still running after {secs} s (SEALTRAIL_DEBUG_DEADLINE_SECS): taken for a hang, ended"
            );
            std::process::exit(exit::INTERNAL);
        });
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::INTERNAL);
        }
    };
    // A panic anywhere in the command (a bug; the hook has printed where) ends it with the
    // internal-error code, like a stage's panic in a run, rather than Rust's 101.
    let command = async {
        // A debug build panics on request, so that the tests can show what a panic prints.
        #[cfg(debug_assertions)]
        if let Some(v) = std::env::var_os("SEALTRAIL_DEBUG_PANIC") {
            panic!("{}", v.to_string_lossy());
        }
        dispatch(cli.cmd).await
    };
    rt.spawn(watch_signals());
    let done = rt.block_on(std::panic::AssertUnwindSafe(command).catch_unwind());
    rt.block_on(close_states());
    match done {
        Ok(Ok(())) => {
            let code = EXIT_CODE.load(std::sync::atomic::Ordering::Relaxed);
            if code != 0 {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
        }
        Ok(Err(e)) => {
            if JSON_LOGS.get() == Some(&true) {
                // The command's failure as a collector takes it: one object, like the log's,
                // whatever the filter lets through (it is the command's result, not a log).
                let v = serde_json::json!({
                    "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    "level": "ERROR",
                    "fields": {
                        "message": e.to_string(),
                        "causes": e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>(),
                        "exit_code": exit_code(&e),
                    },
                    "target": "sealtrail",
                });
                eprintln!("{v}");
            } else {
                eprintln!("error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            std::process::exit(exit_code(&e));
        }
        Err(_) => std::process::exit(exit::INTERNAL),
    }
}

/// Whether the log is JSON (`SEALTRAIL_LOG_FORMAT=json`): the command's error is then one
/// JSON object too.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// The stop request of the run in progress, if one is ([`run_pipeline`]).
static STOP: std::sync::Mutex<Option<Arc<std::sync::OnceLock<String>>>> =
    std::sync::Mutex::new(None);

/// SIGTERM (a scheduler's timeout, a service stopping) and SIGINT (Ctrl-C): during a run, the
/// first asks it to stop at the next batch boundary, so that it ends recorded as stopped, in
/// the state store and the ledger, with nothing half-written ([`Error::Stopped`]); a second,
/// or one outside a run, ends the process at once with 128 + the signal's number, as the
/// default action would (a run ended so resumes like a killed one).
///
/// [`Error::Stopped`]: sealtrail_engine::Error::Stopped
async fn watch_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    loop {
        let (name, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 143),
            _ = int.recv() => ("SIGINT", 130),
        };
        let run = STOP.lock().ok().and_then(|g| g.clone());
        match run {
            Some(stop) if stop.set(name.to_string()).is_ok() => eprintln!(
                "{name}: the run stops once the batch being committed is (send it again to stop at once; the next run resumes either way)"
            ),
            _ => {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
        }
    }
}

/// The exit code a command asked for ([`exit_with`]), taken once it has returned.
static EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Ends the process with `code` once the command has returned and its state stores are
/// closed ([`open_state`]).
fn exit_with(code: i32) -> Result<()> {
    EXIT_CODE.store(code, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Every state store the command opened, closed before the process ends.
static OPENED: std::sync::Mutex<Vec<sealtrail_engine::state::StateStore>> =
    std::sync::Mutex::new(Vec::new());

/// Opens the state store at `url`, to be closed when the command ends, however it ends: SQLite
/// then folds its write-ahead log into the database and removes it (a process that exits
/// with connections open leaves it, tens of megabytes after a run or a re-encryption).
async fn open_state(url: &str) -> Result<sealtrail_engine::state::StateStore> {
    let st = sealtrail_engine::state::StateStore::open(url).await?;
    if let Ok(mut v) = OPENED.lock() {
        v.push(st.clone());
    }
    Ok(st)
}

/// [`open_state`] for a command that only reads what runs recorded: a SQLite store that does
/// not exist is an error that says which home was looked in (a wrong `--home`, or a command
/// run from another folder), not a new empty store and an empty answer.
async fn open_state_to_read(url: &str) -> Result<sealtrail_engine::state::StateStore> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && !Path::new(path.split('?').next().unwrap_or(path)).exists()
    {
        anyhow::bail!(
            "no run was recorded here: there is no state store at {path}; pass --home (or set SEALTRAIL_HOME) for the folder the runs used (by default `.sealtrail` beside the spec), or --state-url for their store"
        );
    }
    open_state(url).await
}

async fn close_states() {
    let opened = OPENED.lock().map(|mut v| std::mem::take(&mut *v));
    for st in opened.unwrap_or_default() {
        st.close().await;
    }
}

async fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Demo { dir, rows } => demo(&dir, rows).await,
        Cmd::Run {
            spec,
            state,
            abandon_unfinished,
            fresh_state,
            reload_inputs_of,
            openlineage,
            row_format,
            format,
        } => {
            let run = async {
                let p = sealtrail_spec::load(&spec)?;
                let home = state.home(Some(&spec));
                run_pipeline(
                    &p,
                    &home,
                    &state.ledger,
                    &state.url(&home),
                    Starting {
                        abandon: abandon_unfinished,
                        check_history: !fresh_state,
                        reload_inputs_of,
                    },
                    openlineage.as_deref(),
                    match row_format {
                        1 => RowFormat::Json,
                        _ => RowFormat::Binary,
                    },
                )
                .await
            };
            match (run.await, format) {
                (Ok(report), Format::Text) => print_report(&report),
                (Ok(report), Format::Json) => {
                    outln!("{}", serde_json::to_string_pretty(&report_json(&report))?);
                }
                (Err(e), Format::Json) => {
                    // Also on standard error and as the exit code, by `main`.
                    let v = serde_json::json!({
                        "ok": false,
                        "error": format!("{e:#}"),
                        "exit_code": exit_code(&e),
                    });
                    outln!("{}", serde_json::to_string_pretty(&v)?);
                    return Err(e);
                }
                (Err(e), Format::Text) => return Err(e),
            }
            Ok(())
        }
        Cmd::Check {
            specs,
            format,
            data,
        } => check(&specs, format, data).await,
        Cmd::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&sealtrail_spec::json_schema())?
            );
            Ok(())
        }
        Cmd::Runs {
            pipeline,
            limit,
            format,
            state,
        } => {
            let home = state.home(None);
            let st = open_state_to_read(&state.url(&home)).await?;
            let mut runs = st.runs(pipeline.as_deref(), limit).await?;
            // A run recorded as running that no process runs was interrupted (killed, or its
            // machine stopped); the next `run` of its pipeline resumes it.
            for r in &mut runs {
                if r.status == "running" && st.pipeline_running(&r.pipeline).await? == Some(false) {
                    r.status = "interrupted".into();
                }
            }
            if format == Format::Json {
                let v: Vec<serde_json::Value> = runs
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "run_id": r.run_id,
                            "pipeline": r.pipeline,
                            "status": r.status,
                            "started_at": r.started_at,
                            "ended_at": r.ended_at,
                            "rows_in": r.counts.rows_in,
                            "loaded": r.counts.rows_loaded,
                            "quarantined": r.counts.rows_quarantined,
                            "error": r.error,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut t = table::Table::new(&[
                "run",
                "pipeline",
                "status",
                ">rows in",
                ">loaded",
                ">quarantined",
                "started",
            ]);
            for r in runs {
                t.row_with(
                    vec![
                        r.run_id,
                        r.pipeline,
                        r.status.to_string(),
                        r.counts.rows_in.to_string(),
                        r.counts.rows_loaded.to_string(),
                        r.counts.rows_quarantined.to_string(),
                        r.started_at.to_string(),
                    ],
                    r.error.map(|e| format!("    error: {e}")),
                );
            }
            t.print();
            Ok(())
        }
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Prove {
            spec,
            sink,
            row,
            run,
            out,
            state,
        } => exit_with(
            custody_cmd::prove(&spec, &sink, &row, run.as_deref(), out.as_deref(), &state).await?,
        ),
        Cmd::VerifyProof {
            bundle,
            key,
            home,
            table,
            spec,
        } => {
            let home = home.unwrap_or_else(|| PathBuf::from(".sealtrail"));
            exit_with(
                custody_cmd::verify_proof(
                    &bundle,
                    key.as_deref(),
                    &home,
                    table.as_deref(),
                    spec.as_deref(),
                )
                .await?,
            )
        }
        Cmd::Lineage {
            spec,
            sink,
            id,
            state,
        } => exit_with(custody_cmd::lineage(&spec, sink.as_deref(), id.as_deref(), &state).await?),
        Cmd::Audit {
            spec,
            sink,
            json,
            all,
            state,
        } => exit_with(
            custody_cmd::audit(&spec, &sink, &state, custody_cmd::AuditOutput { json, all })
                .await?,
        ),
        Cmd::Ledger { home, ledger, cmd } => {
            let home = home.unwrap_or_else(|| PathBuf::from(".sealtrail"));
            exit_with(ledger_cmd::run(&home, &ledger, cmd)?)
        }
        Cmd::Classify {
            spec,
            rows,
            stored: false,
            ..
        } => protect_cmd::classify(&spec, rows).await,
        Cmd::Classify { spec, state, .. } => {
            let p = sealtrail_spec::load(&spec)?;
            let home = state.home(Some(&spec));
            let st = open_state_to_read(&state.url(&home)).await?;
            let rows = st.classifications(&p.name).await?;
            if rows.is_empty() {
                anyhow::bail!(
                    "no stored classification for pipeline `{}`: it has not run yet with this state store",
                    p.name
                );
            }
            let mut t = table::Table::new(&[
                "source", "column", "tag", "kind", ">conf", "run", "evidence",
            ]);
            for r in rows {
                t.row(vec![
                    r.source,
                    r.column,
                    r.tag.to_string(),
                    r.kind.unwrap_or_else(|| "-".into()),
                    format!("{:.2}", r.confidence),
                    r.run_id,
                    r.evidence,
                ]);
            }
            t.print();
            Ok(())
        }
        Cmd::Keys { home, ledger, cmd } => exit_with(protect_cmd::keys(home, &ledger, cmd).await?),
        Cmd::Decrypt { home, ledger, args } => protect_cmd::decrypt(
            &home.unwrap_or_else(|| PathBuf::from(".sealtrail")),
            &ledger,
            args,
        ),
        Cmd::Quarantine {
            home,
            ledger,
            cmd:
                protect_cmd::QuarantineCmd::Replay {
                    spec,
                    source,
                    file,
                    again,
                    state_url,
                },
        } => {
            let home = home.unwrap_or_else(|| {
                spec.parent()
                    .map(|d| d.join(".sealtrail"))
                    .unwrap_or_else(|| PathBuf::from(".sealtrail"))
            });
            let url = StateArgs {
                home: Some(home.clone()),
                state_url,
                ledger: ledger.clone(),
            }
            .url(&home);
            let source = protect_cmd::replay_source(&spec, &file, source)?;
            let (p, input, declared) =
                protect_cmd::replay_pipeline(&spec, &source, &file, &home.join("replay"))?;
            // The same records under the same spec make the same replay spec version.
            let st = open_state(&url).await?;
            if !again
                && let Some((run, at)) = st.succeeded_with_spec(&p.name, &p.spec_sha256).await?
            {
                drop(st);
                let _ = std::fs::remove_file(&input);
                if let Some(work) = input.parent() {
                    let _ = std::fs::remove_dir(work); // only when empty
                }
                // That run loaded them, but its links to the quarantined records may not have
                // been recorded (the command was interrupted after the run, or the ledger
                // append failed): record what is missing instead of refusing.
                if let Some(n) = link_repairs(&p, &source, &file, &run, &home, &ledger, &url)
                    .await?
                    .filter(|n| *n > 0)
                {
                    outln!(
                        "these repaired records were replayed already, by run {run} (ended {at}), but {n} of them were not linked to the quarantined records they repair: linked now (`sealtrail lineage --id`)"
                    );
                    return Ok(());
                }
                anyhow::bail!(
                    "these repaired records were replayed already, by run {run} (ended {at}): they are loaded; pass --again to load them once more"
                );
            }
            // The ledger says which spec the replay's version stands for before any of its
            // batches carries it (once per version: a resumed or repeated replay has it).
            if st.replay_declaration(&p.spec_sha256).await?.is_none() {
                let mut log = ledger_cmd::open_writer(
                    &home,
                    &ledger,
                    sealtrail_ledger::log::OpenMode::FailClosed,
                )
                .context("opening the ledger to declare the replay")?;
                let seq = log
                    .append(vec![declared])
                    .map_err(|e| anyhow::anyhow!("recording in the ledger: {e}"))?
                    .first_seq;
                drop(log);
                st.add_replay_declaration(&p.spec_sha256, seq).await?;
            }
            drop(st);
            let report = match run_pipeline(
                &p,
                &home,
                &ledger,
                &url,
                Starting::default(),
                None,
                RowFormat::default(),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    // A replay that never started leaves nothing to resume from.
                    if matches!(
                        e.downcast_ref::<sealtrail_engine::Error>(),
                        Some(sealtrail_engine::Error::Busy { .. })
                    ) {
                        let _ = std::fs::remove_file(&input);
                    }
                    return Err(e);
                }
            };
            // Loaded: the clear copies go, this one and any an interrupted replay of the
            // pipeline left (the run just finished resumed it, or it had been given up).
            if let Some(work) = input.parent()
                && let Err(e) = std::fs::remove_dir_all(work)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!(
                    "warning: could not remove {}, which holds the repaired records in clear: {e}; delete it",
                    work.display()
                );
            }
            print_report(&report);
            let linked = link_repairs(
                &p,
                &source,
                &file,
                report.run_id.as_str(),
                &home,
                &ledger,
                &url,
            )
            .await?;
            if let Some(n) = linked {
                let again = report.counts.rows_quarantined;
                outln!(
                    "  repairs        {n} quarantined record(s), each linked to its replayed record in the ledger (`sealtrail lineage --id`){}",
                    match again {
                        0 => String::new(),
                        q => format!(
                            "; {q} of the replayed records failed again and are quarantined (`sealtrail quarantine list`)"
                        ),
                    }
                );
            }
            Ok(())
        }
        Cmd::Quarantine { home, ledger, cmd } => protect_cmd::quarantine(home, &ledger, cmd).await,
        Cmd::Generate { dir, rows, seed } => {
            let (t, _) = synth::trades(&dir, rows, seed)?;
            let (c, _) = synth::customers(&dir, (rows / 10).max(10), seed)?;
            outln!("wrote {} and {}", t.display(), c.display());
            Ok(())
        }
    }
}

/// Links the records replay run `run` loaded from `file` to the quarantined records they
/// repair, from `FILE.origins` (written by `quarantine show --out`): `records_repaired`
/// ledger entries of at most ~32 KB of ids each, and the pairs in the state store. Records the
/// state store already links are left out, so that a second call finishes what an interrupted
/// one began. The number linked now; `None` without an origins file, or (with a warning) when
/// it does not describe the file's records.
async fn link_repairs(
    p: &sealtrail_spec::Pipeline,
    source: &str,
    file: &Path,
    run: &str,
    home: &Path,
    ledger: &ledger_cmd::LedgerArgs,
    url: &str,
) -> Result<Option<usize>> {
    let side = protect_cmd::origins_path(file);
    let origins: protect_cmd::Origins = match std::fs::read(&side) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{} is not an origins file", side.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", side.display())),
    };
    let Some(connector) = p
        .sources
        .iter()
        .find(|s| s.name == source)
        .map(|s| &s.connector)
    else {
        return Ok(None);
    };
    let originals: Option<Vec<String>> = (origins.format == protect_cmd::ORIGINS_FORMAT)
        .then(|| {
            origins
                .records
                .iter()
                .map(|o| {
                    (o.source == source)
                        .then(|| o.lineage_id(connector))
                        .flatten()
                })
                .collect()
        })
        .flatten();
    // The replay run's records, in order: its batches' input ids.
    let st = open_state(url).await?;
    let mut refs: Vec<_> = st
        .custody_index(&p.name, None)
        .await?
        .into_iter()
        .filter(|r| r.run_id == run)
        .collect();
    refs.sort_by_key(|r| r.batch);
    let mut replayed = Vec::new();
    for r in &refs {
        let record = st.custody(r).await?;
        let c = sealtrail_engine::custody::CustodyView::parse(&record)
            .ok_or_else(|| anyhow::anyhow!("the custody record of batch {} is damaged", r.batch))?;
        replayed.extend((0..c.inputs()).map(|i| c.input(i).0.to_string()));
    }
    let Some(originals) = originals.filter(|o| o.len() == replayed.len()) else {
        eprintln!(
            "warning: {} does not describe the {} record(s) replayed from {} (records were added or removed, or it is of another source): the replayed records are not linked to the quarantined ones",
            side.display(),
            replayed.len(),
            file.display()
        );
        return Ok(None);
    };
    let linked = st.linked_by(run).await?;
    let pairs: Vec<(String, String)> = replayed
        .into_iter()
        .zip(originals)
        .filter(|(r, _)| !linked.contains(r))
        .collect();
    if pairs.is_empty() {
        return Ok(Some(0));
    }
    let mut log =
        ledger_cmd::open_writer(home, ledger, sealtrail_ledger::log::OpenMode::FailClosed)
            .context("opening the ledger to record the repairs")?;
    // Entries stay far below the ledger's 64 KiB (ids ending in long keys included).
    let mut chunks: Vec<&[(String, String)]> = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (a, b)) in pairs.iter().enumerate() {
        if bytes + a.len() + b.len() + 8 > 32 * 1024 && i > start {
            chunks.push(&pairs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += a.len() + b.len() + 8;
    }
    chunks.push(&pairs[start..]);
    for (i, chunk) in chunks.into_iter().enumerate() {
        sealtrail_engine::debug_panic_in("link", i as u64);
        let seq = log
            .append(vec![sealtrail_ledger::entry::Event::RecordsRepaired {
                run_id: run.to_string(),
                pairs: chunk.to_vec(),
            }])
            .map_err(|e| anyhow::anyhow!("recording in the ledger: {e}"))?
            .first_seq;
        st.add_repairs(run, chunk, seq).await?;
    }
    Ok(Some(pairs.len()))
}

/// How `check`, `run`, `runs` and `quarantine list` print what they found or did.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Lines for people (`check`: `file:line:column: message` and a hint).
    Text,
    /// One JSON document on standard output, for editors, CI and schedulers.
    Json,
}

/// What `check` found in one spec.
struct Checked {
    file: PathBuf,
    /// The spec could not be read at all (no position to give).
    unreadable: Option<String>,
    diags: Vec<sealtrail_spec::Diagnostic>,
    notes: Vec<String>,
}

impl Checked {
    fn ok(&self) -> bool {
        self.unreadable.is_none() && self.diags.is_empty()
    }

    fn to_json(&self) -> serde_json::Value {
        let mut errors: Vec<serde_json::Value> = self
            .unreadable
            .iter()
            .map(
                |m| serde_json::json!({ "line": null, "column": null, "message": m, "hint": null }),
            )
            .collect();
        errors.extend(self.diags.iter().map(|d| {
            serde_json::json!({
                "line": d.line,
                "column": d.column,
                "message": d.message,
                "hint": d.hint,
            })
        }));
        serde_json::json!({
            "file": self.file.display().to_string(),
            "ok": self.ok(),
            "errors": errors,
            "notes": self.notes,
        })
    }
}

async fn check(specs: &[PathBuf], format: Format, data: bool) -> Result<()> {
    let mut checked = Vec::new();
    for s in specs {
        let mut c = Checked {
            file: s.clone(),
            unreadable: None,
            diags: Vec::new(),
            notes: Vec::new(),
        };
        match sealtrail_spec::load(s) {
            Err(sealtrail_spec::Error::Invalid(d)) => c.diags = d,
            Err(e) => c.unreadable = Some(e.to_string()),
            Ok(p) => {
                let (mut planned, mut diags) =
                    sealtrail_engine::check_with(&p, &Default::default()).await;
                // The data is read only for a spec that checks without it (its paths and
                // URLs are then sound), and sampled as a run samples it.
                if data && diags.is_empty() {
                    match protect_cmd::sample_sources(&p, sealtrail_engine::SAMPLE_ROWS).await {
                        Ok(samples) => {
                            (planned, diags) = sealtrail_engine::check_with(&p, &samples).await;
                        }
                        Err(e) => {
                            c.unreadable = Some(format!(
                                "{}: cannot read a sample of the data: {e:#}",
                                s.display()
                            ));
                        }
                    }
                }
                c.notes = sealtrail_engine::notes(&p, &planned);
                c.diags = diags;
            }
        }
        // In the file's order, whichever pass found them (a stable sort: what one line holds
        // stays in the order it was found).
        c.diags.sort_by_key(|d| (d.line, d.column));
        checked.push(c);
    }
    let bad = checked.iter().filter(|c| !c.ok()).count();
    match format {
        Format::Json => {
            let doc = serde_json::json!({
                "ok": bad == 0,
                "specs": checked.iter().map(Checked::to_json).collect::<Vec<_>>(),
            });
            outln!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Text => {
            for c in &checked {
                if c.ok() {
                    outln!("{}: ok", c.file.display());
                    for n in &c.notes {
                        outln!("  note: {n}");
                    }
                } else if let Some(m) = &c.unreadable {
                    // It names the file.
                    eprintln!("{m}");
                } else {
                    eprintln!(
                        "{}: {} error{}",
                        c.file.display(),
                        c.diags.len(),
                        if c.diags.len() == 1 { "" } else { "s" }
                    );
                    for d in &c.diags {
                        eprintln!("{d}");
                    }
                }
            }
            if bad > 0 {
                eprintln!("{bad} spec(s) have errors; fix them and run `sealtrail check` again");
            }
        }
    }
    if bad > 0 {
        // What is wrong is printed above; the exit code says that something is.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(exit::USER);
    }
    Ok(())
}

fn progress_bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    // Quiet when not on a terminal: logs and CI output stay clean.
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_prefix(label.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// How [`run_pipeline`] starts a run.
#[derive(Debug, Default, Clone)]
struct Starting {
    /// Give up an unfinished run instead of resuming it (`--abandon-unfinished`).
    abandon: bool,
    /// Refuse a state store that misses runs the ledger records ([`history_kept`]; `run`
    /// without `--fresh-state`).
    check_history: bool,
    /// `run --reload-inputs-of` ([`RunOptions::reload_inputs_of`]).
    reload_inputs_of: Vec<String>,
}

async fn run_pipeline(
    p: &sealtrail_spec::Pipeline,
    home: &Path,
    ledger: &ledger_cmd::LedgerArgs,
    state_url: &str,
    starting: Starting,
    openlineage: Option<&str>,
    row_format: RowFormat,
) -> Result<RunReport> {
    let abandon = starting.abandon;
    let reload_inputs_of = starting.reload_inputs_of;
    // A wrong endpoint is the command's error, before anything is opened.
    let openlineage = match openlineage {
        Some(t) => {
            use sealtrail_engine::openlineage::{
                Destination, Emitter, SpoolLimits, api_key_from_env,
            };
            let key = api_key_from_env().map_err(UsageError)?;
            Some(
                Emitter::new(Destination::parse(t, key).map_err(UsageError)?)
                    .spooling_in(home.join("openlineage-spool"))
                    .with_spool_limits(SpoolLimits::from_env().map_err(UsageError)?),
            )
        }
        None => None,
    };
    // A spec that does not check touches nothing: no ledger, keyring or master key is made
    // for it (the engine checks it again, as every run must).
    let diags = sealtrail_engine::check(p).await;
    if !diags.is_empty() {
        return Err(sealtrail_engine::Error::Spec(sealtrail_spec::Error::Invalid(diags)).into());
    }
    if starting.check_history {
        history_kept(p, home, ledger, state_url).await?;
    }
    // Every audit event goes to the ledger, durably and signed, before the run goes on.
    let log = ledger_cmd::open_writer(home, ledger, sealtrail_ledger::log::OpenMode::FailClosed)
        .with_context(|| match &ledger.ledger_url {
            Some(_) => format!(
                "opening the ledger in PostgreSQL (schema {})",
                ledger.ledger_schema
            ),
            None => format!("opening the ledger in {}", home.display()),
        })?;
    let audit = sealtrail_ledger::audit::LedgerAudit::new(log);
    let pb = progress_bar(&p.name);
    let pb2 = pb.clone();
    let stop = Arc::new(std::sync::OnceLock::new());
    if let Ok(mut g) = STOP.lock() {
        *g = Some(stop.clone());
    }
    let opts = RunOptions {
        state_url: state_url.to_string(),
        keyring: protect_cmd::shared_keyring(home)?,
        audit: Arc::new(audit),
        abandon_unfinished: abandon,
        progress: Some(Arc::new(move |src: &str, rows: u64| {
            pb2.set_message(format!("{src}: {rows} records read"))
        })),
        skip_commitments_for_benchmark: false,
        row_format,
        openlineage,
        stop: Some(stop),
        reload_inputs_of,
    };
    let r = sealtrail_engine::run(p, &opts).await;
    if let Ok(mut g) = STOP.lock() {
        *g = None;
    }
    pb.finish_and_clear();
    use sealtrail_engine::Error as E;
    if let Err(e) = &r
        && !matches!(
            e,
            E::Spec(_)
                | E::UnfinishedRun { .. }
                | E::Busy { .. }
                | E::Stopped { .. }
                | E::NotStarted { .. }
                // Refused while its inputs were chosen, before the run was recorded: a note
                // would be about an earlier run.
                | E::LoadedByAnotherPipeline { .. }
                | E::InputGrew { .. }
        )
    {
        note_stopped_run(p, state_url).await;
    }
    Ok(r?)
}

/// Refuses a run whose state store does not know a run of the pipeline that the ledger
/// records: the store is not the one those runs used (another `--state-url` or home), an older
/// copy of it (restored from a backup), or it was lost. The state store is what says which
/// files and rows were loaded; run against it, the inputs those runs loaded would be loaded
/// again, their records delivered twice. The ledger is read from the store's last known batch
/// entry on (all of it when the store knows no batch of the pipeline), in PostgreSQL by a
/// query from that entry on.
async fn history_kept(
    p: &sealtrail_spec::Pipeline,
    home: &Path,
    ledger: &ledger_cmd::LedgerArgs,
    state_url: &str,
) -> Result<()> {
    let st = open_state(state_url).await?;
    let from = st.last_ledger_seq(&p.name).await?.map_or(0, |s| s + 1);
    let mut ids = st.run_ids(&p.name).await?;
    st.close().await;
    let known = !ids.is_empty();
    let started = ledger_cmd::runs_started_since(home, ledger, &p.name, from)
        .context("reading the ledger for earlier runs of the pipeline")?
        .unwrap_or_default();
    let mut unknown: Vec<(u64, String)> = Vec::new();
    for (seq, run) in started {
        // Each unknown run once (a resumed run starts again).
        if ids.insert(run.clone()) {
            unknown.push((seq, run));
        }
    }
    let Some((seq, last)) = unknown.last() else {
        return Ok(());
    };
    let store = sealtrail_core::db::url_location(state_url);
    let what = if known {
        format!(
            "the ledger records {} run(s) of pipeline `{}` that the run state store ({store}) does not know (the last {last}, entry {seq}): it is an older copy of the store those runs used (restored from a backup?) or another store",
            unknown.len(),
            p.name
        )
    } else {
        format!(
            "the ledger records {} run(s) of pipeline `{}` (the last {last}), but the run state store ({store}) knows none of them: it is not the store those runs used (another --state-url, SEALTRAIL_STATE_URL or --home) or it was lost",
            unknown.len(),
            p.name
        )
    };
    // Exit 3, as any error `exit_code` does not name: the run could not be done as asked.
    anyhow::bail!(
        "{what}. Run against it, the inputs those runs loaded would be loaded again. Point the run at the store they used, or restore its latest copy; to go on with this store on purpose (those inputs loaded again), pass --fresh-state"
    )
}

/// After a failed run: what it left loaded and how to go on (best effort; the run's own error
/// follows). A run refused before it started (spec, unfinished run) has nothing to say here.
async fn note_stopped_run(p: &sealtrail_spec::Pipeline, state_url: &str) {
    let Ok(st) = open_state(state_url).await else {
        return;
    };
    let spec = p.spec_path.display();
    let u = match st.unfinished_run(&p.name).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            if let Ok(runs) = st.runs(Some(&p.name), 1).await
                && let Some(r) = runs.first().filter(|r| r.status == "failed_before_load")
            {
                eprintln!(
                    "note: run {} failed before any sink received a batch, so nothing of it is loaded; once the cause is fixed (in the spec or elsewhere), `sealtrail run {spec}` starts a new run",
                    r.run_id
                );
            }
            return;
        }
        Err(_) => return,
    };
    let Ok(c) = st.totals(&u.run_id, None).await else {
        return;
    };
    if c.rows_in == 0 {
        eprintln!(
            "note: run {} stopped before committing any batch; once the cause is fixed, `sealtrail run {spec}` resumes it (if the fix is an edit of the spec, which a run resumes only unchanged, add --abandon-unfinished to start afresh)",
            u.run_id
        );
    } else {
        eprintln!(
            "note: run {} stopped after committing {} records ({} loaded, {} quarantined), which stay loaded; once the cause is fixed, `sealtrail run {spec}` resumes it and loads the rest (the committed batches are read again and must be unchanged), or `--abandon-unfinished` gives it up",
            u.run_id, c.rows_in, c.rows_loaded, c.rows_quarantined
        );
    }
}

/// What `run --format json` prints of a run that ended well.
fn report_json(r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "pipeline": r.pipeline,
        "run_id": r.run_id.as_str(),
        "resumed": r.resumed,
        "rows_in": r.counts.rows_in,
        "loaded": r.counts.rows_loaded,
        "quarantined": r.counts.rows_quarantined,
        "by_reason": r.by_reason,
        "sources": r.per_source.iter().map(|(name, c)| serde_json::json!({
            "name": name,
            "rows_in": c.rows_in,
            "loaded": c.rows_loaded,
            "quarantined": c.rows_quarantined,
        })).collect::<Vec<_>>(),
        "sinks": r.sinks.iter().map(|k| serde_json::json!({
            "name": k.name,
            "rows": k.rows,
            "location": k.location,
        })).collect::<Vec<_>>(),
        "quarantine": r.quarantine,
        "grown": r.grown.iter().map(|g| serde_json::json!({
            "source": g.source,
            "input": g.input,
            "read_past_bytes": g.read_past,
        })).collect::<Vec<_>>(),
        "deferred": r.deferred.iter().map(|(source, files)| serde_json::json!({
            "source": source,
            "files": files,
        })).collect::<Vec<_>>(),
    })
}

fn print_report(r: &RunReport) {
    outln!(
        "pipeline {}  run {}{}",
        r.pipeline,
        r.run_id,
        if r.resumed { " (resumed)" } else { "" }
    );
    outln!(
        "  rows in {:>10}   loaded {:>10}   quarantined {:>8}",
        r.counts.rows_in,
        r.counts.rows_loaded,
        r.counts.rows_quarantined
    );
    for (reason, n) in &r.by_reason {
        outln!("    quarantined {n:>6} × {reason}");
    }
    for k in &r.sinks {
        outln!(
            "  sink {:<16} {:>10} rows -> {}",
            k.name,
            k.rows,
            k.location
        );
    }
    outln!(
        "  quarantine            {:>10} rows -> {}",
        r.counts.rows_quarantined,
        r.quarantine
    );
    for g in &r.grown {
        outln!(
            "  grown {}: its first {} bytes were loaded by an earlier run; only the records added since were loaded",
            g.input,
            g.read_past
        );
    }
    for (source, files) in &r.deferred {
        outln!(
            "  deferred {source}: {files} file(s) modified less than `min_age` ago, left for a later run"
        );
    }
}

/// Marks a folder `demo` made, so that a later `demo` there may clear what it wrote.
const DEMO_MARK: &str = ".sealtrail-demo";

/// What `demo` writes in its folder (and the proof its suggestions write).
const DEMO_ENTRIES: &[&str] = &[
    "data",
    "out",
    ".sealtrail",
    "trades.yaml",
    "customers.yaml",
    "openlineage.jsonl",
    "proof.json",
];

/// The demo's folder, ready for a run: created and marked when new; cleared of what an earlier
/// demo wrote there, so that its tables hold one run's rows (a second run of the same data
/// would append them again); refused when it holds anything else.
fn demo_folder(dir: &Path) -> Result<()> {
    if dir.join(DEMO_MARK).is_file() {
        for e in DEMO_ENTRIES {
            let p = dir.join(e);
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match gone {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow::anyhow!(
                        "clearing the earlier demo's {}: {e}",
                        p.display()
                    ));
                }
                _ => {}
            }
        }
        outln!(
            "Starting afresh in {}: removed the earlier demo's data, outputs, state, ledger and keys",
            dir.display()
        );
        return Ok(());
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} exists and was not made by `sealtrail demo`; pass --dir with a new folder (the demo writes data, outputs, a ledger and keys there)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the demo folder {}", dir.display()))?;
    std::fs::write(
        dir.join(DEMO_MARK),
        "Made by `sealtrail demo`: a later demo here removes what the earlier one wrote.\n",
    )?;
    Ok(())
}

async fn demo(dir: &Path, rows: usize) -> Result<()> {
    demo_folder(dir)?;
    let data = dir.join("data");
    outln!(
        "Generating {rows} trades and {} customers in {}",
        (rows / 10).max(10),
        data.display()
    );
    let (_, exp_t) = synth::trades(&data, rows, 42)?;
    let (_, exp_c) = synth::customers(&data, (rows / 10).max(10), 42)?;
    let specs = [
        (
            "trades.yaml",
            include_str!("../../../examples/trades.yaml"),
            exp_t,
        ),
        (
            "customers.yaml",
            include_str!("../../../examples/customers.yaml"),
            exp_c,
        ),
    ];
    let home = dir.join(".sealtrail");
    let url = StateArgs {
        home: Some(home.clone()),
        state_url: None,
        ledger: ledger_cmd::LedgerArgs::default(),
    }
    .url(&home);
    for (file, text, expected) in specs {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        let p = sealtrail_spec::load(&path)?;
        let lineage = dir.join("openlineage.jsonl").display().to_string();
        let r = run_pipeline(
            &p,
            &home,
            &ledger_cmd::LedgerArgs::default(),
            &url,
            Starting::default(),
            Some(&lineage),
            RowFormat::default(),
        )
        .await?;
        outln!();
        print_report(&r);
        let got: std::collections::BTreeMap<String, u64> = r.by_reason.clone();
        if !r.resumed && got != expected {
            anyhow::bail!(
                "quarantine counts {got:?} differ from what the generator injected {expected:?}; this is a bug"
            );
        }
    }
    outln!(
        "\nLedger: every run and batch above is an entry in {}",
        ledger_cmd::paths(&home).dir.display()
    );
    match ledger_cmd::verify_cmd(
        &home,
        &ledger_cmd::LedgerArgs::default(),
        None,
        Some(home.join("demo-verifier.seen")),
        2,
        None,
    )? {
        ledger_cmd::Outcome::Verified => {}
        _ => anyhow::bail!("the ledger did not verify; this is a bug"),
    }
    outln!("\nNext, try:");
    outln!(
        "  sealtrail ledger show --home {} --type batch_committed --limit 5",
        home.display()
    );
    outln!(
        "  sealtrail ledger prove --home {} --entry 0",
        home.display()
    );
    outln!("  sealtrail runs --home {}", home.display());
    let trades = dir.join("trades.yaml");
    let clean = dir.join("out/trades_clean");
    let proof = dir.join("proof.json");
    outln!(
        "  sealtrail lineage {} --sink trades_clean   # each column back to its source, and what protected it",
        trades.display()
    );
    outln!(
        "  sealtrail prove {} --sink trades_clean --where trade_id={} --out {}",
        trades.display(),
        synth::trade_id(0),
        proof.display()
    );
    outln!(
        "  sealtrail verify-proof {} --home {} --table {}   # offline, and the row as it is now",
        proof.display(),
        home.display(),
        clean.display()
    );
    outln!(
        "  sealtrail audit {} --sink trades_clean   # every row against the ledger",
        trades.display()
    );
    outln!(
        "  sealtrail check --data {}   # the spec, and its columns' data against its policies",
        trades.display()
    );
    outln!(
        "  sealtrail classify {}   # what each column holds, and its policy",
        trades.display()
    );
    outln!(
        "  sealtrail quarantine list {}   # the pipeline's quarantine: positions, reasons, repairs",
        trades.display()
    );
    outln!("  sealtrail keys list --home {}", home.display());
    outln!(
        "  sealtrail keys shred 1000 --home {}   # erase customer 1000 for good: their encrypted values and records in quarantine",
        home.display()
    );
    outln!(
        "  python3 -c \"import deltalake; print(deltalake.DeltaTable('{}').to_pyarrow_table().num_rows)\"",
        clean.display()
    );
    outln!("  sealtrail demo --rows 2000000   # a bigger run");
    Ok(())
}
