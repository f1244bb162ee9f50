//! OpenLineage run events: START when a run starts, COMPLETE or FAIL when it ends, with the
//! job, its input and output datasets, their schemas, and column lineage derived from the SQL
//! logical plan and the protection policies (protected columns are `masking: true`).
//!
//! Events go to a file (one JSON object per line) or are POSTed to an HTTP endpoint (such as
//! Marquez's `/api/v1/lineage`). Emitting is best effort: an unreachable endpoint is logged
//! and never fails the run, whose record of truth is the ledger. See `docs/openlineage.md`.

use crate::{Planned, trace_all};
use sealtrail_core::secret::Secret;
use sealtrail_spec::{PgFrom, Pipeline, SourceConnector, Target};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;

const CORE: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const SCHEMA_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const LINEAGE_FACET: &str = "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet";
const ERROR_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const ENGINE_FACET: &str = "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet";
const JOB_TYPE_FACET: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const INPUT_STATS_FACET: &str = "https://openlineage.io/spec/facets/1-0-0/InputStatisticsInputDatasetFacet.json#/$defs/InputStatisticsInputDatasetFacet";
const OUTPUT_STATS_FACET: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";
const SQL_FACET: &str =
    "https://openlineage.io/spec/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet";

/// The `producer` of every event and facet.
pub fn producer() -> String {
    format!(
        "https://example.invalid/sealtrail/v{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    File(PathBuf),
    /// An endpoint, and the API key sent as `Authorization: Bearer KEY` (the OpenLineage HTTP
    /// transport's `api_key` authentication).
    Http {
        url: String,
        api_key: Option<Secret>,
    },
}

impl Destination {
    /// `http://...` or `https://...` is an endpoint; anything else a file path (which takes no
    /// API key: one given is not used).
    ///
    /// An endpoint on another machine over plain `http://` is refused when it would receive
    /// credentials (the API key, or a user and password in the URL): they would cross the
    /// network readable by anyone on the way. Without credentials it is warned about: events
    /// carry table names, schemas and the transforms' SQL. Errors never quote the URL or key.
    pub fn parse(s: &str, api_key: Option<Secret>) -> Result<Self, String> {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Ok(Destination::File(PathBuf::from(s)));
        }
        let u = url::Url::parse(s)
            .map_err(|e| format!("the OpenLineage endpoint is not a valid URL ({e})"))?;
        let host = u.host_str().unwrap_or_default().to_string();
        if let Some(k) = &api_key
            && (k.expose().is_empty() || bearer(k).is_none())
        {
            return Err(format!(
                "the OpenLineage API key ({API_KEY_VAR} or the file {API_KEY_FILE_VAR} names) is empty or holds characters an HTTP header cannot carry (a line break?); set it to the key alone"
            ));
        }
        if u.scheme() == "http" && !sealtrail_core::net::is_this_machine(&host) {
            if api_key.is_some() || !u.username().is_empty() || u.password().is_some() {
                return Err(format!(
                    "the OpenLineage endpoint at {host} is plain http:// on another machine: its credentials ({}) would cross the network readable by anyone on the way; use https://",
                    if api_key.is_some() {
                        "the API key"
                    } else {
                        "the user in the URL"
                    }
                ));
            }
            sealtrail_core::net::unauthenticated(
                &format!("the OpenLineage endpoint at {host}"),
                "plain http://",
                "the events (table names, schemas, the transforms' SQL), unencrypted,",
                "use https://",
            )?;
        }
        Ok(Destination::Http {
            url: s.to_string(),
            api_key,
        })
    }
}

