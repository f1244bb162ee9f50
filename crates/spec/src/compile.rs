//! Stage two: raw spec -> validated [`Pipeline`], with every error reported at once.

use crate::raw::{self, ChecksumScheme, Loc, UnknownColumns};
use crate::{Diagnostic, Error, Result};
use sealtrail_core::class::{Kind, Tag};
use sealtrail_core::secret::Secret;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A validated pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    pub spec_path: PathBuf,
    /// SHA-256 of the spec bytes: the version that ran, recorded with every run.
    pub spec_sha256: String,
    pub batch_rows: usize,
    pub sources: Vec<Source>,
    /// In dependency order: a transform comes after the one it reads.
    pub transforms: Vec<Transform>,
    pub sinks: Vec<Sink>,
    pub quarantine: Target,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub connector: SourceConnector,
    pub columns: Vec<Column>,
    pub unknown_columns: UnknownColumns,
    pub checks: Vec<Check>,
    /// `min`/`max` of a `row_count_between` check, enforced on the whole run.
    pub row_count: Option<(Option<u64>, Option<u64>)>,
    /// Protection policies in spec order (tag and kind selectors are resolved against the
    /// classification by `sealtrail-protect`).
    pub protect: Vec<PolicyRule>,
    /// Name of the raw-record digest column, if asked for.
    pub digest: Option<String>,
    /// Line and column of the source in the spec.
    pub at: (u64, u64),
    /// Whether a PostgreSQL sink receives this source's records: its text values must then
    /// hold no NUL character (U+0000), which PostgreSQL text cannot store; a record with one
    /// is quarantined (`invalid_text`) rather than failing the sink's commit, and the run.
    pub text_without_nul: bool,
}

/// Which columns a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Column(String),
    Tag(Tag),
    Kind(Kind),
}

/// A compiled protection policy.
#[derive(Debug, Clone)]
pub struct PolicyRule {
    pub selector: Selector,
    pub action: Action,
    /// Output column name (`as:`); `None` replaces the column under its own name.
    pub output: Option<String>,
    pub at: (u64, u64),
}

#[derive(Debug, Clone)]
pub enum Action {
    Drop,
    Keep,
    Mask {
        keep_first: usize,
        keep_last: usize,
        fixed: Option<String>,
        digits_only: bool,
        with: Option<char>,
    },
    Token {
        key: KeySource,
    },
    Fpe {
        key: KeySource,
        tweak: String,
    },
    Encrypt {
        key: KeySource,
        subject: Option<String>,
        bare: bool,
    },
    Hash,
    Generalise(Generalise),
    Derive(Derive),
    Redact {
        with: String,
        patterns: Vec<regex::Regex>,
    },
}

impl Action {
    /// The action's name as written in specs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Keep => "keep",
            Action::Mask { .. } => "mask",
            Action::Token { .. } => "token",
            Action::Fpe { .. } => "fpe",
            Action::Encrypt { .. } => "encrypt",
            Action::Hash => "hash",
            Action::Generalise(_) => "generalise",
            Action::Derive(_) => "derive",
            Action::Redact { .. } => "redact",
        }
    }
}

