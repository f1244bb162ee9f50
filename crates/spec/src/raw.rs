//! The spec as written: serde types that mirror the YAML one to one.
//!
//! Every struct denies unknown keys, so a typo is an error with its location rather than
//! a silently ignored setting. Connectors are optional fields of which exactly one must be
//! set (`csv:`, `jsonl:`, ...): that keeps each connector's options precise in the JSON Schema
//! while serde reads straight from the YAML (no buffering, so spans survive).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::Path;

use crate::{Diagnostic, Error};

/// A value with the line and column (1-based) where it stands in the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Loc<T> {
    pub value: T,
    pub line: u64,
    pub column: u64,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Loc {
            value: s.value,
            line: s.referenced.line(),
            column: s.referenced.column(),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Loc<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

/// A sealtrail pipeline: sources with their schema and checks, SQL transforms, sinks, and
/// where quarantined records go.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Spec format version. Must be 1.
    pub version: Loc<u32>,
    /// Pipeline name: letters, digits, `_` and `-`. Names runs, state and audit events.
    pub pipeline: Loc<String>,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// Records per batch (the unit of validation, transform and commit). Default 65536.
    #[serde(default)]
    pub batch_rows: Option<Loc<u64>>,
    /// Sources by name. Transforms refer to a source by this name as a SQL table.
    pub sources: BTreeMap<String, Loc<SourceSpec>>,
    /// SQL transforms by name. Each reads one source or one other transform, batch by batch.
    #[serde(default)]
    pub transforms: BTreeMap<String, Loc<TransformSpec>>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, Loc<SinkSpec>>,
    /// Where records that fail a check go, with their raw bytes, position and reasons.
    pub quarantine: Loc<QuarantineSpec>,
}

/// One source: exactly one connector (`csv`, `jsonl`, `parquet` or `postgres`), the declared
/// columns, and the checks every record must pass.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default)]
    pub csv: Option<CsvSpec>,
    #[serde(default)]
    pub jsonl: Option<FileSpec>,
    #[serde(default)]
    pub parquet: Option<FileSpec>,
    #[serde(default)]
    pub postgres: Option<PgSourceSpec>,
    /// The expected columns, in order for headerless CSV.
    pub columns: Vec<Loc<ColumnSpec>>,
    /// What to do with columns the source has but `columns` does not declare.
    #[serde(default)]
    pub unknown_columns: UnknownColumns,
    /// Checks in order; the first one a record fails gives its primary reason.
    #[serde(default)]
    pub checks: Vec<Loc<CheckSpec>>,
    /// Protection policies, applied to every record that passed the checks, before any
    /// transform or sink sees it. A column with a policy no longer exists raw downstream
    /// (unless a `keep` policy says so); its policies' outputs take its place.
    #[serde(default)]
    pub protect: Vec<Loc<PolicySpec>>,
    /// Adds a column of this name holding the lowercase hex SHA-256 of each record's raw
    /// source bytes (the line, for CSV and JSON Lines).
    #[serde(default)]
    pub digest: Option<String>,
}

/// What protection actions exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Remove the column.
    Drop,
    /// Deliver the value raw. Only sinks whose audience is cleared for the column's tag may
    /// receive it (`restricted` for PII and financial data).
    Keep,
    /// Keep `keep_first` and/or `keep_last` characters and mask the rest with `mask_char`
    /// (default `*`; `""` keeps only the kept characters), or replace all by `fixed`.
    Mask,
    /// Deterministic token: lowercase hex HMAC-SHA256 under `key` (a keyring key, default
    /// `token-<domain>`). Equal values give equal tokens, so joins still work.
    Token,
    /// Format-preserving encryption (NIST FF1, AES-256, radix 10) of the value's digits; other
    /// characters stay. Reversible with the key. Needs at least 6 digits.
    Fpe,
    /// AES-256-GCM with a random nonce. The ciphertext names its key (`st1:<key id>:...`)
    /// unless `format: bare`. With `subject:`, each data subject gets its own key, which
    /// `sealtrail keys shred` can destroy.
    Encrypt,
    /// Lowercase hex SHA-256 (unkeyed; prefer `token` for guessable values).
    Hash,
    /// Coarsen: `to: year` or `month` (dates), `band` (amounts, with `bands`), `district`
    /// (postcodes).
    Generalise,
    /// A new, non-sensitive value computed from the column: `derive: has_value`,
    /// `email_domain`, `age_band` (from a date of birth) or `country_of_iban`.
    Derive,
    /// Free text: replace every sensitive span (email, phone, card, IBAN, SSN) by `with`
    /// (default `[REDACTED]`); with `patterns`, replace the matches of each regex in order.
    Redact,
}

