//! The PostgreSQL sink against a real PostgreSQL: idempotent commits, table validation.

use arrow::array::{
    BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use sealtrail_connectors::pg::PgSink;
use sealtrail_core::secret::Secret;
use sealtrail_spec::SecretRef;
use sqlx::{Connection, Row};
use std::sync::Arc;

fn url() -> String {
    std::env::var("SEALTRAIL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn batch(ids: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(18, 2), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("ok", DataType::Boolean, true),
    ]));
    let n = ids.len();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            // Quotes, commas, newlines, an empty string and a null must all survive COPY.
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| match i % 4 {
                        0 => Some("a \"quoted\", value\nwith newline".to_string()),
                        1 => Some(String::new()),
                        2 => None,
                        _ => Some(format!("n{i}")),
                    })
                    .collect::<Vec<_>>(),
            )),
            Arc::new(
                Decimal128Array::from(ids.iter().map(|i| i128::from(*i) * 125).collect::<Vec<_>>())
                    .with_precision_and_scale(18, 2)
                    .unwrap(),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(
                    ids.iter()
                        .map(|i| 1_700_000_000_000_000 + i)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(BooleanArray::from(
                ids.iter().map(|i| i % 2 == 0).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// A connection to the test database, with no table named `table` in it.
async fn fresh_table(table: &str) -> sqlx::PgConnection {
    let mut c = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&mut c)
        .await
        .unwrap();
    c
}

/// Drops a test's sink table and forgets its commit keys.
async fn drop_sink_table(c: &mut sqlx::PgConnection, table: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut *c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM sealtrail_sink_commits WHERE target = $1")
        .bind(table)
        .execute(&mut *c)
        .await
        .unwrap();
}

#[tokio::test]
async fn commits_are_idempotent_and_values_round_trip() {
    let table = format!("public.st_sink_{}", std::process::id());
    let mut c = fresh_table(&table).await;
    let url = SecretRef::Literal(Secret::new(url()));
    let b = batch(&[1, 2, 3, 4, 5]);
    let mut sink = PgSink::open("s", &url, &table, b.schema(), true)
        .await
        .unwrap();
    assert!(
        sink.commit("app/run1", 0, std::slice::from_ref(&b))
            .await
            .unwrap()
    );
    // The same key again writes nothing.
    assert!(
        !sink
            .commit("app/run1", 0, std::slice::from_ref(&b))
            .await
            .unwrap()
    );
    assert!(sink.commit("app/run1", 1, &[batch(&[6, 7])]).await.unwrap());
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT id, name, amount::text, (extract(epoch FROM at) * 1000000)::bigint, ok FROM {table} ORDER BY id")))
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(rows.len(), 7);
    let r0 = &rows[0];
    assert_eq!(
        r0.get::<Option<String>, _>(1).as_deref(),
        Some("a \"quoted\", value\nwith newline")
    );
    assert_eq!(rows[1].get::<Option<String>, _>(1).as_deref(), Some(""));
    assert_eq!(rows[2].get::<Option<String>, _>(1), None);
    assert_eq!(r0.get::<String, _>(2), "1.25");
    assert_eq!(r0.get::<i64, _>(3), 1_700_000_000_000_001);
    assert!(!r0.get::<bool, _>(4));

    // Reopening validates the table; a different shape is refused with both column lists.
    PgSink::open("s", &url, &table, b.schema(), true)
        .await
        .unwrap();
    let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
    let err = PgSink::open("s", &url, &table, other, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has columns (id bigint, name text") && err.contains("writes (id text)"),
        "{err}"
    );
    drop_sink_table(&mut c, &table).await;
}

/// A sink table that could not be created is refused when the sink opens, before any source is
/// read, saying why and what to do (PostgreSQL's own error came at the first commit, without a
/// hint): a schema that does not exist; for a user who may not create tables (the default in
/// `public` since PostgreSQL 15), sealtrail's own commit table, with the statement that makes
/// it, then the sink's table, with the grant; once an administrator did what they say, the same
/// user's sink commits.
#[tokio::test]
async fn a_table_that_cannot_be_created_is_refused_when_the_sink_opens() {
    let pid = std::process::id();
    let (schema, role) = (format!("st_locked_{pid}"), format!("st_nocreate_{pid}"));
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    for q in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("CREATE SCHEMA {schema}"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        // Unqualified names (sealtrail's own tables) resolve in the locked schema only.
        format!("ALTER ROLE {role} SET search_path = {schema}"),
    ] {
        exec(&mut admin, q).await;
    }
    let b = batch(&[1, 2]);
    let open = |url: String, table: String| {
        let b = b.clone();
        async move {
            PgSink::open(
                "s",
                &SecretRef::Literal(Secret::new(url)),
                &table,
                b.schema(),
                true,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    };

    let missing = format!("st_noschema_{pid}.t");
    let err = open(url(), missing.clone()).await.unwrap_err();
    assert!(
        err.contains(&format!("schema st_noschema_{pid} does not exist"))
            && err.contains(&format!("CREATE SCHEMA \"st_noschema_{pid}\"")),
        "{err}"
    );

    let as_role = url().replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(as_role, url(), "the test URL names its user as postgres@");
    let table = format!("{schema}.t");
    let err = open(as_role.clone(), table.clone()).await.unwrap_err();
    assert!(
        err.contains(&format!(
            "user {role} may not create tables in schema {schema}"
        )) && err.contains("sealtrail_sink_commits"),
        "{err}"
    );
    // What the message says an administrator can run makes the table.
    let ddl = err
        .split_once("make it with: ")
        .map(|(_, d)| d.to_string())
        .unwrap();
    assert!(
        ddl.starts_with("CREATE TABLE IF NOT EXISTS sealtrail_sink_commits"),
        "{ddl}"
    );
    for q in [
        format!("SET search_path = {schema}"),
        ddl,
        "RESET search_path".to_string(),
        format!("GRANT SELECT, INSERT ON {schema}.sealtrail_sink_commits TO {role}"),
    ] {
        exec(&mut admin, q).await;
    }
    let err = open(as_role.clone(), table.clone()).await.unwrap_err();
    assert!(
        err.contains(&format!(
            "table {table} does not exist and user {role} may not create"
        )) && err.contains(&format!(
            "GRANT CREATE ON SCHEMA \"{schema}\" TO \"{role}\""
        )),
        "{err}"
    );
    exec(
        &mut admin,
        format!("GRANT CREATE ON SCHEMA {schema} TO {role}"),
    )
    .await;
    let mut sink = PgSink::open(
        "s",
        &SecretRef::Literal(Secret::new(as_role)),
        &table,
        b.schema(),
        true,
    )
    .await
    .unwrap();
    assert!(
        sink.commit("app/run1", 0, std::slice::from_ref(&b))
            .await
            .unwrap()
    );
    drop(sink);
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 2);
    for q in [
        format!("DROP SCHEMA {schema} CASCADE"),
        format!("DROP ROLE {role}"),
    ] {
        exec(&mut admin, q).await;
    }
}

/// Runs one statement of a test's own making.
async fn exec(c: &mut sqlx::PgConnection, q: String) {
    sqlx::query(sqlx::AssertSqlSafe(q))
        .execute(c)
        .await
        .unwrap();
}

/// Every type the sink writes, cast by `deliverable`, reads back from the table exactly as
/// delivered: same types, same values down to the bits of a float (equal batches have equal
/// commitments, which is what `prove` and `audit` rely on). Nulls in every column.
#[tokio::test]
async fn delivered_types_read_back_exactly() {
    use arrow::array::*;
    use sealtrail_connectors::pg::{PgTable, deliverable};
    let table = format!("public.st_types_{}", std::process::id());
    let mut c = fresh_table(&table).await;
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "s",
            Arc::new(StringArray::from(vec![Some("a,\"b\"\n"), None, Some("")])),
        ),
        (
            "ls",
            Arc::new(LargeStringArray::from(vec![Some("é"), Some("x"), None])),
        ),
        (
            "vs",
            Arc::new(StringViewArray::from(vec![
                None,
                Some("a longer string than twelve"),
                Some("y"),
            ])),
        ),
        (
            "i8",
            Arc::new(Int8Array::from(vec![Some(i8::MIN), None, Some(i8::MAX)])),
        ),
        (
            "i16",
            Arc::new(Int16Array::from(vec![Some(i16::MIN), Some(0), None])),
        ),
        (
            "i32",
            Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(i32::MAX)])),
        ),
        (
            "i64",
            Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                Some(-1),
                Some(i64::MAX),
            ])),
        ),
        (
            "u8",
            Arc::new(UInt8Array::from(vec![Some(u8::MAX), None, Some(0)])),
        ),
        (
            "u16",
            Arc::new(UInt16Array::from(vec![Some(u16::MAX), Some(1), None])),
        ),
        (
            "u32",
            Arc::new(UInt32Array::from(vec![Some(u32::MAX), None, Some(7)])),
        ),
        (
            "f32",
            Arc::new(Float32Array::from(vec![
                Some(0.1),
                Some(-0.0),
                Some(f32::MAX),
            ])),
        ),
        (
            "f64",
            Arc::new(Float64Array::from(vec![
                Some(0.1 + 0.2),
                None,
                Some(-1e-300),
            ])),
        ),
        (
            "b",
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        ),
        (
            "d",
            Arc::new(Date32Array::from(vec![
                Some(-719_162),
                Some(0),
                Some(2_932_896),
            ])),
        ),
        (
            "ts_ms_tz",
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(-1_001), Some(1_700_000_000_123), None])
                    .with_timezone("+01:00"),
            ),
        ),
        (
            "ts_s",
            Arc::new(TimestampSecondArray::from(vec![
                None,
                Some(0),
                Some(4_102_444_800),
            ])),
        ),
        (
            "ts_us",
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(-1),
                Some(1),
                Some(1_700_000_000_123_456),
            ])),
        ),
        (
            "dec",
            Arc::new(
                Decimal128Array::from(vec![Some(-123_456_789), Some(5), None])
                    .with_precision_and_scale(20, 4)
                    .unwrap(),
            ),
        ),
        (
            "dec0",
            Arc::new(
                Decimal128Array::from(vec![Some(10i128.pow(37) - 1), Some(-1), Some(0)])
                    .with_precision_and_scale(38, 0)
                    .unwrap(),
            ),
        ),
        (
            "bin",
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xff"[..]),
                None,
                Some(&b""[..]),
            ])),
        ),
        (
            "lbin",
            Arc::new(LargeBinaryArray::from(vec![
                None,
                Some(&b"\\x"[..]),
                Some(&b"z"[..]),
            ])),
        ),
    ];
    let b = RecordBatch::try_from_iter(cols).unwrap();
    let delivered = deliverable(&b).unwrap();
    let url = SecretRef::Literal(Secret::new(url()));
    let mut sink = PgSink::open("s", &url, &table, b.schema(), true)
        .await
        .unwrap();
    assert!(
        sink.commit("app/types", 0, std::slice::from_ref(&delivered))
            .await
            .unwrap()
    );
    let mut t = PgTable::open("s", &url, &table).await.unwrap();
    assert_eq!(t.scan().await.unwrap(), 3);
    let back = t.next(10).await.unwrap().unwrap();
    assert!(t.next(10).await.unwrap().is_none());
    assert_eq!(back.schema().fields().len(), delivered.num_columns());
    for (i, f) in delivered.schema().fields().iter().enumerate() {
        let got = back.schema().field(i).clone();
        assert_eq!((got.name(), got.data_type()), (f.name(), f.data_type()));
        // Debug output shows every float's sign and digits, so -0.0 and 0.0 differ.
        assert_eq!(
            format!("{:?}", back.column(i)),
            format!("{:?}", delivered.column(i)),
            "column {}",
            f.name()
        );
    }
    // The casts changed types, never values: the unsigned maxima and the instants survive.
    let u32s = delivered
        .column_by_name("u32")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    assert_eq!(u32s.value(0), i64::from(u32::MAX));
    let ts = delivered
        .column_by_name("ts_ms_tz")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(
        (ts.value(0), ts.value(1)),
        (-1_001_000, 1_700_000_000_123_000)
    );
    // Selected by a column's text form, as `prove --where` does.
    let one = t.rows_where("i64", "-1").await.unwrap();
    assert_eq!(one.num_rows(), 1);
    drop_sink_table(&mut c, &table).await;
}