/// Where a key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A named key of the keyring (created on first use).
    Keyring(String),
    /// Raw key material (64 hex characters) from the environment or a file.
    External(SecretRef),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Generalise {
    Year,
    Month,
    Band(Vec<f64>),
    District,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derive {
    HasValue,
    EmailDomain,
    AgeBand,
    CountryOfIban,
}

impl Source {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Whether its records' lineage ids end in a key value (PostgreSQL), not a line or row
    /// number: a numeric one is no position.
    pub fn keys_records(&self) -> bool {
        matches!(self.connector, SourceConnector::Postgres(_))
    }
    /// The column naming each record's data subject, for records kept in quarantine: that
    /// of the first `encrypt` policy with a `subject:` (spec order). A quarantined record of
    /// a known subject is sealed under the subject's key, so `keys shred` erases it too.
    pub fn quarantine_subject(&self) -> Option<usize> {
        self.protect.iter().find_map(|p| match &p.action {
            Action::Encrypt {
                subject: Some(s), ..
            } => self.column_index(s),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub enum SourceConnector {
    Csv(CsvOptions),
    Jsonl(FileSet),
    Parquet(FileSet),
    Postgres(PgSource),
}

/// Files to read: an absolute glob pattern.
#[derive(Debug, Clone)]
pub struct FileSet {
    pub pattern: String,
    pub incremental: bool,
    /// Files modified less than this long ago are left for a later run.
    pub min_age: Option<std::time::Duration>,
}

/// A duration as a spec writes it: a whole number with `s`, `m`, `h` or `d`, or a number of
/// seconds alone.
pub fn parse_age(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub files: FileSet,
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
    /// The files' text encoding: UTF-8 or an ASCII-compatible legacy encoding (WHATWG
    /// Encoding Standard labels, decoded by `encoding_rs`).
    pub encoding: &'static encoding_rs::Encoding,
    pub empty_is_null: bool,
    /// Numbers (`decimal`, `float64` columns) are written with a decimal comma: it is read as
    /// a point (the record's raw bytes, and so its commitment, stay as written).
    pub decimal_comma: bool,
}

#[derive(Debug, Clone)]
pub struct PgSource {
    pub url: SecretRef,
    pub from: PgFrom,
    pub key: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub enum PgFrom {
    Table(String),
    Query(String),
}

/// A secret given by reference. Resolved only when a connection is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    /// A literal without any password in it (trust, peer or .pgpass authentication).
    Literal(Secret),
}

impl SecretRef {
    /// Reads the secret. Errors name the reference, never the value.
    pub fn resolve(&self) -> std::result::Result<Secret, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name).map(Secret::new).map_err(|_| {
                format!("environment variable {name} is not set; export it before running")
            }),
            SecretRef::File(p) => std::fs::read_to_string(p)
                .map(|s| Secret::new(s.trim_end().to_string()))
                .map_err(|e| format!("cannot read secret file {}: {e}", p.display())),
            SecretRef::Literal(s) => Ok(s.clone()),
        }
    }
}

/// Arrow-facing column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Utf8,
    Int64,
    Float64,
    Boolean,
    Date,
    /// Microseconds, UTC.
    Timestamp,
    Decimal {
        precision: u8,
        scale: i8,
    },
}

/// The spec's type for another system's name of one (`integer`, `datetime`, `numeric(12,2)`),
/// for a hint: not accepted as such, since the names differ in range from system to system.
fn type_meant(t: &str) -> Option<String> {
    let t = t.trim().to_ascii_lowercase();
    let (head, args) = match t.split_once('(') {
        Some((h, a)) => (h.trim(), Some(a)),
        None => (t.as_str(), None),
    };
    Some(match head {
        "int" | "integer" | "int32" | "int16" | "int8" | "smallint" | "tinyint" | "i64" | "i32"
        | "number" => "int64".into(),
        "float" | "float32" | "real" | "f64" | "double precision" => "float64".into(),
        "datetime" | "timestamptz" | "timestamp with time zone" | "instant" => "timestamp".into(),
        "str" | "varchar" | "char" | "character varying" => "string".into(),
        "numeric" | "dec" | "money" => match args {
            Some(a) => format!("decimal({}", a.trim()),
            None => "decimal(P,S)".into(),
        },
        _ => return None,
    })
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<ColumnType> {
        let s = s.trim();
        Some(match s {
            "string" | "utf8" | "text" => ColumnType::Utf8,
            "int64" | "bigint" | "long" => ColumnType::Int64,
            "float64" | "double" => ColumnType::Float64,
            "bool" | "boolean" => ColumnType::Boolean,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            _ => {
                let inner = s.strip_prefix("decimal(")?.strip_suffix(')')?;
                // `decimal(P)` is `decimal(P,0)`, as in SQL.
                let (p, sc) = inner.split_once(',').unwrap_or((inner, "0"));
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = sc.trim().parse().ok()?;
                if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
                    return None;
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub required: bool,
    pub format: Option<String>,
    /// What the spec says the column holds (`class:`/`tag:`), overriding the classifier.
    pub class: Option<(Tag, Option<Kind>)>,
    pub at: (u64, u64),
}

/// A compiled check. Column references are indexes into [`Source::columns`].
#[derive(Debug, Clone)]
pub struct Check {
    pub rule: Rule,
    /// Reason code recorded in quarantine.
    pub reason: String,
    /// Human label naming rule and columns, e.g. `regex(quantity)`; never a value.
    pub label: String,
    /// Where the check is written in the spec (line, column).
    pub at: (u64, u64),
}

#[derive(Debug, Clone)]
pub enum Rule {
    NotNull(usize),
    Unique(Vec<usize>),
    InSet(usize, HashSet<String>),
    Between(usize, Option<f64>, Option<f64>),
    Regex(usize, regex::Regex),
    LengthBetween(usize, Option<u64>, Option<u64>),
    Parses(usize, ColumnType, Option<String>),
    GreaterThan(usize, usize),
    Checksum(usize, ChecksumScheme),
}

#[derive(Debug, Clone)]
pub struct Transform {
    pub name: String,
    pub sql: String,
    /// The source or transform it reads (found in the SQL's FROM clause).
    pub input: String,
    /// The source at the root of this transform's chain.
    pub root_source: String,
    /// Line and column of the transform in the spec.
    pub at: (u64, u64),
}

/// Who may read a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Audience {
    Public,
    Analyst,
    Internal,
    Restricted,
}

#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub from: String,
    pub root_source: String,
    pub audience: Audience,
    pub target: Target,
    /// Line and column of the sink in the spec.
    pub at: (u64, u64),
}

impl Audience {
    pub fn name(self) -> &'static str {
        match self {
            Audience::Public => "public",
            Audience::Analyst => "analyst",
            Audience::Internal => "internal",
            Audience::Restricted => "restricted",
        }
    }
    /// May this audience receive raw values tagged `tag`? Personal and financial data go to
    /// `restricted` sinks only; proprietary data to `internal` and `restricted`.
    pub fn cleared_for(self, tag: Tag) -> bool {
        match tag {
            Tag::None => true,
            Tag::Proprietary => self >= Audience::Internal,
            Tag::Financial | Tag::Pii => self == Audience::Restricted,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Target {
    Delta {
        uri: String,
        compression: Codec,
    },
    Parquet {
        dir: PathBuf,
        compression: Codec,
    },
    Postgres {
        url: SecretRef,
        table: String,
        /// Index `_sealtrail_id` when creating the table.
        index_ids: bool,
    },
}

/// The compression of the Parquet files a Delta or Parquet target writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Zstandard at a level from 1 to 22.
    Zstd(u8),
    Snappy,
    /// LZ4 in Parquet's `LZ4_RAW` framing (the one current readers agree on).
    Lz4,
    /// Gzip (deflate) at a level from 0 to 9.
    Gzip(u8),
    None,
}

impl Default for Codec {
    /// Zstandard at level 1: on the reference job ~40 % smaller files than Snappy's, for ~0.5
    /// CPU-seconds a million rows more (BENCHMARKS.md).
    fn default() -> Self {
        Codec::Zstd(1)
    }
}

impl Codec {
    /// Every codec the spec accepts, by name.
    pub const NAMES: [&str; 5] = ["zstd", "snappy", "lz4", "gzip", "none"];

    /// The codec named `name` at `level` (its default level if `None`), or what is wrong.
    pub fn parse(name: &str, level: Option<i64>) -> Result<Codec, String> {
        let ranged = |lo: i64, hi: i64, default: u8| match level {
            None => Ok(default),
            Some(l) if (lo..=hi).contains(&l) => Ok(l as u8),
            Some(l) => Err(format!(
                "`compression_level: {l}` is out of range for {name} ({lo} to {hi})"
            )),
        };
        let codec = match name {
            "zstd" => return ranged(1, 22, 1).map(Codec::Zstd),
            "gzip" => return ranged(0, 9, 6).map(Codec::Gzip),
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "none" => Codec::None,
            other => return Err(format!("unknown compression `{other}`")),
        };
        match level {
            Some(_) => Err(format!("{name} has no compression level")),
            None => Ok(codec),
        }
    }

    /// The name the spec gives it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd(_) => "zstd",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Gzip(_) => "gzip",
            Codec::None => "none",
        }
    }

    /// What a Parquet file it compresses is named with before `.parquet` (the convention of
    /// Spark and delta-rs: `part-….snappy.parquet`), empty for none.
    pub fn file_infix(self) -> &'static str {
        match self {
            Codec::Zstd(_) => ".zstd",
            Codec::Snappy => ".snappy",
            Codec::Lz4 => ".lz4raw",
            Codec::Gzip(_) => ".gz",
            Codec::None => "",
        }
    }

    /// Every [`Codec::file_infix`], longest first (so `""` comes last).
    pub const FILE_INFIXES: [&str; 5] = [".lz4raw", ".snappy", ".zstd", ".gz", ""];
}

impl Target {
    /// The Delta table at `uri`, written with the default compression: what reading it needs
    /// (each file says its own codec; the target's matters only to writers).
    pub fn delta_at(uri: impl Into<String>) -> Target {
        Target::Delta {
            uri: uri.into(),
            compression: Codec::default(),
        }
    }

    /// The Parquet folder `dir`, to read (see [`Target::delta_at`]).
    pub fn parquet_at(dir: impl Into<PathBuf>) -> Target {
        Target::Parquet {
            dir: dir.into(),
            compression: Codec::default(),
        }
    }

    /// The compression of the files it writes; `None` for a PostgreSQL table.
    pub fn compression(&self) -> Option<Codec> {
        match self {
            Target::Delta { compression, .. } | Target::Parquet { compression, .. } => {
                Some(*compression)
            }
            Target::Postgres { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Delta { uri, .. } => format!("delta {uri}"),
            Target::Parquet { dir, .. } => format!("parquet {}", dir.display()),
            Target::Postgres { table, .. } => format!("postgres table {table}"),
        }
    }
}

struct Ctx<'a> {
    file: &'a Path,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err<T>(&mut self, at: &Loc<T>, message: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: at.line,
            column: at.column,
            message: message.into(),
            hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
        });
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Compiles a raw spec. `path` anchors relative paths; `sha` is the spec's SHA-256.
pub fn compile(spec: raw::PipelineSpec, path: &Path, sha: String) -> Result<Pipeline> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let base = std::path::absolute(&base).unwrap_or(base);
    let mut cx = Ctx {
        file: path,
        diags: Vec::new(),
    };

    if spec.version.value != 1 {
        cx.err(
            &spec.version,
            format!("unsupported spec version {}", spec.version.value),
            "use `version: 1`",
        );
    }
    if !valid_name(&spec.pipeline.value) {
        cx.err(
            &spec.pipeline,
            "pipeline name must start with a letter and hold only letters, digits, `_` and `-`",
            "rename the pipeline, e.g. `trades_daily`",
        );
    } else if spec.pipeline.value.ends_with(crate::REPLAY_SUFFIX) {
        cx.err(
            &spec.pipeline,
            format!(
                "pipeline names ending in `{}` are reserved: `quarantine replay` runs a pipeline's repaired records under its name with that ending",
                crate::REPLAY_SUFFIX
            ),
            "rename the pipeline, e.g. `trades_replayed`",
        );
    }
    let batch_rows = match &spec.batch_rows {
        Some(b) if b.value == 0 || b.value > 4_000_000 => {
            cx.err(
                b,
                "batch_rows must be between 1 and 4000000",
                "omit it to use the default of 65536",
            );
            65_536
        }
        Some(b) => b.value as usize,
        None => 65_536,
    };
    if spec.sources.is_empty() {
        cx.err(
            &spec.pipeline,
            "the pipeline has no sources",
            "add a `sources:` entry",
        );
    }

    let mut sources = Vec::new();
    for (name, s) in &spec.sources {
        if let Some(src) = compile_source(&mut cx, &base, name, s) {
            sources.push(src);
        }
    }
    let source_names: HashSet<&str> = spec.sources.keys().map(String::as_str).collect();

    // Transforms: the input is the table after FROM; resolve chains to their root source.
    let mut inputs: BTreeMap<&str, (String, &Loc<raw::TransformSpec>)> = BTreeMap::new();
    for (name, t) in &spec.transforms {
        if !valid_name(name) {
            cx.err(
                t,
                format!("transform name `{name}` is not a valid SQL identifier"),
                "use letters, digits and `_`",
            );
        }
        if source_names.contains(name.as_str()) {
            cx.err(
                t,
                format!("transform `{name}` has the same name as a source"),
                "give it a distinct name",
            );
        }
        match from_table(&t.value.sql) {
            Some(input) => {
                inputs.insert(name, (input, t));
            }
            None => cx.err(
                t,
                format!("transform `{name}`: cannot find the table after FROM"),
                "write one `SELECT ... FROM <source or transform>` statement",
            ),
        }
    }
    let mut transforms = Vec::new();
    let mut order: Vec<&str> = Vec::new();
    let mut roots: HashMap<String, String> = source_names
        .iter()
        .map(|s| (s.to_string(), s.to_string()))
        .collect();
    // Repeatedly place transforms whose input is known: a topological order, cycles left over.
    loop {
        let before = order.len();
        for (name, (input, _)) in &inputs {
            if !order.contains(name)
                && let Some(root) = roots.get(input).cloned()
            {
                roots.insert(name.to_string(), root);
                order.push(name);
            }
        }
        if order.len() == before {
            break;
        }
    }
    for (name, (input, at)) in &inputs {
        if !order.contains(name) {
            let hint = known(input, &roots, "known inputs");
            cx.err(*at, format!("transform `{name}` reads `{input}`, which is not a source or a transform (or is part of a cycle)"), hint);
        }
    }
    for name in order {
        let (input, at) = &inputs[name];
        transforms.push(Transform {
            name: name.to_string(),
            sql: at.value.sql.clone(),
            input: input.clone(),
            root_source: roots[name].clone(),
            at: (at.line, at.column),
        });
    }

    let mut sinks = Vec::new();
    // Each sink's target, to refuse two that share or nest their folders (or table).
    let mut places: Vec<(String, Target)> = Vec::new();
    for (name, s) in &spec.sinks {
        let v = &s.value;
        let audience = match v.audience.as_deref().unwrap_or("restricted") {
            "public" => Audience::Public,
            "analyst" => Audience::Analyst,
            "internal" => Audience::Internal,
            "restricted" => Audience::Restricted,
            other => {
                cx.err(
                    s,
                    format!("sink `{name}`: unknown audience `{other}`"),
                    format!(
                        "{}use restricted, internal, analyst or public",
                        did_you_mean(other, &["restricted", "internal", "analyst", "public"])
                    ),
                );
                Audience::Restricted
            }
        };
        let Some(root) = roots.get(&v.from).cloned() else {
            cx.err(
                s,
                format!(
                    "sink `{name}` reads from `{}`, which is not a source or transform",
                    v.from
                ),
                known(&v.from, &roots, "known"),
            );
            continue;
        };
        let target = compile_target(
            &mut cx,
            &base,
            &format!("sink `{name}`"),
            s,
            v.delta.as_ref(),
            v.parquet.as_ref(),
            v.postgres.as_ref(),
        );
        if let Some(t) = target {
            let here = format!("sink `{name}`");
            if let Some((other, problem)) =
                places.iter().find_map(|(o, p)| Some((o, overlap(&t, p)?)))
            {
                cx.err(s, format!("{here} {problem} {other}"), "give each sink and the quarantine a path or table of its own, side by side (a table inside another's folder is read, or vacuumed, as part of it)");
            }
            places.push((here, t.clone()));
            sinks.push(Sink {
                name: name.clone(),
                from: v.from.clone(),
                root_source: root,
                audience,
                target: t,
                at: (s.line, s.column),
            });
        }
    }
    if spec.sinks.is_empty() {
        cx.err(
            &spec.pipeline,
            "the pipeline has no sinks",
            "add a `sinks:` entry",
        );
    }
    let q = &spec.quarantine;
    let quarantine = compile_target(
        &mut cx,
        &base,
        "quarantine",
        q,
        q.value.delta.as_ref(),
        q.value.parquet.as_ref(),
        None,
    );
    if let Some(t) = &quarantine {
        if let Some((other, problem)) = places.iter().find_map(|(o, p)| Some((o, overlap(t, p)?))) {
            cx.err(
                q,
                format!("quarantine {problem} {other}"),
                "give the quarantine its own path, beside the sinks' folders",
            );
        }
        places.push(("the quarantine".into(), t.clone()));
    }
    // A source whose files include what a sink writes would load the previous runs' output
    // (and, incremental, every new batch file) again.
    for src in &sources {
        let (SourceConnector::Csv(CsvOptions { files, .. })
        | SourceConnector::Jsonl(files)
        | SourceConnector::Parquet(files)) = &src.connector
        else {
            continue;
        };
        let Ok(pattern) =
            glob::Pattern::new(&normalised(Path::new(&files.pattern)).to_string_lossy())
        else {
            continue;
        };
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        for (what, t) in &places {
            let Some(dir) = local_folder(t) else {
                continue;
            };
            if written_names(t)
                .iter()
                .any(|n| pattern.matches_path_with(&dir.join(n), opts))
            {
                cx.err(
                    &spec.sources[&src.name],
                    format!(
                        "source `{}` reads files {what} writes (its path `{}` matches files in {}): each run would load the output of the runs before it",
                        src.name,
                        files.pattern,
                        dir.display()
                    ),
                    "narrow the source's path, or write the output outside the folders it reads",
                );
            }
        }
    }

    if !cx.diags.is_empty() {
        // In the file's order (the checks above run section by section).
        cx.diags.sort_by_key(|d| (d.line, d.column));
        return Err(Error::Invalid(cx.diags));
    }
    for source in &mut sources {
        source.text_without_nul = sinks
            .iter()
            .any(|k| k.root_source == source.name && matches!(k.target, Target::Postgres { .. }));
    }
    Ok(Pipeline {
        name: spec.pipeline.value,
        description: spec.description,
        spec_path: path.to_path_buf(),
        spec_sha256: sha,
        batch_rows,
        sources,
        transforms,
        sinks,
        quarantine: quarantine.ok_or_else(|| Error::Invalid(Vec::new()))?,
    })
}

/// Whether `a` would write where `b` does: the same table, the same folder, or a folder inside
/// the other's; in words, for a message ending with `b`'s name.
fn overlap(a: &Target, b: &Target) -> Option<&'static str> {
    if let (
        Target::Postgres {
            url: ua, table: ta, ..
        },
        Target::Postgres {
            url: ub, table: tb, ..
        },
    ) = (a, b)
    {
        return (ua == ub && ta == tb).then_some("writes to the same table as");
    }
    let (pa, pb) = (place(a)?, place(b)?);
    let inside = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
    if pa == pb {
        Some("writes to the same place as")
    } else if inside(&pa, &pb) {
        Some("writes inside the folder of")
    } else if inside(&pb, &pa) {
        Some("writes to a folder that holds the folder of")
    } else {
        None
    }
}