/// One protection policy: which columns (`column`, or every column classified with `tag` or
/// `kind`), what to do, and the output column's name (`as`; default the column's own).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub column: Option<String>,
    /// `pii`, `financial` or `proprietary`.
    #[serde(default)]
    pub tag: Option<String>,
    /// A kind such as `email`, `card_pan`, `iban` (see `sealtrail classify`).
    #[serde(default)]
    pub kind: Option<String>,
    pub action: ActionKind,
    #[serde(default, rename = "as")]
    pub output: Option<String>,
    #[serde(default)]
    pub keep_first: Option<u32>,
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub fixed: Option<String>,
    #[serde(default)]
    pub digits_only: Option<bool>,
    #[serde(default)]
    pub mask_char: Option<String>,
    /// A keyring key name, or a raw 32-byte key as a reference (`env:NAME`, `file:PATH`) holding
    /// 64 hex characters.
    #[serde(default)]
    pub key: Option<String>,
    /// Token/FPE domain: values tokenised in one domain join with each other. Default: the
    /// column name.
    #[serde(default)]
    pub domain: Option<String>,
    /// Column holding the data subject's id (per-subject keys, crypto-shredding).
    #[serde(default)]
    pub subject: Option<String>,
    /// `sealtrail` (default) or `bare`.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub bands: Option<Vec<f64>>,
    #[serde(default)]
    pub derive: Option<String>,
    #[serde(default)]
    pub with: Option<String>,
    #[serde(default)]
    pub patterns: Option<Vec<String>>,
}

/// CSV files (RFC 4180).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSpec {
    /// File path or glob, relative to the spec's folder.
    pub path: String,
    /// First line is a header with column names. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// Field separator, one ASCII character. Default `,`.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Quote character, one ASCII character. Default `"`.
    #[serde(default)]
    pub quote: Option<String>,
    /// Declared text encoding, as a WHATWG Encoding Standard label: `utf-8` (the default) or
    /// an ASCII-compatible legacy encoding such as `windows-1252`, `iso-8859-15`, `shift_jis`,
    /// `gbk` or `big5`. Lines that do not decode are quarantined (`invalid_utf8` or
    /// `invalid_encoding`); values load as UTF-8 text. UTF-16 is not supported.
    #[serde(default)]
    pub encoding: Option<String>,
    /// An empty field is read as null. Default true.
    #[serde(default = "yes")]
    pub empty_is_null: bool,
    /// Decimal mark of the `decimal` and `float64` columns: `.` (the default) or `,`
    /// (`1234,56`, as many European systems write numbers; use another `delimiter` then, such
    /// as `;`). Thousands separators are not read: such a value is quarantined.
    #[serde(default)]
    pub decimal: Option<String>,
    /// Only read files not loaded by an earlier successful run.
    #[serde(default)]
    pub incremental: bool,
    /// Leave files modified less than this long ago for a later run (a file still being
    /// written, or copied in, would be read cut short): `30s`, `5m`, `2h`, `1d`, or a number
    /// of seconds. Default: every file is read however new.
    #[serde(default)]
    pub min_age: Option<String>,
}

