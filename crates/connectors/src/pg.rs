//! PostgreSQL source (table or query, full or incremental on a cursor column) and sink (COPY).
//!
//! Source:
//! ```text
//!  run start:  plan_input ── SELECT max(cursor) ──▶ PgInput { after: last loaded, upto: max }
//!              (recorded as the run's input, so a resumed run reads exactly the same range)
//!  reading:    BEGIN REPEATABLE READ READ ONLY; DECLARE cursor FOR
//!                SELECT col::text, ... FROM (<table or query>) q
//!                WHERE cursor > after AND cursor <= upto ORDER BY cursor, key
//!              FETCH FORWARD batch_rows ... until empty; COMMIT
//! ```
//! Values are read as PostgreSQL's own text output (session `TimeZone = UTC`,
//! `DateStyle = ISO`), so every source goes through the same checks and typed conversion. A
//! record's raw bytes are its canonical encoding ([`canonical_row`]); its position is the row's
//! index in the read and its key the value of the `key` column.
//!
//! Sink: one transaction per batch: insert the commit key into `sealtrail_sink_commits`
//! (primary key: table, app id, batch; a key already there means the batch is loaded, and the
//! transaction is rolled back), then `COPY ... FROM STDIN (FORMAT csv)`, then COMMIT. The rows
//! and the key become visible together or not at all.

use crate::{Decoded, Error, Result, SourceReader};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sealtrail_core::db::redact_db_error;
use sealtrail_core::record::{PosKind, RawBatch, canonical_row};
use sealtrail_spec::raw::UnknownColumns;
use sealtrail_spec::{PgFrom, PgSource, SecretRef, Source};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor, Row, SqlSafeStr, Statement};
use std::fmt::Write;
use std::sync::Arc;

/// What one run reads from a PostgreSQL source; stored as the run's input (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgInput {
    /// Human-readable name of the relation: `table public.trades` or `query of source x`.
    pub what: String,
    /// Incremental: rows with cursor greater than this (none on the first run).
    pub after: Option<String>,
    /// Incremental: rows with cursor at most this (the maximum seen when the run started).
    pub upto: Option<String>,
    /// The cursor column's PostgreSQL type, to compare the bounds as values, not text.
    pub cursor_type: Option<String>,
    /// Without a `key` in the spec: the table's primary key, when it is one declared column
    /// (found when the run was planned, so a resumed run keys and orders its rows the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
}