/// Where a Delta or Parquet target writes: its local folder lexically normalised (`.`, `..`
/// and trailing separators resolved), or `s3://bucket/prefix`; `None` for a table.
fn place(t: &Target) -> Option<String> {
    if let Target::Delta { uri, .. } = t
        && let Some(("s3" | "s3a", rest)) = uri.split_once("://")
    {
        return Some(format!("s3://{}", rest.trim_end_matches('/')));
    }
    Some(local_folder(t)?.to_string_lossy().into_owned())
}

/// The local folder of a Delta or Parquet target, lexically normalised.
fn local_folder(t: &Target) -> Option<PathBuf> {
    let path = match t {
        Target::Delta { uri, .. } => match uri.split_once("://") {
            Some(("file", rest)) => PathBuf::from(rest),
            Some(_) => return None,
            None => PathBuf::from(uri),
        },
        Target::Parquet { dir, .. } => dir.clone(),
        Target::Postgres { .. } => return None,
    };
    Some(normalised(&path))
}

/// `path` with `.` left out and `..` taking off the component before it, as the file system
/// would resolve them (without following links).
fn normalised(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Names of files a target writes in its folder, as examples to match source patterns with.
fn written_names(t: &Target) -> Vec<String> {
    let infix = t.compression().unwrap_or_default().file_infix();
    match t {
        Target::Parquet { .. } => {
            vec![format!(
                "part-01a23a70-26cf-74f3-82ad-edd24aa12989-s-000000{infix}.parquet"
            )]
        }
        _ => vec![
            format!("part-00000-42c955c6-e0ce-4a71-b183-de2eb6f21c04-c000{infix}.parquet"),
            "_delta_log/00000000000000000000.json".into(),
            "_delta_log/00000000000000000010.checkpoint.parquet".into(),
        ],
    }
}

/// `table` or `schema.table`, each a plain identifier (PostgreSQL reads `db.schema.table` as a
/// reference to another database, which it refuses).
fn plain_table(t: &str) -> bool {
    t.split('.').count() <= 2 && t.split('.').all(valid_name)
}

/// The hint for `word`, which names no source or transform of `roots`.
fn known(word: &str, roots: &HashMap<String, String>, what: &str) -> String {
    let mut k: Vec<&str> = roots.keys().map(String::as_str).collect();
    k.sort();
    named_one_of(word, &k, what)
}

/// `did you mean `x`? ` when one of `names` is close enough to `word` to be what was meant.
fn did_you_mean(word: &str, names: &[&str]) -> String {
    crate::keys::closest_of(word, names.iter().copied())
        .map_or(String::new(), |n| format!("did you mean `{n}`? "))
}

/// The hint for a name that is none of `names`: the likely one, then every one.
fn named_one_of(word: &str, names: &[&str], what: &str) -> String {
    format!("{}{what}: {}", did_you_mean(word, names), names.join(", "))
}

/// The first table name after FROM (case-insensitive), unquoted.
fn from_table(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    let mut idx = None;
    for (i, _) in lower.match_indices("from") {
        let before = lower[..i].chars().last();
        let after = lower[i + 4..].chars().next();
        if before.is_none_or(|c| c.is_whitespace()) && after.is_some_and(|c| c.is_whitespace()) {
            idx = Some(i + 4);
            break;
        }
    }
    let rest = sql[idx?..].trim_start();
    let name: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let pb = PathBuf::from(p);
    if pb.is_absolute() { pb } else { base.join(pb) }
}

fn secret_ref<T>(cx: &mut Ctx, at: &Loc<T>, base: &Path, what: &str, s: &str) -> Option<SecretRef> {
    if let Some(name) = s.strip_prefix("env:") {
        if name.is_empty() {
            cx.err(
                at,
                format!("{what}: `env:` needs a variable name"),
                "write `env:PG_URL`",
            );
            return None;
        }
        return Some(SecretRef::Env(name.to_string()));
    }
    if let Some(p) = s.strip_prefix("file:") {
        return Some(SecretRef::File(resolve_path(base, p)));
    }
    // A URL with user:password@ is a plain secret in the spec: refuse it. The message names
    // the location only, never the value.
    if sealtrail_core::secret::url_has_password(s) {
        cx.err(
            at,
            format!("{what}: the connection string holds a password in clear"),
            "move it to an environment variable and write `url: env:NAME` (or `file:PATH`)",
        );
        return None;
    }
    // What the connection would refuse (an unknown setting, `sslmode=verify-ca`, ...) is
    // reported here, with its location, with every other error.
    if (s.starts_with("postgres://") || s.starts_with("postgresql://"))
        && let Err(e) = sealtrail_core::db::check_pg_url(s)
    {
        cx.err(
            at,
            format!("{what}: {e}"),
            "see \"PostgreSQL over TLS\" in docs/spec.md for the settings a URL may carry",
        );
        return None;
    }
    Some(SecretRef::Literal(Secret::new(s.to_string())))
}

fn compile_target<T>(
    cx: &mut Ctx,
    base: &Path,
    what: &str,
    at: &Loc<T>,
    delta: Option<&raw::PathSink>,
    parquet: Option<&raw::PathSink>,
    pg: Option<&raw::PgSinkSpec>,
) -> Option<Target> {
    let n = delta.is_some() as u8 + parquet.is_some() as u8 + pg.is_some() as u8;
    if n != 1 {
        let kinds = if pg.is_some() || what != "quarantine" {
            "`delta`, `parquet` or `postgres`"
        } else {
            "`delta` or `parquet`"
        };
        cx.err(
            at,
            format!("{what} must set exactly one of {kinds} (found {n})"),
            "keep one connector per sink",
        );
        return None;
    }
    let codec = |p: &raw::PathSink, cx: &mut Ctx| match &p.compression {
        None if p.compression_level.is_some() => {
            cx.err(
                at,
                format!("{what}: `compression_level` without `compression`"),
                "add `compression: zstd` (levels 1 to 22) or `compression: gzip` (0 to 9)",
            );
            None
        }
        None => Some(Codec::default()),
        Some(name) => match Codec::parse(name, p.compression_level) {
            Ok(c) => Some(c),
            Err(problem) => {
                cx.err(
                    at,
                    format!("{what}: {problem}"),
                    format!(
                        "write `compression:` as one of {}; only zstd (levels 1 to 22) and gzip (0 to 9) take a `compression_level`",
                        Codec::NAMES.join(", ")
                    ),
                );
                None
            }
        },
    };
    if let Some(d) = delta {
        // Every problem of the sink at once: its path's too, whatever its compression's.
        let compression = codec(d, cx);
        let uri = if let Some((scheme, _)) = d.path.split_once("://") {
            if !matches!(scheme, "s3" | "s3a" | "file") {
                cx.err(
                    at,
                    format!("{what}: Delta tables live in a local folder or on S3, not at `{scheme}://`"),
                    "use a local path or an `s3://bucket/path` URL (credentials from the AWS_* environment)",
                );
                return None;
            }
            d.path.clone()
        } else {
            resolve_path(base, &d.path).to_string_lossy().into_owned()
        };
        return Some(Target::Delta {
            uri,
            compression: compression?,
        });
    }
    if let Some(p) = parquet {
        let compression = codec(p, cx);
        if p.path.contains("://") {
            cx.err(
                at,
                format!("{what}: parquet sinks write to local folders"),
                "use a local path, or a delta sink for object storage",
            );
            return None;
        }
        return Some(Target::Parquet {
            dir: resolve_path(base, &p.path),
            compression: compression?,
        });
    }
    let pg = pg?;
    let url = secret_ref(cx, at, base, what, &pg.url)?;
    if !plain_table(&pg.table) {
        cx.err(
            at,
            format!(
                "{what}: table name `{}` is not a plain identifier",
                pg.table
            ),
            "use `table` or `schema.table` with letters, digits and `_` (the database is the URL's)",
        );
        return None;
    }
    Some(Target::Postgres {
        url,
        table: pg.table.clone(),
        index_ids: pg.index_lineage_ids.unwrap_or(true),
    })
}

/// Resolves a CSV source's declared `encoding` (a WHATWG Encoding Standard label, case and
/// spacing as the standard allows). The reader finds lines, quotes and separators in the
/// undecoded bytes, so the encoding must be ASCII-compatible or UTF-16 (whose line ends it
/// finds as code units, splitting each record once decoded), and for the multi-byte legacy
/// encodings the separator and quote must be bytes that never occur inside a character.
fn csv_encoding<T>(
    cx: &mut Ctx,
    at: &Loc<T>,
    name: &str,
    label: &str,
    delimiter: u8,
    quote: u8,
) -> &'static encoding_rs::Encoding {
    let Some(enc) = encoding_rs::Encoding::for_label_no_replacement(label.trim().as_bytes()) else {
        cx.err(
            at,
            format!("source `{name}`: encoding `{label}` is not a known encoding"),
            "use a WHATWG label such as utf-8, windows-1252, iso-8859-15, shift_jis, gbk, big5",
        );
        return encoding_rs::UTF_8;
    };
    let utf16 = enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE;
    if !enc.is_ascii_compatible() && !utf16 {
        cx.err(
            at,
            format!(
                "source `{name}`: encoding `{label}` ({}) is not supported: sealtrail finds lines \
                 and fields in the file's bytes, which needs UTF-16 or an ASCII-compatible \
                 encoding",
                enc.name()
            ),
            "convert the files to UTF-8 first (e.g. `iconv -f ISO-2022-JP -t UTF-8`) and declare `encoding: utf-8`",
        );
        return encoding_rs::UTF_8;
    }
    if enc != encoding_rs::UTF_8 && !enc.is_single_byte() && !utf16 {
        // Trail bytes of Shift_JIS, Big5, GBK, gb18030, EUC-KR and EUC-JP characters lie in
        // 0x30..=0x39 or 0x40..=0xFE; below 0x30 and 0x3A..=0x3F they never occur.
        let safe = |b: u8| b < 0x30 || (0x3A..=0x3F).contains(&b);
        for (what, b) in [("delimiter", delimiter), ("quote", quote)] {
            if !safe(b) {
                cx.err(
                    at,
                    format!(
                        "source `{name}`: with encoding {} the csv {what} `{}` can be part of a \
                         two-byte character, so fields could not be split reliably",
                        enc.name(),
                        (b as char).escape_default()
                    ),
                    "use `,`, `;`, a tab or `\"` (or convert the files to UTF-8)",
                );
            }
        }
    }
    enc
}

