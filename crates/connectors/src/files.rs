//! Input files: glob expansion and cheap fingerprints for incremental loads.

use crate::{Error, Result};
use std::path::PathBuf;

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