impl PgInput {
    pub fn encode(&self) -> String {
        // Serialising plain strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn decode(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// Connects, naming the source or sink (never the URL) on failure.
pub async fn connect(url: &SecretRef, what: &str) -> Result<PgConnection> {
    let secret = url.resolve().map_err(|reason| Error::Unreadable {
        input: what.to_string(),
        reason,
    })?;
    // The URL may hold a password: errors below must not echo it, only say what failed.
    let target = sealtrail_core::db::pg_connect_options(secret.expose(), what).map_err(|e| {
        Error::Unreadable {
            input: what.to_string(),
            reason: format!("cannot use the connection URL: {e}"),
        }
    })?;
    let mut conn = target.connect().await.map_err(|e| Error::Unreadable {
        input: what.to_string(),
        reason: format!("cannot connect to PostgreSQL: {e}"),
    })?;
    conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 1")
        .await
        .map_err(|e| Error::Unreadable {
            input: what.to_string(),
            reason: redact_db_error(&e),
        })?;
    Ok(conn)
}

/// Connects to write into sink `name`: a failure is the sink's (`sink `t` failed: cannot
/// connect to PostgreSQL: ...`), not an input's that cannot be read.
async fn connect_to_write(url: &SecretRef, name: &str) -> Result<PgConnection> {
    connect(url, &format!("sink {name}"))
        .await
        .map_err(|e| match e {
            Error::Unreadable { reason, .. } => Error::Sink {
                sink: name.to_string(),
                reason,
            },
            other => other,
        })
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `schema.table` with each part quoted.
fn quote_table(s: &str) -> String {
    s.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// A SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn relation(source: &Source, pg: &PgSource) -> (String, String) {
    match &pg.from {
        PgFrom::Table(t) => (
            format!("SELECT * FROM {}", quote_table(t)),
            format!("table {t}"),
        ),
        PgFrom::Query(q) => (
            q.trim().trim_end_matches(';').to_string(),
            format!("query of source {}", source.name),
        ),
    }
}

/// Which table `table` is on the server `url` reaches, whatever the connection string says:
/// the server's start time (one value per running PostgreSQL server, which any role may read),
/// the database, and the table qualified with the schema an unqualified name is created in.
/// Two sinks whose connection references differ (`env:A`, `env:B`; `localhost` and
/// `127.0.0.1`) or whose names do (`t`, `public.t`) but reach one table get the same identity.
/// Returns the identity and how to name the table in a message (`public.t in database test`).
pub async fn table_identity(name: &str, url: &SecretRef, table: &str) -> Result<(String, String)> {
    let mut conn = connect(url, &format!("sink {name}")).await?;
    let (started, db, schema): (String, String, Option<String>) = sqlx::query_as(
        "SELECT pg_postmaster_start_time()::text, current_database(), current_schema()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| sink_err(name, redact_db_error(&e)))?;
    let _ = conn.close().await;
    let qualified = match (table.contains('.'), schema) {
        (false, Some(schema)) => format!("{schema}.{table}"),
        _ => table.to_string(),
    };
    Ok((
        format!("{started}|{db}|{qualified}"),
        format!("{qualified} in database {db}"),
    ))
}

/// Decides what a new run reads: for an incremental source, the rows after the last loaded
/// cursor value up to the current maximum. Also checks the relation's columns against the
/// declared ones, so a wrong column fails before anything loads.
pub async fn plan_input(source: &Source, pg: &PgSource, last: Option<PgInput>) -> Result<PgInput> {
    let (rel, what) = relation(source, pg);
    let mut conn = connect(&pg.url, &what).await?;
    check_columns(&mut conn, source, &rel, &what).await?;
    let primary_key = match (&pg.key, &pg.from) {
        (None, PgFrom::Table(t)) => primary_key(&mut conn, t)
            .await
            .filter(|k| source.column_index(k).is_some()),
        _ => None,
    };
    let mut input = PgInput {
        what: what.clone(),
        after: None,
        upto: None,
        cursor_type: None,
        primary_key,
    };
    if let Some(c) = &pg.cursor {
        let sql = format!(
            "SELECT max(q.{c})::text, pg_typeof(max(q.{c}))::text FROM ({rel}) q",
            c = quote_ident(c)
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Error::Unreadable {
                input: what.clone(),
                reason: redact_db_error(&e),
            })?;
        let max: Option<String> = row.try_get(0).ok().flatten();
        input.cursor_type = row.try_get(1).ok();
        input.after = last.and_then(|l| l.upto);
        input.upto = max.or_else(|| input.after.clone());
    }
    let _ = conn.close().await;
    Ok(input)
}

/// The column of `table`'s primary key, when it has one of one column. A lookup that fails
/// (no such catalog entry, no right to read it) is no primary key: the read then orders by
/// every column.
async fn primary_key(conn: &mut PgConnection, table: &str) -> Option<String> {
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
    )
    .bind(quote_table(table))
    .fetch_all(conn)
    .await
    .ok()?;
    match cols.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

async fn check_columns(
    conn: &mut PgConnection,
    source: &Source,
    rel: &str,
    what: &str,
) -> Result<()> {
    // Prepared, not run: the statement's columns are known without reading a row.
    let d = conn
        .prepare(AssertSqlSafe(format!("SELECT * FROM ({rel}) q")).into_sql_str())
        .await
        .map_err(|e| Error::Unreadable {
            input: what.to_string(),
            reason: redact_db_error(&e),
        })?;
    let have: Vec<String> = d
        .columns()
        .iter()
        .map(|c| sqlx::Column::name(c).to_string())
        .collect();
    let schema_err = |reason: String| Error::Schema {
        input: what.to_string(),
        source_name: source.name.clone(),
        reason,
    };
    if let Some(c) = source.columns.iter().find(|c| !have.contains(&c.name)) {
        return Err(schema_err(format!(
            "column `{}` is declared but the relation has only {}",
            c.name,
            have.join(", ")
        )));
    }
    if source.unknown_columns == UnknownColumns::Reject
        && let Some(h) = have.iter().find(|h| source.column_index(h).is_none())
    {
        return Err(schema_err(format!(
            "the relation has column `{h}`, which is not declared; declare it or set `unknown_columns: drop`"
        )));
    }
    Ok(())
}

/// Reads one PostgreSQL input. Runs its own single-threaded Tokio runtime: sources are
/// synchronous iterators on the engine's decode thread.
pub struct PgReader {
    source: Source,
    pg: PgSource,
    input: PgInput,
    name: Arc<str>,
    batch_rows: usize,
    rt: tokio::runtime::Runtime,
    conn: Option<PgConnection>,
    done: bool,
    next_row: u64,
    key_col: Option<usize>,
    /// Whether rows that share a key come one after another in the read (the key column
    /// leads its ordering), and so are told apart as `KEY#2`, `KEY#3`...: the last key read
    /// and how many rows before repeated it.
    number_repeats: bool,
    last_key: Option<String>,
    repeats: u32,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReader")
            .field("source", &self.source.name)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl PgReader {
    pub fn new(source: Source, pg: PgSource, input: &str, batch_rows: usize) -> Result<Self> {
        let input = PgInput::decode(input).ok_or_else(|| Error::Unreadable {
            input: input.to_string(),
            reason: "not a PostgreSQL input descriptor (state store damaged?)".into(),
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Unreadable {
                input: input.what.clone(),
                reason: e.to_string(),
            })?;
        let key_name = pg
            .key
            .as_deref()
            .or(input.primary_key.as_deref())
            .or(pg.cursor.as_deref());
        let key_col = key_name.and_then(|k| source.column_index(k));
        // The read is ordered by the cursor, else by the key (`select_sql`): when the id
        // column is the first of these, its repeats (a cursor value that rows share) are
        // consecutive, and numbering them gives every record of the run an id of its own.
        let first_order = pg
            .cursor
            .as_deref()
            .or(pg.key.as_deref())
            .or(input.primary_key.as_deref());
        let number_repeats = key_name.is_some() && key_name == first_order;
        Ok(Self {
            name: input.what.clone().into(),
            source,
            pg,
            input,
            batch_rows: batch_rows.max(1),
            rt,
            conn: None,
            done: false,
            next_row: 0,
            key_col,
            number_repeats,
            last_key: None,
            repeats: 0,
        })
    }

    fn unreadable(&self, e: &sqlx::Error) -> Error {
        Error::Unreadable {
            input: self.name.to_string(),
            reason: redact_db_error(e),
        }
    }

    /// The read's SELECT (its columns as text, its range) without its ordering, and the
    /// values of its range's bounds, bound as parameters `$1`, `$2` (never spelled into the
    /// SQL, whose text drivers log: sqlx's slow-statement warning among them).
    fn select_unordered(&self) -> (String, Vec<String>) {
        let (rel, _) = relation(&self.source, &self.pg);
        let cols = self
            .source
            .columns
            .iter()
            .map(|c| format!("q.{}::text", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {cols} FROM ({rel}) q");
        let mut params = Vec::new();
        if let Some(c) = &self.pg.cursor {
            let c = quote_ident(c);
            let ty = self.input.cursor_type.as_deref().unwrap_or("text");
            match (&self.input.after, &self.input.upto) {
                (_, None) => sql.push_str(" WHERE false"),
                (None, Some(u)) => {
                    let _ = write!(sql, " WHERE q.{c} <= CAST($1::text AS {ty})");
                    params.push(u.clone());
                }
                (Some(a), Some(u)) => {
                    let _ = write!(
                        sql,
                        " WHERE q.{c} > CAST($1::text AS {ty}) AND q.{c} <= CAST($2::text AS {ty})"
                    );
                    params.extend([a.clone(), u.clone()]);
                }
            }
        }
        (sql, params)
    }

    fn select_sql(&self) -> (String, Vec<String>) {
        let (mut sql, params) = self.select_unordered();
        // A total order, so a resumed run cuts the same batches: by cursor, then key (the
        // spec's, else the table's primary key). Without a key, rows that share a cursor value
        // would come in any order (a resumed run could load one twice and another never), so
        // every column orders them then (rows alike in every column are interchangeable); so
        // too after the spec's key, which nothing makes unique (its repeats are quarantined as
        // `duplicate_key`, and which of them loads must not change on a re-read).
        let key = self.pg.key.as_ref().or(self.input.primary_key.as_ref());
        let mut order: Vec<String> = Vec::new();
        for c in [self.pg.cursor.as_ref(), key].into_iter().flatten() {
            let q = format!("q.{}", quote_ident(c));
            if !order.contains(&q) {
                order.push(q);
            }
        }
        if key.is_none() || self.pg.key.is_some() {
            order.extend((1..=self.source.columns.len()).map(|i| i.to_string()));
        }
        let _ = write!(sql, " ORDER BY {}", order.join(", "));
        (sql, params)
    }
}

/// Up to `n` rows of `input` (its range, in no particular order), each column as text or
/// null: the classifier's sample. A plain `LIMIT` without the read's ordering, so a sample
/// never sorts the table. Blocks on a runtime of its own: call it off the async workers.
pub fn sample_rows(
    source: &Source,
    pg: &PgSource,
    input: &str,
    n: usize,
) -> Result<Vec<Vec<Option<String>>>> {
    let r = PgReader::new(source.clone(), pg.clone(), input, n)?;
    let (sql, params) = r.select_unordered();
    let sql = format!("{sql} LIMIT {n}");
    let ncols = source.columns.len();
    r.rt.block_on(async {
        let mut conn = connect(&r.pg.url, &r.name).await?;
        let rows = params
            .iter()
            .fold(sqlx::query(AssertSqlSafe(sql)), |q, v| q.bind(v))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| r.unreadable(&e))?;
        let _ = conn.close().await;
        rows.iter()
            .map(|row| {
                (0..ncols)
                    .map(|i| {
                        row.try_get::<Option<String>, _>(i)
                            .map_err(|e| r.unreadable(&e))
                    })
                    .collect()
            })
            .collect()
    })
}

impl SourceReader for PgReader {
    fn next_batch(&mut self) -> Result<Option<Decoded>> {
        if self.done {
            return Ok(None);
        }
        if self.conn.is_none() {
            let (sql, params) = self.select_sql();
            let conn = self.rt.block_on(async {
                let mut conn = connect(&self.pg.url, &self.name).await?;
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(|e| self.unreadable(&e))?;
                params
                    .iter()
                    .fold(
                        sqlx::query(AssertSqlSafe(format!(
                            "DECLARE sealtrail_read NO SCROLL CURSOR FOR {sql}"
                        ))),
                        |q, v| q.bind(v),
                    )
                    .execute(&mut conn)
                    .await
                    .map_err(|e| self.unreadable(&e))?;
                Ok::<_, Error>(conn)
            })?;
            self.conn = Some(conn);
        }
        let fetch = format!("FETCH FORWARD {} FROM sealtrail_read", self.batch_rows);
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let rows = self
            .rt
            .block_on(sqlx::query(AssertSqlSafe(fetch)).fetch_all(&mut *conn))
            .map_err(|e| Error::Unreadable {
                input: self.name.to_string(),
                reason: redact_db_error(&e),
            })?;
        if rows.is_empty() {
            self.done = true;
            if let Some(mut c) = self.conn.take() {
                let _ = self.rt.block_on(async {
                    let _ = c.execute("COMMIT").await;
                    c.close().await
                });
            }
            return Ok(None);
        }
        let ncols = self.source.columns.len();
        let names: Vec<&str> = self
            .source
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut batch =
            RawBatch::with_capacity(self.name.clone(), PosKind::Key, ncols, rows.len(), 0);
        if let Some(k) = self.key_col {
            batch.set_key_column(k);
        }
        let mut values: Vec<Option<String>> = vec![None; ncols];
        for row in &rows {
            for (i, v) in values.iter_mut().enumerate() {
                *v = row
                    .try_get::<Option<String>, _>(i)
                    .map_err(|e| Error::Unreadable {
                        input: self.name.to_string(),
                        reason: redact_db_error(&e),
                    })?;
            }
            let refs: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
            batch.begin(self.next_row, &canonical_row(&names, &refs));
            for v in &refs {
                batch.push(*v);
            }
            if self.number_repeats
                && let Some(k) = self.key_col.and_then(|k| refs[k])
            {
                if self.last_key.as_deref() == Some(k) {
                    self.repeats += 1;
                    batch.set_key_repeat(self.repeats);
                } else {
                    self.last_key = Some(k.to_owned());
                    self.repeats = 0;
                }
            }
            self.next_row += 1;
        }
        Ok(Some(Decoded {
            batch,
            malformed: Vec::new(),
        }))
    }
}

/// The PostgreSQL column type for an Arrow type, or None when sealtrail cannot write it.
fn pg_type(dt: &DataType) -> Option<String> {
    Some(match delivered_type(dt)? {
        DataType::Utf8 => "text".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Float32 => "real".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Binary => "bytea".into(),
        _ => return None,
    })
}

/// The Arrow type a column of type `dt` is delivered to a PostgreSQL sink as: the type its
/// PostgreSQL column reads back as ([`PgTable`]), so that a row's commitment computed before
/// the write is the commitment of the row read back (`docs/custody.md`). Unsigned integers
/// become the signed type PostgreSQL stores them in, timestamps microseconds (a time zone
/// becomes `UTC`: `timestamptz` keeps the instant, not the zone), large and view strings and
/// binaries the plain ones. None when sealtrail cannot write the type.
pub fn delivered_type(dt: &DataType) -> Option<DataType> {
    Some(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Int64 | DataType::UInt32 => DataType::Int64,
        DataType::Int32 | DataType::UInt16 => DataType::Int32,
        DataType::Int16 | DataType::Int8 | DataType::UInt8 => DataType::Int16,
        DataType::Float64 => DataType::Float64,
        DataType::Float32 => DataType::Float32,
        DataType::Boolean => DataType::Boolean,
        DataType::Date32 => DataType::Date32,
        DataType::Timestamp(
            TimeUnit::Microsecond | TimeUnit::Millisecond | TimeUnit::Second,
            tz,
        ) => DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into())),
        DataType::Decimal128(p, s) => DataType::Decimal128(*p, *s),
        DataType::Binary | DataType::LargeBinary => DataType::Binary,
        _ => return None,
    })
}

/// `b` in the types a PostgreSQL sink delivers it as ([`delivered_type`]); `b` itself when
/// they are already its types. Casting changes no value: every cast widens or relabels, and a
/// value that would not fit fails the batch (no column type PostgreSQL has could hold it), as
/// does text with a NUL character, which PostgreSQL's `text` cannot store (a source's values
/// bound for a PostgreSQL sink are quarantined for it as `invalid_text`; a transform's SQL can
/// make one): the batch fails before the sink starts writing, naming the column and the row.
pub fn deliverable(b: &RecordBatch) -> std::result::Result<RecordBatch, String> {
    let out = cast_deliverable(b)?;
    for (f, c) in out.schema().fields().iter().zip(out.columns()) {
        let Some(text) = c.as_string_opt::<i32>() else {
            continue;
        };
        if !text.values().contains(&0) {
            continue; // the common case: one scan of the column's bytes
        }
        let Some(row) = (0..text.len()).find(|&i| text.is_valid(i) && text.value(i).contains('\0'))
        else {
            continue; // the byte lies outside this slice of the buffer
        };
        let id = out
            .column_by_name(sealtrail_core::LINEAGE_ID_COLUMN)
            .and_then(|c| c.as_string_opt::<i32>())
            .map(|ids| format!(" (of the record `{}`)", ids.value(row)))
            .unwrap_or_default();
        return Err(format!(
            "column `{}` holds a NUL character (U+0000) in row {row} of the batch{id}, which PostgreSQL text cannot store; a transform's SQL made it (the source's values are checked for it): remove it there, e.g. `replace({}, chr(0), '')`",
            f.name(),
            f.name()
        ));
    }
    Ok(out)
}

fn cast_deliverable(b: &RecordBatch) -> std::result::Result<RecordBatch, String> {
    let schema = b.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let t = delivered_type(f.data_type()).ok_or_else(|| {
            format!(
                "column `{}` has type {} which the postgres sink cannot write; cast it in the transform's SQL",
                f.name(),
                f.data_type()
            )
        })?;
        fields.push(f.as_ref().clone().with_data_type(t));
    }
    if fields
        .iter()
        .zip(schema.fields())
        .all(|(a, b)| a.data_type() == b.data_type())
    {
        return Ok(b.clone());
    }
    let columns = b
        .columns()
        .iter()
        .zip(&fields)
        // Not `safe`: a value that does not fit (a timestamp in seconds beyond the range of
        // microseconds) is an error, never a null.
        .map(|(c, f)| {
            arrow::compute::cast_with_options(
                c,
                f.data_type(),
                &arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        )),
        columns,
    )
    .map_err(|e| e.to_string())
}

/// Whether a valid, non-partial index of `table` has `column` as its first key column.
async fn leading_index_on(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
) -> std::result::Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
         WHERE i.indrelid = $1::regclass AND a.attname = $2 \
         AND i.indisvalid AND i.indpred IS NULL)",
    )
    .bind(quote_table(table))
    .bind(column)
    .fetch_one(&mut *conn)
    .await
}