fn compile_source(
    cx: &mut Ctx,
    base: &Path,
    name: &str,
    s: &Loc<raw::SourceSpec>,
) -> Option<Source> {
    let v = &s.value;
    let start = cx.diags.len();
    if !valid_name(name) {
        cx.err(
            s,
            format!("source name `{name}` is not a valid SQL identifier"),
            "use letters, digits and `_`",
        );
    }
    let n = v.csv.is_some() as u8
        + v.jsonl.is_some() as u8
        + v.parquet.is_some() as u8
        + v.postgres.is_some() as u8;
    let files = |cx: &mut Ctx, path: &str, incremental: bool, min_age: &Option<String>| {
        let pattern = resolve_path(base, path).to_string_lossy().into_owned();
        if let Err(e) = glob::Pattern::new(&pattern) {
            cx.err(
                s,
                format!("source `{name}`: bad path pattern: {e}"),
                "fix the glob; `*` and `?` are wildcards",
            );
        }
        let min_age = min_age.as_deref().and_then(|a| {
            let age = parse_age(a);
            if age.is_none() {
                cx.err(
                    s,
                    format!("source `{name}`: `min_age` is `{a}`, not a duration"),
                    "write a whole number with `s`, `m`, `h` or `d` (`30s`, `5m`), or a number of seconds",
                );
            }
            age
        });
        FileSet {
            pattern,
            incremental,
            min_age,
        }
    };
    let connector = if n != 1 {
        cx.err(s, format!("source `{name}` must set exactly one of `csv`, `jsonl`, `parquet`, `postgres` (found {n})"), "keep one connector per source");
        None
    } else if let Some(c) = &v.csv {
        let one_char = |cx: &mut Ctx, what: &str, v: &Option<String>, dflt: u8| match v.as_deref() {
            None => dflt,
            Some(x) if x.len() == 1 && x.is_ascii() => x.as_bytes()[0],
            Some(x) => {
                cx.err(
                    s,
                    format!("source `{name}`: csv {what} `{x}` must be one ASCII character"),
                    "for tab write \"\\t\"",
                );
                dflt
            }
        };
        let delimiter = one_char(cx, "delimiter", &c.delimiter, b',');
        let quote = one_char(cx, "quote", &c.quote, b'"');
        let encoding = match &c.encoding {
            None => encoding_rs::UTF_8,
            Some(label) => csv_encoding(cx, s, name, label, delimiter, quote),
        };
        let decimal_comma = match c.decimal.as_deref() {
            None | Some(".") => false,
            Some(",") if delimiter == b',' => {
                cx.err(
                    s,
                    format!("source `{name}`: csv `decimal: \",\"` with the comma as `delimiter` too"),
                    "set `delimiter: \";\"` (or the one the files use): a decimal comma cannot also separate fields",
                );
                false
            }
            Some(",") => true,
            Some(x) => {
                cx.err(
                    s,
                    format!("source `{name}`: csv `decimal` is `{x}`; it is `.` or `,`"),
                    "`decimal: \",\"` reads `1234,56` as 1234.56",
                );
                false
            }
        };
        Some(SourceConnector::Csv(CsvOptions {
            files: files(cx, &c.path, c.incremental, &c.min_age),
            header: c.header,
            delimiter,
            quote,
            encoding,
            empty_is_null: c.empty_is_null,
            decimal_comma,
        }))
    } else if let Some(j) = &v.jsonl {
        Some(SourceConnector::Jsonl(files(
            cx,
            &j.path,
            j.incremental,
            &j.min_age,
        )))
    } else if let Some(p) = &v.parquet {
        Some(SourceConnector::Parquet(files(
            cx,
            &p.path,
            p.incremental,
            &p.min_age,
        )))
    } else if let Some(pg) = &v.postgres {
        let url = secret_ref(cx, s, base, &format!("source `{name}`"), &pg.url);
        let from = match (&pg.table, &pg.query) {
            (Some(t), None) if plain_table(t) => Some(PgFrom::Table(t.clone())),
            (Some(t), None) => {
                cx.err(
                    s,
                    format!("source `{name}`: table `{t}` is not a plain identifier"),
                    "use `table` or `schema.table` (the database is the URL's), or `query:`",
                );
                None
            }
            (None, Some(q)) => Some(PgFrom::Query(q.clone())),
            _ => {
                cx.err(
                    s,
                    format!("source `{name}`: set exactly one of `table` and `query`"),
                    "",
                );
                None
            }
        };
        url.zip(from).map(|(url, from)| {
            SourceConnector::Postgres(PgSource {
                url,
                from,
                key: pg.key.clone(),
                cursor: pg.cursor.clone(),
            })
        })
    } else {
        None
    };

    // Columns.
    let mut columns = Vec::new();
    let mut seen = HashSet::new();
    if v.columns.is_empty() {
        cx.err(
            s,
            format!("source `{name}` declares no columns"),
            "list them under `columns:` with name and type",
        );
    }
    for c in &v.columns {
        let cv = &c.value;
        if !seen.insert(cv.name.clone()) {
            cx.err(
                c,
                format!("source `{name}`: column `{}` is declared twice", cv.name),
                "remove the duplicate",
            );
        }
        let ty = match cv.ty.as_deref() {
            None => ColumnType::Utf8,
            Some(t) => ColumnType::parse(t).unwrap_or_else(|| {
                if t.trim_start().starts_with("decimal(") && !t.contains(')') {
                    cx.err(
                        c,
                        format!("source `{name}`: column `{}` has type `{t}`, a `decimal(P,S)` cut at its comma: in a `{{ ... }}` mapping a comma ends the value", cv.name),
                        "put the type in quotes: `type: \"decimal(18,4)\"`",
                    );
                } else {
                    let types = "string, int64, float64, bool, date, timestamp, decimal(P,S) or decimal(P) with P <= 38 and S <= P";
                    let hint = match type_meant(t) {
                        Some(m) => format!("did you mean `{m}`? Use {types}"),
                        None => format!("use {types}"),
                    };
                    cx.err(c, format!("source `{name}`: column `{}` has unknown type `{t}`", cv.name), hint);
                }
                ColumnType::Utf8
            }),
        };
        if cv.format.is_some() && !matches!(ty, ColumnType::Date | ColumnType::Timestamp) {
            cx.err(
                c,
                format!(
                    "source `{name}`: `format` applies to date and timestamp columns, not `{}`",
                    cv.name
                ),
                "remove `format` or change the type",
            );
        }
        let class = declared_class(cx, name, c);
        columns.push(Column {
            name: cv.name.clone(),
            ty,
            required: cv.required,
            format: cv.format.clone(),
            class,
            at: (c.line, c.column),
        });
    }
    if let Some(pg) = &v.postgres {
        for (what, col) in [("key", &pg.key), ("cursor", &pg.cursor)] {
            if let Some(col) = col
                && !columns.iter().any(|c| &c.name == col)
            {
                cx.err(
                    s,
                    format!("source `{name}`: {what} column `{col}` is not declared"),
                    "declare it under `columns:` (it is read like any other column)",
                );
            }
        }
    }

    // Checks.
    let mut checks = Vec::new();
    let mut row_count = None;
    for c in &v.checks {
        match compile_check(cx, name, c, &columns) {
            Some(Ok(chk)) => checks.push(chk),
            Some(Err(rc)) => row_count = Some(rc),
            None => {}
        }
    }
    // A declared `key` names each record in its lineage id, so a value that repeats in a run
    // would give two records one id: the later ones are quarantined (`duplicate_key`), as by
    // a `unique` check, which the spec may declare itself instead (a primary key, used when
    // `key` is not declared, is unique by its constraint).
    if let Some(k) = v.postgres.as_ref().and_then(|pg| pg.key.as_deref())
        && let Some(i) = columns.iter().position(|c| c.name == k)
        && !checks
            .iter()
            .any(|c: &Check| matches!(&c.rule, Rule::Unique(cols) if cols[..] == [i]))
    {
        checks.push(Check {
            rule: Rule::Unique(vec![i]),
            reason: "duplicate_key".into(),
            label: format!("unique({k})"),
            at: (s.line, s.column),
        });
    }
    let protect = v
        .protect
        .iter()
        .filter_map(|p| compile_policy(cx, base, name, p, &columns))
        .collect();
    if let Some(d) = &v.digest
        && (!valid_name(d) || columns.iter().any(|c| &c.name == d))
    {
        cx.err(
            s,
            format!("source `{name}`: digest column `{d}` must be a new, valid column name"),
            "e.g. `digest: record_digest`",
        );
    }
    if cx.diags.len() > start {
        return None;
    }
    Some(Source {
        name: name.to_string(),
        connector: connector?,
        columns,
        unknown_columns: v.unknown_columns,
        checks,
        row_count,
        protect,
        digest: v.digest.clone(),
        at: (s.line, s.column),
        // Set once the sinks are compiled.
        text_without_nul: false,
    })
}

fn declared_class(
    cx: &mut Ctx,
    source: &str,
    c: &Loc<raw::ColumnSpec>,
) -> Option<(Tag, Option<Kind>)> {
    let cv = &c.value;
    let kind = match cv.class.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(k) => match k.parse::<Kind>() {
            Ok(k) => Some(Some(k)),
            Err(e) => {
                cx.err(
                    c,
                    format!("source `{source}`: column `{}`: {e}", cv.name),
                    "or `class: none` for a column that is not sensitive",
                );
                return None;
            }
        },
    };
    let tag = match cv.tag.as_deref().map(str::parse::<Tag>) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            cx.err(
                c,
                format!("source `{source}`: column `{}`: {e}", cv.name),
                "",
            );
            return None;
        }
    };
    match (kind, tag) {
        (None, None) => None,
        (Some(k), t) => Some((t.unwrap_or(k.map_or(Tag::None, Kind::default_tag)), k)),
        (None, Some(t)) => Some((t, None)),
    }
}

