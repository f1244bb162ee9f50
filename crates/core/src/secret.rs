//! Values that must never be printed.
//!
//! [`Secret`] holds credentials and keys: zeroized on drop, redacted in `Debug`/`Display`.
//! [`Sensitive`] wraps any record value that may be personal data, with the same redaction.
//! Getting at the content takes an explicit call (`expose`), which is easy to grep for.

use std::fmt;
use zeroize::Zeroize;

const REDACTED: &str = "«redacted»";

/// A secret string (password, connection string, key material).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself. Every call site is a place a reviewer should look at.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A value of a record that may be sensitive (personal or financial data).
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    pub fn new(v: T) -> Self {
        Self(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Creates the key file `path` holding `bytes` (mode 0600 on Unix) unless it exists, so that
/// no process ever reads it half-written and two processes creating it at once agree on one:
/// the bytes go to a temporary file beside it, which is fsynced and then hard-linked to `path`
/// (a link never replaces an existing file). Returns `false` when another process created
/// `path` first; the caller then reads that one.
pub fn create_private_once(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "key".to_string(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let written = o.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name is durable once the folder is.
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a connection string holds a password: a user and password before `@`
/// (`scheme://user:password@host`), or a `password=` setting.
pub fn url_has_password(s: &str) -> bool {
    s.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || s.contains("password=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("postgres://u:hunter2@db/x".into());
        let v = Sensitive::new("GB33BUKB20201555555555".to_string());
        let printed = format!("{s} {s:?} {s:#?} {v} {v:?} {:?}", Some(&s));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("BUKB"), "{printed}");
        assert!(printed.contains(REDACTED));
        assert_eq!(s.expose(), "postgres://u:hunter2@db/x");
    }

    /// Eight threads create one key file at once, each with its own content: exactly one
    /// creates it, every reader sees that content whole, and no temporary file is left.
    #[test]
    fn a_key_file_is_created_once_and_never_read_half_written() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sub/master.key");
            let barrier = std::sync::Barrier::new(8);
            let results: Vec<(bool, Vec<u8>, Vec<u8>)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8u8)
                    .map(|t| {
                        let (path, barrier) = (&path, &barrier);
                        s.spawn(move || {
                            let mine = vec![b'a' + t; 4096];
                            barrier.wait();
                            let created = create_private_once(path, &mine).unwrap();
                            (created, mine, std::fs::read(path).unwrap())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<_> = results.iter().filter(|r| r.0).collect();
            assert_eq!(winners.len(), 1);
            for (_, _, seen) in &results {
                assert_eq!(seen, &winners[0].1, "a reader saw other bytes");
            }
            let left: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("master.key")]);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }
}