/// Why a table named `table` could not be created by this connection's user, if it could not:
/// its schema (or, unqualified, every schema of the `search_path`) does not exist, or the user
/// lacks `CREATE` on it. Names and the user only; PostgreSQL's own message for the same failure
/// comes later and without a hint.
async fn uncreatable(
    conn: &mut PgConnection,
    table: &str,
) -> std::result::Result<Option<String>, sqlx::Error> {
    let schema_name = table.split_once('.').map(|(s, _)| s.to_string());
    let (schema, exists, may_create, user): (Option<String>, bool, bool, String) = sqlx::query_as(
        "SELECT q.s, n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'CREATE'), false), \
                current_user::text \
         FROM (SELECT coalesce($1, current_schema()::text) AS s) q \
         LEFT JOIN pg_namespace n ON n.nspname = q.s",
    )
    .bind(&schema_name)
    .fetch_one(&mut *conn)
    .await?;
    Ok(match schema {
        None => Some(format!(
            "table {table} does not exist and cannot be created: no schema of the user's \
             search_path exists; name the table with its schema (`schema.table`)"
        )),
        Some(s) if !exists => Some(format!(
            "table {table} cannot be created: schema {s} does not exist in the database; create \
             it (CREATE SCHEMA {}) or name a table in an existing schema",
            quote_ident(&s)
        )),
        Some(s) if !may_create => Some(format!(
            "table {table} does not exist and user {user} may not create tables in schema {s}; \
             create the table beforehand, or grant the right (GRANT CREATE ON SCHEMA {} TO {})",
            quote_ident(&s),
            quote_ident(&user)
        )),
        Some(_) => None,
    })
}

/// The columns of `table` (`schema.table` or `table`) in order, with their PostgreSQL types
/// (`numeric(p,s)` spelled out); empty when the table does not exist.
async fn table_columns(
    conn: &mut PgConnection,
    table: &str,
) -> std::result::Result<Vec<(String, String)>, sqlx::Error> {
    let (schema_name, tname) = match table.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, table.to_string()),
    };
    let rows = sqlx::query(
        "SELECT column_name::text, data_type::text, numeric_precision, numeric_scale \
         FROM information_schema.columns \
         WHERE table_name = $1 AND table_schema = coalesce($2, current_schema()) \
         ORDER BY ordinal_position",
    )
    .bind(&tname)
    .bind(&schema_name)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let n: String = r.get(0);
            let t: String = r.get(1);
            let t = match (
                t.as_str(),
                r.get::<Option<i32>, _>(2),
                r.get::<Option<i32>, _>(3),
            ) {
                ("numeric", Some(p), Some(s)) => format!("numeric({p},{s})"),
                _ => t,
            };
            (n, t)
        })
        .collect())
}

/// How one column of a sink table is selected and read back.
#[derive(Debug, Clone, Copy)]
enum ReadAs {
    Text,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Bytea,
    /// Days since 1970-01-01 (the column as it is: its binary form counts from 2000-01-01).
    Date,
    /// Microseconds since 1970-01-01 UTC; `zoned`: `timestamp with time zone`.
    Micros {
        zoned: bool,
    },
    /// Selected as text, parsed exactly at this scale (the precision is the field's).
    Numeric(i8),
}

/// A value PostgreSQL holds but sealtrail never writes (an infinite date or timestamp, a NaN
/// or infinite numeric): read as a value no delivered row can hold, so the row's commitment
/// differs from every delivered one and `audit` reports it changed.
const NEVER_DAYS: i32 = i32::MIN;
const NEVER_MICROS: i64 = i64::MIN;
const NEVER_DECIMAL: i128 = i128::MIN;

/// PostgreSQL's epoch (2000-01-01) in days and microseconds since 1970-01-01.
const DAYS_1970_TO_2000: i32 = 10_957;
const MICROS_1970_TO_2000: i64 = 946_684_800_000_000;

impl ReadAs {
    /// For a column of PostgreSQL type `pg`: how to read it and the Arrow type it reads as.
    fn of(pg: &str) -> Option<(Self, DataType)> {
        let micros =
            |tz: Option<&str>| DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
        Some(match pg {
            "text" => (Self::Text, DataType::Utf8),
            "smallint" => (Self::Int2, DataType::Int16),
            "integer" => (Self::Int4, DataType::Int32),
            "bigint" => (Self::Int8, DataType::Int64),
            "real" => (Self::Float4, DataType::Float32),
            "double precision" => (Self::Float8, DataType::Float64),
            "boolean" => (Self::Bool, DataType::Boolean),
            "bytea" => (Self::Bytea, DataType::Binary),
            "date" => (Self::Date, DataType::Date32),
            "timestamp with time zone" => (Self::Micros { zoned: true }, micros(Some("UTC"))),
            "timestamp without time zone" => (Self::Micros { zoned: false }, micros(None)),
            _ => {
                let (p, s) = pg
                    .strip_prefix("numeric(")?
                    .strip_suffix(')')?
                    .split_once(',')?;
                let (p, s) = (p.parse::<u8>().ok()?, s.parse::<i8>().ok()?);
                (Self::Numeric(s), DataType::Decimal128(p, s))
            }
        })
    }

    /// The type name (as sqlx reports it) the select-list expression comes back as.
    fn wire_type(self) -> &'static str {
        match self {
            Self::Text | Self::Numeric(..) => "TEXT",
            Self::Int2 => "INT2",
            Self::Int4 => "INT4",
            Self::Int8 => "INT8",
            Self::Date => "DATE",
            Self::Micros { zoned: true } => "TIMESTAMPTZ",
            Self::Micros { zoned: false } => "TIMESTAMP",
            Self::Float4 => "FLOAT4",
            Self::Float8 => "FLOAT8",
            Self::Bool => "BOOL",
            Self::Bytea => "BYTEA",
        }
    }

    /// The select-list expression for column `c` (quoted).
    fn select(self, c: &str) -> String {
        // Dates and timestamps come as they are: their binary form is days or microseconds
        // since 2000-01-01 ([`ColumnBuild`] shifts them to 1970). Computing the offsets in SQL
        // (`EXTRACT(EPOCH ...)` is numeric arithmetic) cost the server ~10 % of an audit.
        match self {
            Self::Numeric(..) => format!("{c}::text"),
            _ => c.to_string(),
        }
    }
}

