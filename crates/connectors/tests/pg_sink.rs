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

#[tokio::test]
async fn commits_are_idempotent_and_values_round_trip() {
    let table = format!("public.st_sink_{}", std::process::id());
    let mut c = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&mut c)
        .await
        .unwrap();
    let url = SecretRef::Literal(Secret::new(url()));
    let b = batch(&[1, 2, 3, 4, 5]);
    let mut sink = PgSink::open("s", &url, &table, b.schema()).await.unwrap();
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
    let rows = sqlx::query(&format!("SELECT id, name, amount::text, (extract(epoch FROM at) * 1000000)::bigint, ok FROM {table} ORDER BY id"))
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
    PgSink::open("s", &url, &table, b.schema()).await.unwrap();
    let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
    let err = PgSink::open("s", &url, &table, other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has columns (id bigint, name text") && err.contains("writes (id text)"),
        "{err}"
    );
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM sealtrail_sink_commits WHERE target = $1")
        .bind(&table)
        .execute(&mut c)
        .await
        .unwrap();
}
