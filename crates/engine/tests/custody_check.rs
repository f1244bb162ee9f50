//! `check` keeps the lineage id through transforms and refuses specs that would lose it.

use sealtrail_engine::custody::ID_COLUMN;

fn spec(transform_sql: &str, extra_column: &str) -> sealtrail_spec::Pipeline {
    let text = format!(
        "version: 1\npipeline: p\nsources:\n  t:\n    csv: {{ path: x.csv }}\n    columns: [{{ name: id }}, {{ name: n, type: int64 }}{extra_column}]\ntransforms:\n  out:\n    sql: \"{transform_sql}\"\nsinks:\n  o: {{ from: out, parquet: {{ path: o }} }}\nquarantine: {{ parquet: {{ path: q }} }}\n"
    );
    sealtrail_spec::parse_str(&text, "p.yaml".as_ref()).unwrap()
}

async fn messages(p: &sealtrail_spec::Pipeline) -> Vec<String> {
    sealtrail_engine::check(p)
        .await
        .into_iter()
        .map(|d| d.message)
        .collect()
}

#[tokio::test]
async fn projections_keep_the_id_without_listing_it() {
    let p = spec(
        "SELECT id, n * 2 AS twice FROM t WHERE n > 0 ORDER BY n",
        "",
    );
    assert_eq!(messages(&p).await, Vec::<String>::new());
    let (planned, _) = sealtrail_engine::check_with(&p, &Default::default()).await;
    let t = &planned["t"].transforms;
    let names: Vec<String> = t
        .schema_of("out")
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "twice", ID_COLUMN]);
}

#[tokio::test]
async fn aggregations_keep_the_contributing_ids_as_a_list() {
    let names_and_types = |p: &sealtrail_spec::Pipeline| {
        let p = p.clone();
        async move {
            let (planned, _) = sealtrail_engine::check_with(&p, &Default::default()).await;
            planned["t"]
                .transforms
                .schema_of("out")
                .unwrap()
                .fields()
                .iter()
                .map(|f| format!("{}:{}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        }
    };
    for sql in [
        "SELECT id, count(*) AS c FROM t GROUP BY id HAVING count(*) > 0",
        "SELECT DISTINCT id FROM t",
        "WITH g AS (SELECT id, n FROM t WHERE n > 0) SELECT id, sum(n) AS s FROM g GROUP BY id",
    ] {
        let p = spec(sql, "");
        assert_eq!(messages(&p).await, Vec::<String>::new(), "{sql}");
        let cols = names_and_types(&p).await;
        assert_eq!(
            cols.last().unwrap(),
            &format!("{ID_COLUMN}:List(Utf8)"),
            "{sql}: {cols:?}"
        );
    }
}

#[tokio::test]
async fn lost_twice_aggregated_and_computed_ids_are_refused() {
    for sql in [
        "SELECT id FROM t UNION ALL SELECT id FROM t",
        "SELECT a.id FROM t a JOIN t b ON a.id = b.id",
    ] {
        let m = messages(&spec(sql, "")).await;
        assert!(
            m.iter().any(|x| x.contains("joins and set operations")),
            "{sql}: {m:?}"
        );
    }
    let m = messages(&spec(
        "WITH g AS (SELECT id, count(*) AS k FROM t GROUP BY id) SELECT count(*) AS c FROM g",
        "",
    ))
    .await;
    assert!(
        m.iter().any(|x| x.contains("instead of the lineage id")),
        "{m:?}"
    );
    let m = messages(&spec(
        "SELECT _sealtrail_id, count(*) AS c FROM t GROUP BY _sealtrail_id",
        "",
    ))
    .await;
    assert!(
        m.iter().any(|x| x.contains("carried by the engine")),
        "{m:?}"
    );
    let m = messages(&spec("SELECT id, upper(id) AS _sealtrail_id FROM t", "")).await;
    assert!(
        m.iter().any(|x| x.contains("computed from other columns")),
        "{m:?}"
    );
    let m = messages(&spec("SELECT id FROM t", ", { name: _sealtrail_id }")).await;
    assert!(
        m.iter().any(|x| x.contains("reserves for lineage ids")),
        "{m:?}"
    );
}