/// `s` (PostgreSQL's text of a `numeric(p, scale)`) as the unscaled integer at `scale`;
/// None when it is not a finite number with at most `scale` fraction digits.
fn unscaled(s: &str, scale: i8) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut v: i128 = 0;
    for b in int.bytes() {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    let scale = i32::from(scale);
    let frac_digits = frac.len() as i32;
    if frac_digits > scale.max(0) {
        return None;
    }
    for b in frac.bytes() {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    if scale >= frac_digits {
        v = v.checked_mul(10i128.checked_pow((scale - frac_digits) as u32)?)?;
    } else {
        // Negative scale: the text is an integer that must be a multiple of 10^-scale.
        let d = 10i128.checked_pow((-scale) as u32)?;
        if v % d != 0 {
            return None;
        }
        v /= d;
    }
    Some(if neg { -v } else { v })
}

/// A PostgreSQL sink's table read back as Arrow batches, in the types its rows were
/// delivered as ([`delivered_type`]), for `prove`, `verify-proof` and `audit`.
pub struct PgTable {
    name: String,
    table: String,
    conn: PgConnection,
    schema: SchemaRef,
    read: Vec<ReadAs>,
    select: String,
    /// For the scan's second connection.
    url: SecretRef,
    scan: Option<CopyScan>,
}

/// New values of a text column for [`PgTable::update_text_columns`], row by row, with the
/// values the rows must still hold.
#[derive(Debug)]
pub struct TextUpdate {
    pub column: String,
    pub old: Vec<Option<String>>,
    pub new: Vec<Option<String>>,
}

/// A running scan: the table's rows as a binary COPY stream, read on a task of its own (so
/// the server sends while the caller decodes and hashes) and handed over in chunks.
struct CopyScan {
    rx: tokio::sync::mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
    decoder: CopyBinary,
}

impl std::fmt::Debug for PgTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTable")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PgTable {
    /// Connects and reads the table's columns: every column, in table order (a column added
    /// since delivery changes every row's commitment, as it should).
    pub async fn open(name: &str, url: &SecretRef, table: &str) -> Result<Self> {
        Self::open_existing(name, url, table)
            .await?
            .ok_or_else(|| sink_err(name, format!("table {table} does not exist")))
    }

    /// [`PgTable::open`], or None when the table does not exist.
    pub async fn open_existing(name: &str, url: &SecretRef, table: &str) -> Result<Option<Self>> {
        let mut conn = connect(url, &format!("sink {name}")).await?;
        let db = |e: sqlx::Error| sink_err(name, redact_db_error(&e));
        let cols = table_columns(&mut conn, table).await.map_err(db)?;
        if cols.is_empty() {
            return Ok(None);
        }
        let mut fields = Vec::with_capacity(cols.len());
        let mut read = Vec::with_capacity(cols.len());
        let mut select = Vec::with_capacity(cols.len());
        for (n, t) in &cols {
            let (how, dt) = ReadAs::of(t).ok_or_else(|| {
                sink_err(
                    name,
                    format!("column `{n}` of table {table} has type {t}, which sealtrail never writes: the table was changed since delivery"),
                )
            })?;
            select.push(how.select(&quote_ident(n)));
            read.push(how);
            fields.push(arrow::datatypes::Field::new(n, dt, true));
        }
        Ok(Some(Self {
            name: name.to_string(),
            table: table.to_string(),
            conn,
            schema: Arc::new(arrow::datatypes::Schema::new(fields)),
            read,
            select: format!("SELECT {} FROM {}", select.join(", "), quote_table(table)),
            url: url.clone(),
            scan: None,
        }))
    }

    /// `postgres table NAME`, for reports.
    pub fn location(&self) -> String {
        format!("postgres table {}", self.table)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn err(&self, e: &sqlx::Error) -> Error {
        sink_err(&self.name, redact_db_error(e))
    }

    /// [`ensure_own_table`] on this table's connection.
    async fn own_table(&mut self, t: OwnTable) -> Result<()> {
        match ensure_own_table(&mut self.conn, t).await {
            Ok(None) => Ok(()),
            Ok(Some(problem)) => Err(sink_err(&self.name, problem)),
            Err(e) => Err(self.err(&e)),
        }
    }

    /// The rows whose column `column` has the text `value` (PostgreSQL's text form of the
    /// value, compared as text), in one batch.
    pub async fn rows_where(&mut self, column: &str, value: &str) -> Result<RecordBatch> {
        if self.schema.index_of(column).is_err() {
            return Err(sink_err(
                &self.name,
                format!("table {} has no column `{column}`", self.table),
            ));
        }
        let sql = format!("{} WHERE {}::text = $1", self.select, quote_ident(column));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(value)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err(&e))?;
        self.to_batch(&rows)
    }

    /// The rows whose lineage id is one of `ids`, in the order of `ids`, or the ids that more
    /// than one row of the table carries (such rows cannot be told apart by id). Ids no row
    /// carries are left out: the batch then has fewer rows.
    pub async fn rows_with_ids(
        &mut self,
        ids: &[String],
    ) -> Result<std::result::Result<RecordBatch, Vec<String>>> {
        use arrow::array::AsArray;
        let id = sealtrail_core::LINEAGE_ID_COLUMN;
        let Ok(at) = self.schema.index_of(id) else {
            return Err(sink_err(
                &self.name,
                format!("table {} has no column `{id}`", self.table),
            ));
        };
        let sql = format!("{} WHERE {}::text = ANY($1)", self.select, quote_ident(id));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err(&e))?;
        let b = self.to_batch(&rows)?;
        let got = arrow::compute::cast(b.column(at), &DataType::Utf8)
            .map_err(|e| sink_err(&self.name, e))?;
        let got = got.as_string::<i32>();
        let mut at_row: std::collections::HashMap<&str, u32> = Default::default();
        let mut shared = std::collections::BTreeSet::new();
        for r in 0..got.len() {
            if got.is_valid(r) && at_row.insert(got.value(r), r as u32).is_some() {
                shared.insert(got.value(r).to_string());
            }
        }
        if !shared.is_empty() {
            return Ok(Err(shared.into_iter().collect()));
        }
        let order = arrow::array::UInt32Array::from_iter_values(
            ids.iter().filter_map(|i| at_row.get(i.as_str()).copied()),
        );
        let columns = b
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c, &order, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| sink_err(&self.name, e))?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map(Ok)
            .map_err(|e| sink_err(&self.name, e))
    }

    /// Sets text columns of the rows with lineage ids `ids`: each [`TextUpdate`] gives the
    /// rows' values now and the values they get, row by row. One statement in one
    /// transaction, and only if every row is found with its `old` values (otherwise nothing is
    /// changed and the error says so), so a row changed since it was read is never
    /// overwritten. The pending file `done` ([`PgTable::stage_pending`]) goes in the same
    /// transaction.
    pub async fn update_text_columns(
        &mut self,
        ids: &[String],
        columns: &[TextUpdate],
        done: Option<&str>,
    ) -> Result<()> {
        let mut set = Vec::new();
        let mut arrays = vec!["$1::text[]".to_string()];
        let mut names = vec!["id".to_string()];
        let mut same = vec![format!(
            "t.{}::text = u.id",
            quote_ident(sealtrail_core::LINEAGE_ID_COLUMN)
        )];
        for (i, TextUpdate { column: c, .. }) in columns.iter().enumerate() {
            set.push(format!("{} = u.n{i}", quote_ident(c)));
            arrays.push(format!("${}::text[]", 2 + 2 * i));
            arrays.push(format!("${}::text[]", 3 + 2 * i));
            names.push(format!("o{i}"));
            names.push(format!("n{i}"));
            same.push(format!("t.{} IS NOT DISTINCT FROM u.o{i}", quote_ident(c)));
        }
        let sql = format!(
            "UPDATE {} AS t SET {} FROM unnest({}) AS u({}) WHERE {}",
            quote_table(&self.table),
            set.join(", "),
            arrays.join(", "),
            names.join(", "),
            same.join(" AND ")
        );
        let name = self.name.clone();
        let db = |e: sqlx::Error| sink_err(&name, redact_db_error(&e));
        let mut tx = self.conn.begin().await.map_err(db)?;
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ids);
        for TextUpdate { old, new, .. } in columns {
            q = q.bind(old).bind(new);
        }
        let n = q.execute(&mut *tx).await.map_err(db)?;
        if n.rows_affected() != ids.len() as u64 {
            let _ = tx.rollback().await;
            return Err(sink_err(
                &self.name,
                format!(
                    "{} of {} rows of table {} were found as they were read (changed or deleted meanwhile): nothing was updated. `sealtrail audit` names the changed rows; restore them, then run this again",
                    n.rows_affected(),
                    ids.len(),
                    self.table
                ),
            ));
        }
        if let Some(name) = done {
            sqlx::query("DELETE FROM sealtrail_reencrypt_pending WHERE target = $1 AND name = $2")
                .bind(&self.table)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// Keeps the file `name` (a rewrite of rows of this table waiting to be put in place) in
    /// the database itself, beside the table, replacing one of the same name: what is
    /// recorded as a revision must not depend on a local disk.
    pub async fn stage_pending(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.own_table(PENDING).await?;
        sqlx::query("INSERT INTO sealtrail_reencrypt_pending (target, name, data) VALUES ($1, $2, $3) ON CONFLICT (target, name) DO UPDATE SET data = EXCLUDED.data")
            .bind(&self.table)
            .bind(name)
            .bind(bytes)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// The pending file `name` ([`PgTable::stage_pending`]), if there is one.
    pub async fn pending(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        self.own_table(PENDING).await?;
        sqlx::query_scalar(
            "SELECT data FROM sealtrail_reencrypt_pending WHERE target = $1 AND name = $2",
        )
        .bind(&self.table)
        .bind(name)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| self.err(&e))
    }

    /// Removes the pending file `name`, if there is one.
    pub async fn drop_pending(&mut self, name: &str) -> Result<()> {
        self.own_table(PENDING).await?;
        sqlx::query("DELETE FROM sealtrail_reencrypt_pending WHERE target = $1 AND name = $2")
            .bind(&self.table)
            .bind(name)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Starts reading the whole table in one snapshot, from its first page; returns its row
    /// count. The rows come as a binary COPY stream on a second connection that imports this
    /// one's snapshot (the count and the rows agree however the table changes meanwhile):
    /// COPY costs the server about half of what a cursor's FETCHes did, and the stream keeps
    /// coming while the caller works instead of waiting for each FETCH in turn.
    pub async fn scan(&mut self) -> Result<u64> {
        self.conn
            .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| self.err(&e))?;
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            quote_table(&self.table)
        )))
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err(&e))?;
        let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(&e))?;
        let mut copy = connect(&self.url, &format!("sink {}", self.name)).await?;
        copy
            // Without synchronised scans a sequential scan starts at the table's first page,
            // so a table sealtrail filled comes back in insertion order (with them, it may start
            // wherever an earlier scan stopped and wrap around).
            .execute(
                AssertSqlSafe(format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; SET LOCAL synchronize_seqscans = off",
                    quote_literal(&snapshot)
                )),
            )
            .await
            .map_err(|e| self.err(&e))?;
        let sql = format!("COPY ({}) TO STDOUT (FORMAT binary)", self.select);
        // Chunks of about 1 MiB (the server sends a message per row) and at most 4 in flight.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use futures::StreamExt;
            const CHUNK: usize = 1 << 20;
            {
                let mut stream = match copy.copy_out_raw(&sql).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(redact_db_error(&e))).await;
                        return;
                    }
                };
                let mut chunk = Vec::with_capacity(CHUNK);
                while let Some(msg) = stream.next().await {
                    match msg {
                        Ok(b) => chunk.extend_from_slice(&b),
                        Err(e) => {
                            let _ = tx.send(Err(redact_db_error(&e))).await;
                            return;
                        }
                    }
                    if chunk.len() >= CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        if tx.send(Ok(full)).await.is_err() {
                            return; // the reader stopped
                        }
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk)).await;
                }
            }
            let _ = copy.execute("COMMIT").await;
        });
        self.scan = Some(CopyScan {
            rx,
            decoder: CopyBinary::new(self.read.clone(), self.schema.clone()),
        });
        Ok(count.max(0) as u64)
    }

    /// The next `rows` rows of the scan (fewer only at its end); None at its end.
    pub async fn next(&mut self, rows: usize) -> Result<Option<RecordBatch>> {
        let bad = |name: &str, table: &str, why: String| {
            sink_err(name, format!("reading table {table}: {why}"))
        };
        let Some(scan) = self.scan.as_mut() else {
            return Ok(None);
        };
        loop {
            match scan.decoder.next_batch(rows) {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) if scan.decoder.ended() => break,
                Ok(None) => {}
                Err(why) => return Err(bad(&self.name, &self.table, why)),
            }
            match scan.rx.recv().await {
                Some(Ok(bytes)) => scan.decoder.feed(&bytes),
                Some(Err(why)) => return Err(bad(&self.name, &self.table, why)),
                None => {
                    return Err(bad(
                        &self.name,
                        &self.table,
                        "the rows' stream ended before its end marker".into(),
                    ));
                }
            }
        }
        self.scan = None;
        let _ = self.conn.execute("COMMIT").await;
        Ok(None)
    }

    /// `rows` as a batch of the table's schema. Rows are read once each, in order, every
    /// column's value appended as it comes: reading column by column touched every row's
    /// buffer once per column, and those cache misses were a third of an audit's CPU. Values
    /// come in PostgreSQL's binary format (sqlx asks for it) and are decoded here from their
    /// bytes, each column's wire type checked once per batch instead of once per value.
    fn to_batch(&self, rows: &[sqlx::postgres::PgRow]) -> Result<RecordBatch> {
        use sqlx::{Column, Row, TypeInfo, ValueRef};
        if let Some(first) = rows.first() {
            for ((how, f), c) in self
                .read
                .iter()
                .zip(self.schema.fields())
                .zip(first.columns())
            {
                let got = c.type_info().name();
                if got != how.wire_type() {
                    return Err(sink_err(
                        &self.name,
                        format!(
                            "column `{}` came back as {got}, not {}",
                            f.name(),
                            how.wire_type()
                        ),
                    ));
                }
            }
        }
        let mut cols: Vec<ColumnBuild> = self
            .read
            .iter()
            .map(|how| ColumnBuild::new(*how, rows.len()))
            .collect();
        for r in rows {
            for (i, b) in cols.iter_mut().enumerate() {
                let v = r.try_get_raw(i).map_err(|e| self.err(&e))?;
                let bytes = if v.is_null() {
                    None
                } else {
                    Some(v.as_bytes().map_err(|e| sink_err(&self.name, e))?)
                };
                b.push(bytes).map_err(|why| {
                    sink_err(
                        &self.name,
                        format!("column `{}`: {why}", self.schema.field(i).name()),
                    )
                })?;
            }
        }
        let columns = cols
            .into_iter()
            .zip(self.schema.fields())
            .map(|(b, f)| {
                b.finish(f.data_type())
                    .map_err(|why| sink_err(&self.name, format!("column `{}`: {why}", f.name())))
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| sink_err(&self.name, e))
    }
}

