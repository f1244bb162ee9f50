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

/// Copies the objects under the `s3://` table URL `uri` whose path below the table passes
/// `keep` (all of them: data files and the whole `_delta_log`; or the log alone, with data
/// files fetched later by [`fetch`]) into the local folder `into`, under the same relative
/// paths, so that `prove` and `audit` read the table as a local one: the same snapshot, the
/// same log mapping files to batches. Returns the number of objects copied.
pub async fn mirror(
    uri: &str,
    into: &std::path::Path,
    keep: impl Fn(&str) -> bool,
) -> Result<usize, String> {
    use deltalake::logstore::object_store::ObjectStore;
    use futures::TryStreamExt;
    let (store, prefix) = open_store(uri)?;
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| format!("cannot list {uri}: {e}"))?;
    let mut copied = 0;
    for o in &objects {
        let Some(rel) = o.location.prefix_match(&prefix) else {
            continue;
        };
        let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
        if !keep(&rel.join("/")) {
            continue;
        }
        copy_object(&store, &o.location, &rel, into, uri).await?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies the one object of the table `uri` that the local path `local` (under `into`, as
/// [`mirror`] lays it out) stands for, unless it is there already.
pub async fn fetch(
    uri: &str,
    into: &std::path::Path,
    local: &std::path::Path,
) -> Result<(), String> {
    if local.exists() {
        return Ok(());
    }
    let rel: Vec<String> = local
        .strip_prefix(into)
        .map_err(|_| format!("{} is not in the copy of {uri}", local.display()))?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (store, prefix) = open_store(uri)?;
    let location = rel.iter().fold(prefix, |p, part| p.join(part.as_str()));
    copy_object(&store, &location, &rel, into, uri).await
}

fn open_store(
    uri: &str,
) -> Result<(deltalake::logstore::object_store::aws::AmazonS3, Path), String> {
    let url = Url::parse(uri).map_err(|e| format!("bad table URL {uri}: {e}"))?;
    let store = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .build()
        .map_err(|e| format!("cannot reach {uri}: {e}"))?;
    let prefix = Path::from_url_path(url.path()).map_err(|e| format!("{uri}: {e}"))?;
    Ok((store, prefix))
}

async fn copy_object(
    store: &deltalake::logstore::object_store::aws::AmazonS3,
    location: &Path,
    rel: &[String],
    into: &std::path::Path,
    uri: &str,
) -> Result<(), String> {
    use deltalake::logstore::object_store::ObjectStoreExt;
    let mut local = into.to_path_buf();
    for part in rel {
        // Object names come from the store: only plain path parts make local paths.
        if part.is_empty() || part == "." || part == ".." || part.contains(['/', '\\']) {
            return Err(format!("{uri}: object {location} has an unusable name"));
        }
        local.push(part);
    }
    let bytes = store
        .get(location)
        .await
        .map_err(|e| format!("cannot read {location}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("cannot read {location}: {e}"))?;
    if let Some(dir) = local.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&local, &bytes).map_err(|e| format!("{}: {e}", local.display()))
}