/// The `Authorization` value for an API key, marked sensitive (kept out of any debug output of
/// a request); `None` when the key holds what a header cannot (a line break). The text built on
/// the way is wiped; the header's own copy lives as long as the request.
fn bearer(key: &Secret) -> Option<reqwest::header::HeaderValue> {
    let text = zeroize::Zeroizing::new(format!("Bearer {}", key.expose()));
    let mut v = reqwest::header::HeaderValue::from_str(&text).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The environment variable whose value is sent as the endpoint's API key.
pub const API_KEY_VAR: &str = "SEALTRAIL_OPENLINEAGE_API_KEY";
/// The environment variable naming a file that holds the API key instead (a mounted secret).
pub const API_KEY_FILE_VAR: &str = "SEALTRAIL_OPENLINEAGE_API_KEY_FILE";

/// The endpoint's API key, from [`API_KEY_VAR`] or from the file [`API_KEY_FILE_VAR`] names
/// (one line ending in a line break is the key without it, as `echo` writes it). Both set is an
/// error, as is a file that cannot be read; messages name the variable or file, never the key.
pub fn api_key_from_env() -> Result<Option<Secret>, String> {
    let file = std::env::var_os(API_KEY_FILE_VAR).filter(|f| !f.is_empty());
    match (std::env::var(API_KEY_VAR).ok(), file) {
        (Some(_), Some(_)) => Err(format!(
            "both {API_KEY_VAR} and {API_KEY_FILE_VAR} are set; set one of them"
        )),
        (Some(k), None) => Ok(Some(Secret::new(k))),
        (None, Some(f)) => {
            let path = PathBuf::from(f);
            let bytes = zeroize::Zeroizing::new(std::fs::read(&path).map_err(|e| {
                format!(
                    "{API_KEY_FILE_VAR} names {}, which cannot be read: {e}",
                    path.display()
                )
            })?);
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                format!(
                    "{API_KEY_FILE_VAR} names {}, which does not hold text; put the key alone in it",
                    path.display()
                )
            })?;
            let key = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(text);
            Ok(Some(Secret::new(key.to_string())))
        }
        (None, None) => Ok(None),
    }
}

/// Sends events to a [`Destination`].
#[derive(Debug, Clone)]
pub struct Emitter {
    target: Destination,
    /// Where events an endpoint did not take wait for the next run ([`Emitter::spooling_in`]).
    spool: Option<PathBuf>,
    limits: SpoolLimits,
}

/// How much a spool file keeps for an endpoint that stays away: past either limit the oldest
/// events are dropped, with a warning, so that a catalogue gone for good cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Bytes of events kept per endpoint (`None`: no limit).
    pub max_bytes: Option<u64>,
    /// Age of the oldest event kept, by its `eventTime` (`None`: no limit).
    pub max_age: Option<std::time::Duration>,
}

/// Sets [`SpoolLimits::max_bytes`], in MiB (`0`: no limit).
pub const SPOOL_MB_VAR: &str = "SEALTRAIL_OPENLINEAGE_SPOOL_MB";
/// Sets [`SpoolLimits::max_age`], in days (`0`: no limit).
pub const SPOOL_DAYS_VAR: &str = "SEALTRAIL_OPENLINEAGE_SPOOL_DAYS";

impl Default for SpoolLimits {
    /// 64 MiB (a few hundred thousand events: months of runs) and 30 days.
    fn default() -> Self {
        Self {
            max_bytes: Some(64 << 20),
            max_age: Some(std::time::Duration::from_secs(30 * 86_400)),
        }
    }
}