/// Decoder of PostgreSQL's binary COPY format (`COPY ... TO STDOUT (FORMAT binary)`) into
/// Arrow batches of a sink table's columns. Written here because no maintained crate decodes
/// it into Arrow (sqlx hands over the raw bytes) and the format is small: an 11-byte
/// signature, 32-bit flags and a header extension of a 32-bit length; then per row a 16-bit
/// field count and each field as a 32-bit length (-1: NULL) and that many bytes; then a count
/// of -1. Bytes come in any chunks; a row is decoded only once all of it is there.
pub struct CopyBinary {
    read: Vec<ReadAs>,
    schema: SchemaRef,
    buf: Vec<u8>,
    at: usize,
    header: bool,
    ended: bool,
    /// Rows decoded since the last batch was handed out, and their columns.
    pending: usize,
    cols: Vec<ColumnBuild>,
}

const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl std::fmt::Debug for CopyBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyBinary")
            .field("columns", &self.read.len())
            .field("buffered", &(self.buf.len() - self.at))
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl CopyBinary {
    fn new(read: Vec<ReadAs>, schema: SchemaRef) -> Self {
        Self {
            read,
            schema,
            buf: Vec::new(),
            at: 0,
            header: false,
            ended: false,
            pending: 0,
            cols: Vec::new(),
        }
    }

    /// For columns of these PostgreSQL types (as `information_schema` spells them: `text`,
    /// `bigint`, `numeric(18,4)` ...), named `c0`, `c1` ...; None for a type sealtrail never
    /// writes.
    pub fn for_types(types: &[&str]) -> Option<Self> {
        let mut read = Vec::with_capacity(types.len());
        let mut fields = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            let (how, dt) = ReadAs::of(t)?;
            read.push(how);
            fields.push(arrow::datatypes::Field::new(format!("c{i}"), dt, true));
        }
        Some(Self::new(
            read,
            Arc::new(arrow::datatypes::Schema::new(fields)),
        ))
    }

    /// Appends the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the end marker was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Decodes the complete rows fed so far, up to `max` a batch: a batch of `max` rows, or of
    /// the last rows once the end marker is read; None while more bytes are needed (or after
    /// the end). Err says what is malformed.
    pub fn next_batch(&mut self, max: usize) -> std::result::Result<Option<RecordBatch>, String> {
        let max = max.max(1);
        if !self.header {
            let b = &self.buf[self.at..];
            if b.len() < 19 {
                return Ok(None);
            }
            if &b[..11] != COPY_SIGNATURE {
                return Err("the rows do not start with the binary COPY signature".into());
            }
            let flags = u32::from_be_bytes([b[11], b[12], b[13], b[14]]);
            if flags & (1 << 16) != 0 {
                return Err("the rows carry OIDs".into());
            }
            let ext = u32::from_be_bytes([b[15], b[16], b[17], b[18]]) as usize;
            if b.len() - 19 < ext {
                return Ok(None);
            }
            self.at += 19 + ext;
            self.header = true;
        }
        if self.pending == 0 && self.cols.is_empty() {
            self.cols = self
                .read
                .iter()
                .map(|how| ColumnBuild::new(*how, max.min(1 << 16)))
                .collect();
        }
        while self.pending < max && !self.ended {
            let b = &self.buf[self.at..];
            let Some(count) = b.get(..2).map(|c| i16::from_be_bytes([c[0], c[1]])) else {
                break;
            };
            if count == -1 {
                self.ended = true;
                self.at += 2;
                break;
            }
            if usize::try_from(count).ok() != Some(self.cols.len()) {
                return Err(format!(
                    "a row of {count} fields where the table has {}",
                    self.cols.len()
                ));
            }
            // The whole row first, so that a row split across chunks is never half-appended.
            let mut fields = Vec::with_capacity(self.cols.len());
            let mut p = 2usize;
            let mut whole = true;
            for _ in 0..self.cols.len() {
                let Some(l) = b.get(p..p + 4) else {
                    whole = false;
                    break;
                };
                let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
                p += 4;
                if len == -1 {
                    fields.push(None);
                    continue;
                }
                let len = usize::try_from(len)
                    .map_err(|_| format!("a field of negative length {len}"))?;
                let Some(v) = b.get(p..p + len) else {
                    whole = false;
                    break;
                };
                fields.push(Some(v));
                p += len;
            }
            if !whole {
                break;
            }
            for ((c, v), f) in self.cols.iter_mut().zip(fields).zip(self.schema.fields()) {
                c.push(v)
                    .map_err(|why| format!("column `{}`: {why}", f.name()))?;
            }
            self.at += p;
            self.pending += 1;
        }
        if self.pending == 0 || (self.pending < max && !self.ended) {
            return Ok(None);
        }
        self.pending = 0;
        let columns = std::mem::take(&mut self.cols)
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                c.finish(f.data_type())
                    .map_err(|why| format!("column `{}`: {why}", f.name()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// One column of a batch being read back from a sink table, values appended row by row from
/// PostgreSQL's binary format (big-endian integers and IEEE floats, one byte a boolean, the
/// bytes of a `text` or `bytea`).
enum ColumnBuild {
    /// Text, checked as UTF-8 once for the whole column when the batch is finished.
    Text(arrow::array::BinaryBuilder),
    Bytea(arrow::array::BinaryBuilder),
    I16(arrow::array::Int16Builder),
    I32(arrow::array::Int32Builder),
    I64(arrow::array::Int64Builder),
    F32(arrow::array::Float32Builder),
    F64(arrow::array::Float64Builder),
    Bool(arrow::array::BooleanBuilder),
    /// Days since 2000-01-01 (a `date`'s binary form), stored as days since 1970-01-01.
    Days(arrow::array::Int32Builder),
    /// Microseconds since 2000-01-01 (a timestamp's binary form), stored since 1970-01-01.
    Micros(arrow::array::Int64Builder),
    /// A numeric's text, parsed exactly at this scale.
    Numeric(arrow::array::Decimal128Builder, i8),
}

/// A value's bytes as a fixed-width big-endian array, or why not.
fn fixed<const N: usize>(b: &[u8]) -> std::result::Result<[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("a value of {} bytes where {N} were expected", b.len()))
}

impl ColumnBuild {
    fn new(how: ReadAs, rows: usize) -> Self {
        use arrow::array::*;
        match how {
            ReadAs::Text => Self::Text(BinaryBuilder::with_capacity(rows, rows * 16)),
            ReadAs::Bytea => Self::Bytea(BinaryBuilder::with_capacity(rows, rows * 16)),
            ReadAs::Int2 => Self::I16(Int16Builder::with_capacity(rows)),
            ReadAs::Int4 => Self::I32(Int32Builder::with_capacity(rows)),
            ReadAs::Int8 => Self::I64(Int64Builder::with_capacity(rows)),
            ReadAs::Date => Self::Days(Int32Builder::with_capacity(rows)),
            ReadAs::Micros { .. } => Self::Micros(Int64Builder::with_capacity(rows)),
            ReadAs::Float4 => Self::F32(Float32Builder::with_capacity(rows)),
            ReadAs::Float8 => Self::F64(Float64Builder::with_capacity(rows)),
            ReadAs::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            ReadAs::Numeric(s) => Self::Numeric(Decimal128Builder::with_capacity(rows), s),
        }
    }

    /// Appends one value (None: SQL NULL).
    fn push(&mut self, v: Option<&[u8]>) -> std::result::Result<(), String> {
        let Some(b) = v else {
            match self {
                Self::Text(a) | Self::Bytea(a) => a.append_null(),
                Self::I16(a) => a.append_null(),
                Self::I32(a) | Self::Days(a) => a.append_null(),
                Self::I64(a) | Self::Micros(a) => a.append_null(),
                Self::F32(a) => a.append_null(),
                Self::F64(a) => a.append_null(),
                Self::Bool(a) => a.append_null(),
                Self::Numeric(a, _) => a.append_null(),
            }
            return Ok(());
        };
        match self {
            Self::Text(a) | Self::Bytea(a) => a.append_value(b),
            Self::I16(a) => a.append_value(i16::from_be_bytes(fixed(b)?)),
            Self::I32(a) => a.append_value(i32::from_be_bytes(fixed(b)?)),
            Self::I64(a) => a.append_value(i64::from_be_bytes(fixed(b)?)),
            // PostgreSQL writes +-infinity as the type's extremes; sealtrail never does.
            Self::Days(a) => a.append_value(match i32::from_be_bytes(fixed(b)?) {
                i32::MIN | i32::MAX => NEVER_DAYS,
                d => d.checked_add(DAYS_1970_TO_2000).unwrap_or(NEVER_DAYS),
            }),
            Self::Micros(a) => a.append_value(match i64::from_be_bytes(fixed(b)?) {
                i64::MIN | i64::MAX => NEVER_MICROS,
                m => m.checked_add(MICROS_1970_TO_2000).unwrap_or(NEVER_MICROS),
            }),
            Self::F32(a) => a.append_value(f32::from_be_bytes(fixed(b)?)),
            Self::F64(a) => a.append_value(f64::from_be_bytes(fixed(b)?)),
            Self::Bool(a) => a.append_value(u8::from_be_bytes(fixed(b)?) != 0),
            Self::Numeric(a, s) => a.append_value(
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|t| unscaled(t, *s))
                    .unwrap_or(NEVER_DECIMAL),
            ),
        }
        Ok(())
    }

    /// The finished column, of type `dt` (the field's).
    fn finish(self, dt: &DataType) -> std::result::Result<ArrayRef, String> {
        Ok(match self {
            Self::Text(mut a) => Arc::new(
                arrow::array::StringArray::try_from_binary(a.finish())
                    .map_err(|_| "a text value is not UTF-8".to_string())?,
            ),
            Self::Bytea(mut a) => Arc::new(a.finish()),
            Self::I16(mut a) => Arc::new(a.finish()),
            // Days and microseconds come as plain integers: the same buffers, retyped.
            Self::I32(mut a) => Arc::new(a.finish()),
            Self::I64(mut a) => Arc::new(a.finish()),
            // The same buffers, typed as the field's date or timestamp.
            Self::Days(mut a) => {
                let (_, values, nulls) = a.finish().into_parts();
                Arc::new(arrow::array::Date32Array::new(values, nulls))
            }
            Self::Micros(mut a) => {
                let (_, values, nulls) = a.finish().into_parts();
                let tz = match dt {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                };
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::new(values, nulls)
                        .with_timezone_opt(tz),
                )
            }
            Self::F32(mut a) => Arc::new(a.finish()),
            Self::F64(mut a) => Arc::new(a.finish()),
            Self::Bool(mut a) => Arc::new(a.finish()),
            // NEVER_DECIMAL is outside every precision: typed without validation.
            Self::Numeric(mut a, _) => Arc::new(a.finish().with_data_type(dt.clone())),
        })
    }
}