fn yes() -> bool {
    true
}

/// JSON Lines or Parquet files.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// File path or glob, relative to the spec's folder.
    pub path: String,
    /// Only read files not loaded by an earlier successful run.
    #[serde(default)]
    pub incremental: bool,
    /// Leave files modified less than this long ago for a later run (a file still being
    /// written, or copied in, would be read cut short): `30s`, `5m`, `2h`, `1d`, or a number
    /// of seconds. Default: every file is read however new.
    #[serde(default)]
    pub min_age: Option<String>,
}

/// A PostgreSQL table or query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgSourceSpec {
    /// Connection URL as a reference: `env:NAME` or `file:PATH`. A literal URL is accepted
    /// only when it carries no password.
    pub url: String,
    /// Table to read (optionally `schema.table`). Exactly one of `table` and `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// Query to read.
    #[serde(default)]
    pub query: Option<String>,
    /// Column identifying a row in quarantine positions (defaults to `cursor`).
    #[serde(default)]
    pub key: Option<String>,
    /// Incremental mode: only rows whose `cursor` is greater than the last loaded value.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownColumns {
    /// Fail the run (CSV header) or quarantine the record (JSON Lines). The default.
    #[default]
    Reject,
    /// Ignore them.
    Drop,
}

/// A declared column.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// `string` (default), `int64`, `float64`, `bool`, `date`, `timestamp` or
    /// `decimal(P,S)` (`decimal(P)` is `decimal(P,0)`; quote it inside `{ }`).
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    /// The column must be present in the source (header, keys, table).
    #[serde(default)]
    pub required: bool,
    /// chrono format for `date` and `timestamp` columns, e.g. `%Y-%m-%dT%H:%M:%S%.3fZ`.
    /// Default: ISO 8601 / RFC 3339.
    #[serde(default)]
    pub format: Option<String>,
    /// What the column holds, overriding the classifier: a kind (`email`, `card_pan`,
    /// `person_name`, ...) or `none` for a column that is not sensitive.
    #[serde(default)]
    pub class: Option<String>,
    /// The column's tag, overriding the kind's default: `pii`, `financial`, `proprietary`,
    /// `none`.
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `column` is not null (and not empty).
    NotNull,
    /// The value of `columns` (or `column`) was not seen in an earlier record of the run that
    /// passed every check before this one. The first occurrence is kept.
    Unique,
    /// `column` is one of `values` (exact, case-sensitive; a typed column's values compare
    /// as values of its type: `01` is in `["1"]` for an `int64`).
    InSet,
    /// `column` parses as a number in [`min`, `max`].
    Between,
    /// `column` matches `pattern` (Rust regex syntax; anchor it with `^...$`).
    Regex,
    /// `column` has between `min` and `max` characters.
    LengthBetween,
    /// `column` parses as `type` (`date`, `timestamp`, `int64`, ...) with `format`.
    Parses,
    /// `column` is greater than `other` (numbers, or ISO dates and timestamps).
    GreaterThan,
    /// The run read between `min` and `max` records; otherwise the run fails.
    RowCountBetween,
    /// `column` passes the check digit of `scheme` (isin, lei, iban, luhn).
    Checksum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumScheme {
    Isin,
    Lei,
    Iban,
    Luhn,
}

/// One check. Which fields apply depends on `rule`; `check` says which ones are missing or
/// do not belong.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub rule: CheckKind,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    #[serde(default)]
    pub other: Option<String>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub scheme: Option<ChecksumScheme>,
    /// Reason code recorded in quarantine. Default: the rule name.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A SQL transform over one input, applied batch by batch (projections, filters,
/// expressions; no joins or aggregations across batches).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// One SELECT statement reading `FROM` a source or another transform.
    pub sql: String,
}

