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

use deltalake::logstore::object_store::aws::{AmazonS3, AmazonS3Builder};
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use sealtrail_core::with_root_cause;
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
        let mut builder = builder(url);
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

/// Whether `uri` names a table on S3 (what [`register`] makes open).
pub fn is_s3(uri: &str) -> bool {
    uri.starts_with("s3://") || uri.starts_with("s3a://")
}

/// The S3 client for `url`, configured from the `AWS_*` environment.
fn builder(url: &Url) -> AmazonS3Builder {
    AmazonS3Builder::from_env().with_url(url.as_str())
}

/// Checks, before anything is written, that the store behind `uri` refuses to create an
/// object that exists (`If-None-Match: *`): delta-rs commits each table version that way, and a
/// store that ignores the condition would let two writers of the same version overwrite each
/// other, one commit silently lost. A probe object under the table (`_sealtrail_probe/`) is
/// created twice and removed; probes more than an hour old (left by a process killed between
/// the two) are removed too.
pub async fn check_conditional_writes(uri: &str) -> Result<(), String> {
    use deltalake::logstore::object_store::{
        self as os, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    };
    let url = Url::parse(uri).map_err(|e| format!("bad table URL {uri}: {e}"))?;
    let b = builder(&url);
    if let Some(host) = cleartext_remote(
        b.get_config_value(&deltalake::logstore::object_store::aws::AmazonS3ConfigKey::Endpoint)
            .as_deref(),
    ) {
        sealtrail_core::net::unauthenticated(
            &format!("the S3 store of {uri} at {host}"),
            "plain http://, AWS_ALLOW_HTTP",
            "the table's rows, unencrypted,",
            "use an https:// endpoint",
        )?;
    }
    let store = b.build().map_err(|e| format!("cannot reach {uri}: {e}"))?;
    let prefix = Path::from_url_path(url.path()).map_err(|e| format!("{uri}: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let probes = prefix.join("_sealtrail_probe");
    let probe = probes
        .clone()
        .join(format!("{}-{nanos}", std::process::id()).as_str());
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&probe, os::PutPayload::from_static(b"probe"), create())
        .await
        .map_err(|e| format!("cannot write to {uri}: {}", with_root_cause(&e)))?;
    let again = store
        .put_opts(&probe, os::PutPayload::from_static(b"again"), create())
        .await;
    let _ = store.delete(&probe).await;
    sweep_stale_probes(&store, &probes, nanos).await;
    match again {
        Err(os::Error::AlreadyExists { .. } | os::Error::Precondition { .. }) => Ok(()),
        Ok(_) => Err(format!(
            "the store behind {uri} does not honour conditional writes (`If-None-Match: *`): it let an object be created twice, so two writers of the table could overwrite each other's commits and lose one; nothing was written. Use a store that supports them (Amazon S3 does; S3-compatible stores in recent versions)"
        )),
        Err(e) => Err(format!(
            "cannot check that {uri} honours conditional writes: {}",
            with_root_cause(&e)
        )),
    }
}

/// The host of a plain `http://` endpoint on another machine (`AWS_ENDPOINT_URL`, which
/// object_store accepts with `AWS_ALLOW_HTTP=true`); `None` for https:// or this machine.
fn cleartext_remote(endpoint: Option<&str>) -> Option<String> {
    let u = Url::parse(endpoint?).ok()?;
    let host = u.host_str()?;
    (u.scheme() == "http" && !sealtrail_core::net::is_this_machine(host)).then(|| host.to_string())
}

/// Removes the probes under `probes` named (`<pid>-<nanoseconds since the epoch>`) more than
/// an hour before `now`: a run killed between creating its probe and removing it leaves one.
/// Best effort: a probe that cannot be listed or removed now is removed by a later run. Other
/// names, and recent probes (of runs checking the store right now), are left alone.
async fn sweep_stale_probes(store: &AmazonS3, probes: &Path, now: u128) {
    use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt};
    use futures::TryStreamExt;
    const HOUR: u128 = 3_600 * 1_000_000_000;
    let Ok(listed) = store.list(Some(probes)).try_collect::<Vec<_>>().await else {
        return;
    };
    for o in listed {
        let stale = o
            .location
            .filename()
            .and_then(|n| n.split_once('-'))
            .filter(|(pid, _)| pid.parse::<u32>().is_ok())
            .and_then(|(_, at)| at.parse::<u128>().ok())
            .is_some_and(|at| at.saturating_add(HOUR) < now);
        if stale {
            let _ = store.delete(&o.location).await;
        }
    }
}

/// A local copy of the `s3://` table `uri` in a temporary folder (removed when dropped), laid
/// out under the same relative paths, so that `prove` and `audit` read the table as a local
/// one: the same snapshot, the same log mapping files to batches. Either whole, or the
/// `_delta_log` alone, with data files copied when asked for ([`TableCopy::fetch`]).
pub struct TableCopy {
    uri: String,
    store: AmazonS3,
    prefix: Path,
    dir: tempfile::TempDir,
    whole: bool,
}

/// By hand: the S3 client's own `Debug` would show its credentials.
impl std::fmt::Debug for TableCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableCopy")
            .field("uri", &self.uri)
            .field("dir", &self.dir.path())
            .field("whole", &self.whole)
            .finish_non_exhaustive()
    }
}