/// A table sealtrail creates gets an index on its lineage ids; a table that existed before is
/// never altered, but the sink says when `prove --id` would have to scan it (no index leads
/// with `_sealtrail_id`), unless the spec turned lineage indexes off.
#[tokio::test]
async fn an_existing_table_without_a_lineage_id_index_is_reported_not_altered() {
    let table = format!("public.st_idx_{}", std::process::id());
    let mut c = fresh_table(&table).await;
    let url = SecretRef::Literal(Secret::new(url()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("v", DataType::Int64, true),
        Field::new(sealtrail_core::LINEAGE_ID_COLUMN, DataType::Utf8, true),
    ]));
    async fn indexes(c: &mut sqlx::PgConnection, table: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_indexes WHERE schemaname || '.' || tablename = $1",
        )
        .bind(table)
        .fetch_one(c)
        .await
        .unwrap()
    }
    async fn exists(c: &mut sqlx::PgConnection, table: &str) -> bool {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(c)
            .await
            .unwrap()
    }
    // Created by the sink (once the run ends well, as no rows came; not by opening it nor by
    // a commit without rows): indexed, nothing to report.
    let mut s = PgSink::open("s", &url, &table, schema.clone(), true)
        .await
        .unwrap();
    assert!(!s.lineage_ids_unindexed());
    assert!(s.commit("app", 0, &[]).await.unwrap());
    assert!(!exists(&mut c, &table).await);
    s.finish().await.unwrap();
    assert!(exists(&mut c, &table).await);
    assert_eq!(indexes(&mut c, &table).await, 1);
    drop(s);
    drop_sink_table(&mut c, &table).await;

    // Created meanwhile by someone else with other columns: the first rows are refused.
    let mut s = PgSink::open("s", &url, &table, schema.clone(), true)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (v text)"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let rows = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow::array::Int64Array::from(vec![1])),
            Arc::new(arrow::array::StringArray::from(vec!["id"])),
        ],
    )
    .unwrap();
    let err = s.commit("app", 1, &[rows]).await.unwrap_err().to_string();
    assert!(err.contains("has columns (v text)"), "{err}");
    drop(s);
    drop_sink_table(&mut c, &table).await;

    // Created by someone else without the index: reported, and left as it is.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (v bigint, _sealtrail_id text)"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let s = PgSink::open("s", &url, &table, schema.clone(), true)
        .await
        .unwrap();
    assert!(s.lineage_ids_unindexed());
    assert_eq!(
        indexes(&mut c, &table).await,
        0,
        "an existing table is never altered"
    );
    drop(s);
    // The spec turned lineage indexes off: nothing to report.
    let s = PgSink::open("s", &url, &table, schema.clone(), false)
        .await
        .unwrap();
    assert!(!s.lineage_ids_unindexed());
    drop(s);
    // An index that leads with another column, or covers only some rows, does not serve
    // `prove --id`; one that leads with the lineage id does, whatever follows it.
    for ddl in [
        format!("CREATE INDEX ON {table} (v, _sealtrail_id)"),
        format!("CREATE INDEX ON {table} (_sealtrail_id) WHERE v > 0"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let s = PgSink::open("s", &url, &table, schema.clone(), true)
        .await
        .unwrap();
    assert!(s.lineage_ids_unindexed());
    drop(s);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE INDEX ON {table} (_sealtrail_id, v)"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let s = PgSink::open("s", &url, &table, schema, true).await.unwrap();
    assert!(!s.lineage_ids_unindexed());
    drop(s);
    drop_sink_table(&mut c, &table).await;
}

/// A batch that brought a new table no rows is committed (its key recorded) without creating
/// the table; resumed, the batch is found committed and read back as the empty batch it was.
#[tokio::test]
async fn a_batch_without_rows_is_held_without_a_table() {
    use sealtrail_connectors::{CommitKey, open_sink};
    let table = format!("public.st_empty_{}", std::process::id());
    let mut c = fresh_table(&table).await;
    let target = sealtrail_spec::Target::Postgres {
        url: SecretRef::Literal(Secret::new(url())),
        table: table.clone(),
        index_ids: true,
    };
    let empty = RecordBatch::new_empty(Arc::new(Schema::new(vec![
        Field::new("v", DataType::Int64, true),
        Field::new(sealtrail_core::LINEAGE_ID_COLUMN, DataType::Utf8, true),
    ])));
    let key = CommitKey {
        pipeline: "p".into(),
        run_id: format!("r-{}", std::process::id()),
        source: "s".into(),
        batch: 0,
    };
    let mut w = open_sink("s", &target, empty.schema()).await.unwrap();
    assert!(w.commit(&key, std::slice::from_ref(&empty)).await.unwrap());
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(!exists);
    let mut again = open_sink("s", &target, empty.schema()).await.unwrap();
    assert!(
        !again
            .commit(&key, std::slice::from_ref(&empty))
            .await
            .unwrap()
    );
    let held = again
        .delivered(&key, std::slice::from_ref(&empty))
        .await
        .unwrap();
    assert_eq!(held.map(|b| b.len()), Some(0));
    sqlx::query("DELETE FROM sealtrail_sink_commits WHERE target = $1")
        .bind(&table)
        .execute(&mut c)
        .await
        .unwrap();
}

/// The server certificate the test database presents: Debian's `ssl-cert-snakeoil`, made for
/// `localhost` (PostgreSQL's `ssl = on` by default on Debian).
const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Connections use TLS as the URL's `sslmode` says, like libpq's: `prefer` (the default) takes
/// it when the server offers it, `verify-full` checks the certificate's signature against
/// `sslrootcert` (and the system's trusted roots) and the name it was made for, a failed check
/// says what failed and how to choose, never the URL, and what the driver would not honour as
/// libpq does (`verify-ca`, `allow`, settings it does not read) is refused.
#[tokio::test]
async fn connections_use_tls_as_the_url_says() {
    use sealtrail_connectors::pg::connect;
    let mut plain = sqlx::PgConnection::connect(&format!("{}?sslmode=disable", url()))
        .await
        .unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    assert_eq!(
        ssl, "on",
        "the test database must offer TLS (PostgreSQL's `ssl = on`, Debian's default)"
    );
    let on_localhost = url().replace("@127.0.0.1:", "@localhost:");
    assert_ne!(on_localhost, url(), "the test URL names 127.0.0.1");
    let with = |base: &str, q: &str| {
        SecretRef::Literal(Secret::new(format!(
            "{base}{}{q}",
            if base.contains('?') { '&' } else { '?' }
        )))
    };
    let tls_of = |mut c: sqlx::PgConnection| async move {
        let r = sqlx::query(
            "SELECT ssl, coalesce(version, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        (r.get::<bool, _>(0), r.get::<String, _>(1))
    };
    let yes = (true, "TLSv1.3".to_string());
    let no = (false, String::new());
    let cases = [
        (with(&url(), "sslmode=disable"), &no),
        (SecretRef::Literal(Secret::new(url())), &yes),
        (with(&url(), "sslmode=require"), &yes),
        (
            with(
                &on_localhost,
                &format!("sslmode=verify-full&sslrootcert={SERVER_CERT}"),
            ),
            &yes,
        ),
    ];
    for (i, (u, want)) in cases.iter().enumerate() {
        let c = connect(u, "sink t")
            .await
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(&tls_of(c).await, *want, "case {i}");
    }
    let refused = |u: SecretRef| async move {
        match connect(&u, "sink t").await {
            Ok(c) => panic!("connected: {:?}", tls_of(c).await),
            Err(e) => e.to_string(),
        }
    };
    // The certificate is made for `localhost`, not for the address.
    let err = refused(with(
        &url(),
        &format!("sslmode=verify-full&sslrootcert={SERVER_CERT}"),
    ))
    .await;
    assert!(
        err.starts_with(
            "cannot read sink t: cannot connect to PostgreSQL: TLS error: invalid peer certificate"
        ) && err.contains("127.0.0.1")
            && err.contains("sslrootcert"),
        "{err}"
    );
    // What the driver would not do as libpq does is refused before anything is sent: a
    // certificate checked without its name (any publicly issued one would pass), TLS only if
    // the server insists (the driver never starts it), an authority named for a mode that
    // checks no certificate.
    for (q, says) in [
        (
            format!("sslmode=verify-ca&sslrootcert={SERVER_CERT}"),
            "`sslmode=verify-ca` is not supported",
        ),
        (
            "sslmode=allow".to_string(),
            "`sslmode=allow` is not supported",
        ),
        (
            format!("sslmode=require&sslrootcert={SERVER_CERT}"),
            "`sslrootcert` is used only with `sslmode=verify-full`",
        ),
        (
            "sslmode=verify-full&sslpassword=unread".to_string(),
            "sets `sslpassword`, which sealtrail's PostgreSQL driver does not read",
        ),
    ] {
        let err = refused(with(&on_localhost, &q)).await;
        assert!(
            err.starts_with("cannot read sink t: cannot use the connection URL: ")
                && err.contains(says)
                && !err.contains("unread"),
            "{q}: {err}"
        );
    }
    // A certificate no trusted authority signed: the `it` test
    // `a_postgres_sink_is_reached_over_verified_tls` (the trusted roots are set per process).
    assert!(
        !err.contains("postgres://") && !err.contains("postgres@"),
        "{err}"
    );
}

/// A server that accepts the connection and never answers fails it within the URL's
/// `connect_timeout`, saying so and how to change it (without one, within 30 s), instead of
/// holding the run.
#[tokio::test]
async fn a_server_that_never_answers_fails_the_connection_within_its_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let u = SecretRef::Literal(Secret::new(format!(
        "postgres://postgres@127.0.0.1:{}/test?connect_timeout=1",
        silent.local_addr().unwrap().port()
    )));
    // A guard against a hang, not a measure of speed.
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sealtrail_connectors::pg::connect(&u, "sink t"),
    )
    .await
    .expect("the connection attempt ends by its own timeout");
    let err = match r {
        Ok(_) => panic!("connected to a server that never answers"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        "cannot read sink t: cannot connect to PostgreSQL: no connection within 1 s (`connect_timeout=SECONDS` in the connection URL sets how long to wait)"
    );
}

/// A PostgreSQL server of one test's own (Debian's binaries, run as the `postgres` user),
/// with TLS under an authority made for the test, admitting only clients that present a
/// certificate that authority signed (`hostssl ... cert`). Stopped when dropped.
struct CertServer {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl CertServer {
    fn start() -> Self {
        use std::process::Command;
        let run = |c: &mut Command| {
            let out = c.output().expect("the command runs");
            assert!(
                out.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries in /usr/lib/postgresql (Debian's packages)")
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        // The server runs as `postgres`: it must reach its folder.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(dir.path()).args(args));
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for (name, subject) in [
            ("ca", "/CN=test authority"),
            ("other-ca", "/CN=other authority"),
        ] {
            let (k, p) = (format!("{name}.key"), format!("{name}.pem"));
            let mut a = vec!["req", "-x509", "-subj", subject, "-days", "1"];
            a.extend(key);
            a.extend(["-keyout", &k, "-out", &p]);
            openssl(&a);
        }
        std::fs::write(at("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        std::fs::write(at("client.ext"), "basicConstraints=CA:FALSE\n").unwrap();
        for (name, subject, ca, ext) in [
            ("server", "/CN=localhost", "ca", Some("server.ext")),
            ("client", "/CN=postgres", "ca", Some("client.ext")),
            ("stranger", "/CN=postgres", "other-ca", Some("client.ext")),
            // No extensions: X.509 version 1, which TLS libraries refuse to present.
            ("old", "/CN=postgres", "ca", None),
        ] {
            let (k, csr, p) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let mut a = vec!["req", "-subj", subject];
            a.extend(key);
            a.extend(["-keyout", &k, "-out", &csr]);
            openssl(&a);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            let mut a = vec![
                "x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-days", "1",
                "-out", &p,
            ];
            if let Some(ext) = ext {
                a.extend(["-extfile", ext]);
            }
            openssl(&a);
            std::fs::set_permissions(at(&k), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let data = at("data");
        std::fs::create_dir(&data).unwrap();
        run(Command::new("chown").arg("postgres:postgres").arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        for f in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(at(f), data.join(f)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.pem'\n",
            data.display()
        );
        let mut c = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        c.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), c).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 cert\n",
        )
        .unwrap();
        run(Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args(["-w", "-l"])
            .arg(data.join("log"))
            .arg("-D")
            .arg(&data)
            .arg("start"));
        CertServer { dir, bin, port }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for CertServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

/// A server that admits only clients with a certificate (mutual TLS, as banks' databases often
/// require) is reached with `sslcert`/`sslkey`: the server sees the client's name; without a
/// certificate, or with one its authority did not sign, the connection is refused, saying so
/// and never quoting the URL. Its own certificate, from a private authority, is trusted through
/// `sslrootcert` alone.
#[tokio::test]
async fn a_server_that_wants_a_client_certificate_gets_it() {
    use sealtrail_connectors::pg::connect;
    let server = CertServer::start();
    let url = |q: String| {
        SecretRef::Literal(Secret::new(format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full{q}",
            server.port
        )))
    };
    let root = format!("&sslrootcert={}", server.path("ca.pem"));
    let client = |name: &str| {
        format!(
            "&sslcert={}&sslkey={}",
            server.path(&format!("{name}.pem")),
            server.path(&format!("{name}.key"))
        )
    };
    let mut c = connect(&url(format!("{root}{}", client("client"))), "sink t")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = sqlx::query("SELECT client_dn, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(r.get::<String, _>(0), "/CN=postgres");
    assert_eq!(r.get::<String, _>(1), "TLSv1.3");
    let refused = |u: SecretRef| async move {
        match connect(&u, "sink t").await {
            Ok(_) => panic!("connected"),
            Err(e) => e.to_string(),
        }
    };
    let err = refused(url(root.clone())).await;
    assert!(
        err.starts_with("cannot read sink t: cannot connect to PostgreSQL: ")
            && err.contains("connection requires a valid client certificate"),
        "{err}"
    );
    let err = refused(url(format!("{root}{}", client("stranger")))).await;
    assert!(
        err.starts_with("cannot read sink t: cannot connect to PostgreSQL: TLS error: "),
        "{err}"
    );
    // A version 1 certificate (which the server would accept) is refused before anything is
    // sent, saying why, instead of failing the handshake as an `invalid peer certificate`.
    let err = refused(url(format!("{root}{}", client("old")))).await;
    assert!(
        err.starts_with("cannot read sink t: cannot use the connection URL: `sslcert` names ")
            && err.contains("X.509 version 1"),
        "{err}"
    );
    // The server's authority is no system one: without `sslrootcert` it is unknown.
    let err = refused(url(client("client"))).await;
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        !err.contains("postgres://") && !err.contains("postgres@"),
        "{err}"
    );
}

/// A sink whose connection the server closed between two commits (a restart, an idle
/// timeout, or the wait of a later source's sink while the sources before it load) connects
/// again and commits: both batches land, once each.
#[tokio::test]
async fn a_sink_connects_again_when_the_server_closed_its_connection() {
    let table = format!("public.st_sink_lost_{}", std::process::id());
    let app = format!("st_lost_{}", std::process::id());
    let mut c = fresh_table(&table).await;
    let url = SecretRef::Literal(Secret::new(format!("{}?application_name={app}", url())));
    let b = batch(&[1, 2, 3]);
    let mut sink = PgSink::open("s", &url, &table, b.schema(), true)
        .await
        .unwrap();
    assert!(sink.commit("app/run1", 0, &[b]).await.unwrap());
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
    )
    .bind(&app)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(ended, 1);
    assert!(sink.commit("app/run1", 1, &[batch(&[4, 5])]).await.unwrap());
    assert!(!sink.commit("app/run1", 1, &[batch(&[4, 5])]).await.unwrap());
    let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} ORDER BY id"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    drop_sink_table(&mut c, &table).await;
}

/// PostgreSQL quotes the offending value in a data exception's message (SQLSTATE class 22);
/// what sealtrail reports of it (logs, run errors, the ledger's `run_failed`) withholds it.
#[tokio::test]
async fn a_database_error_does_not_repeat_the_value_it_refused() {
    let mut c = sqlx::PgConnection::connect(&url()).await.unwrap();
    for sql in [
        "SELECT 'alice@example.com'::int",
        "SELECT '99999999999 alice'::date",
        "SELECT 4000000000::bigint::int + length('alice@example.com')",
    ] {
        let e = sqlx::query(sql).fetch_one(&mut c).await.unwrap_err();
        let said = sealtrail_core::db::redact_db_error(&e);
        assert!(
            !said.contains("alice") && !said.contains("4000000000"),
            "{sql}: {said}"
        );
        assert!(
            said.contains("(value withheld)") || said.contains("out of range"),
            "{sql}: {said}"
        );
    }
    let e = sqlx::query("SELECT 'x'::int")
        .fetch_one(&mut c)
        .await
        .unwrap_err();
    assert_eq!(
        sealtrail_core::db::redact_db_error(&e),
        "invalid input syntax for type integer: \"…\" (value withheld)"
    );
    // Other errors keep their words (no value in them).
    let e = sqlx::query("SELECT * FROM no_such_table_here")
        .fetch_one(&mut c)
        .await
        .unwrap_err();
    assert_eq!(
        sealtrail_core::db::redact_db_error(&e),
        "relation \"no_such_table_here\" does not exist"
    );
}
