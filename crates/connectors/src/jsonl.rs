//! JSON Lines decoder: one JSON object per line.
//!
//! Values become field text: strings as they are, numbers and booleans in their JSON spelling,
//! `null` as null, nested arrays and objects as compact JSON. Reasons produced here:
//! `invalid_utf8`, `invalid_json` (not JSON, or not an object), `unknown_column` (a key not
//! declared, when `unknown_columns: reject`), `missing_column` (a `required` key absent).
//! A UTF-8 byte order mark at the start of a file is dropped.

use crate::files::Hashed;
use crate::{Decoded, Error, Result, SourceReader};
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
            while rows < self.batch_rows {
                self.line.clear();
                let n =
                    reader
                        .read_until(b'\n', &mut self.line)
                        .map_err(|e| Error::Unreadable {
                            input: name.to_string(),
                            reason: e.to_string(),
                        })?;
                if n == 0 {
                    break;
                }
                *line_no += 1;
                let mut raw: &[u8] = &self.line;
                raw = raw.strip_suffix(b"\n").unwrap_or(raw);
                raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if *line_no == 1 {
                    // A byte order mark (Windows tools write one) belongs to the file, not to
                    // its first record.
                    raw = raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw);
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

#[cfg(test)]
mod tests {
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
