//! Input files: glob expansion, and the identities incremental loads keep: a cheap
//! fingerprint (path, size, modification time) and the content's name and digest.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Files matching `pattern`, sorted by path so every run reads them in the same order.
/// A pattern without wildcards that matches nothing is an error (a typo must not load nothing
/// silently); a glob that matches nothing is an empty input. A glob skips the folders it
/// matches (`in/*` beside a subfolder), which hold no records of their own, but refuses
/// anything else that is not a file it can read (a named pipe, socket or device; a symbolic
/// link whose target is gone): its records would otherwise be missed without a word.
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
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => out.push(p),
            Ok(m) if m.is_dir() && wild => {}
            _ if !wild => {} // said below, as a path
            got => {
                return Err(Error::Unreadable {
                    input: p.display().to_string(),
                    reason: format!(
                        "`{pattern}` matches it, and {}; move it out of the folder or narrow the pattern",
                        not_a_file(&p, got.err())
                    ),
                });
            }
        }
    }
    if out.is_empty() && !wild {
        let path = Path::new(pattern);
        let reason = if path.is_dir() {
            format!(
                "it is a folder, not a file; to read the files in it, give a pattern such as `{}`",
                path.join("*").display()
            )
        } else if path.exists() || path.is_symlink() {
            format!(
                "{}; sources read files, whole",
                not_a_file(path, path.metadata().err())
            )
        } else {
            "no such file; check `path` in the spec (relative paths start at the spec's folder)"
                .to_string()
        };
        return Err(Error::Unreadable {
            input: pattern.into(),
            reason,
        });
    }
    out.sort();
    Ok(out)
}