fn compile_policy(
    cx: &mut Ctx,
    base: &Path,
    source: &str,
    at: &Loc<raw::PolicySpec>,
    columns: &[Column],
) -> Option<PolicyRule> {
    use raw::ActionKind as A;
    let p = &at.value;
    let start = cx.diags.len();
    let action_name = serde_json::to_value(p.action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let what = format!("source `{source}`: policy `{action_name}`");
    let selector = match (&p.column, &p.tag, &p.kind) {
        (Some(c), None, None) => {
            if !columns.iter().any(|x| &x.name == c) {
                let names: Vec<&str> = columns.iter().map(|x| x.name.as_str()).collect();
                cx.err(
                    at,
                    format!("{what} refers to column `{c}`, which is not declared"),
                    named_one_of(c, &names, "declared columns"),
                );
            }
            Selector::Column(c.clone())
        }
        (None, Some(t), None) => match t.parse::<Tag>() {
            Ok(Tag::None) | Err(_) => {
                cx.err(
                    at,
                    format!("{what}: `tag` must be pii, financial or proprietary"),
                    "",
                );
                Selector::Tag(Tag::None)
            }
            Ok(t) => Selector::Tag(t),
        },
        (None, None, Some(k)) => match k.parse::<Kind>() {
            Ok(k) => Selector::Kind(k),
            Err(e) => {
                cx.err(at, format!("{what}: {e}"), "");
                Selector::Kind(Kind::FreeText)
            }
        },
        _ => {
            cx.err(
                at,
                format!("{what} must select by exactly one of `column`, `tag` and `kind`"),
                "e.g. `column: customer_email` or `kind: card_pan`",
            );
            return None;
        }
    };
    let allowed: &[&str] = match p.action {
        A::Drop | A::Keep | A::Hash => &[],
        A::Mask => &[
            "keep_first",
            "keep_last",
            "fixed",
            "digits_only",
            "mask_char",
        ],
        A::Token => &["key", "domain"],
        A::Fpe => &["key", "domain"],
        A::Encrypt => &["key", "subject", "format"],
        A::Generalise => &["to", "bands"],
        A::Derive => &["derive"],
        A::Redact => &["with", "patterns"],
    };
    let set = [
        ("keep_first", p.keep_first.is_some()),
        ("keep_last", p.keep_last.is_some()),
        ("fixed", p.fixed.is_some()),
        ("digits_only", p.digits_only.is_some()),
        ("mask_char", p.mask_char.is_some()),
        ("key", p.key.is_some()),
        ("domain", p.domain.is_some()),
        ("subject", p.subject.is_some()),
        ("format", p.format.is_some()),
        ("to", p.to.is_some()),
        ("bands", p.bands.is_some()),
        ("derive", p.derive.is_some()),
        ("with", p.with.is_some()),
        ("patterns", p.patterns.is_some()),
    ];
    for (f, present) in set {
        if present && !allowed.contains(&f) {
            let takes = if allowed.is_empty() {
                "nothing else".to_string()
            } else {
                allowed.join(", ")
            };
            cx.err(
                at,
                format!("{what} does not take `{f}`"),
                format!("`{action_name}` takes: {takes}"),
            );
        }
    }
    if p.action == A::Drop && p.output.is_some() {
        cx.err(
            at,
            format!("{what}: a dropped column has no output, so `as` means nothing"),
            "remove `as`",
        );
    }
    if let Some(o) = &p.output
        && !valid_name(o)
    {
        cx.err(
            at,
            format!("{what}: output name `{o}` is not a valid column name"),
            "use letters, digits and `_`",
        );
    }
    if p.output.is_some() && !matches!(selector, Selector::Column(_)) {
        cx.err(
            at,
            format!("{what}: `as` needs `column` (a tag or kind may select several columns)"),
            "",
        );
    }
    let domain = p
        .domain
        .clone()
        .or_else(|| p.column.clone())
        .unwrap_or_else(|| match &selector {
            Selector::Kind(k) => k.name().to_string(),
            Selector::Tag(t) => t.name().to_string(),
            Selector::Column(c) => c.clone(),
        });
    let key = |cx: &mut Ctx, dflt: String| -> KeySource {
        match p.key.as_deref() {
            None => KeySource::Keyring(dflt),
            Some(k) if k.starts_with("env:") || k.starts_with("file:") => {
                match secret_ref(cx, at, base, &what, k) {
                    Some(r) => KeySource::External(r),
                    None => KeySource::Keyring(dflt),
                }
            }
            Some(k) if valid_name(k) => KeySource::Keyring(k.to_string()),
            Some(_) => {
                // Never echo it: it may be key material pasted in by mistake.
                cx.err(at, format!("{what}: `key` must be a keyring key name or a reference (`env:NAME`, `file:PATH`)"), "key material never goes in a spec; export it and write `key: env:NAME`");
                KeySource::Keyring(dflt)
            }
        }
    };
    let action = match p.action {
        A::Drop => Action::Drop,
        A::Keep => Action::Keep,
        A::Hash => Action::Hash,
        A::Mask => {
            let with = match p.mask_char.as_deref() {
                None => Some('*'),
                Some("") => None,
                Some(c) if c.chars().count() == 1 => c.chars().next(),
                Some(_) => {
                    cx.err(at, format!("{what}: `mask_char` must be one character, or \"\" to keep only the kept characters"), "");
                    None
                }
            };
            if p.fixed.is_some() && (p.keep_first.is_some() || p.keep_last.is_some()) {
                cx.err(
                    at,
                    format!(
                        "{what}: `fixed` replaces the whole value; it cannot keep characters too"
                    ),
                    "remove `fixed` or the `keep_*` fields",
                );
            }
            Action::Mask {
                keep_first: p.keep_first.unwrap_or(0) as usize,
                keep_last: p.keep_last.unwrap_or(0) as usize,
                fixed: p.fixed.clone(),
                digits_only: p.digits_only.unwrap_or(false),
                with,
            }
        }
        A::Token => Action::Token {
            key: key(cx, format!("token-{domain}")),
        },
        A::Fpe => Action::Fpe {
            key: key(cx, format!("fpe-{domain}")),
            tweak: domain.clone(),
        },
        A::Encrypt => {
            let bare = match p.format.as_deref() {
                None | Some("sealtrail") => false,
                Some("bare") => true,
                Some(f) => {
                    cx.err(
                        at,
                        format!("{what}: unknown format `{f}`"),
                        "use `sealtrail` (names the key; the default) or `bare`",
                    );
                    false
                }
            };
            if let Some(sub) = &p.subject {
                if !columns.iter().any(|x| &x.name == sub) {
                    cx.err(at, format!("{what}: subject column `{sub}` is not declared"), "name the column holding the data subject's id, e.g. `subject: customer_id`");
                }
                if bare || p.key.is_some() {
                    cx.err(at, format!("{what}: a subject-keyed value uses the subject's own key, named in the ciphertext"), "remove `key` and `format`");
                }
            }
            Action::Encrypt {
                key: key(cx, "data".into()),
                subject: p.subject.clone(),
                bare,
            }
        }
        A::Generalise => match (p.to.as_deref(), &p.bands) {
            (Some("year"), None) => Action::Generalise(Generalise::Year),
            (Some("month"), None) => Action::Generalise(Generalise::Month),
            (Some("district"), None) => Action::Generalise(Generalise::District),
            (Some("band"), Some(b)) if !b.is_empty() && b.windows(2).all(|w| w[0] < w[1]) => {
                Action::Generalise(Generalise::Band(b.clone()))
            }
            (Some("band"), _) => {
                cx.err(
                    at,
                    format!("{what}: `to: band` needs `bands`, ascending"),
                    "e.g. `bands: [1000, 10000, 100000]`",
                );
                Action::Drop
            }
            _ => {
                cx.err(
                    at,
                    format!("{what}: `to` must be year, month, band or district"),
                    "`bands` goes with `to: band` only",
                );
                Action::Drop
            }
        },
        A::Derive => {
            match p.derive.as_deref() {
                Some("has_value") | Some("has_email") => Action::Derive(Derive::HasValue),
                Some("email_domain") => Action::Derive(Derive::EmailDomain),
                Some("age_band") => Action::Derive(Derive::AgeBand),
                Some("country_of_iban") => Action::Derive(Derive::CountryOfIban),
                other => {
                    cx.err(at, format!("{what}: {}", match other { Some(o) => format!("unknown derivation `{o}`"), None => "needs `derive`".into() }), "one of has_value (alias has_email), email_domain, age_band, country_of_iban");
                    Action::Drop
                }
            }
        }
        A::Redact => {
            let mut patterns = Vec::new();
            for pat in p.patterns.iter().flatten() {
                match regex::Regex::new(pat) {
                    Ok(r) => patterns.push(r),
                    Err(e) => cx.err(
                        at,
                        format!(
                            "{what}: pattern does not compile: {}",
                            e.to_string().lines().last().unwrap_or_default()
                        ),
                        "Rust regex syntax",
                    ),
                }
            }
            Action::Redact {
                with: p.with.clone().unwrap_or_else(|| "[REDACTED]".into()),
                patterns,
            }
        }
    };
    (cx.diags.len() == start).then(|| PolicyRule {
        selector,
        action,
        output: p.output.clone(),
        at: (at.line, at.column),
    })
}

type RowCount = (Option<u64>, Option<u64>);

fn compile_check(
    cx: &mut Ctx,
    source: &str,
    at: &Loc<raw::CheckSpec>,
    columns: &[Column],
) -> Option<std::result::Result<Check, RowCount>> {
    use raw::CheckKind as K;
    let c = &at.value;
    let kind_name = serde_json::to_value(c.rule)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let start = cx.diags.len();
    let col = |cx: &mut Ctx, name: &Option<String>, field: &str| -> Option<usize> {
        let Some(n) = name else {
            cx.err(
                at,
                format!("source `{source}`: rule `{kind_name}` needs `{field}`"),
                format!("add `{field}: <column name>`"),
            );
            return None;
        };
        let idx = columns.iter().position(|x| &x.name == n);
        if idx.is_none() {
            let names: Vec<&str> = columns.iter().map(|x| x.name.as_str()).collect();
            cx.err(at, format!("source `{source}`: rule `{kind_name}` refers to column `{n}`, which is not declared"), named_one_of(n, &names, "declared columns"));
        }
        idx
    };
    // Fields each rule accepts; anything else set is an error (it would be silently ignored).
    let allowed: &[&str] = match c.rule {
        K::NotNull => &["column"],
        K::Unique => &["column", "columns"],
        K::InSet => &["column", "values"],
        K::Between | K::LengthBetween => &["column", "min", "max"],
        K::Regex => &["column", "pattern"],
        K::Parses => &["column", "type", "format"],
        K::GreaterThan => &["column", "other"],
        K::RowCountBetween => &["min", "max"],
        K::Checksum => &["column", "scheme"],
    };
    let set = [
        ("column", c.column.is_some()),
        ("columns", c.columns.is_some()),
        ("other", c.other.is_some()),
        ("pattern", c.pattern.is_some()),
        ("values", c.values.is_some()),
        ("min", c.min.is_some()),
        ("max", c.max.is_some()),
        ("type", c.ty.is_some()),
        ("format", c.format.is_some()),
        ("scheme", c.scheme.is_some()),
    ];
    for (f, present) in set {
        if present && !allowed.contains(&f) {
            cx.err(
                at,
                format!("source `{source}`: rule `{kind_name}` does not take `{f}`"),
                format!("`{kind_name}` takes: {}", allowed.join(", ")),
            );
        }
    }
    let bound = |cx: &mut Ctx, v: Option<f64>| -> Option<u64> {
        v.map(|x| {
            if x < 0.0 || x.fract() != 0.0 {
                cx.err(
                    at,
                    format!(
                        "source `{source}`: rule `{kind_name}` needs whole, non-negative bounds"
                    ),
                    "",
                );
            }
            x as u64
        })
    };
    if matches!(c.rule, K::Between | K::LengthBetween | K::RowCountBetween)
        && c.min.is_none()
        && c.max.is_none()
    {
        cx.err(
            at,
            format!("source `{source}`: rule `{kind_name}` needs `min`, `max` or both"),
            "",
        );
    }
    if let (Some(lo), Some(hi)) = (c.min, c.max)
        && lo > hi
    {
        cx.err(
            at,
            format!("source `{source}`: rule `{kind_name}` has min > max"),
            "swap them",
        );
    }
    let rule = match c.rule {
        K::RowCountBetween => {
            let lo = bound(cx, c.min);
            let hi = bound(cx, c.max);
            return (cx.diags.len() == start).then_some(Err((lo, hi)));
        }
        K::NotNull => col(cx, &c.column, "column").map(Rule::NotNull),
        K::Unique => {
            let names: Vec<Option<String>> = match (&c.column, &c.columns) {
                (Some(one), None) => vec![Some(one.clone())],
                (None, Some(many)) if !many.is_empty() => many.iter().cloned().map(Some).collect(),
                _ => {
                    cx.err(at, format!("source `{source}`: rule `unique` needs `column` or a non-empty `columns` list"), "`columns: [a, b]` for a compound key");
                    vec![]
                }
            };
            let idx: Vec<Option<usize>> = names.iter().map(|n| col(cx, n, "columns")).collect();
            idx.into_iter()
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())
                .map(Rule::Unique)
        }
        K::InSet => {
            let i = col(cx, &c.column, "column");
            let vals = c.values.clone().filter(|v| !v.is_empty());
            if vals.is_none() {
                cx.err(
                    at,
                    format!("source `{source}`: rule `in_set` needs a non-empty `values` list"),
                    "",
                );
            }
            i.zip(vals)
                .map(|(i, v)| Rule::InSet(i, v.into_iter().collect()))
        }
        K::Between => col(cx, &c.column, "column").map(|i| Rule::Between(i, c.min, c.max)),
        K::LengthBetween => {
            let lo = bound(cx, c.min);
            let hi = bound(cx, c.max);
            col(cx, &c.column, "column").map(|i| Rule::LengthBetween(i, lo, hi))
        }
        K::Regex => {
            let i = col(cx, &c.column, "column");
            let re = match &c.pattern {
                None => {
                    cx.err(
                        at,
                        format!("source `{source}`: rule `regex` needs `pattern`"),
                        "",
                    );
                    None
                }
                Some(p) => match regex::Regex::new(p) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let first = e.to_string().lines().last().unwrap_or_default().to_string();
                        cx.err(
                            at,
                            format!("source `{source}`: pattern does not compile: {first}"),
                            "Rust regex syntax; no look-around or back-references",
                        );
                        None
                    }
                },
            };
            i.zip(re).map(|(i, r)| Rule::Regex(i, r))
        }
        K::Parses => {
            let i = col(cx, &c.column, "column");
            let ty = match c.ty.as_deref().map(ColumnType::parse) {
                Some(Some(t)) => Some(t),
                Some(None) | None => {
                    cx.err(
                        at,
                        format!("source `{source}`: rule `parses` needs a valid `type`"),
                        "e.g. `type: timestamp` with `format: \"%Y-%m-%dT%H:%M:%S%.3fZ\"`",
                    );
                    None
                }
            };
            if let Some(f) = &c.format
                && chrono::format::StrftimeItems::new(f)
                    .any(|it| matches!(it, chrono::format::Item::Error))
            {
                cx.err(
                    at,
                    format!("source `{source}`: `format` is not a valid chrono format"),
                    "see https://docs.rs/chrono/latest/chrono/format/strftime",
                );
            }
            i.zip(ty).map(|(i, t)| Rule::Parses(i, t, c.format.clone()))
        }
        K::GreaterThan => {
            let a = col(cx, &c.column, "column");
            let b = col(cx, &c.other, "other");
            // Numbers compare as numbers, ISO dates and timestamps as text; a number never
            // compares with a date, and booleans have no order: every record would fail.
            let family = |t: ColumnType| match t {
                ColumnType::Int64 | ColumnType::Float64 | ColumnType::Decimal { .. } => {
                    Some("a number")
                }
                ColumnType::Date | ColumnType::Timestamp => Some("a date or timestamp"),
                ColumnType::Boolean => Some("a boolean"),
                ColumnType::Utf8 => None,
            };
            if let Some((a, b)) = a.zip(b) {
                let (x, y) = (&columns[a], &columns[b]);
                let (fx, fy) = (family(x.ty), family(y.ty));
                let unordered = [fx, fy].contains(&Some("a boolean"));
                if unordered || fx.zip(fy).is_some_and(|(p, q)| p != q) {
                    cx.err(
                        at,
                        format!(
                            "source `{source}`: rule `greater_than` compares `{}` ({}) with `{}` ({}), which never compare: every record would fail",
                            x.name,
                            fx.unwrap_or("text"),
                            y.name,
                            fy.unwrap_or("text")
                        ),
                        "compare two numbers, or two dates or timestamps (`columns:` declares their types)",
                    );
                }
            }
            a.zip(b).map(|(a, b)| Rule::GreaterThan(a, b))
        }
        K::Checksum => {
            let i = col(cx, &c.column, "column");
            if c.scheme.is_none() {
                cx.err(
                    at,
                    format!("source `{source}`: rule `checksum` needs `scheme`"),
                    "isin, lei, iban or luhn",
                );
            }
            i.zip(c.scheme).map(|(i, s)| Rule::Checksum(i, s))
        }
    };
    if cx.diags.len() > start {
        return None;
    }
    let rule = rule?;
    let cols = match &rule {
        Rule::Unique(v) => v
            .iter()
            .map(|i| columns[*i].name.clone())
            .collect::<Vec<_>>()
            .join(","),
        Rule::GreaterThan(a, b) => format!("{}>{}", columns[*a].name, columns[*b].name),
        Rule::NotNull(i)
        | Rule::InSet(i, _)
        | Rule::Between(i, ..)
        | Rule::Regex(i, _)
        | Rule::LengthBetween(i, ..)
        | Rule::Parses(i, ..)
        | Rule::Checksum(i, _) => columns[*i].name.clone(),
    };
    let reason = c.reason.clone().unwrap_or_else(|| kind_name.clone());
    Some(Ok(Check {
        rule,
        reason,
        label: format!("{kind_name}({cols})"),
        at: (at.line, at.column),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_are_whole_numbers_of_a_unit_or_seconds() {
        use std::time::Duration;
        let age = super::parse_age;
        assert_eq!(age("30s"), Some(Duration::from_secs(30)));
        assert_eq!(age(" 5m "), Some(Duration::from_secs(300)));
        assert_eq!(age("2 h"), Some(Duration::from_secs(7200)));
        assert_eq!(age("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(age("90"), Some(Duration::from_secs(90)));
        for bad in [
            "",
            "s",
            "1.5m",
            "-3s",
            "5 minutes",
            "1w",
            "99999999999999999999d",
        ] {
            assert_eq!(age(bad), None, "{bad}");
        }
    }
    use super::*;

    fn diags(yaml: &str) -> Vec<Diagnostic> {
        match crate::parse_str(yaml, Path::new("t.yaml")) {
            Err(Error::Invalid(d)) => d,
            other => panic!("expected diagnostics, got {other:?}"),
        }
    }

    /// `quarantine replay` runs a pipeline's repaired records as `<pipeline>-replay`, whose
    /// batches count as the pipeline's: no spec may take such a name.
    #[test]
    fn pipeline_names_ending_in_replay_are_reserved() {
        let spec = |name: &str| {
            format!(
                "version: 1\npipeline: {name}\nsources:\n  s:\n    csv: {{ path: in/*.csv }}\n    columns:\n      - {{ name: id }}\nsinks:\n  o: {{ from: s, parquet: {{ path: out/o }} }}\nquarantine:\n  parquet: {{ path: q }}\n"
            )
        };
        let d = diags(&spec("trades-replay"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].message.contains("are reserved"), "{d:?}");
        assert!(crate::parse_str(&spec("trades_replayed"), Path::new("/p/t.yaml")).is_ok());
        assert_eq!(crate::replay_name("trades"), "trades-replay");
    }

    /// Sinks and the quarantine each write to a place of their own (the same folder however
    /// spelled, of whatever kind, or one inside another, is refused), and no source reads what
    /// they write.
    #[test]
    fn outputs_neither_share_nor_nest_their_places_nor_feed_a_source() {
        let spec = |sinks: &str, q: &str, source: &str| {
            format!(
                "version: 1\npipeline: p\nsources:\n  s:\n    {source}\n    columns:\n      - {{ name: id }}\nsinks:\n{sinks}quarantine:\n  {q}\n"
            )
        };
        let messages = |yaml: String| -> Vec<String> {
            match crate::parse_str(&yaml, Path::new("/p/t.yaml")) {
                Ok(_) => Vec::new(),
                Err(Error::Invalid(d)) => d.into_iter().map(|d| d.message).collect(),
                Err(e) => panic!("{e}"),
            }
        };
        let csv = "csv: { path: in/*.csv }";
        let q = "parquet: { path: q }";
        let sink = |name: &str, target: &str| format!("  {name}: {{ from: s, {target} }}\n");
        // Side by side: fine, whichever way the paths are written.
        let ok = [
            sink("a", "parquet: { path: out/a }"),
            sink("b", "delta: { path: ./out/b/ }"),
        ]
        .concat();
        assert_eq!(messages(spec(&ok, q, csv)), Vec::<String>::new());
        for (sinks, quarantine, want) in [
            (
                [
                    sink("a", "parquet: { path: out/a }"),
                    sink("b", "delta: { path: ./out/x/../a/ }"),
                ]
                .concat(),
                q,
                "sink `b` writes to the same place as sink `a`",
            ),
            (
                [
                    sink("a", "delta: { path: out }"),
                    sink("b", "delta: { path: out/b }"),
                ]
                .concat(),
                q,
                "sink `b` writes inside the folder of sink `a`",
            ),
            (
                [
                    sink("a", "delta: { path: out/a }"),
                    sink("b", "delta: { path: out }"),
                ]
                .concat(),
                q,
                "sink `b` writes to a folder that holds the folder of sink `a`",
            ),
            (
                sink("a", "delta: { path: 's3a://bucket/t/' }"),
                "delta: { path: 's3://bucket/t/q' }",
                "quarantine writes inside the folder of sink `a`",
            ),
            (
                [
                    sink("a", "postgres: { url: env:PG, table: r.t }"),
                    sink("b", "postgres: { url: env:PG, table: r.t }"),
                ]
                .concat(),
                q,
                "sink `b` writes to the same table as sink `a`",
            ),
        ] {
            let got = messages(spec(&sinks, quarantine, csv));
            assert!(got.iter().any(|m| m == want), "{want}: {got:?}");
        }
        // The same table name in two databases is two tables.
        let two = [
            sink("a", "postgres: { url: env:PG1, table: r.t }"),
            sink("b", "postgres: { url: env:PG2, table: r.t }"),
        ]
        .concat();
        assert_eq!(messages(spec(&two, q, csv)), Vec::<String>::new());
        // Sources that would read a sink's batch files, a Delta table's log or the quarantine.
        for (source, sinks, want) in [
            (
                "parquet: { path: 'out/**/*.parquet' }",
                sink("a", "parquet: { path: out/a }"),
                "source `s` reads files sink `a` writes",
            ),
            (
                "jsonl: { path: './**/*.json' }",
                sink("a", "delta: { path: lake/t }"),
                "source `s` reads files sink `a` writes",
            ),
            (
                "parquet: { path: 'q/*' }",
                sink("a", "delta: { path: lake/t }"),
                "source `s` reads files the quarantine writes",
            ),
        ] {
            let got = messages(spec(&sinks, q, source));
            assert!(got.iter().any(|m| m.starts_with(want)), "{source}: {got:?}");
        }
        // A pattern that only looks alike does not match: `*` stops at a separator.
        let near = messages(spec(
            &sink("a", "parquet: { path: in/out }"),
            q,
            "parquet: { path: 'in/*.parquet' }",
        ));
        assert_eq!(near, Vec::<String>::new());
    }

    const GOOD: &str = "version: 1
pipeline: p
sources:
  t:
    csv: { path: 'in.csv' }
    columns:
      - { name: id }
      - { name: qty, type: int64 }
    checks:
      - { rule: not_null, column: id, reason: empty_id }
      - { rule: unique, column: id }
transforms:
  clean:
    sql: SELECT id, qty FROM t WHERE qty > 0
sinks:
  out: { from: clean, parquet: { path: out } }
quarantine:
  parquet: { path: q }
";

    #[test]
    fn a_declared_postgres_key_is_checked_unique_once() {
        let spec = |checks: &str| {
            format!(
                "version: 1\npipeline: p\nsources:\n  t:\n    postgres: {{ url: 'postgres://u@h/d', table: src, key: acct }}\n    columns: [{{ name: acct }}, {{ name: n, type: int64 }}]\n{checks}sinks:\n  out: {{ from: t, parquet: {{ path: out }} }}\nquarantine:\n  parquet: {{ path: q }}\n"
            )
        };
        let p = crate::parse_str(&spec(""), Path::new("t.yaml")).unwrap();
        let c = &p.sources[0].checks;
        assert_eq!(c.len(), 1);
        assert!(matches!(&c[0].rule, Rule::Unique(cols) if cols[..] == [0]));
        assert_eq!(
            (c[0].reason.as_str(), c[0].label.as_str()),
            ("duplicate_key", "unique(acct)")
        );
        // The spec's own `unique` on the key stands for it; one on another column does not.
        let reasons = |unique: &str| -> Vec<String> {
            let checks = format!("    checks: [{{ rule: unique, {unique}, reason: dup }}]\n");
            crate::parse_str(&spec(&checks), Path::new("t.yaml"))
                .unwrap()
                .sources[0]
                .checks
                .iter()
                .map(|c| c.reason.clone())
                .collect()
        };
        assert_eq!(reasons("column: acct"), ["dup"]);
        assert_eq!(reasons("columns: [acct, n]"), ["dup", "duplicate_key"]);
    }

    #[test]
    fn a_good_spec_compiles() {
        let p = crate::parse_str(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(p.transforms[0].input, "t");
        assert_eq!(p.sinks[0].root_source, "t");
        assert_eq!(p.sources[0].checks[0].reason, "empty_id");
        assert_eq!(p.sources[0].checks[1].reason, "unique");
        assert_eq!(p.sources[0].checks[1].label, "unique(id)");
    }

    /// `compression` and `compression_level` of Delta and Parquet sinks and the quarantine:
    /// the default, each codec, and every wrong combination reported at its sink with the
    /// codecs to choose from.
    #[test]
    fn compression_is_chosen_per_sink_and_checked() {
        let with = |sink: &str, q: &str| {
            GOOD.replace("parquet: { path: out }", sink)
                .replace("parquet: { path: q }", q)
        };
        let p = crate::parse_str(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(p.sinks[0].target.compression(), Some(Codec::Zstd(1)));
        let p = crate::parse_str(
            &with(
                "delta: { path: out, compression: zstd, compression_level: 19 }",
                "parquet: { path: q, compression: gzip }",
            ),
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(p.sinks[0].target.compression(), Some(Codec::Zstd(19)));
        assert_eq!(p.quarantine.compression(), Some(Codec::Gzip(6)));
        for (name, codec) in [
            ("snappy", Codec::Snappy),
            ("lz4", Codec::Lz4),
            ("none", Codec::None),
        ] {
            let p = crate::parse_str(
                &with(
                    &format!("parquet: {{ path: out, compression: {name} }}"),
                    "parquet: { path: q }",
                ),
                Path::new("t.yaml"),
            )
            .unwrap();
            assert_eq!(p.sinks[0].target.compression(), Some(codec));
        }
        let d = diags(&with(
            "parquet: { path: out, compression: brotli }",
            "delta: { path: q, compression: gzip, compression_level: 10 }",
        ));
        let got: Vec<(u64, &str)> = d.iter().map(|x| (x.line, x.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (16, "sink `out`: unknown compression `brotli`"),
                (
                    18,
                    "quarantine: `compression_level: 10` is out of range for gzip (0 to 9)"
                ),
            ]
        );
        assert!(
            d[0].hint
                .as_deref()
                .unwrap()
                .contains("zstd, snappy, lz4, gzip, none"),
            "{}",
            d[0]
        );
        for (sink, want) in [
            (
                "parquet: { path: out, compression: snappy, compression_level: 3 }",
                "sink `out`: snappy has no compression level",
            ),
            (
                "parquet: { path: out, compression_level: 3 }",
                "sink `out`: `compression_level` without `compression`",
            ),
            (
                "delta: { path: out, compression: zstd, compression_level: 0 }",
                "sink `out`: `compression_level: 0` is out of range for zstd (1 to 22)",
            ),
        ] {
            let d = diags(&with(sink, "parquet: { path: q }"));
            assert_eq!(d.len(), 1, "{d:?}");
            assert_eq!(d[0].message, want);
        }
        // A wrong compression does not hide the sink's other problems.
        let d = diags(&with(
            "parquet: { path: 's3://b/out', compression: zip }",
            "parquet: { path: q }",
        ));
        let got: Vec<&str> = d.iter().map(|x| x.message.as_str()).collect();
        assert_eq!(
            got,
            [
                "sink `out`: unknown compression `zip`",
                "sink `out`: parquet sinks write to local folders"
            ]
        );
        // A PostgreSQL table has no compression of sealtrail's to set.
        let d = diags(&with(
            "postgres: { url: 'postgres://h/db', table: t, compression: zstd }",
            "parquet: { path: q }",
        ));
        assert!(d[0].message.contains("compression"), "{}", d[0]);
    }

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let d = diags(&GOOD.replace("batch", "x").replace(
            "    csv: { path: 'in.csv' }",
            "    csv: { path: 'in.csv', delimeter: ';' }",
        ));
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("delimeter"), "{}", d[0]);
        assert_eq!(d[0].line, 5, "{}", d[0]);
    }

    /// Another system's type name hints the spec's, and a check written as `{ not_null: id }`
    /// says how a check is written, once (not also serde's `missing field` at 1:1).
    #[test]
    fn near_misses_of_types_and_checks_say_what_was_meant() {
        for (ty, meant) in [
            ("integer", "int64"),
            ("datetime", "timestamp"),
            ("'numeric(12,2)'", "decimal(12,2)"),
            ("varchar(20)", "string"),
        ] {
            let d = diags(&GOOD.replace("type: int64", &format!("type: {ty}")));
            assert_eq!(d.len(), 1, "{d:?}");
            assert!(
                d[0].hint
                    .as_deref()
                    .is_some_and(|h| h.starts_with(&format!("did you mean `{meant}`?"))),
                "{ty}: {}",
                d[0]
            );
        }
        let d = diags(&GOOD.replace(
            "{ rule: not_null, column: id, reason: empty_id }",
            "{ not_null: id }",
        ));
        let said: Vec<(u64, &str)> = d.iter().map(|d| (d.line, d.message.as_str())).collect();
        assert_eq!(
            said,
            [
                (10, "missing field `rule` in `sources.t.checks[0]`"),
                (10, "unknown field `not_null` in `sources.t.checks[0]`")
            ]
        );
        assert!(
            d[1].hint
                .as_deref()
                .is_some_and(|h| h.ends_with("write `{ rule: not_null, column: ... }`")),
            "{}",
            d[1]
        );
    }

    /// A PostgreSQL table is `table` or `schema.table` of plain identifiers, as a sink and as a
    /// source: a database part, spaces or quotes are refused by `check`.
    #[test]
    fn postgres_tables_are_plain_names_of_one_or_two_parts() {
        for (table, ok) in [
            ("t", true),
            ("reporting.trades", true),
            ("db.reporting.trades", false),
            ("Bad Name", false),
            ("x;drop", false),
        ] {
            let sink = GOOD.replace(
                "parquet: { path: out } }",
                &format!("postgres: {{ url: 'postgres://h/db', table: '{table}' }} }}"),
            );
            let source = GOOD.replace(
                "csv: { path: 'in.csv' }",
                &format!("postgres: {{ url: 'postgres://h/db', table: '{table}' }}"),
            );
            for (what, spec) in [("sink", sink), ("source", source)] {
                let got = crate::parse_str(&spec, Path::new("t.yaml"));
                assert_eq!(got.is_ok(), ok, "{what} {table}: {got:?}");
                if !ok {
                    let d = diags(&spec);
                    assert!(
                        d.iter()
                            .any(|x| x.message.contains("is not a plain identifier")),
                        "{d:?}"
                    );
                }
            }
        }
    }

    /// `greater_than` of a number and a date (or of booleans) could only fail every record.
    #[test]
    fn greater_than_of_columns_that_never_compare_is_an_error() {
        let with = |types: &str| {
            GOOD.replace("      - { name: qty, type: int64 }\n", &format!("      - {{ name: qty, type: int64 }}\n{types}"))
                .replace(
                    "      - { rule: unique, column: id }\n",
                    "      - { rule: unique, column: id }\n      - { rule: greater_than, column: a, other: b }\n",
                )
        };
        let d = diags(&with(
            "      - { name: a, type: date }\n      - { name: b, type: int64 }\n",
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].message,
            "source `t`: rule `greater_than` compares `a` (a date or timestamp) with `b` (a number), which never compare: every record would fail"
        );
        let d = diags(&with(
            "      - { name: a, type: bool }\n      - { name: b }\n",
        ));
        assert!(
            d[0].message.contains("`a` (a boolean) with `b` (text)"),
            "{d:?}"
        );
        for ok in [
            "      - { name: a, type: date }\n      - { name: b, type: timestamp }\n",
            "      - { name: a, type: \"decimal(9,2)\" }\n      - { name: b, type: float64 }\n",
            "      - { name: a }\n      - { name: b, type: int64 }\n",
        ] {
            crate::parse_str(&with(ok), Path::new("t.yaml")).unwrap();
        }
    }

    /// A name that is a likely typo of a declared column, a source or transform, or an
    /// audience gets a "did you mean"; one that is not gets the list alone.
    #[test]
    fn misspelt_names_get_the_likely_one() {
        let bad = GOOD
            .replace("column: id, reason", "column: idd, reason")
            .replace("{ from: clean,", "{ from: claen, audience: pubic,");
        let d = diags(&bad);
        let hints: Vec<(&str, &str)> = d
            .iter()
            .map(|x| (x.message.as_str(), x.hint.as_deref().unwrap_or("")))
            .collect();
        assert!(
            hints
                .iter()
                .any(|(m, h)| m.contains("`idd`, which is not declared")
                    && *h == "did you mean `id`? declared columns: id, qty"),
            "{d:?}"
        );
        assert!(
            hints.iter().any(|(m, h)| m.contains("reads from `claen`")
                && *h == "did you mean `clean`? known: clean, t"),
            "{d:?}"
        );
        assert!(
            hints
                .iter()
                .any(|(m, h)| m.contains("unknown audience `pubic`")
                    && h.starts_with("did you mean `public`? use restricted")),
            "{d:?}"
        );
        let d = diags(&GOOD.replace("column: id, reason", "column: trade_ts, reason"));
        assert_eq!(
            d[0].hint.as_deref(),
            Some("declared columns: id, qty"),
            "{d:?}"
        );
    }

    /// A wrong value of a required key (`action: tokenize`) is reported once, where it stands,
    /// and not a second time in serde's words at 1:1 (its reader lost the position).
    #[test]
    fn a_wrong_required_value_is_reported_once_where_it_stands() {
        let d = diags(&GOOD.replace(
            "    checks:\n",
            "    protect:\n      - { column: id, action: tokenize }\n    checks:\n",
        ));
        let got: Vec<(u64, &str)> = d.iter().map(|x| (x.line, x.message.as_str())).collect();
        assert_eq!(
            got,
            [(
                10,
                "`tokenize` is not a value `sources.t.protect[0].action` takes"
            )],
            "{d:?}"
        );
    }

    /// `type: decimal(12,2)` in a `{ ... }` mapping is cut at its comma by YAML: both halves
    /// say so and how to write it; `decimal(P)` is `decimal(P,0)`.
    #[test]
    fn a_decimal_type_cut_at_its_comma_says_to_quote_it() {
        let d = diags(&GOOD.replace("type: int64 }", "type: decimal(12,2) }"));
        let got: Vec<(u64, &str, &str)> = d
            .iter()
            .map(|x| (x.line, x.message.as_str(), x.hint.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(got.len(), 2, "{d:?}");
        assert!(
            got[0]
                .1
                .contains("`decimal(12`, a `decimal(P,S)` cut at its comma")
                && got[1].1.starts_with(
                    "`2)` in `sources.t.columns[1]` is the end of a `decimal(P,S)` type"
                ),
            "{d:?}"
        );
        assert!(
            got.iter()
                .all(|g| g.0 == 8 && g.2.contains("type: \"decimal(18,4)\"")),
            "{d:?}"
        );
        for (written, want) in [
            (
                "\"decimal(12,2)\"",
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            (
                "decimal(12)",
                ColumnType::Decimal {
                    precision: 12,
                    scale: 0,
                },
            ),
        ] {
            let p = crate::parse_str(
                &GOOD.replace("type: int64 }", &format!("type: {written} }}")),
                Path::new("t.yaml"),
            )
            .unwrap();
            assert_eq!(p.sources[0].columns[1].ty, want, "{written}");
        }
        // Out of range is still an unknown type.
        let d = diags(&GOOD.replace("type: int64 }", "type: decimal(39) }"));
        assert!(
            d[0].message.contains("has unknown type `decimal(39)`"),
            "{d:?}"
        );
    }

    #[test]
    fn shape_mismatches_are_said_in_the_authors_words() {
        // Every problem of shape at once: a list where a mapping belongs, and the required
        // keys that are not there.
        let d = diags("version: 1\npipeline: p\nsources:\n  - csv: { path: x }\n");
        let got: Vec<(u64, &str)> = d.iter().map(|x| (x.line, x.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "missing field `sinks`"),
                (1, "missing field `quarantine`"),
                (
                    4,
                    "expected a mapping (`key: value` lines, or `{ key: value }`) for `sources`, found a list"
                ),
            ],
            "{d:?}"
        );
        let d = diags(
            "version: 1\npipeline: p\nsources:\n  t:\n    csv: { path: x }\n    columns:\n      name: id\nsinks: {}\nquarantine: {}\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].message.starts_with("expected a list (`- item` lines, or `[a, b]`) for `sources.t.columns`, found a mapping"),
            "{}",
            d[0]
        );
        assert_eq!(d[0].line, 7, "{}", d[0]);
        let d = diags(
            "version: 2\npipeline: p\nbatch_rows: lots\nsources: {}\nsinks: {}\nquarantine: {}\n",
        );
        let got: Vec<(u64, u64, &str)> = d
            .iter()
            .map(|x| (x.line, x.column, x.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 10, "unsupported spec version 2"),
                (2, 11, "the pipeline has no sources"),
                (2, 11, "the pipeline has no sinks"),
                (
                    3,
                    13,
                    "expected a whole number of 0 or more for `batch_rows`, found `lots`"
                ),
                (
                    6,
                    13,
                    "quarantine must set exactly one of `delta` or `parquet` (found 0)"
                ),
            ],
            "the spec's meaning is checked with the wrong value left out"
        );
    }

    /// The same error of meaning in two places is reported at both, next to an unknown key.
    #[test]
    fn the_same_error_in_two_places_is_reported_twice_with_unknown_keys() {
        let bad = GOOD
            .replace(
                "      - { rule: unique, column: id }",
                "      - { rule: unique, column: idd }\n      - { rule: unique, column: idd }",
            )
            .replace("path: 'in.csv' }", "path: 'in.csv', delimeter: ';' }");
        let d = diags(&bad);
        let got: Vec<(u64, &str)> = d.iter().map(|x| (x.line, x.message.as_str())).collect();
        assert_eq!(got.len(), 3, "{d:?}");
        assert!(got[0].1.starts_with("unknown field `delimeter`"), "{d:?}");
        assert_eq!(got[1].1, got[2].1);
        assert!(got[1].1.contains("`idd`, which is not declared"), "{d:?}");
        assert_eq!((got[1].0, got[2].0), (11, 12), "{d:?}");
    }

    /// A wrong value of an optional key is left out (its default applies) and the rest of
    /// the spec's meaning is checked with it; what that check would say of the mapping that
    /// held the value is not reported (it would be about the default).
    #[test]
    fn errors_of_meaning_are_reported_with_wrong_values() {
        let bad = GOOD
            .replace("path: 'in.csv' }", "path: 'in.csv', header: maybe }")
            .replace("column: id, reason", "column: idd, reason")
            .replace(
                "    checks:",
                "    protect:\n      - column: qty\n        action: mask\n        keep_last: many\n    checks:",
            );
        let d = diags(&bad);
        let got: Vec<(u64, &str)> = d.iter().map(|x| (x.line, x.message.as_str())).collect();
        assert_eq!(got.len(), 3, "{d:?}");
        assert_eq!(
            got[0],
            (
                5,
                "expected true or false for `sources.t.csv.header`, found `maybe`"
            )
        );
        assert_eq!(
            got[1],
            (
                12,
                "expected a whole number of 0 or more for `sources.t.protect[0].keep_last`, found `many`"
            )
        );
        assert_eq!(got[2].0, 14);
        assert!(got[2].1.contains("`idd`, which is not declared"), "{d:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_at_once() {
        let bad = GOOD
            .replace("column: id, reason", "column: idd, reason")
            .replace("type: int64", "type: integer")
            .replace("FROM t WHERE", "FROM nope WHERE")
            .replace("from: clean", "from: gone");
        let d = diags(&bad);
        let all: String = d.iter().map(|x| x.to_string() + "\n").collect();
        assert!(all.contains("`idd`, which is not declared"), "{all}");
        assert!(all.contains("unknown type `integer`"), "{all}");
        assert!(all.contains("reads `nope`"), "{all}");
        assert!(all.contains("reads from `gone`"), "{all}");
        assert!(d.len() >= 4, "{all}");
        assert!(d.iter().all(|x| x.line > 0 && x.hint.is_some()), "{all}");
    }

    #[test]
    fn plain_password_is_refused_without_echoing_it() {
        let bad = GOOD.replace(
            "parquet: { path: out }",
            "postgres: { url: 'postgres://u:s3cr3tpw@db/x', table: t }",
        );
        let d = diags(&bad);
        let all: String = d.iter().map(|x| x.to_string()).collect();
        assert!(all.contains("password in clear"), "{all}");
        assert!(!all.contains("s3cr3tpw"), "{all}");
    }

    /// A literal connection URL the connection would refuse is reported by `check`, with its
    /// location, next to every other error.
    #[test]
    fn connection_urls_the_driver_would_not_honour_are_reported_by_check() {
        let bad = GOOD.replace(
            "parquet: { path: out }",
            "postgres: { url: 'postgres://etl@db.example.com/x?sslmode=verify-ca', table: t }",
        );
        let d = diags(&bad);
        assert!(
            d.len() == 1
                && d[0]
                    .message
                    .contains("`sslmode=verify-ca` is not supported")
                && d[0].line > 0,
            "{d:?}"
        );
        let bad = GOOD.replace(
            "parquet: { path: out }",
            "postgres: { url: 'postgres://etl@db.example.com/x?keepalives=1', table: t }",
        );
        let d = diags(&bad);
        assert!(
            d.len() == 1 && d[0].message.contains("sets `keepalives`"),
            "{d:?}"
        );
        let good = GOOD.replace(
            "parquet: { path: out }",
            "postgres: { url: 'postgres://etl@db.example.com/x?sslmode=verify-full', table: t }",
        );
        crate::parse_str(&good, Path::new("t.yaml")).unwrap();
    }

    #[test]
    fn delta_tables_are_local_or_on_s3() {
        let s3 = GOOD.replace("parquet: { path: out }", "delta: { path: 's3://lake/t' }");
        let p = crate::parse_str(&s3, Path::new("t.yaml")).unwrap();
        assert!(matches!(&p.sinks[0].target, Target::Delta { uri, .. } if uri == "s3://lake/t"));
        let gs = GOOD.replace("parquet: { path: out }", "delta: { path: 'gs://lake/t' }");
        let d = diags(&gs);
        assert!(
            d.len() == 1 && d[0].message.contains("not at `gs://`"),
            "{d:?}"
        );
    }

    #[test]
    fn a_decimal_comma_needs_another_delimiter() {
        let with = |csv: &str| GOOD.replace("csv: { path: 'in.csv' }", csv);
        let comma = |csv: &str| match &crate::parse_str(&with(csv), Path::new("t.yaml"))
            .unwrap()
            .sources[0]
            .connector
        {
            SourceConnector::Csv(o) => o.decimal_comma,
            other => panic!("{other:?}"),
        };
        assert!(!comma("csv: { path: 'in.csv' }"));
        assert!(!comma("csv: { path: 'in.csv', decimal: '.' }"));
        assert!(comma(
            "csv: { path: 'in.csv', delimiter: ';', decimal: ',' }"
        ));
        let d = diags(&with("csv: { path: 'in.csv', decimal: ',' }"));
        assert!(
            d.len() == 1 && d[0].message.contains("with the comma as `delimiter` too"),
            "{d:?}"
        );
        let d = diags(&with(
            "csv: { path: 'in.csv', delimiter: ';', decimal: '·' }",
        ));
        assert!(
            d.len() == 1
                && d[0]
                    .message
                    .contains("csv `decimal` is `·`; it is `.` or `,`"),
            "{d:?}"
        );
    }

    #[test]
    fn csv_encodings_are_labels_the_reader_can_split() {
        let with = |csv: &str| GOOD.replace("csv: { path: 'in.csv' }", csv);
        let enc = |csv: &str| match &crate::parse_str(&with(csv), Path::new("t.yaml"))
            .unwrap()
            .sources[0]
            .connector
        {
            SourceConnector::Csv(o) => o.encoding.name(),
            other => panic!("{other:?}"),
        };
        assert_eq!(enc("csv: { path: 'in.csv' }"), "UTF-8");
        assert_eq!(enc("csv: { path: 'in.csv', encoding: UTF8 }"), "UTF-8");
        // WHATWG: latin1 means windows-1252.
        assert_eq!(
            enc("csv: { path: 'in.csv', encoding: latin1 }"),
            "windows-1252"
        );
        assert_eq!(
            enc("csv: { path: 'in.csv', encoding: Shift_JIS, delimiter: ';' }"),
            "Shift_JIS"
        );
        // Any separator is safe in a single-byte encoding.
        assert_eq!(
            enc("csv: { path: 'in.csv', encoding: iso-8859-15, delimiter: '|' }"),
            "ISO-8859-15"
        );
        let d = diags(&with("csv: { path: 'in.csv', encoding: ebcdic }"));
        assert!(
            d.len() == 1 && d[0].message.contains("not a known encoding") && d[0].line == 5,
            "{d:?}"
        );
        // UTF-16 (WHATWG: a bare `utf-16` means little-endian) with any separator: fields are
        // split in the decoded text.
        assert_eq!(
            enc("csv: { path: 'in.csv', encoding: utf-16, delimiter: '|' }"),
            "UTF-16LE"
        );
        assert_eq!(
            enc("csv: { path: 'in.csv', encoding: UTF-16BE }"),
            "UTF-16BE"
        );
        // A stateful encoding (escape sequences switch character sets) stays refused.
        let d = diags(&with("csv: { path: 'in.csv', encoding: iso-2022-jp }"));
        assert!(
            d.len() == 1
                && d[0].message.contains("ISO-2022-JP")
                && d[0].hint.as_deref().unwrap_or("").contains("iconv"),
            "{d:?}"
        );
        let d = diags(&with(
            "csv: { path: 'in.csv', encoding: big5, delimiter: '|', quote: \"'\" }",
        ));
        assert!(
            d.len() == 1
                && d[0]
                    .message
                    .contains("delimiter `|` can be part of a two-byte"),
            "{d:?}"
        );
    }

    #[test]
    fn rule_fields_must_fit_the_rule() {
        let d = diags(&GOOD.replace(
            "{ rule: unique, column: id }",
            "{ rule: unique, column: id, pattern: 'x' }",
        ));
        assert!(d[0].message.contains("does not take `pattern`"), "{}", d[0]);
    }

    #[test]
    fn column_types_parse() {
        assert_eq!(
            ColumnType::parse("decimal(18,4)"),
            Some(ColumnType::Decimal {
                precision: 18,
                scale: 4
            })
        );
        assert_eq!(ColumnType::parse("decimal(40,4)"), None);
        assert_eq!(ColumnType::parse("timestamp"), Some(ColumnType::Timestamp));
        assert_eq!(ColumnType::parse("nope"), None);
    }

    #[test]
    fn from_table_finds_the_input() {
        assert_eq!(
            from_table("select a from trades where x"),
            Some("trades".into())
        );
        assert_eq!(from_table("SELECT fromage FROM \"t2\""), Some("t2".into()));
        assert_eq!(from_table("SELECT 1"), None);
    }

    #[test]
    fn schema_is_generated() {
        let s = crate::json_schema();
        let text = s.to_string();
        assert!(
            text.contains("batch_rows") && text.contains("row_count_between"),
            "{text}"
        );
        // Editors offer every codec `check` takes, and no other.
        let listed: Vec<&str> = s["$defs"]["PathSink"]["properties"]["compression"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(listed, Codec::NAMES);
    }
}