impl SpoolLimits {
    /// The defaults, with [`SPOOL_MB_VAR`] and [`SPOOL_DAYS_VAR`] when set. A value that is not
    /// a whole number is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        for var in [SPOOL_MB_VAR, SPOOL_DAYS_VAR] {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(var) {
                return Err(format!(
                    "{var} must be a whole number (0 for no limit); its value is not UTF-8 text"
                ));
            }
        }
        Self::from_vars(|var| std::env::var(var).ok())
    }

    /// [`SpoolLimits::from_env`] over any lookup of variables.
    fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let read = |var: &str| -> Result<Option<u64>, String> {
            get(var)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        format!("{var} must be a whole number (0 for no limit), not `{v}`")
                    })
                })
                .transpose()
        };
        let mut l = Self::default();
        if let Some(mb) = read(SPOOL_MB_VAR)? {
            l.max_bytes = (mb > 0).then(|| mb.saturating_mul(1 << 20));
        }
        if let Some(days) = read(SPOOL_DAYS_VAR)? {
            l.max_age =
                (days > 0).then(|| std::time::Duration::from_secs(days.saturating_mul(86_400)));
        }
        Ok(l)
    }

    /// Drops from `events` (oldest first) those past the limits at `now`: the events older than
    /// the age limit before the first one young enough, then from the front until the rest fit
    /// the size. Returns how many
    /// went for their age and how many for the size. An event whose `eventTime` cannot be read
    /// is kept while the size allows (its age is unknown).
    fn prune(
        &self,
        events: &mut Vec<String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (usize, usize) {
        // Events are kept in the order they were emitted: once one of a readable time is young
        // enough, so are those after it, and they are not parsed.
        let mut old = vec![false; events.len()];
        if let Some(max) = self.max_age {
            for (e, old) in events.iter().zip(&mut old) {
                let time = serde_json::from_str::<Value>(e).ok().and_then(|v| {
                    chrono::DateTime::parse_from_rfc3339(v.get("eventTime")?.as_str()?).ok()
                });
                match time.map(|t| now.signed_duration_since(t).to_std()) {
                    Some(Ok(age)) if age > max => *old = true,
                    Some(_) => break,
                    None => {}
                }
            }
        }
        let before = events.len();
        let mut old = old.into_iter();
        events.retain(|_| !old.next().unwrap_or(false));
        let aged = before - events.len();
        let mut sized = 0;
        if let Some(max) = self.max_bytes {
            let mut total: u64 = events.iter().map(|e| e.len() as u64 + 1).sum();
            while total > max && sized < events.len() {
                total -= events[sized].len() as u64 + 1;
                sized += 1;
            }
            events.drain(..sized);
        }
        (aged, sized)
    }
}

/// What became of one POST.
enum Posted {
    Taken,
    /// The endpoint refused this event for good (a `4xx` other than `401`, `403`, `408` and
    /// `429`): sending it again cannot succeed.
    Refused(String),
    /// Not taken this time (unreachable, `5xx`, a redirect, authentication): kept to send again.
    NotNow(String),
}

impl Emitter {
    pub fn new(target: Destination) -> Self {
        Self {
            target,
            spool: None,
            limits: SpoolLimits::default(),
        }
    }