/// Writes batches into a PostgreSQL table with COPY, one transaction per commit key.
pub struct PgSink {
    name: String,
    table: String,
    /// For reading a batch back ([`PgSink::delivered`]).
    url: SecretRef,
    conn: PgConnection,
    schema: SchemaRef,
    /// Set when the table existed, has a lineage id column and no index leads with it.
    unindexed_ids: bool,
    /// The DDL that creates the table, until it exists.
    create: Option<String>,
    /// The table's columns: names and PostgreSQL types.
    want: Vec<(String, String)>,
}

fn columns_differ(table: &str, have: &[(String, String)], want: &[(String, String)]) -> String {
    let show = |c: &[(String, String)]| {
        c.iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "table {table} has columns ({}) but the pipeline writes ({}) ({}): a table keeps the columns sealtrail gave it (the ledger's commitments of its rows cover them, in order); point the sink at a new table for the new columns (this table's rows stay provable by `audit` and `prove`), or put the spec's columns back",
        show(have),
        show(want),
        crate::sink::column_differences(have, want)
    )
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("name", &self.name)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn sink_err(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Sink {
        sink: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Rewrites of sink rows recorded as revisions but not yet put in place (`keys reencrypt`):
/// Parquet files of the batch's rows, by table and name.
const PENDING: OwnTable = OwnTable {
    name: "sealtrail_reencrypt_pending",
    what: "where `keys reencrypt` keeps rewrites waiting to be put in place",
    ddl: "CREATE TABLE IF NOT EXISTS sealtrail_reencrypt_pending (\
    target TEXT NOT NULL, name TEXT NOT NULL, data BYTEA NOT NULL, \
    PRIMARY KEY (target, name))",
};

/// The commit keys of every PostgreSQL sink of the database (exactly once).
const COMMITS: OwnTable = OwnTable {
    name: "sealtrail_sink_commits",
    what: "where sealtrail keeps each sink's commit keys",
    ddl: "CREATE TABLE IF NOT EXISTS sealtrail_sink_commits (\
    target TEXT NOT NULL, app_id TEXT NOT NULL, batch BIGINT NOT NULL, \
    rows BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
    PRIMARY KEY (target, app_id, batch))",
};

/// One of sealtrail's own tables beside the sinks' tables: its name, what it holds and how it
/// is made.
#[derive(Clone, Copy)]
struct OwnTable {
    name: &'static str,
    what: &'static str,
    ddl: &'static str,
}

/// Makes sealtrail's own table `t` unless it exists; why it cannot be made, if it cannot.
/// PostgreSQL checks the right to create before it looks whether the table exists, so a user
/// without `CREATE` on the schema (the default for `public` since PostgreSQL 15) would fail
/// `CREATE TABLE IF NOT EXISTS` even after an administrator made the table: look first.
async fn ensure_own_table(
    conn: &mut PgConnection,
    t: OwnTable,
) -> std::result::Result<Option<String>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(t.name)
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(None);
    }
    if let Some(problem) = uncreatable(conn, t.name).await? {
        return Ok(Some(format!(
            "{problem} (it is {}); an administrator can make it with: {}",
            t.what, t.ddl
        )));
    }
    conn.execute(t.ddl).await?;
    Ok(None)
}

