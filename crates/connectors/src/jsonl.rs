//! JSON Lines decoder: one JSON object per line.
//!
//! Values become field text: strings as they are, numbers and booleans in their JSON spelling,
//! `null` as null, nested arrays and objects as compact JSON. Reasons produced here:
//! `invalid_utf8`, `invalid_json` (not JSON, or not an object), `unknown_column` (a key not
//! declared, when `unknown_columns: reject`), `missing_column` (a `required` key absent).
//! A UTF-8 byte order mark at the start of a file is dropped. A line longer than
//! [`MAX_LINE_BYTES`] is quarantined as `line_too_long` with its first bytes, the rest read
//! past and never held.

use crate::files::Hashed;
use crate::{Decoded, Error, MAX_LINE_BYTES, Result, SourceReader};
use sealtrail_core::Reason;
use sealtrail_core::record::{PosKind, Quarantined, RawBatch};
use sealtrail_spec::raw::UnknownColumns;
use sealtrail_spec::{Source, SourceConnector};
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug)]
pub struct JsonlReader {
    source: Source,
    inputs: VecDeque<PathBuf>,
    batch_rows: usize,
    cur: Option<(Arc<str>, std::io::BufReader<Hashed<std::fs::File>>, u64)>,
    line: Vec<u8>,
    /// Content digests of the files read to their end (incremental sources only).
    digests: Vec<(Arc<str>, String)>,
}

impl JsonlReader {
    pub fn new(source: Source, inputs: Vec<PathBuf>, batch_rows: usize) -> Self {
        Self {
            source,
            inputs: inputs.into(),
            batch_rows: batch_rows.max(1),
            cur: None,
            line: Vec::new(),
            digests: Vec::new(),
        }
    }
}

impl SourceReader for JsonlReader {
    fn next_batch(&mut self) -> Result<Option<Decoded>> {
        loop {
            if self.cur.is_none() {
                let Some(path) = self.inputs.pop_front() else {
                    return Ok(None);
                };
                let name: Arc<str> = path.display().to_string().into();
                let f = std::fs::File::open(&path).map_err(|e| Error::Unreadable {
                    input: name.to_string(),
                    reason: e.to_string(),
                })?;
                let hash =
                    matches!(&self.source.connector, SourceConnector::Jsonl(f) if f.incremental);
                let f = Hashed::new(f, hash);
                self.cur = Some((name, std::io::BufReader::with_capacity(1 << 20, f), 0));
            }
            let ncols = self.source.columns.len();
            let Some((name, reader, line_no)) = self.cur.as_mut() else {
                continue;
            };
            let mut batch = RawBatch::new(name.clone(), PosKind::Line, ncols);
            let mut malformed = Vec::new();
            let mut rows = 0;
            // Field text is addressed with 32-bit offsets: a batch ends well before 4 GiB.
            while rows < self.batch_rows
                && batch.text_len().max(batch.raw_len())
                    < RawBatch::MAX_TEXT_BYTES - 2 * MAX_LINE_BYTES
            {
                self.line.clear();
                let (n, cut) =
                    read_line_capped(reader, &mut self.line, MAX_LINE_BYTES).map_err(|e| {
                        Error::Unreadable {
                            input: name.to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                if n == 0 {
                    break;
                }
                *line_no += 1;
                if cut {
                    rows += 1;
                    malformed.push(Quarantined {
                        input: name.clone(),
                        pos_kind: PosKind::Line,
                        pos: *line_no,
                        key: None,
                        raw: std::mem::take(&mut self.line),
                        reasons: vec![Reason::new(
                            "line_too_long",
                            format!("line(max {MAX_LINE_BYTES} bytes)"),
                        )],
                    });
                    continue;
                }
                let mut raw: &[u8] = &self.line;
                raw = raw.strip_suffix(b"\n").unwrap_or(raw);
                raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if *line_no == 1 {
                    // A byte order mark (Windows tools write one) belongs to the file, not to
                    // its first record. A UTF-16 one means a file in the wrong encoding: each
                    // line would be quarantined, so the file is refused, saying why.
                    raw = raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw);
                    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(raw) {
                        return Err(Error::Unreadable {
                            input: name.to_string(),
                            reason: format!(
                                "the file starts with the byte order mark of {}: JSON Lines files are UTF-8; convert it (e.g. `iconv -f {} -t UTF-8`)",
                                enc.name(),
                                enc.name()
                            ),
                        });
                    }
                }
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue; // blank lines carry no record
                }
                rows += 1;
                let bad = |code: &str, rule: String| Quarantined {
                    input: name.clone(),
                    pos_kind: PosKind::Line,
                    pos: *line_no,
                    key: None,
                    raw: raw.to_vec(),
                    reasons: vec![Reason::new(code, rule)],
                };
                if std::str::from_utf8(raw).is_err() {
                    malformed.push(bad("invalid_utf8", "decode(utf-8)".into()));
                    continue;
                }
                let obj =
                    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw)
                    {
                        Ok(o) => o,
                        Err(_) => {
                            malformed.push(bad("invalid_json", "json(object)".into()));
                            continue;
                        }
                    };
                if self.source.unknown_columns == UnknownColumns::Reject
                    && let Some(k) = obj.keys().find(|k| self.source.column_index(k).is_none())
                {
                    malformed.push(bad("unknown_column", format!("columns({k})")));
                    continue;
                }
                if let Some(c) = self
                    .source
                    .columns
                    .iter()
                    .find(|c| c.required && !obj.contains_key(&c.name))
                {
                    malformed.push(bad("missing_column", format!("required({})", c.name)));
                    continue;
                }
                batch.begin(*line_no, raw);
                for c in &self.source.columns {
                    match obj.get(&c.name) {
                        None | Some(serde_json::Value::Null) => batch.push(None),
                        Some(serde_json::Value::String(s)) => batch.push(Some(s)),
                        Some(v) => batch.push(Some(&v.to_string())),
                    }
                }
            }
            if rows == 0 && batch.is_empty() && malformed.is_empty() {
                // At the end of the file: every byte went through the hasher.
                if let Some(d) = reader.get_mut().finish() {
                    self.digests.push((name.clone(), d));
                }
                self.cur = None;
                continue;
            }
            return Ok(Some(Decoded { batch, malformed }));
        }
    }

