//! SQL transforms over batches, with DataFusion.
//!
//! Each transform is one SELECT over one input (a source or an earlier transform), applied to
//! every batch on its own: projections, filters and expressions. Because a batch never sees
//! another, aggregations group within a batch; aggregations and joins across the run are out of
//! scope for this stateless shape.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use sealtrail_spec::{Pipeline, Transform};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::custody::ID_COLUMN;

/// The transforms of one source, ready to run per batch.
#[derive(Debug)]
pub struct Transforms {
    source: String,
    source_schema: SchemaRef,
    chain: Vec<Transform>,
    /// Output schema of every transform (planned once, at check time).
    pub schemas: HashMap<String, SchemaRef>,
    /// Column lineage of every transform: for each output column, the columns of its input
    /// table it is computed from (derived from the logical plan, not declared).
    pub lineage: HashMap<String, Vec<(String, BTreeSet<String>)>>,
}

/// A transform that failed on a batch (a cast of a value that does not convert, a division by
/// zero...). Its error may quote values: withhold them before showing it.
#[derive(Debug)]
pub struct Failed {
    pub transform: String,
    pub error: datafusion::error::DataFusionError,
}

/// A transform whose SQL does not plan against its input's columns.
#[derive(Debug)]
pub struct PlanError {
    pub transform: String,
    pub at: (u64, u64),
    pub message: String,
}

fn session() -> SessionContext {
    // One partition per batch and no repartitioning: batches are small and already parallel
    // across the pipeline's threads.
    let cfg = datafusion::prelude::SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(65_536);
    SessionContext::new_with_config(cfg)
}