impl PgSink {
    /// Connects, then creates the table from `schema` when missing (with an index on its
    /// lineage id column when `index_ids` and the schema has one), or checks that its columns
    /// have exactly these names, order and types.
    pub async fn open(
        name: &str,
        url: &SecretRef,
        table: &str,
        schema: SchemaRef,
        index_ids: bool,
    ) -> Result<Self> {
        let mut conn = connect_to_write(url, name).await?;
        let db = |e: sqlx::Error| sink_err(name, redact_db_error(&e));
        let mut want = Vec::new();
        for f in schema.fields() {
            let t = pg_type(f.data_type()).ok_or_else(|| {
                sink_err(
                    name,
                    format!(
                        "column `{}` has type {} which the postgres sink cannot write; cast it in the transform's SQL",
                        f.name(),
                        f.data_type()
                    ),
                )
            })?;
            want.push((f.name().clone(), t));
        }
        if let Some(problem) = ensure_own_table(&mut conn, COMMITS).await.map_err(db)? {
            return Err(sink_err(name, problem));
        }
        let have = table_columns(&mut conn, table).await.map_err(db)?;
        let id = sealtrail_core::LINEAGE_ID_COLUMN;
        let mut unindexed_ids = false;
        let mut create = None;
        if have.is_empty() {
            // The table is created by the first commit; a schema that is missing, or one the
            // user may not create in, would fail that commit after the sources were read. Say
            // so now, before anything is read, with what to do.
            if let Some(problem) = uncreatable(&mut conn, table).await.map_err(db)? {
                return Err(sink_err(name, problem));
            }
            let cols = want
                .iter()
                .map(|(n, t)| format!("{} {t}", quote_ident(n)))
                .collect::<Vec<_>>()
                .join(", ");
            let mut ddl = format!("CREATE TABLE IF NOT EXISTS {} ({cols})", quote_table(table));
            if index_ids && schema.index_of(id).is_ok() {
                // One transaction: the table never exists without its index.
                let _ = write!(
                    ddl,
                    "; CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                    quote_ident(&format!("{}_sealtrail_id_idx", table.replace('.', "_"))),
                    quote_table(table),
                    quote_ident(id)
                );
            }
            // Created by the first commit that brings rows (in its transaction) or when the
            // run ends well ([`PgSink::finish`]): a run that fails first leaves no table.
            create = Some(ddl);
        } else if have != want {
            return Err(sink_err(name, columns_differ(table, &have, &want)));
        } else if index_ids && schema.index_of(id).is_ok() {
            // An existing table is not altered; but without an index `prove --id` scans it
            // (seconds at ten million rows instead of milliseconds), so say how to add one.
            unindexed_ids = !leading_index_on(&mut conn, table, id).await.map_err(db)?;
            if unindexed_ids {
                tracing::warn!(
                    "sink `{name}`: table {table} has no index on {id}, so `sealtrail prove --id` scans the whole table; add one with: CREATE INDEX ON {} ({})",
                    quote_table(table),
                    quote_ident(id)
                );
            }
        }
        Ok(Self {
            name: name.to_string(),
            table: table.to_string(),
            url: url.clone(),
            conn,
            schema,
            unindexed_ids,
            create,
            want,
        })
    }

    /// Creates the table when this sink is to and it is still missing, through `conn` (the
    /// commit's transaction, or the connection). Another writer may have created it since
    /// `open`: then its columns are checked as `open` checks an existing table's.
    async fn create_table(
        conn: &mut PgConnection,
        name: &str,
        table: &str,
        ddl: &str,
        want: &[(String, String)],
    ) -> Result<()> {
        let db = |e: sqlx::Error| sink_err(name, redact_db_error(&e));
        let have = table_columns(conn, table).await.map_err(db)?;
        if have.is_empty() {
            conn.execute(AssertSqlSafe(ddl)).await.map_err(db)?;
        } else if have != want {
            return Err(sink_err(name, columns_differ(table, &have, want)));
        }
        Ok(())
    }

    /// At the end of a run that went well: creates the table if no commit brought rows to it,
    /// so that the sink exists (empty) for readers and the next run.
    /// Connects again when the server closed the sink's connection since its last use: a sink
    /// of a later source waits, connected, while the sources before it load (every sink opens
    /// before any source loads), and a server restart or an idle timeout between two batches
    /// would otherwise fail the run at its next commit. One round trip per commit.
    async fn reconnect_if_lost(&mut self) -> Result<()> {
        if self.conn.ping().await.is_err() {
            tracing::warn!(
                sink = %self.name,
                "the connection to PostgreSQL was closed since the sink last wrote; connecting again"
            );
            self.conn = connect_to_write(&self.url, &self.name).await?;
        }
        Ok(())
    }

    pub async fn finish(&mut self) -> Result<()> {
        if self.create.is_some() {
            self.reconnect_if_lost().await?;
        }
        if let Some(ddl) = &self.create {
            Self::create_table(&mut self.conn, &self.name, &self.table, ddl, &self.want).await?;
            self.create = None;
        }
        Ok(())
    }

    /// True when the sink's table existed before, carries lineage ids and has no index that
    /// starts with that column (`open` warns about it; sealtrail never alters such a table).
    pub fn lineage_ids_unindexed(&self) -> bool {
        self.unindexed_ids
    }