/// Why `p`, which exists as a name but is neither a file nor a folder to skip, cannot be read:
/// `failed` is the error of following it, if that failed.
fn not_a_file(p: &Path, failed: Option<std::io::Error>) -> String {
    match failed {
        Some(e) if p.is_symlink() => match std::fs::read_link(p) {
            Ok(to) => format!(
                "it is a symbolic link to {}, which cannot be read ({})",
                to.display(),
                e.kind()
            ),
            Err(_) => format!("it is a symbolic link that cannot be followed ({})", e.kind()),
        },
        Some(e) => format!("it cannot be read ({})", e.kind()),
        None => "it is not a regular file (a named pipe, socket or device): copy its data to a file first".into(),
    }
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

/// The modification time in a [`fingerprint`] (`None` when the file system gave none).
pub fn fingerprint_modified(fingerprint: &str) -> Option<std::time::SystemTime> {
    let nanos: u64 = fingerprint.rsplit('|').next()?.parse().ok()?;
    (nanos > 0).then(|| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
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
    Ok(sha256_of(path, u64::MAX)?.0)
}

/// SHA-256 (lowercase hex) of the first `len` bytes of the file at `path`; None when it holds
/// fewer.
pub fn prefix_digest(path: &Path, len: u64) -> Result<Option<String>> {
    let (digest, read) = sha256_of(path, len)?;
    Ok((read == len).then_some(digest))
}

/// SHA-256 (lowercase hex) of the file's first `limit` bytes (all of it, if fewer), and how
/// many that was.
fn sha256_of(path: &Path, limit: u64) -> Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let unreadable = |e: std::io::Error| Error::Unreadable {
        input: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(unreadable)?.take(limit);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                read += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok((hex::encode(h.finalize()), read))
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

/// An input file's bytes as the text decoders (CSV, JSON Lines) read them: decompressed when
/// the file is gzip or zstd, known by its first bytes (not its name), and hashed as they come
/// off the disk, so that an incremental file's content digest is that of the file itself
/// (what [`content_digest`] computes before a run).
pub struct InputBytes(Inner, bool);

/// A file read up to the size it had when the run chose it.
type Upto = std::io::Take<std::fs::File>;

enum Inner {
    Plain(Hashed<Upto>),
    // Boxed: one per open file, and the decoders' states are hundreds of bytes.
    Gzip(Box<flate2::read::MultiGzDecoder<std::io::BufReader<Hashed<Upto>>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, std::io::BufReader<Hashed<Upto>>>>),
}

impl std::fmt::Debug for InputBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InputBytes({})", self.compression().unwrap_or("plain"))
    }
}

impl InputBytes {
    /// Opens `path`; `hash`: compute the digest of its bytes while reading.
    pub fn open(path: &Path, hash: bool) -> std::io::Result<Self> {
        Self::open_upto(path, hash, None)
    }

    /// [`InputBytes::open`], reading no more than the first `size` bytes (the size the file
    /// had when the run chose it): a file a producer appends to while the run reads it is
    /// loaded, and hashed, as the run recorded it, and what was appended is a later run's
    /// (which reads past these bytes: the file grew).
    pub fn open_upto(path: &Path, hash: bool, size: Option<u64>) -> std::io::Result<Self> {
        use std::io::{Read, Seek};
        let mut magic = [0u8; 4];
        let mut n = 0;
        let mut f = std::fs::File::open(path)?;
        while n < magic.len() {
            match f.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Back to the start: the hasher must see every byte.
        f.rewind()?;
        let file = Hashed::new(f.take(size.unwrap_or(u64::MAX)), hash);
        Ok(Self(
            match &magic[..n] {
                [0x1f, 0x8b, ..] => Inner::Gzip(Box::new(flate2::read::MultiGzDecoder::new(
                    std::io::BufReader::new(file),
                ))),
                [0x28, 0xb5, 0x2f, 0xfd] => {
                    Inner::Zstd(Box::new(zstd::stream::read::Decoder::new(file)?))
                }
                _ => Inner::Plain(file),
            },
            size.is_some(),
        ))
    }

    /// `gzip` or `zstd` for a compressed file.
    pub fn compression(&self) -> Option<&'static str> {
        match &self.0 {
            Inner::Plain(_) => None,
            Inner::Gzip(_) => Some("gzip"),
            Inner::Zstd(_) => Some("zstd"),
        }
    }

    /// Lowercase hex SHA-256 of the file's bytes (`None` when not hashing, or asked before),
    /// once the decoder has read to its end. What a compressed stream leaves after its end is
    /// read through the hasher too, so the digest is always of the whole file.
    pub fn finish(&mut self) -> Option<String> {
        let file = self.file();
        std::io::copy(file, &mut std::io::sink()).ok()?;
        file.finish()
    }

    /// Once the decoder has read to its end: how many bytes short of the size it was opened
    /// with ([`InputBytes::open_upto`]) the file ended, when it did (it was cut, or rewritten
    /// shorter, while the run read it). `None` when it was whole, or opened without a size.
    pub fn short_by(&mut self) -> Option<u64> {
        if !self.1 {
            return None;
        }
        let file = self.file();
        std::io::copy(file, &mut std::io::sink()).ok()?;
        let left = file.inner.limit();
        (left > 0).then_some(left)
    }

    /// The file under any decompression, as read so far.
    fn file(&mut self) -> &mut Hashed<Upto> {
        match &mut self.0 {
            Inner::Plain(f) => f,
            Inner::Gzip(d) => d.get_mut().get_mut(),
            Inner::Zstd(d) => d.get_mut().get_mut(),
        }
    }
}

/// Reads a compressed input to its end, checking its checksums, without keeping anything: the
/// checksums of gzip (CRC-32 per member) and zstd (per frame, when written) come after the data
/// they cover, so a damaged file would otherwise be found only once part of it had loaded.
/// Nothing is read for an uncompressed file.
pub fn check_compressed(path: &Path) -> Result<()> {
    let unreadable = |e: std::io::Error| Error::Unreadable {
        input: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut r = InputBytes::open(path, false).map_err(unreadable)?;
    if r.compression().is_some() {
        std::io::copy(&mut r, &mut std::io::sink()).map_err(unreadable)?;
    }
    Ok(())
}

impl std::io::Read for InputBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (got, kind) = match &mut self.0 {
            Inner::Plain(f) => return f.read(buf),
            Inner::Gzip(d) => (d.read(buf), "gzip"),
            Inner::Zstd(d) => (d.read(buf), "zstd"),
        };
        got.map_err(|e| match e.kind() {
            std::io::ErrorKind::Interrupted => e,
            k => std::io::Error::new(
                k,
                format!(
                    "the file is {kind}-compressed and its compressed data is damaged or cut short ({e}); an intact copy of the file is needed"
                ),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path without wildcards that names no file says why: missing, a folder (with the
    /// pattern that reads its files), or something that is not a regular file.
    #[test]
    fn a_path_that_is_no_file_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let reason = |p: &Path| match list(&p.display().to_string()) {
            Err(Error::Unreadable { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason(&dir.path().join("nope.csv")).starts_with("no such file"));
        let said = reason(dir.path());
        assert!(
            said.starts_with("it is a folder")
                && said.contains(&dir.path().join("*").display().to_string()),
            "{said}"
        );
        let pipe = dir.path().join("pipe.csv");
        let made = std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(reason(&pipe).starts_with("it is not a regular file"));
        // A glob skips folders, and refuses, by name, what else is not a file.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.csv"), "id\n1\n").unwrap();
        // What `list(pattern)` refuses: the path it names, and why.
        let refused = |pattern: &Path| match list(&pattern.display().to_string()) {
            Err(Error::Unreadable { input, reason }) => (input, reason),
            other => panic!("{other:?}"),
        };
        let (input, why) = refused(&dir.path().join("*"));
        assert_eq!(input, pipe.display().to_string());
        assert!(
            why.contains("matches it, and it is not a regular file")
                && why.contains("narrow the pattern"),
            "{why}"
        );
        std::fs::remove_file(&pipe).unwrap();
        assert!(
            list(&dir.path().join("*").display().to_string())
                .unwrap()
                .is_empty()
        );
        let gone = sub.join("b.csv");
        std::os::unix::fs::symlink(dir.path().join("unmounted/b.csv"), &gone).unwrap();
        let (input, why) = refused(&sub.join("*.csv"));
        assert_eq!(input, gone.display().to_string());
        assert!(
            why.contains("it is a symbolic link to ") && why.contains("unmounted/b.csv"),
            "{why}"
        );
        assert!(reason(&gone).starts_with("it is a symbolic link to "));
        std::fs::remove_file(&gone).unwrap();
        assert_eq!(
            list(&sub.join("*.csv").display().to_string()).unwrap(),
            vec![sub.join("a.csv")]
        );
    }

    /// 50,000 short CSV lines.
    fn some_text() -> Vec<u8> {
        (0..50_000)
            .flat_map(|i| format!("{i},v{i}\n").into_bytes())
            .collect()
    }

    fn gz(text: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    /// Gzip (several members, as `cat a.gz b.gz` makes) and zstd files read as their text, and
    /// the digest computed while reading is the file's own, what `content_digest` gives.
    #[test]
    fn compressed_inputs_read_as_their_text_and_digest_as_their_bytes() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let text = some_text();
        let (a, b) = text.split_at(text.len() / 3);
        for (name, bytes, kind) in [
            ("plain.csv", text.clone(), None),
            ("two.csv.gz", [gz(a), gz(b)].concat(), Some("gzip")),
            (
                "t.csv.zst",
                zstd::encode_all(&text[..], 1).unwrap(),
                Some("zstd"),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            let mut r = InputBytes::open(&path, true).unwrap();
            assert_eq!(r.compression(), kind, "{name}");
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert!(got == text, "{name}: not the text");
            assert_eq!(r.finish(), Some(content_digest(&path).unwrap()), "{name}");
        }
    }

    /// A compressed file cut short, or damaged, is an error that says so; never wrong text.
    #[test]
    fn a_damaged_compressed_input_is_an_error_saying_so() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let text = some_text();
        let gz = gz(&text);
        let zst = zstd::encode_all(&text[..], 1).unwrap();
        let mut flipped = gz.clone();
        flipped[gz.len() / 2] ^= 0xff;
        for (name, bytes, kind) in [
            ("cut.csv.gz", gz[..gz.len() / 2].to_vec(), "gzip"),
            ("flipped.csv.gz", flipped, "gzip"),
            ("cut.csv.zst", zst[..zst.len() / 2].to_vec(), "zstd"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            let mut got = Vec::new();
            let e = InputBytes::open(&path, false)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "the file is {kind}-compressed and its compressed data is damaged or cut short"
                )),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn a_fingerprint_gives_back_its_size_and_time_whatever_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a|7|b.csv");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(fingerprint_size(&fingerprint(&p).unwrap()), Some(5));
        assert_eq!(fingerprint_size("no size"), None);
        // And its modification time, to the nanosecond the file system keeps.
        let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(
            fingerprint_modified(&fingerprint(&p).unwrap()),
            Some(modified)
        );
        assert_eq!(fingerprint_modified("a|5|0"), None);
        assert_eq!(fingerprint_modified("a|5|soon"), None);
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

    /// Read up to the size a run chose it at, a file that grew since gives those bytes and
    /// their digest (what the run records), not the bytes appended.
    #[test]
    fn a_file_is_read_up_to_the_size_it_was_chosen_at() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, "id\n1\n2\n").unwrap();
        for (size, want) in [(Some(5), &b"id\n1\n"[..]), (None, &b"id\n1\n2\n"[..])] {
            let mut r = InputBytes::open_upto(&path, true, size).unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert_eq!(got, want);
            let digest = prefix_digest(&path, want.len() as u64).unwrap();
            assert_eq!(r.finish(), digest);
            assert_eq!(r.short_by(), None, "read whole");
        }
        // Cut shorter than it was chosen at: it says by how much.
        let mut r = InputBytes::open_upto(&path, false, Some(12)).unwrap();
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(r.short_by(), Some(5));
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
