//! Shared types of sealtrail, at the bottom of the crate graph.
//!
//! - [`RunId`], [`SourcePos`]: identity of a run and of a record's origin.
//! - [`Reason`]: why a record was quarantined (a stable reason code plus the rule that failed).
//! - [`audit`]: the typed audit events every run emits, and the [`audit::AuditSink`] trait the
//!   ledger implements (an append-only JSON Lines file until then).
//! - [`secret`]: [`secret::Secret`] and [`secret::Sensitive`], values whose `Debug`/`Display`
//!   never print their content.
//!
//! ```
//! use sealtrail_core::{RunId, Reason};
//! let run = RunId::new();
//! let r = Reason::new("empty_trade_id", "not_null(trade_id)");
//! assert_eq!(r.code, "empty_trade_id");
//! assert!(!run.as_str().is_empty());
//! ```

pub mod audit;
pub mod class;
pub mod db;
pub mod net;
pub mod record;
pub mod secret;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifier of one run of one pipeline. Time-ordered (UUIDv7) so listings sort by start.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(String);

impl RunId {
    /// A fresh, time-ordered run id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
    /// Wraps an id read back from the state store.
    pub fn from_string(s: String) -> Self {
        Self(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a record came from: enough to find it again in the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourcePos {
    /// A line of a text file (CSV, JSON Lines). `line` is physical and 1-based (header = 1).
    FileLine { file: String, line: u64 },
    /// A row of a columnar file (Parquet), 0-based.
    FileRow { file: String, row: u64 },
    /// A row of a database table or query, identified by its key (or cursor) value.
    TableKey { table: String, key: String },
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcePos::FileLine { file, line } => write!(f, "{file}:{line}"),
            SourcePos::FileRow { file, row } => write!(f, "{file}#row{row}"),
            SourcePos::TableKey { table, key } => write!(f, "{table}[{key}]"),
        }
    }
}

/// Why a record was quarantined. `code` is the stable reason code users filter on
/// (`invalid_isin`), `rule` names the rule and column that failed (`isin_checksum(isin)`).
/// Neither ever holds a value of the record: reports must not leak sensitive data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub rule: String,
}

impl Reason {
    pub fn new(code: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            rule: rule.into(),
        }
    }
}