    pub fn location(&self) -> String {
        format!("postgres table {}", self.table)
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rows with the lineage ids `ids` as the table holds them (in its read-back types,
    /// in the order of `ids`); None unless exactly one row carries each id.
    pub async fn delivered(&self, ids: &[String]) -> Result<Option<RecordBatch>> {
        let mut t = PgTable::open(&self.name, &self.url, &self.table).await?;
        Ok(t.rows_with_ids(ids)
            .await?
            .ok()
            .filter(|b| b.num_rows() == ids.len()))
    }

    /// Commits `batches` under (`app_id`, `batch`); false when that key is already loaded.
    pub async fn commit(
        &mut self,
        app_id: &str,
        batch: u64,
        batches: &[RecordBatch],
    ) -> Result<bool> {
        let name = self.name.clone();
        let db = |e: sqlx::Error| sink_err(&name, redact_db_error(&e));
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.reconnect_if_lost().await?;
        let mut tx = self.conn.begin().await.map_err(db)?;
        let fresh = sqlx::query(
            "INSERT INTO sealtrail_sink_commits (target, app_id, batch, rows) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&self.table)
        .bind(app_id)
        .bind(batch as i64)
        .bind(rows as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await.map_err(db)?;
            return Ok(false);
        }
        if rows > 0 {
            if let Some(ddl) = &self.create {
                Self::create_table(&mut tx, &name, &self.table, ddl, &self.want).await?;
            }
            let cols = self
                .schema
                .fields()
                .iter()
                .map(|f| quote_ident(f.name()))
                .collect::<Vec<_>>()
                .join(", ");
            let stmt = format!(
                "COPY {} ({cols}) FROM STDIN (FORMAT csv)",
                quote_table(&self.table)
            );
            let mut copy = tx.copy_in_raw(&stmt).await.map_err(db)?;
            let mut buf = Vec::with_capacity(1 << 20);
            for b in batches {
                let mut start = 0;
                while start < b.num_rows() {
                    let end = encode_csv(b, start, &mut buf).map_err(|e| sink_err(&name, e))?;
                    copy.send(std::mem::take(&mut buf)).await.map_err(db)?;
                    start = end;
                }
            }
            let n = copy.finish().await.map_err(db)?;
            if n != rows as u64 {
                return Err(sink_err(
                    &name,
                    format!("COPY wrote {n} rows instead of {rows}; nothing was committed"),
                ));
            }
        }
        tx.commit().await.map_err(db)?;
        if rows > 0 {
            self.create = None;
        }
        Ok(true)
    }
}

/// Encodes rows of `b` from `start` as PostgreSQL CSV into `out` until about 1 MiB; returns
/// the next row. Non-null values are always quoted (an unquoted empty field is NULL).
fn encode_csv(
    b: &RecordBatch,
    start: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<usize, String> {
    let opts = FormatOptions::default().with_display_error(false);
    let fmts = b
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut s = String::new();
    let mut row = start;
    while row < b.num_rows() && out.len() < (1 << 20) {
        for (i, f) in fmts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if b.column(i).is_null(row) {
                continue;
            }
            s.clear();
            if let DataType::Binary | DataType::LargeBinary = b.column(i).data_type() {
                // bytea hex input format.
                let v = arrow::array::AsArray::as_binary_opt::<i32>(b.column(i).as_ref())
                    .map(|a| a.value(row).to_vec())
                    .unwrap_or_default();
                s.push_str("\\x");
                for byte in v {
                    let _ = write!(s, "{byte:02x}");
                }
            } else {
                write!(s, "{}", f.value(row)).map_err(|e| e.to_string())?;
            }
            out.push(b'"');
            for &c in s.as_bytes() {
                if c == b'"' {
                    out.push(b'"');
                }
                out.push(c);
            }
            out.push(b'"');
        }
        out.push(b'\n');
        row += 1;
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of rows of (bigint, text) values.
    fn copy_stream(rows: &[(Option<i64>, Option<&str>)]) -> Vec<u8> {
        let mut b = COPY_SIGNATURE.to_vec();
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"ext");
        for (i, t) in rows {
            b.extend_from_slice(&2i16.to_be_bytes());
            match i {
                Some(i) => {
                    b.extend_from_slice(&8i32.to_be_bytes());
                    b.extend_from_slice(&i.to_be_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            match t {
                Some(t) => {
                    b.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    b.extend_from_slice(t.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b
    }

    /// Every batch of at most `max` rows a decoder gives for `bytes` fed in `chunk`-byte pieces.
    fn decode_all(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<RecordBatch>, String> {
        let mut d = CopyBinary::for_types(&["bigint", "text"]).unwrap();
        let mut out = Vec::new();
        let mut pieces = bytes.chunks(chunk.max(1));
        loop {
            while let Some(b) = d.next_batch(max)? {
                out.push(b);
            }
            if d.ended() {
                return Ok(out);
            }
            match pieces.next() {
                Some(p) => d.feed(p),
                None => return Err("no end marker".into()),
            }
        }
    }

    #[test]
    fn copy_streams_decode_in_any_chunks() {
        use arrow::array::AsArray;
        let rows = [
            (Some(1), Some("a")),
            (None, Some("")),
            (Some(-7), None),
            (Some(i64::MAX), Some("été")),
            (Some(0), Some("x")),
        ];
        let bytes = copy_stream(&rows);
        for chunk in [1, 2, 3, 7, 19, 22, 1000] {
            let got = decode_all(&bytes, chunk, 2).unwrap();
            assert_eq!(
                got.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
                vec![2, 2, 1],
                "chunks of {chunk}"
            );
            let all = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
            let ints = all.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let texts = all.column(1).as_string::<i32>();
            for (k, (i, t)) in rows.iter().enumerate() {
                assert_eq!(ints.is_valid(k).then(|| ints.value(k)), *i);
                assert_eq!(texts.is_valid(k).then(|| texts.value(k)), *t);
            }
        }
        // An empty table: the header and the end marker only.
        assert!(decode_all(&copy_stream(&[]), 5, 10).unwrap().is_empty());
    }

    #[test]
    fn malformed_copy_streams_are_refused_with_a_reason() {
        let good = copy_stream(&[(Some(1), Some("a"))]);
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(
            decode_all(&bad, 64, 10).unwrap_err(),
            "the rows do not start with the binary COPY signature"
        );
        let mut oids = good.clone();
        oids[12] = 1; // flag bit 16
        assert_eq!(
            decode_all(&oids, 64, 10).unwrap_err(),
            "the rows carry OIDs"
        );
        let mut fields = good.clone();
        fields[23] = 3; // the row's field count
        assert_eq!(
            decode_all(&fields, 64, 10).unwrap_err(),
            "a row of 3 fields where the table has 2"
        );
        let mut width = good.clone();
        width[27] = 4; // the bigint's length
        assert!(
            decode_all(&width, 64, 10)
                .unwrap_err()
                .starts_with("column `c0`: a value of 4 bytes")
        );
        let mut negative = good.clone();
        negative[24..28].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            decode_all(&negative, 64, 10).unwrap_err(),
            "a field of negative length -5"
        );
        // Cut anywhere before the end marker: never a row too many, never the end.
        for cut in 0..good.len() - 2 {
            assert_eq!(
                decode_all(&good[..cut], 3, 10).unwrap_err(),
                "no end marker"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_copy_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            chunk in 1usize..40,
        ) {
            let mut stream = copy_stream(&[]);
            stream.truncate(19);
            stream.extend_from_slice(&bytes);
            let _ = decode_all(&stream, chunk, 3);
            let _ = decode_all(&bytes, chunk, 3);
        }
    }

    #[test]
    fn binary_values_decode_or_are_refused_with_a_reason() {
        use arrow::array::AsArray;
        let mut i = ColumnBuild::new(ReadAs::Int8, 3);
        i.push(Some(&(-2i64).to_be_bytes())).unwrap();
        i.push(None).unwrap();
        assert_eq!(
            i.push(Some(&[0, 1, 2])).unwrap_err(),
            "a value of 3 bytes where 8 were expected"
        );
        let a = i.finish(&DataType::Int64).unwrap();
        let a = a.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!((a.len(), a.value(0), a.is_null(1)), (2, -2, true));

        // Dates and timestamps come relative to 2000-01-01; infinities are never values.
        let mut d = ColumnBuild::new(ReadAs::Date, 2);
        d.push(Some(&0i32.to_be_bytes())).unwrap();
        d.push(Some(&i32::MAX.to_be_bytes())).unwrap();
        let d = d.finish(&DataType::Date32).unwrap();
        let d = d.as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!((d.value(0), d.value(1)), (10_957, NEVER_DAYS));
        let mut t = ColumnBuild::new(ReadAs::Micros { zoned: true }, 2);
        t.push(Some(&(-1i64).to_be_bytes())).unwrap();
        t.push(Some(&i64::MIN.to_be_bytes())).unwrap();
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let t = t.finish(&utc).unwrap();
        assert_eq!(t.data_type(), &utc);
        let t = t.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(
            (t.value(0), t.value(1)),
            (946_684_799_999_999, NEVER_MICROS)
        );

        let mut n = ColumnBuild::new(ReadAs::Numeric(2), 2);
        n.push(Some(b"12.5")).unwrap();
        n.push(Some(b"NaN")).unwrap();
        let n = n.finish(&DataType::Decimal128(10, 2)).unwrap();
        let n = n.as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!((n.value(0), n.value(1)), (1250, NEVER_DECIMAL));

        let mut t = ColumnBuild::new(ReadAs::Text, 1);
        t.push(Some(&[0xff, 0xfe])).unwrap();
        assert_eq!(
            t.finish(&DataType::Utf8).unwrap_err(),
            "a text value is not UTF-8"
        );
    }

    #[test]
    fn numeric_text_parses_exactly_at_its_scale() {
        assert_eq!(unscaled("1.2500", 4), Some(12_500));
        assert_eq!(unscaled("-0.0001", 4), Some(-1));
        assert_eq!(unscaled("42", 2), Some(4_200));
        assert_eq!(unscaled("0", 0), Some(0));
        assert_eq!(
            unscaled("99999999999999999999999999999999999999", 0),
            Some(10i128.pow(38) - 1)
        );
        // Negative scale: an integer that is a multiple of 10^-scale.
        assert_eq!(unscaled("12300", -2), Some(123));
        assert_eq!(unscaled("12345", -2), None);
        // More fraction digits than the scale, or not a finite number: never a value.
        assert_eq!(unscaled("1.25", 1), None);
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "",
            "-",
            ".5",
            "1e5",
            "1.2.3",
            "+1",
        ] {
            assert_eq!(unscaled(bad, 4), None, "{bad}");
        }
        // Beyond i128: refused, not wrapped.
        assert_eq!(
            unscaled("999999999999999999999999999999999999999999", 0),
            None
        );
    }

    #[test]
    fn every_delivered_type_has_a_column_type_that_reads_back_as_it() {
        use DataType::*;
        for dt in [
            Utf8,
            LargeUtf8,
            Utf8View,
            Int8,
            Int16,
            Int32,
            Int64,
            UInt8,
            UInt16,
            UInt32,
            Float32,
            Float64,
            Boolean,
            Date32,
            Timestamp(TimeUnit::Second, None),
            Timestamp(TimeUnit::Millisecond, Some("+01:00".into())),
            Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Decimal128(18, 4),
            Binary,
            LargeBinary,
        ] {
            let delivered = delivered_type(&dt).unwrap();
            let pg = pg_type(&dt).unwrap();
            let (_, back) = ReadAs::of(&pg).unwrap_or_else(|| panic!("{pg}"));
            assert_eq!(back, delivered, "{dt} -> {pg}");
            // Delivering twice changes nothing.
            assert_eq!(delivered_type(&delivered).as_ref(), Some(&delivered));
        }
        for dt in [
            UInt64,
            Float16,
            Timestamp(TimeUnit::Nanosecond, None),
            Date64,
        ] {
            assert_eq!(delivered_type(&dt), None, "{dt}");
        }
    }

    /// A timestamp in seconds beyond what microseconds can count fails the batch: it is never
    /// delivered as a null.
    #[test]
    fn a_value_that_does_not_fit_fails_instead_of_becoming_null() {
        use arrow::array::TimestampSecondArray;
        let batch = |v: Vec<Option<i64>>| {
            RecordBatch::try_from_iter([(
                "ts",
                Arc::new(TimestampSecondArray::from(v)) as ArrayRef,
            )])
            .unwrap()
        };
        assert!(deliverable(&batch(vec![Some(0), Some(i64::MAX / 1_000)])).is_err());
        let d = deliverable(&batch(vec![Some(1), None])).unwrap();
        assert_eq!(d.column(0).null_count(), 1);
        assert_eq!(
            d.column(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
    }

    proptest::proptest! {
        /// Any text, any scale: an answer or None, never a panic; and PostgreSQL's text of a
        /// numeric (exactly `scale` fraction digits) reads back as the value it was written from.
        #[test]
        fn numeric_text_round_trips_and_never_panics(
            junk in "\\PC{0,50}",
            v in -(10i128.pow(30))..10i128.pow(30),
            scale in 0i8..=8,
        ) {
            let _ = unscaled(&junk, scale);
            let _ = unscaled(&junk, -scale);
            let d = 10i128.pow(scale as u32);
            let (sign, a) = if v < 0 { ("-", -v) } else { ("", v) };
            let text = if scale == 0 {
                format!("{sign}{a}")
            } else {
                format!("{sign}{}.{:0w$}", a / d, a % d, w = scale as usize)
            };
            proptest::prop_assert_eq!(unscaled(&text, scale), Some(v));
        }
    }
}