    /// How much the spool keeps ([`SpoolLimits`]; the defaults otherwise).
    pub fn with_spool_limits(mut self, limits: SpoolLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Keeps the events an endpoint does not take (it is down, overloaded, or refuses the
    /// credentials) in `dir`, one file per endpoint, and sends them, in order, before the next
    /// event to that endpoint: a run while the catalogue is down loses no lineage.
    pub fn spooling_in(mut self, dir: PathBuf) -> Self {
        self.spool = Some(dir);
        self
    }

    /// Emits one event; failures are logged, never returned (see the module docs).
    pub async fn emit(&self, event: &Value) {
        let body = event.to_string();
        match &self.target {
            Destination::File(path) => {
                let r = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(format!("{body}\n").as_bytes()));
                if let Err(e) = r {
                    tracing::warn!("OpenLineage event not written to {}: {e}", path.display());
                }
            }
            Destination::Http { url, api_key } => {
                // The URL may carry credentials: name only its host.
                let host = url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                let client = match reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(10))
                    // A redirect could lead to plain http:// or another host; an endpoint
                    // that moved says so (logged below) and its new address is configured.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("OpenLineage client: {e}");
                        return;
                    }
                };
                let Some(dir) = &self.spool else {
                    match post(&client, url, api_key.as_ref(), body).await {
                        Posted::Taken => {}
                        Posted::Refused(why) | Posted::NotNow(why) => {
                            tracing::warn!("OpenLineage endpoint at {host} {why}")
                        }
                    }
                    return;
                };
                if let Err(e) = self
                    .through_spool(dir, &client, url, api_key.as_ref(), &host, body)
                    .await
                {
                    tracing::warn!(
                        "OpenLineage events kept for {host} in {} could not be read or written: {e}",
                        dir.display()
                    );
                }
            }
        }
    }

    /// Sends the events kept for `url`, then `body`, in order, until one is not taken; keeps
    /// that one and those after it (a lock serialises runs at once).
    async fn through_spool(
        &self,
        dir: &std::path::Path,
        client: &reqwest::Client,
        url: &str,
        api_key: Option<&Secret>,
        host: &str,
        body: String,
    ) -> std::io::Result<()> {
        use sha2::Digest as _;
        std::fs::create_dir_all(dir)?;
        let name = &hex::encode(sha2::Sha256::digest(url.as_bytes()))[..16];
        let file = dir.join(format!("{name}.jsonl"));
        let lock = std::fs::File::create(dir.join(format!("{name}.lock")))?;
        // Another run may hold the lock while it posts (up to its timeout per event): wait
        // without holding up one of the runtime's workers.
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        let mut pending: Vec<String> = match std::fs::read_to_string(&file) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        pending.push(body);
        let (aged, sized) = self.limits.prune(&mut pending, chrono::Utc::now());
        if aged > 0 {
            tracing::warn!(
                "OpenLineage: {aged} event(s) kept for {host} longer than {} days were dropped unsent ({SPOOL_DAYS_VAR} sets the limit; the ledger still records those runs)",
                self.limits.max_age.map_or(0, |a| a.as_secs() / 86_400)
            );
        }
        if sized > 0 {
            tracing::warn!(
                "OpenLineage: the {sized} oldest event(s) kept for {host} were dropped unsent: the events kept for it would pass {} MiB ({SPOOL_MB_VAR} sets the limit; the ledger still records those runs)",
                self.limits.max_bytes.map_or(0, |b| b >> 20)
            );
        }
        // The events kept from earlier runs (this run's own is last, unless dropped above).
        let kept = pending.len().saturating_sub(1);
        let mut done = 0;
        for b in &pending {
            match post(client, url, api_key, b.clone()).await {
                Posted::Taken => done += 1,
                Posted::Refused(why) => {
                    tracing::warn!("OpenLineage endpoint at {host} {why}; the event is dropped");
                    done += 1;
                }
                Posted::NotNow(why) => {
                    tracing::warn!(
                        "OpenLineage endpoint at {host} {why}; {} event(s) kept in {} are sent, in order, by the next run with this endpoint",
                        pending.len() - done,
                        file.display()
                    );
                    break;
                }
            }
        }
        if done > 0 && kept > 0 {
            tracing::info!(
                "OpenLineage: {} event(s) kept from earlier runs sent to {host}",
                done.min(kept)
            );
        }
        let rest = &pending[done..];
        if rest.is_empty() {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let tmp = dir.join(format!("{name}.jsonl.tmp"));
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = o.open(&tmp)?;
            for l in rest {
                f.write_all(l.as_bytes())?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
        }
        Ok(())
    }
}

/// POSTs one event.
async fn post(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&Secret>,
    body: String,
) -> Posted {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(v) = api_key.and_then(bearer) {
        req = req.header(reqwest::header::AUTHORIZATION, v);
    }
    match req.send().await.map(|r| r.status()) {
        Ok(s) if s.is_success() => Posted::Taken,
        Ok(s) if s.is_redirection() => Posted::NotNow(format!(
            "answered {s}: redirects are not followed; set the endpoint to the address it points to"
        )),
        Ok(s) if s.is_client_error() && ![401, 403, 408, 429].contains(&s.as_u16()) => {
            Posted::Refused(format!("answered {s}"))
        }
        Ok(s) => Posted::NotNow(format!("answered {s}")),
        Err(e) => Posted::NotNow(format!(
            "unreachable: {}",
            sealtrail_core::with_root_cause(&e.without_url())
        )),
    }
}

