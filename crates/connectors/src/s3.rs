//! `s3://` Delta tables, through object_store's S3 client.
//!
//! Written here instead of enabling delta-rs's `s3` feature: that feature brings the AWS SDK
//! (STS, DynamoDB for its locking log store) and minutes of build time on a 2-core machine,
//! while object_store's own S3 client is already built (DataFusion links it). Commits stay
//! exactly-once without a lock table: delta-rs's default log store writes each version with
//! `PutMode::Create`, which object_store sends to S3 as `If-None-Match: *`, so a second writer
//! of the same version is refused by the service (S3 has honoured it since 2024; S3-compatible
//! stores must too).
//!
//! Settings come from the environment, as every AWS tool reads them (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL` for an S3-compatible store, `AWS_ALLOW_HTTP=true` for one without TLS):
//! a spec names no credentials, so none can leak from it.

use deltalake::logstore::object_store::aws::AmazonS3Builder;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use std::sync::{Arc, Once};
use url::Url;

/// Makes `s3://` and `s3a://` table URLs open (idempotent; called before any Delta table is
/// opened).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let stores = Arc::new(S3Stores);
        let logs = Arc::new(S3Logs);
        for scheme in ["s3://", "s3a://"] {
            let Ok(url) = Url::parse(scheme) else {
                continue;
            };
            object_store_factories().insert(url.clone(), stores.clone());
            logstore_factories().insert(url, logs.clone());
        }
    });
}

struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
        // Options passed by delta-rs itself (none from the spec).
        for (k, v) in &config.raw {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                builder = builder.with_config(key, v);
            }
        }
        let store = builder.build()?;
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
        Ok((Arc::new(store), path))
    }
}

struct S3Logs;

impl LogStoreFactory for S3Logs {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Copies every object under the `s3://` table URL `uri` (data files and the whole
/// `_delta_log`) into the local folder `into`, under the same relative paths, so that `prove`
/// and `audit` read the table as a local one: the same snapshot, the same log mapping files to
/// batches. Returns the number of objects copied.
pub async fn mirror(uri: &str, into: &std::path::Path) -> Result<usize, String> {
    use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt};
    use futures::TryStreamExt;
    let url = Url::parse(uri).map_err(|e| format!("bad table URL {uri}: {e}"))?;
    let store = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .build()
        .map_err(|e| format!("cannot reach {uri}: {e}"))?;
    let prefix = Path::from_url_path(url.path()).map_err(|e| format!("{uri}: {e}"))?;
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| format!("cannot list {uri}: {e}"))?;
    for o in &objects {
        let Some(rel) = o.location.prefix_match(&prefix) else {
            continue;
        };
        let mut local = into.to_path_buf();
        for part in rel {
            // Object names come from the store: only plain path parts make local paths.
            let part = part.as_ref();
            if part.is_empty() || part == "." || part == ".." {
                return Err(format!("{uri}: object {} has an unusable name", o.location));
            }
            local.push(part);
        }
        let bytes = store
            .get(&o.location)
            .await
            .map_err(|e| format!("cannot read {}: {e}", o.location))?
            .bytes()
            .await
            .map_err(|e| format!("cannot read {}: {e}", o.location))?;
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&local, &bytes).map_err(|e| format!("{}: {e}", local.display()))?;
    }
    Ok(objects.len())
}