/// One sink: where `from` (a source or transform) is written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// The source or transform whose rows this sink receives.
    pub from: String,
    /// Who may read it: `restricted`, `internal`, `analyst` or `public`. Default `restricted`.
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub delta: Option<PathSink>,
    #[serde(default)]
    pub parquet: Option<PathSink>,
    #[serde(default)]
    pub postgres: Option<PgSinkSpec>,
}

/// Quarantine target: exactly one of `parquet` or `delta`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineSpec {
    #[serde(default)]
    pub delta: Option<PathSink>,
    #[serde(default)]
    pub parquet: Option<PathSink>,
}

/// A Delta table or a Parquet folder.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathSink {
    /// Local path (relative to the spec's folder) or, for Delta, an `s3://` URL.
    pub path: String,
    /// Compression of the Parquet files written: `zstd` (the default), `snappy`, `lz4`,
    /// `gzip` or `none`. Every Parquet reader reads `snappy`; some older ones no other codec.
    // A string, not an enum, so that `check` says which codecs there are in its own words;
    // the schema lists them for editors.
    #[serde(default)]
    #[schemars(extend("enum" = ["zstd", "snappy", "lz4", "gzip", "none", null]))]
    pub compression: Option<String>,
    /// Level of `zstd` (1 to 22, default 1) or `gzip` (0 to 9, default 6); the other codecs
    /// have none.
    #[serde(default)]
    pub compression_level: Option<i64>,
}

/// A PostgreSQL table, written with COPY.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgSinkSpec {
    /// Connection URL as a reference: `env:NAME` or `file:PATH` (or a literal without password).
    pub url: String,
    /// Target table; created when missing, otherwise its columns must match.
    pub table: String,
    /// When sealtrail creates the table, also index its `_sealtrail_id` column, so that
    /// `prove --id` finds a row without scanning the table (default `true`). An existing table
    /// is left as it is; a run warns when it has no such index.
    #[serde(default)]
    pub index_lineage_ids: Option<bool>,
}

/// Parses YAML into the raw types. Syntax and shape errors (unknown keys, wrong types) come
/// back as one diagnostic at the spot serde stopped.
pub fn parse(text: &str, path: &Path) -> Result<PipelineSpec, Error> {
    let opts = serde_saphyr::Options {
        with_snippet: false,
        ..Default::default()
    };
    serde_saphyr::from_str_with_options(text, opts).map_err(|e| {
        let msg = e.to_string();
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .or_else(|| locate_unknown_key(text, &msg))
            .unwrap_or((1, 1));
        // serde-saphyr appends " at line X column Y"; the diagnostic prefix already says it.
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        // The YAML parser's words for a shape mismatch, in the spec author's words.
        let msg = match msg.as_str() {
            m if m.contains("expected mapping start") => {
                "expected a mapping here (`key: value` lines, or `{ key: value }`), found a list or a single value".to_string()
            }
            m if m.contains("expected sequence start") => {
                "expected a list here (`- item` lines, or `[a, b]`), found a mapping or a single value".to_string()
            }
            m if m.starts_with("invalid u64") || m.starts_with("invalid i64") => {
                "expected a whole number here".to_string()
            }
            _ => msg,
        };
        let hint = if msg.contains("unknown field") {
            Some("remove or correct the key; `sealtrail schema` lists every allowed key".into())
        } else {
            Some("see `sealtrail schema` for the expected shape, or an example in `examples/`".into())
        };
        Error::Invalid(vec![Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message: msg,
            hint,
        }])
    })
}

/// serde reports an unknown field without a position; find where that key is written.
fn locate_unknown_key(text: &str, msg: &str) -> Option<(u64, u64)> {
    let key = msg.strip_prefix("unknown field `")?.split('`').next()?;
    for (n, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(i) = line[from..].find(key) {
            let at = from + i;
            let before = line[..at].chars().last();
            let after = line[at + key.len()..].trim_start();
            if before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-')
                && after.starts_with(':')
            {
                return Some((n as u64 + 1, at as u64 + 1));
            }
            from = at + key.len();
        }
    }
    None
}