/// A dataset as OpenLineage names it.
fn dataset_of_target(t: &Target) -> (String, String) {
    match t {
        Target::Parquet { dir, .. } => ("file".into(), absolute(dir)),
        Target::Delta { uri, .. } if uri.contains("://") => match url::Url::parse(uri) {
            Ok(u) => (
                format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()),
                u.path().to_string(),
            ),
            Err(_) => ("file".into(), uri.clone()),
        },
        Target::Delta { uri, .. } => ("file".into(), absolute(&PathBuf::from(uri))),
        Target::Postgres { table, .. } => ("postgres".into(), table.clone()),
    }
}

fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The datasets a source reads in this run: one per input file (up to [`MAX_FILE_DATASETS`],
/// else the folder holding them), or its table or query.
fn source_datasets(s: &sealtrail_spec::Source, inputs: &[String]) -> Vec<(String, String)> {
    match &s.connector {
        SourceConnector::Postgres(pg) => vec![(
            "postgres".into(),
            match &pg.from {
                PgFrom::Table(t) => t.clone(),
                PgFrom::Query(_) => format!("query:{}", s.name),
            },
        )],
        _ if inputs.len() > MAX_FILE_DATASETS => {
            vec![("file".into(), absolute(&common_folder(inputs)))]
        }
        _ => inputs
            .iter()
            .map(|i| ("file".into(), absolute(std::path::Path::new(i))))
            .collect(),
    }
}

/// The most files of a source a run describes one dataset each; past it, the source is one
/// dataset, the folder that holds them all. A landing folder of 20,000 small files made events
/// of 12 and 17 MB (a dataset, its schema and a column lineage entry per file), more than
/// lineage endpoints take in a request.
pub const MAX_FILE_DATASETS: usize = 100;

/// The deepest folder holding every one of `files`.
fn common_folder(files: &[String]) -> std::path::PathBuf {
    let mut it = files.iter().map(|f| {
        std::path::Path::new(f)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    });
    let Some(mut common) = it.next() else {
        return std::path::PathBuf::new();
    };
    for dir in it {
        while !dir.starts_with(&common) {
            if !common.pop() {
                break;
            }
        }
    }
    if common.as_os_str().is_empty() {
        common.push(".");
    }
    common
}

fn schema_facet(schema: &arrow::datatypes::Schema) -> Value {
    json!({
        "_producer": producer(),
        "_schemaURL": SCHEMA_FACET,
        "fields": schema.fields().iter().map(|f| json!({
            "name": f.name(),
            "type": f.data_type().to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// What the events of one run describe.
#[derive(Debug)]
pub struct RunDescription {
    inputs: Vec<Value>,
    /// The source of each input dataset, and the input part of its records' lineage ids (a
    /// file's; `None` for a table or query, the source's one dataset).
    reads: Vec<(String, Option<String>)>,
    outputs: Vec<Value>,
    /// The sink of each output dataset.
    sinks: Vec<String>,
    sql: String,
}

/// Describes the run's datasets and column lineage from the planned sources. `inputs`: the
/// run's chosen inputs, per source name.
pub fn describe(
    p: &Pipeline,
    planned: &HashMap<String, Planned>,
    inputs: &HashMap<String, Vec<String>>,
) -> RunDescription {
    let mut ins = Vec::new();
    let mut reads = Vec::new();
    let mut outs = Vec::new();
    let mut sinks = Vec::new();
    for s in &p.sources {
        let Some(pl) = planned.get(&s.name) else {
            continue;
        };
        let files = inputs.get(&s.name).map_or(&[][..], Vec::as_slice);
        let datasets = source_datasets(s, files);
        let raw_schema = sealtrail_quality::typed::source_schema(s);
        if matches!(s.connector, SourceConnector::Postgres(_)) || files.len() > MAX_FILE_DATASETS {
            // One dataset for the source: its records read are those of all its inputs.
            reads.push((s.name.clone(), None));
        } else {
            reads.extend(
                files
                    .iter()
                    .map(|f| (s.name.clone(), Some(crate::custody::input_key(f)))),
            );
        }
        for (ns, name) in &datasets {
            ins.push(json!({
                "namespace": ns,
                "name": name,
                "facets": { "schema": schema_facet(&raw_schema) },
            }));
        }
        for sink in p.sinks.iter().filter(|k| k.root_source == s.name) {
            let Some(schema) = pl.transforms.schema_of(&sink.from) else {
                continue;
            };
            let mut fields = serde_json::Map::new();
            for f in schema.fields() {
                let mut input_fields = Vec::new();
                for (path, st) in trace_all(
                    &s.name,
                    &pl.resolution.states,
                    &pl.transforms,
                    &sink.from,
                    f.name(),
                ) {
                    let direct = path.len() == 1 && st.name == st.origin && f.name() == &st.name;
                    let mut t = json!({
                        "type": "DIRECT",
                        "subtype": if direct && st.protected_by.is_none() { "IDENTITY" } else { "TRANSFORMATION" },
                        "masking": st.protected_by.is_some(),
                    });
                    if let Some(action) = st.protected_by {
                        t["description"] = json!(format!("{action} ({})", path.join(" -> ")));
                    } else if !direct {
                        t["description"] = json!(path.join(" -> "));
                    }
                    for (ns, name) in &datasets {
                        input_fields.push(json!({
                            "namespace": ns,
                            "name": name,
                            "field": st.origin,
                            "transformations": [t.clone()],
                        }));
                    }
                }
                if !input_fields.is_empty() {
                    fields.insert(f.name().clone(), json!({ "inputFields": input_fields }));
                }
            }
            let (ns, name) = dataset_of_target(&sink.target);
            sinks.push(sink.name.clone());
            outs.push(json!({
                "namespace": ns,
                "name": name,
                "facets": {
                    "schema": schema_facet(&schema),
                    "columnLineage": {
                        "_producer": producer(),
                        "_schemaURL": LINEAGE_FACET,
                        "fields": fields,
                    },
                },
            }));
        }
    }
    let sql = p
        .transforms
        .iter()
        .map(|t| format!("-- {}\n{}", t.name, t.sql.trim()))
        .collect::<Vec<_>>()
        .join(";\n");
    RunDescription {
        inputs: ins,
        reads,
        outputs: outs,
        sinks,
        sql,
    }
}

/// What a run's committed batches read and delivered, for the events that end it (a failed
/// run's committed batches stay loaded): records read per source and input key (a table's or
/// query's under an empty key), rows delivered per sink.
#[derive(Debug, Default)]
pub struct Counted {
    pub read: BTreeMap<(String, String), u64>,
    pub delivered: BTreeMap<String, u64>,
}

/// One RunEvent. `kind` is START, COMPLETE or FAIL; `error` goes into the FAIL event.
/// `counted` (the events that end a run) becomes each input's `inputStatistics` and each
/// output's `outputStatistics`.
pub fn event(
    kind: &str,
    p: &Pipeline,
    run_id: &str,
    d: &RunDescription,
    error: Option<&str>,
    counted: Option<&Counted>,
) -> Value {
    let mut run_facets = json!({
        "processing_engine": {
            "_producer": producer(),
            "_schemaURL": ENGINE_FACET,
            "version": env!("CARGO_PKG_VERSION"),
            "name": "sealtrail",
        },
    });
    if let Some(e) = error {
        run_facets["errorMessage"] = json!({
            "_producer": producer(),
            "_schemaURL": ERROR_FACET,
            "message": e,
            "programmingLanguage": "Rust",
        });
    }
    let mut job_facets = json!({
        "jobType": {
            "_producer": producer(),
            "_schemaURL": JOB_TYPE_FACET,
            "processingType": "BATCH",
            "integration": "SEALTRAIL",
            "jobType": "PIPELINE",
        },
    });
    if !d.sql.is_empty() {
        job_facets["sql"] = json!({
            "_producer": producer(),
            "_schemaURL": SQL_FACET,
            "query": d.sql,
            "dialect": "datafusion",
        });
    }
    let mut inputs = d.inputs.clone();
    let mut outputs = d.outputs.clone();
    if let Some(c) = counted {
        for (i, (source, key)) in inputs.iter_mut().zip(&d.reads) {
            let rows: u64 = match key {
                Some(k) => c
                    .read
                    .get(&(source.clone(), k.clone()))
                    .copied()
                    .unwrap_or(0),
                None => c
                    .read
                    .iter()
                    .filter(|((s, _), _)| s == source)
                    .map(|(_, n)| n)
                    .sum(),
            };
            i["inputFacets"] = json!({
                "inputStatistics": {
                    "_producer": producer(),
                    "_schemaURL": INPUT_STATS_FACET,
                    "rowCount": rows,
                },
            });
        }
        for (o, sink) in outputs.iter_mut().zip(&d.sinks) {
            o["outputFacets"] = json!({
                "outputStatistics": {
                    "_producer": producer(),
                    "_schemaURL": OUTPUT_STATS_FACET,
                    "rowCount": c.delivered.get(sink).copied().unwrap_or(0),
                },
            });
        }
    }
    json!({
        "eventType": kind,
        "eventTime": sealtrail_core::audit::now(),
        "producer": producer(),
        "schemaURL": CORE,
        "run": { "runId": run_id, "facets": run_facets },
        "job": { "namespace": "sealtrail", "name": p.name, "facets": job_facets },
        "inputs": inputs,
        "outputs": outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_files_are_described_by_the_folder_holding_them() {
        let files = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        let folder = |v: &[&str]| common_folder(&files(v)).display().to_string();
        assert_eq!(folder(&["/l/in/a.csv", "/l/in/b.csv"]), "/l/in");
        assert_eq!(
            folder(&["/l/in/2026-01/a.csv", "/l/in/2026-02/b.csv"]),
            "/l/in"
        );
        // Not `/l/in` for `/l/inbox`: folders are compared whole.
        assert_eq!(folder(&["/l/in/a.csv", "/l/inbox/b.csv"]), "/l");
        assert_eq!(folder(&["a.csv", "b/c.csv"]), ".");
    }

    /// Credentials never go to another machine over plain http://; what is refused says why,
    /// never quoting the key or the URL's password.
    #[test]
    fn credentials_never_go_to_another_machine_in_clear() {
        let key = || Some(Secret::new("k3y-S3CRET".into()));
        assert_eq!(
            Destination::parse("events.jsonl", key()),
            Ok(Destination::File(PathBuf::from("events.jsonl")))
        );
        for (url, with_key) in [
            ("https://lineage.example.com/api/v1/lineage", true),
            ("https://u:pw@lineage.example.com/api/v1/lineage", false),
            ("http://127.0.0.1:5000/api/v1/lineage", true),
            ("http://localhost:5000/api/v1/lineage", true),
            // No credentials: sent, with a warning.
            ("http://lineage.example.com/api/v1/lineage", false),
        ] {
            let k = if with_key { key() } else { None };
            assert_eq!(
                Destination::parse(url, k.clone()),
                Ok(Destination::Http {
                    url: url.into(),
                    api_key: k
                }),
                "{url}"
            );
        }
        for (url, k, says) in [
            (
                "http://lineage.example.com/api/v1/lineage",
                key(),
                "(the API key) would cross the network",
            ),
            (
                "http://u:pw-S3CRET@10.1.2.3:5000/api/v1/lineage",
                None,
                "(the user in the URL) would cross the network",
            ),
            (
                "https://lineage.example.com/",
                Some(Secret::new("k3y-S3CRET\r\nX-Injected: 1".into())),
                "holds characters an HTTP header cannot carry",
            ),
            (
                "https://lineage.example.com/",
                Some(Secret::new(String::new())),
                "is empty",
            ),
            ("http://[::1/", None, "not a valid URL"),
        ] {
            let e = Destination::parse(url, k).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("S3CRET") && !e.contains("/api/"), "{e}");
        }
    }

    /// Past its age or size, the spool drops its oldest events first; what it keeps stays in
    /// order, an event without a readable time is kept while the size allows, and events after
    /// the first young one are not looked at.
    #[test]
    fn the_spool_drops_the_oldest_events_past_its_limits() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .to_utc();
        let ev = |t: &str, n: usize| format!(r#"{{"eventTime":"{t}","pad":"{}"}}"#, "x".repeat(n));
        let events = vec![
            ev("2026-10-01T00:00:00Z", 10),
            ev("2026-11-04T11:00:00Z", 10),
            ev("2026-11-20T00:00:00Z", 100),
            "not json".to_string(),
            ev("2026-12-05T11:59:00Z", 100),
        ];
        // The defaults: 30 days, 64 MiB.
        let mut kept = events.clone();
        assert_eq!(SpoolLimits::default().prune(&mut kept, now), (2, 0));
        assert_eq!(kept, events[2..]);
        // A size limit keeps the newest events that fit (each with its line break).
        let fit: u64 = events[3..].iter().map(|e| e.len() as u64 + 1).sum();
        for (max, aged, sized) in [(fit, 0, 3), (fit - 1, 0, 4), (u64::MAX, 0, 0)] {
            let limits = SpoolLimits {
                max_bytes: Some(max),
                max_age: None,
            };
            let mut kept = events.clone();
            assert_eq!(limits.prune(&mut kept, now), (aged, sized), "{max}");
            assert_eq!(kept, events[sized..]);
        }
        // No limit keeps everything; an unreadable time is not taken for old.
        let none = SpoolLimits {
            max_bytes: None,
            max_age: None,
        };
        let mut kept = events.clone();
        assert_eq!(none.prune(&mut kept, now), (0, 0));
        assert_eq!(kept, events);
        let mut kept = vec!["{}".to_string(), ev("2020-01-01T00:00:00Z", 1)];
        assert_eq!(SpoolLimits::default().prune(&mut kept, now), (1, 0));
        assert_eq!(kept, ["{}"]);
        // The scan stops at the first young event: what follows it came later, and is kept.
        let late = vec![
            ev("2020-01-01T00:00:00Z", 1),
            ev("2026-12-05T11:00:00Z", 1),
            ev("2020-01-01T00:00:00Z", 1),
        ];
        let mut kept = late.clone();
        assert_eq!(SpoolLimits::default().prune(&mut kept, now), (1, 0));
        assert_eq!(kept, late[1..]);
    }

    /// The limits come from two variables; a value that is no whole number names its variable.
    #[test]
    fn spool_limits_are_read_from_two_variables() {
        let vars = |mb: Option<&str>, days: Option<&str>| {
            let (mb, days) = (mb.map(str::to_owned), days.map(str::to_owned));
            SpoolLimits::from_vars(move |v| {
                if v == SPOOL_MB_VAR {
                    mb.clone()
                } else {
                    days.clone()
                }
            })
        };
        assert_eq!(vars(None, None), Ok(SpoolLimits::default()));
        assert_eq!(
            vars(Some("2"), Some("0")),
            Ok(SpoolLimits {
                max_bytes: Some(2 << 20),
                max_age: None
            })
        );
        assert_eq!(
            vars(Some(" 0 "), Some("7")),
            Ok(SpoolLimits {
                max_bytes: None,
                max_age: Some(std::time::Duration::from_secs(7 * 86_400))
            })
        );
        let err = vars(None, Some("a week")).unwrap_err();
        assert!(
            err.contains(SPOOL_DAYS_VAR) && err.contains("whole number"),
            "{err}"
        );
        assert!(vars(Some("-1"), None).unwrap_err().contains(SPOOL_MB_VAR));
    }
}