impl TableCopy {
    /// Copies the table: whole, or only its log. Returns the copy and the number of objects
    /// copied.
    pub async fn new(uri: &str, whole: bool) -> Result<(Self, usize), String> {
        use deltalake::logstore::object_store::ObjectStore;
        use futures::TryStreamExt;
        let url = Url::parse(uri).map_err(|e| format!("bad table URL {uri}: {e}"))?;
        let store = builder(&url)
            .build()
            .map_err(|e| format!("cannot reach {uri}: {e}"))?;
        let prefix = Path::from_url_path(url.path()).map_err(|e| format!("{uri}: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
        let copy = Self {
            uri: uri.to_string(),
            store,
            prefix,
            dir,
            whole,
        };
        let objects: Vec<_> = copy
            .store
            .list(Some(&copy.prefix))
            .try_collect()
            .await
            .map_err(|e| format!("cannot list {uri}: {}", with_root_cause(&e)))?;
        let mut copied = 0;
        for o in &objects {
            let Some(rel) = o.location.prefix_match(&copy.prefix) else {
                continue;
            };
            let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
            if whole || rel.first().is_some_and(|d| d == "_delta_log") {
                copy.copy_object(&o.location, &rel).await?;
                copied += 1;
            }
        }
        Ok((copy, copied))
    }

    /// The local folder holding the copy (a Delta table's location).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Makes sure the data files `locals` (paths in the copy, as the copied log names them)
    /// are there (a whole copy has them already); returns how many it copied.
    pub async fn fetch(&self, locals: &[std::path::PathBuf]) -> Result<usize, String> {
        let mut copied = 0;
        for local in locals.iter().filter(|l| !self.whole && !l.exists()) {
            let (location, rel) = self.location_of(local)?;
            self.copy_object(&location, &rel).await?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Copies the object at `local`'s place in the table into the copy if the store has one
    /// (a file no commit names, which the log-only copy does not list); whether it had.
    pub async fn fetch_if_present(&self, local: &std::path::Path) -> Result<bool, String> {
        use deltalake::logstore::object_store::{self as os, ObjectStoreExt};
        let (location, rel) = self.location_of(local)?;
        match self.store.head(&location).await {
            Err(os::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(format!("cannot read {location}: {}", with_root_cause(&e))),
            Ok(_) => self.copy_object(&location, &rel).await.map(|()| true),
        }
    }

    /// Uploads the file `local` of the copy to its place in the table (a new data file, which
    /// no reader sees until a commit names it).
    pub async fn upload(&self, local: &std::path::Path) -> Result<(), String> {
        use deltalake::logstore::object_store::{self as os, ObjectStoreExt};
        let (location, _) = self.location_of(local)?;
        // Whole in memory: these are the files of one batch, which a run held in memory too.
        let bytes = std::fs::read(local).map_err(|e| format!("{}: {e}", local.display()))?;
        self.store
            .put(&location, os::PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write {location}: {}", with_root_cause(&e)))
    }

    /// Deletes the object at `local`'s place in the table (and the copy's file), if there is
    /// one.
    pub async fn delete(&self, local: &std::path::Path) -> Result<(), String> {
        use deltalake::logstore::object_store::{self as os, ObjectStoreExt};
        let (location, _) = self.location_of(local)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(os::Error::NotFound { .. }) => {}
            Err(e) => return Err(format!("cannot delete {location}: {}", with_root_cause(&e))),
        }
        match std::fs::remove_file(local) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", local.display()))
            }
            _ => Ok(()),
        }
    }

    /// The object a path in the copy stands for, and its parts relative to the table.
    fn location_of(&self, local: &std::path::Path) -> Result<(Path, Vec<String>), String> {
        let rel: Vec<String> = local
            .strip_prefix(self.dir())
            .map_err(|_| format!("{} is not in the copy of {}", local.display(), self.uri))?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let location = rel
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(part.as_str()));
        Ok((location, rel))
    }

    async fn copy_object(&self, location: &Path, rel: &[String]) -> Result<(), String> {
        use deltalake::logstore::object_store::ObjectStoreExt;
        let mut local = self.dir().to_path_buf();
        for part in rel {
            // Object names come from the store: only plain path parts make local paths.
            if part.is_empty() || part == "." || part == ".." || part.contains(['/', '\\']) {
                return Err(format!(
                    "{}: object {location} has an unusable name",
                    self.uri
                ));
            }
            local.push(part);
        }
        // Streamed to disk (a data file can be larger than memory), under a temporary name
        // until it is whole: `fetch` takes a file that exists for a complete copy.
        use futures::TryStreamExt;
        use std::io::Write;
        let unreadable = |e: deltalake::logstore::object_store::Error| {
            format!("cannot read {location}: {}", with_root_cause(&e))
        };
        let mut stream = self
            .store
            .get(location)
            .await
            .map_err(unreadable)?
            .into_stream();
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut partial = local.clone().into_os_string();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let unwritable = |e: std::io::Error| format!("{}: {e}", partial.display());
        let mut f = std::fs::File::create(&partial).map_err(unwritable)?;
        while let Some(chunk) = stream.try_next().await.map_err(unreadable)? {
            f.write_all(&chunk).map_err(unwritable)?;
        }
        drop(f);
        std::fs::rename(&partial, &local).map_err(|e| format!("{}: {e}", local.display()))
    }
}

#[cfg(test)]
mod tests {
    /// Only a plain http:// endpoint on another machine is pointed out.
    #[test]
    fn a_cleartext_endpoint_on_another_machine_is_pointed_out() {
        for (endpoint, host) in [
            (Some("http://minio.internal:9000"), Some("minio.internal")),
            (Some("http://10.1.2.3:9000"), Some("10.1.2.3")),
            (Some("https://minio.internal:9000"), None),
            (Some("http://127.0.0.1:9000"), None),
            (Some("http://localhost:9000"), None),
            (None, None),
        ] {
            assert_eq!(
                super::cleartext_remote(endpoint).as_deref(),
                host,
                "{endpoint:?}"
            );
        }
    }
}
