//! Input files: glob expansion, and the identities incremental loads keep: a cheap
//! fingerprint (path, size, modification time) and the content's name and digest.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Files matching `pattern`, sorted by path so every run reads them in the same order.
/// A pattern without wildcards that matches nothing is an error (a typo must not load nothing
/// silently); a glob that matches nothing is an empty input.
pub fn list(pattern: &str) -> Result<Vec<PathBuf>> {
    let wild = pattern.contains(['*', '?', '[']);
    let mut out = Vec::new();
    let paths = glob::glob(pattern).map_err(|e| Error::Unreadable {
        input: pattern.into(),
        reason: e.to_string(),
    })?;
    for p in paths {
        let p = p.map_err(|e| Error::Unreadable {
            input: pattern.into(),
            reason: e.to_string(),
        })?;
        if p.is_file() {
            out.push(p);
        }
    }
    if out.is_empty() && !wild {
        return Err(Error::Unreadable {
            input: pattern.into(),
            reason:
                "no such file; check `path` in the spec (relative paths start at the spec's folder)"
                    .into(),
        });
    }
    out.sort();
    Ok(out)
}

/// Identity of a file's content for incremental loads: path, size and modification time.
/// A file rewritten in place gets a new fingerprint and is loaded again.
pub fn fingerprint(p: &std::path::Path) -> Result<String> {
    let m = std::fs::metadata(p).map_err(|e| Error::Unreadable {
        input: p.display().to_string(),
        reason: e.to_string(),
    })?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{}|{}|{}", p.display(), m.len(), mtime))
}

/// The size a [`fingerprint`] records (`path|size|mtime`; the path may hold `|`).
pub fn fingerprint_size(fingerprint: &str) -> Option<u64> {
    fingerprint.rsplit('|').nth(1)?.parse().ok()
}

/// The name a file matched its pattern under: its path relative to the pattern's last folder
/// before the first wildcard (`/p/data/*/t.csv` matching `/p/data/2026/t.csv` gives
/// `2026/t.csv`), or its file name for a pattern without wildcards. Moving the project, or the
/// data folder along with the pattern, keeps it.
pub fn matched_name(pattern: &str, path: &Path) -> String {
    let mut base = PathBuf::new();
    let mut wild = false;
    for c in Path::new(pattern).components() {
        if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
            wild = true;
            break;
        }
        base.push(c);
    }
    let rel = if wild {
        path.strip_prefix(&base).ok()
    } else {
        path.file_name().map(Path::new)
    };
    rel.unwrap_or(path).to_string_lossy().into_owned()
}

/// Lowercase hex SHA-256 of a file's bytes, read in 1 MiB pieces.
pub fn content_digest(path: &Path) -> Result<String> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| Error::Unreadable {
        input: path.display().to_string(),
        reason: e.to_string(),
    };
    let f = std::fs::File::open(path).map_err(unreadable)?;
    let mut f = Hashed::new(f, true);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok(f.finish().unwrap_or_default())
}

/// A reader that hashes (SHA-256) the bytes read through it, when asked to: the decoders of
/// incremental files compute a new file's content digest while loading it, instead of reading
/// the whole file once more before the run.
#[derive(Debug)]
pub struct Hashed<R> {
    inner: R,
    hasher: Option<sha2::Sha256>,
}

impl<R> Hashed<R> {
    pub fn new(inner: R, hash: bool) -> Self {
        use sha2::Digest;
        Self {
            inner,
            hasher: hash.then(sha2::Sha256::new),
        }
    }

    /// Lowercase hex SHA-256 of everything read so far (`None` when not hashing, or asked
    /// before); meant once the reader has returned end of file.
    pub fn finish(&mut self) -> Option<String> {
        use sha2::Digest;
        self.hasher.take().map(|h| hex::encode(h.finalize()))
    }
}

impl<R: std::io::Read> std::io::Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_gives_back_its_size_whatever_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a|7|b.csv");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(fingerprint_size(&fingerprint(&p).unwrap()), Some(5));
        assert_eq!(fingerprint_size("no size"), None);
    }

    #[test]
    fn names_are_relative_to_the_fixed_part_of_the_pattern() {
        let n = |pat: &str, p: &str| matched_name(pat, Path::new(p));
        assert_eq!(n("/p/data/*.csv", "/p/data/a.csv"), "a.csv");
        assert_eq!(
            n("/p/data/*/t_?.csv", "/p/data/2026/t_1.csv"),
            "2026/t_1.csv"
        );
        assert_eq!(n("/p/data/x[0-9].csv", "/p/data/x1.csv"), "x1.csv");
        assert_eq!(n("/p/data/a.csv", "/p/data/a.csv"), "a.csv");
        assert_eq!(n("/p/./data/a.csv", "/p/./data/a.csv"), "a.csv");
        assert_eq!(n("/p/./data/*.csv", "/p/./data/a.csv"), "a.csv");
        // Moved project, same pattern relative to it: same name.
        assert_eq!(n("/q/r/data/*.csv", "/q/r/data/a.csv"), "a.csv");
    }

    #[test]
    fn content_digests_are_sha256_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            content_digest(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let big = vec![7u8; (1 << 20) * 2 + 5];
        std::fs::write(&p, &big).unwrap();
        use sha2::Digest;
        assert_eq!(
            content_digest(&p).unwrap(),
            hex::encode(sha2::Sha256::digest(&big))
        );
        assert!(content_digest(&dir.path().join("missing")).is_err());
    }
}