/// Counts of one run or one batch. `rows_in == rows_loaded + rows_quarantined` is the
/// conservation invariant checked before a run may end successfully.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub rows_in: u64,
    pub rows_loaded: u64,
    pub rows_quarantined: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.rows_in += other.rows_in;
        self.rows_loaded += other.rows_loaded;
        self.rows_quarantined += other.rows_quarantined;
    }
    /// True when every record is accounted for.
    pub fn balanced(&self) -> bool {
        self.rows_in == self.rows_loaded + self.rows_quarantined
    }
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`). Used where chrono's
/// formatter would cost ~10x more per value.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The column that carries each delivered row's lineage id (see `docs/custody.md`).
pub const LINEAGE_ID_COLUMN: &str = "_sealtrail_id";

/// The name `quarantine replay` runs a pipeline's repaired records under: its batches are
/// the pipeline's too for `audit`, `prove`, `lineage` and `keys reencrypt`, and a proof
/// bundle of a replayed row names it. No spec may name a pipeline so.
pub fn replay_name(pipeline: &str) -> String {
    format!("{pipeline}{REPLAY_SUFFIX}")
}

/// See [`replay_name`].
pub const REPLAY_SUFFIX: &str = "-replay";

/// `e`'s message followed by its root cause when the message leaves it out. Clients of object
/// stores and HTTP endpoints wrap the reason a request failed several errors deep ("error
/// sending request"), and the reason (a certificate the system does not trust, a refused
/// connection, a name that does not resolve) is what says what to fix. Only for errors whose
/// causes hold no secrets (object store and HTTP clients: credentials travel in headers).
pub fn with_root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let msg = e.to_string();
    let mut root = None;
    let mut cause = e.source();
    while let Some(c) = cause {
        root = Some(c);
        cause = c.source();
    }
    let msg = match root.map(|r| r.to_string()) {
        Some(r) if !r.is_empty() && !msg.contains(&r) => format!("{msg} ({r})"),
        _ => msg,
    };
    if msg.contains("invalid peer certificate") {
        format!(
            "{msg}; the server's certificate is not trusted here: add its certificate authority to the system's trusted roots, or name a PEM file of trusted roots in SSL_CERT_FILE"
        )
    } else if msg.contains("(os error 28)") {
        // ENOSPC, as every writer below us words it (`std::io::Error`'s Display).
        format!(
            "{msg}; the disk is full: free space on it, then run the command again (a run stopped by it resumes where it stopped, and what it was writing was not kept)"
        )
    } else {
        msg
    }
}

/// An error message about data (a transform or a writer failing on a value) with the values
/// it quotes withheld: each `'...'` becomes `'…'` (an unclosed quote cuts the rest) and each
/// run of five or more digits `…`, since such messages go to logs, the run's error in the
/// state store and the ledger's `run_failed` entry, which no one can erase. Arrow and
/// DataFusion quote values so (`Cannot cast string 'x' to value of Int64 type`) and print
/// numbers bare (`Overflow happened on: 9223372036854775807 * 10`).
pub fn withhold_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut withheld = false;
    let mut rest = message;
    while let Some(open) = rest.find('\'') {
        out.push_str(&rest[..open]);
        out.push_str("'…'");
        withheld = true;
        match rest[open + 1..].find('\'') {
            Some(close) => rest = &rest[open + 1 + close + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    let mut digits = String::with_capacity(out.len());
    let mut run = String::new();
    for c in out.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if run.len() >= 5 {
            digits.push('…');
            withheld = true;
        } else {
            digits.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            digits.push(c);
        }
    }
    if withheld {
        digits.push_str(" (values withheld)");
    }
    digits
}

/// Lowercase hex SHA-256 of some bytes; used for spec versions and file fingerprints.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`; 0 where unavailable), for
/// benchmarks.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU time this process has used so far, user and system, in seconds (Linux
/// `/proc/self/stat`, whose times are in `USER_HZ` = 100 ticks a second on every Linux
/// architecture sealtrail builds for; zeros where unavailable), for benchmarks, which print
/// it beside the wall clock.
pub fn cpu_seconds() -> (f64, f64) {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut f = rest.split_whitespace().skip(11);
    let mut tick = || f.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / USER_HZ;
    let user = tick();
    let system = tick();
    (user, system)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause, like the layers of an HTTP client's.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn the_root_cause_is_added_when_the_message_leaves_it_out() {
        let e = Layer(
            "HTTP error: error sending request",
            Some(Box::new(Layer(
                "client error (Connect)",
                Some(Box::new(Layer("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            with_root_cause(&e),
            "HTTP error: error sending request (Connection refused (os error 111))"
        );
        // A message that already says it, or an error without causes, is left as it is.
        let said = Layer("refused: oops", Some(Box::new(Layer("oops", None))));
        assert_eq!(with_root_cause(&said), "refused: oops");
        assert_eq!(with_root_cause(&Layer("alone", None)), "alone");
        // An untrusted certificate gets a hint of what to do.
        let tls = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "invalid peer certificate: UnknownIssuer",
                None,
            ))),
        );
        let m = with_root_cause(&tls);
        assert!(
            m.starts_with("error sending request (invalid peer certificate: UnknownIssuer); ")
                && m.contains("SSL_CERT_FILE"),
            "{m}"
        );
    }

    #[test]
    fn cpu_time_is_read_and_grows_with_work() {
        let (u0, s0) = cpu_seconds();
        // Spin until the process's CPU time has grown by 50 ms (however busy the machine),
        // giving up after 20 s of wall clock: a reader that never sees it grow fails.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let grew = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let (u1, s1) = cpu_seconds();
            assert!(u1 >= u0 && s1 >= s0, "{u0} {s0} -> {u1} {s1}");
            if (u1 + s1) - (u0 + s0) >= 0.05 {
                break true;
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                break false;
            }
        };
        assert!(grew, "CPU time did not grow in 20 s of spinning: {u0} {s0}");
    }

    #[test]
    fn counts_balance() {
        let mut c = Counts {
            rows_in: 10,
            rows_loaded: 7,
            rows_quarantined: 3,
        };
        assert!(c.balanced());
        c.add(Counts {
            rows_in: 1,
            rows_loaded: 0,
            rows_quarantined: 0,
        });
        assert!(!c.balanced());
    }

    #[test]
    fn run_ids_are_time_ordered() {
        let a = RunId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RunId::new();
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn values_in_data_errors_are_withheld() {
        assert_eq!(
            withhold_values(
                "Arrow error: Cast error: Cannot cast string 'alice@example.com' to value of Int64 type"
            ),
            "Arrow error: Cast error: Cannot cast string '…' to value of Int64 type (values withheld)"
        );
        assert_eq!(
            withhold_values("Overflow happened on: 9223372036854775807 * 10, in Int64 at 3"),
            "Overflow happened on: … * 10, in Int64 at 3 (values withheld)"
        );
        assert_eq!(
            withhold_values("bad 'a' and 'b' and 'unclosed secret"),
            "bad '…' and '…' and '…' (values withheld)"
        );
        assert_eq!(
            withhold_values("Schema error: no field named x"),
            "Schema error: no field named x"
        );
    }
}