impl Transforms {
    /// Plans every transform rooted at `source` against an empty table of its schema, so a
    /// spec with a bad column or a type error fails before any data moves.
    pub async fn plan(
        p: &Pipeline,
        source: &str,
        source_schema: SchemaRef,
    ) -> Result<Self, Vec<PlanError>> {
        let ctx = session();
        let chain: Vec<Transform> = p
            .transforms
            .iter()
            .filter(|t| t.root_source == source)
            .cloned()
            .collect();
        let mut schemas = HashMap::new();
        let mut lineage = HashMap::new();
        let mut errors = Vec::new();
        let empty = |s: SchemaRef| MemTable::try_new(s, vec![vec![]]);
        if let Ok(t) = empty(source_schema.clone()) {
            let _ = ctx.register_table(source, Arc::new(t));
        }
        for t in &chain {
            let planned = async {
                let df = sql_keeping_ids(&ctx, &t.sql).await?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let plan = df.into_optimized_plan()?;
                let deps: Vec<(String, BTreeSet<String>)> = schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .zip(column_deps(&plan))
                    .collect();
                ctx.register_table(t.name.as_str(), Arc::new(empty(schema.clone())?))?;
                Ok::<_, datafusion::error::DataFusionError>((schema, deps))
            };
            match planned.await {
                Ok((s, d)) => {
                    schemas.insert(t.name.clone(), s);
                    lineage.insert(t.name.clone(), d);
                }
                Err(e) => errors.push(PlanError {
                    transform: t.name.clone(),
                    at: t.at,
                    message: plan_message(&e),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            source: source.to_string(),
            source_schema,
            chain,
            schemas,
            lineage,
        })
    }

    /// SHA-256 (hex) over the transforms' names, inputs and SQL, in order.
    pub fn version(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for t in &self.chain {
            for part in [&t.name, &t.input, &t.sql] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// The table a transform reads.
    pub fn input_of(&self, name: &str) -> Option<&str> {
        self.chain
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.input.as_str())
    }

    /// Output schema of `name` (the source itself or one of its transforms).
    pub fn schema_of(&self, name: &str) -> Option<SchemaRef> {
        if name == self.source {
            Some(self.source_schema.clone())
        } else {
            self.schemas.get(name).cloned()
        }
    }

    /// Whether the source has no transform.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// Runs the chain over one batch; returns the rows of every transform by name.
    pub async fn apply(
        &self,
        batch: &RecordBatch,
    ) -> Result<HashMap<String, Vec<RecordBatch>>, Failed> {
        let mut out = HashMap::new();
        let Some(first) = self.chain.first() else {
            return Ok(out);
        };
        let failed = |t: &Transform| {
            let transform = t.name.clone();
            move |error| Failed { transform, error }
        };
        let ctx = session();
        MemTable::try_new(self.source_schema.clone(), vec![vec![batch.clone()]])
            .and_then(|m| ctx.register_table(self.source.as_str(), Arc::new(m)))
            .map_err(failed(first))?;
        for t in &self.chain {
            let rows = async { sql_keeping_ids(&ctx, &t.sql).await?.collect().await }
                .await
                .map_err(failed(t))?;
            let schema = self.schemas[&t.name].clone();
            MemTable::try_new(schema, vec![rows.clone()])
                .and_then(|m| ctx.register_table(t.name.as_str(), Arc::new(m)))
                .map_err(failed(t))?;
            out.insert(t.name.clone(), rows);
        }
        Ok(out)
    }

    /// The first row of `batch` the chain fails on by itself (it failed on the whole batch),
    /// found by halving; `None` when no part fails alone.
    pub async fn failing_row(&self, batch: &RecordBatch) -> Option<usize> {
        let (mut at, mut len) = (0, batch.num_rows());
        while len > 1 {
            let half = len / 2;
            if self.apply(&batch.slice(at, half)).await.is_err() {
                len = half;
            } else if self
                .apply(&batch.slice(at + half, len - half))
                .await
                .is_err()
            {
                (at, len) = (at + half, len - half);
            } else {
                return None;
            }
        }
        (len == 1).then_some(at)
    }

    /// The rows of `batch` the chain fails on by themselves (it failed on the whole batch),
    /// in order, found by halving: each failing half is searched until single rows are left.
    /// `None` when a part fails that no row of fails alone (an aggregate over many rows that
    /// overflows), or when more than `limit` rows fail (the SQL is more likely wrong than the
    /// records). Costs about two runs of the chain over ever smaller slices per level of
    /// halving and failing row, only after a failure.
    pub async fn failing_rows(&self, batch: &RecordBatch, limit: usize) -> Option<Vec<usize>> {
        let mut rows = Vec::new();
        // Slices known to fail, as (start, length).
        let mut failing = vec![(0, batch.num_rows())];
        while let Some((at, len)) = failing.pop() {
            if len <= 1 {
                rows.extend((len == 1).then_some(at));
                if rows.len() > limit {
                    return None;
                }
                continue;
            }
            let half = len / 2;
            let first = self.apply(&batch.slice(at, half)).await.is_err();
            let second = self
                .apply(&batch.slice(at + half, len - half))
                .await
                .is_err();
            match (first, second) {
                (false, false) => return None,
                _ => {
                    if second {
                        failing.push((at + half, len - half));
                    }
                    if first {
                        failing.push((at, half));
                    }
                }
            }
        }
        rows.sort_unstable();
        Some(rows)
    }
}

/// Plans `sql` and makes every projection keep the lineage id column of its input: a SELECT
/// that lists its columns still delivers each row's `_sealtrail_id`, so no transform can drop
/// the chain of custody by leaving it out. Many-to-one steps keep it too: an aggregation gains
/// `array_agg(_sealtrail_id) AS _sealtrail_id` (the ids of every record in the group), and a
/// `SELECT DISTINCT` becomes the same aggregation grouped by all its columns (without the
/// rewrite, every row's distinct id would make DISTINCT a no-op).
async fn sql_keeping_ids(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::common::{Column, DFSchema, plan_err};
    use datafusion::functions_aggregate::expr_fn::array_agg;
    use datafusion::logical_expr::{Aggregate, Projection};
    let has = |s: &DFSchema| s.fields().iter().any(|f| f.name() == ID_COLUMN);
    let id_of = |s: &DFSchema| -> datafusion::error::Result<Expr> {
        let (q, _) = s.qualified_field_with_unqualified_name(ID_COLUMN)?;
        Ok(Expr::Column(Column::new(q.cloned(), ID_COLUMN)))
    };
    let plan = ctx.sql(sql).await?.into_unoptimized_plan();
    let plan = plan
        .transform_up(|node| {
            // A rewritten child changes its parent's columns: nodes that store a schema of
            // their own (subquery aliases, for example) must see the id too.
            let node = node.recompute_schema()?;
            match &node {
            LogicalPlan::Projection(p) if !has(&p.schema) && has(p.input.schema()) => {
                let mut exprs = p.expr.clone();
                exprs.push(id_of(p.input.schema())?);
                let np = Projection::try_new(exprs, p.input.clone())?;
                Ok(Transformed::yes(LogicalPlan::Projection(np)))
            }
            LogicalPlan::Aggregate(a) if has(a.input.schema()) => {
                if has(&a.schema) {
                    return plan_err!(
                        "`{ID_COLUMN}` is carried by the engine: do not group by it or aggregate it in SQL"
                    );
                }
                let mut aggr = a.aggr_expr.clone();
                aggr.push(array_agg(id_of(a.input.schema())?).alias(ID_COLUMN));
                let na = Aggregate::try_new(a.input.clone(), a.group_expr.clone(), aggr)?;
                Ok(Transformed::yes(LogicalPlan::Aggregate(na)))
            }
            LogicalPlan::Distinct(Distinct::All(input)) if has(input.schema()) => {
                let group = input
                    .schema()
                    .columns()
                    .into_iter()
                    .filter(|c| c.name != ID_COLUMN)
                    .map(Expr::Column)
                    .collect();
                let id = array_agg(id_of(input.schema())?).alias(ID_COLUMN);
                let na = Aggregate::try_new(input.clone(), group, vec![id])?;
                Ok(Transformed::yes(LogicalPlan::Aggregate(na)))
            }
            n if n.inputs().len() > 1 && n.inputs().iter().any(|i| has(i.schema())) => {
                plan_err!(
                    "joins and set operations (UNION, INTERSECT, EXCEPT) cannot keep each row's `{ID_COLUMN}` yet; deliver each input through its own transform and sink"
                )
            }
            _ => Ok(Transformed::no(node)),
        }})?
        .data;
    ctx.execute_logical_plan(plan).await
}

/// What went wrong planning a transform: the innermost error (an optimizer's `Optimizer rule
/// 'simplify_expressions' failed` wraps the invalid regex that made it fail), on one line (a
/// regex error spans several).
fn plan_message(e: &datafusion::error::DataFusionError) -> String {
    e.find_root()
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// For each output column of `plan`, the names of the scanned table's columns it is computed
/// from. Nodes that keep their input's columns pass lineage through; projections, aggregates
/// and windows follow each expression's column references; any other node is taken to mix
/// every input column into every output (conservative: the release check may over-report,
/// never under-report).
pub fn column_deps(plan: &LogicalPlan) -> Vec<BTreeSet<String>> {
    let exprs_deps = |exprs: &[Expr], input: &LogicalPlan| -> Vec<BTreeSet<String>> {
        let inner = column_deps(input);
        exprs
            .iter()
            .map(|e| {
                e.column_refs()
                    .into_iter()
                    .filter_map(|c| input.schema().index_of_column(c).ok())
                    .flat_map(|i| inner.get(i).cloned().unwrap_or_default())
                    .collect()
            })
            .collect()
    };
    match plan {
        LogicalPlan::TableScan(_) => plan
            .schema()
            .fields()
            .iter()
            .map(|f| BTreeSet::from([f.name().clone()]))
            .collect(),
        LogicalPlan::Projection(p) => exprs_deps(&p.expr, &p.input),
        LogicalPlan::Aggregate(a) => {
            let all: Vec<Expr> = a.group_expr.iter().chain(&a.aggr_expr).cloned().collect();
            exprs_deps(&all, &a.input)
        }
        LogicalPlan::Window(w) => {
            let mut v = column_deps(&w.input);
            v.extend(exprs_deps(&w.window_expr, &w.input));
            v
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Distinct(Distinct::All(_)) => plan
            .inputs()
            .first()
            .map(|i| column_deps(i))
            .unwrap_or_default(),
        _ => {
            let all: BTreeSet<String> = plan
                .inputs()
                .iter()
                .flat_map(|i| column_deps(i).into_iter().flatten())
                .collect();
            vec![all; plan.schema().fields().len()]
        }
    }
}