    fn content_digests(&mut self) -> Vec<(Arc<str>, String)> {
        std::mem::take(&mut self.digests)
    }
}

/// Reads one line (through its `\n`) into `out`, keeping at most `cap` bytes of it and
/// reading past the rest. Returns the line's length in the file (0 at the end of the file)
/// and whether it was longer than `cap` (then `out` holds its first `cap` bytes).
fn read_line_capped(
    r: &mut impl BufRead,
    out: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<(usize, bool)> {
    let (mut n, mut cut) = (0, false);
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((n, cut));
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // The terminator does not count against the cap; once cut, nothing more is kept.
        let body = take - usize::from(done);
        let room = cap.saturating_sub(out.len());
        if !cut && body > room {
            out.extend_from_slice(&buf[..room]);
            cut = true;
        } else if !cut {
            out.extend_from_slice(&buf[..take]);
        }
        r.consume(take);
        n += take;
        if done {
            return Ok((n, cut));
        }
    }
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// Whatever the read buffer's size, a capped line read gives the line (terminator
        /// included) when it fits and its first `cap` bytes when it does not, and reads past
        /// exactly one line.
        #[test]
        fn capped_line_reads_keep_a_bounded_head(
            lines in proptest::collection::vec("[ab]{0,12}", 1..6),
            cap in 0usize..10,
            buffer in 1usize..7,
        ) {
            let text = lines.join("\n");
            let mut r = std::io::BufReader::with_capacity(buffer, text.as_bytes());
            for (k, line) in lines.iter().enumerate() {
                let last = k + 1 == lines.len();
                let mut out = Vec::new();
                let (n, cut) = super::read_line_capped(&mut r, &mut out, cap).unwrap();
                proptest::prop_assert_eq!(n, line.len() + usize::from(!last));
                proptest::prop_assert_eq!(cut, line.len() > cap);
                let mut want = line.as_bytes()[..line.len().min(cap)].to_vec();
                if !cut && !last {
                    want.push(b'\n');
                }
                proptest::prop_assert_eq!(out, want);
            }
            let mut out = Vec::new();
            proptest::prop_assert_eq!(super::read_line_capped(&mut r, &mut out, cap).unwrap(), (0, false));
        }
    }

    /// A line over the limit (a whole document on one line) is quarantined with its first
    /// bytes; the lines around it load.
    #[test]
    fn a_line_over_the_limit_is_quarantined_with_its_head() {
        let mut file = b"{\"a\": \"x\"}\n[".to_vec();
        file.resize(file.len() + crate::MAX_LINE_BYTES + 10, b'1');
        file.extend_from_slice(b"]\n{\"a\": \"y\"}\n");
        let (_dir, mut r) = crate::test_reader("jsonl: { path: in }", &["a"], &file);
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!(d.batch.len(), 2);
        assert_eq!(
            (d.batch.get(0, 0), d.batch.get(1, 0)),
            (Some("x"), Some("y"))
        );
        assert_eq!(d.batch.position(1), 3);
        assert_eq!(d.malformed.len(), 1);
        let q = &d.malformed[0];
        assert_eq!((q.pos, q.reasons[0].code.as_str()), (2, "line_too_long"));
        assert_eq!(q.raw.len(), crate::MAX_LINE_BYTES);
        assert!(q.raw.starts_with(b"[111"));
    }

    /// A UTF-16 file (a Windows tool's "Unicode" export) is refused with what to do, not
    /// quarantined line by line.
    #[test]
    fn a_utf16_file_is_refused_saying_so() {
        let file: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("{\"a\": \"x\"}\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let (_dir, mut r) = crate::test_reader("jsonl: { path: in }", &["a"], &file);
        let e = r.next_batch().map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("byte order mark of UTF-16LE: JSON Lines files are UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_record() {
        let (_dir, mut r) = crate::test_reader(
            "jsonl: { path: in }",
            &["a"],
            b"\xef\xbb\xbf{\"a\": \"x\"}\r\n\xef\xbb\xbf{\"a\": \"y\"}\n",
        );
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!((d.batch.len(), d.batch.get(0, 0)), (1, Some("x")));
        assert_eq!(d.batch.raw(0), b"{\"a\": \"x\"}");
        // Only the file's first line may start with one: elsewhere it is not JSON.
        assert_eq!(d.malformed.len(), 1);
        assert_eq!(
            (d.malformed[0].pos, d.malformed[0].reasons[0].code.as_str()),
            (2, "invalid_json")
        );
    }
}
