//! JSON Lines decoder: one JSON object per line.
//!
//! Values become field text: strings as they are, numbers, booleans, nested arrays and objects
//! in their exact JSON text from the line (a number's digits are never rounded through a
//! float; one in exponent notation bound for a decimal column is written out in plain digits),
//! `null` as null. Reasons produced here: `invalid_utf8`, `invalid_json` (not JSON, not an
//! object, or a key given twice), `unknown_column` (a key not declared, when
//! `unknown_columns: reject`; the rule gives its place in the object, not the key, which is
//! the input's text), `missing_column` (a `required` key absent).
//! A UTF-8 byte order mark at the start of a file is dropped. A line longer than
//! [`MAX_LINE_BYTES`] is quarantined as `line_too_long` with its first bytes, the rest read
//! past and never held.

use crate::files::InputBytes;
use crate::{Decoded, Error, MAX_LINE_BYTES, Result, SourceReader};
use sealtrail_core::Reason;
use sealtrail_core::record::{PosKind, Quarantined, RawBatch};
use sealtrail_spec::raw::UnknownColumns;
use sealtrail_spec::{ColumnType, Source, SourceConnector};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug)]
pub struct JsonlReader {
    source: Source,
    inputs: VecDeque<PathBuf>,
    batch_rows: usize,
    cur: Option<OpenJsonl>,
    line: Vec<u8>,
    /// Content digests of the files read to their end (incremental sources only).
    digests: Vec<(Arc<str>, String)>,
    /// Per input: the bytes an earlier run loaded ([`crate::SkipLoaded`]).
    skips: crate::SkipLoaded,
    /// Per input, the size it had when the run chose it: no more of it is read.
    sizes: crate::ReadSizes,
}

/// The file being read.
#[derive(Debug)]
struct OpenJsonl {
    name: Arc<str>,
    reader: std::io::BufReader<InputBytes>,
    /// The last line's number (1-based; 0 before the first).
    line_no: u64,
    /// Offset in the file of the next line.
    offset: u64,
    /// Lines that start before this offset were loaded by an earlier run: read past.
    skip: u64,
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
            skips: Default::default(),
            sizes: Default::default(),
        }
    }

    /// Reads past the records of each input that start before its offset in `skips`.
    pub fn skipping(mut self, skips: crate::SkipLoaded) -> Self {
        self.skips = skips;
        self
    }

    /// Reads no more of each input in `sizes` than its size there.
    pub fn reading_up_to(mut self, sizes: crate::ReadSizes) -> Self {
        self.sizes = sizes;
        self
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
                let hash =
                    matches!(&self.source.connector, SourceConnector::Jsonl(f) if f.incremental);
                let f = InputBytes::open_upto(&path, hash, self.sizes.get(&path).copied())
                    .map_err(|e| Error::Unreadable {
                        input: name.to_string(),
                        reason: e.to_string(),
                    })?;
                let skip = self.skips.get(&path).copied().unwrap_or(0);
                self.cur = Some(OpenJsonl {
                    name,
                    reader: std::io::BufReader::with_capacity(1 << 20, f),
                    line_no: 0,
                    offset: 0,
                    skip,
                });
            }
            let ncols = self.source.columns.len();
            let Some(OpenJsonl {
                name,
                reader,
                line_no,
                offset,
                skip,
            }) = self.cur.as_mut()
            else {
                continue;
            };
            let mut batch = RawBatch::new(name.clone(), PosKind::Line, ncols);
            let mut slots: Vec<Option<usize>> = Vec::with_capacity(ncols);
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
                let at = *offset;
                *offset += n as u64;
                if at < *skip {
                    crate::check_not_straddling(name, *offset - 1, *skip)?;
                    continue;
                }
                if cut {
                    rows += 1;
                    malformed.push(Quarantined {
                        input: name.clone(),
                        pos_kind: PosKind::Line,
                        pos: *line_no,
                        key: None,
                        subject: None,
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
                    subject: None,
                    raw: raw.to_vec(),
                    reasons: vec![Reason::new(code, rule)],
                };
                if std::str::from_utf8(raw).is_err() {
                    malformed.push(bad("invalid_utf8", "decode(utf-8)".into()));
                    continue;
                }
                let members = match serde_json::from_slice::<Members<'_>>(raw) {
                    Ok(Members(members)) => members,
                    Err(e) => {
                        malformed.push(bad("invalid_json", json_rule(&e)));
                        continue;
                    }
                };
                // Each declared column's member, by index into `members`; a key given twice is
                // ambiguous (parsers differ on which value wins), so the record is not loaded.
                slots.clear();
                slots.resize(ncols, None);
                let mut undeclared: Vec<&str> = Vec::new();
                let mut problem = None;
                for (i, (k, _)) in members.iter().enumerate() {
                    match self.source.column_index(k) {
                        Some(c) if slots[c].is_some() => {
                            problem = Some(("invalid_json", format!("json(duplicate key {k})")));
                            break;
                        }
                        Some(c) => slots[c] = Some(i),
                        None if undeclared.contains(&k.as_str()) => {
                            // Not named: an undeclared key is the input's text, not the spec's.
                            problem =
                                Some(("invalid_json", "json(duplicate undeclared key)".into()));
                            break;
                        }
                        None if self.source.unknown_columns == UnknownColumns::Reject => {
                            // Its place in the object, not its text (the input's, as above).
                            problem = Some((
                                "unknown_column",
                                format!("columns(undeclared key {})", i + 1),
                            ));
                            break;
                        }
                        None => undeclared.push(k),
                    }
                }
                if problem.is_none()
                    && let Some(c) = self
                        .source
                        .columns
                        .iter()
                        .zip(&slots)
                        .find(|(c, m)| c.required && m.is_none())
                {
                    problem = Some(("missing_column", format!("required({})", c.0.name)));
                }
                if let Some((code, rule)) = problem {
                    malformed.push(bad(code, rule));
                    continue;
                }
                // Each column's text, decoded before the record begins (a string that does not
                // unescape quarantines the record instead of loading its raw spelling).
                let mut values: Vec<Option<Cow<'_, str>>> = Vec::with_capacity(ncols);
                for (c, m) in self.source.columns.iter().zip(&slots) {
                    let Some(v) = m.map(|i| members[i].1.get()) else {
                        values.push(None);
                        continue;
                    };
                    values.push(match v.as_bytes().first() {
                        Some(b'n') => None,
                        Some(b'"') => match serde_json::from_str::<&str>(v) {
                            Ok(s) => Some(Cow::Borrowed(s)),
                            // Escapes: the string is unescaped into a new one.
                            Err(_) => match serde_json::from_str::<String>(v) {
                                Ok(s) => Some(Cow::Owned(s)),
                                Err(_) => break,
                            },
                        },
                        _ if matches!(c.ty, ColumnType::Decimal { .. }) => {
                            Some(plain_decimal(v).map_or(Cow::Borrowed(v), Cow::Owned))
                        }
                        _ => Some(Cow::Borrowed(v)),
                    });
                }
                if values.len() < ncols {
                    malformed.push(bad("invalid_json", "json(string)".into()));
                    continue;
                }
                batch.begin(*line_no, raw);
                for v in &values {
                    batch.push(v.as_deref());
                }
            }
            if rows == 0 && batch.is_empty() && malformed.is_empty() {
                if let Some(short) = reader.get_mut().short_by() {
                    return Err(crate::changed_while_read(name, short));
                }
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
/// The members of one JSON object, each value as its exact JSON text. Read this way rather
/// than into `serde_json::Map` so that a key given twice is seen (a map keeps the last value
/// silently) and numbers keep their digits: through `f64`, a price of 17 significant digits
/// would load rounded.
struct Members<'a>(Vec<(String, &'a RawValue)>);

/// The rule of a line that is not a JSON object: where it breaks, so the fix can be found,
/// without serde_json's message (which may quote the input's text, a sensitive value).
fn json_rule(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax => format!("json(syntax error at column {})", e.column()),
        Category::Eof => "json(line ends inside the object)".into(),
        Category::Data | Category::Io => "json(not an object)".into(),
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(16));
                while let Some(k) = m.next_key::<String>()? {
                    out.push((k, m.next_value::<&'de RawValue>()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Object)
    }
}

/// A JSON number in exponent notation (`1.5E-5`) written out in plain digits (`0.000015`),
/// exactly, for a decimal column (whose text form has no exponent); `None` for anything else,
/// or an exponent beyond what a decimal of 38 digits could use.
fn plain_decimal(v: &str) -> Option<String> {
    let (mantissa, exp) = v.split_once(['e', 'E'])?;
    let exp: i64 = exp.parse().ok().filter(|e: &i64| e.abs() <= 100)?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    // Where the point goes, counted from the left of `digits`.
    let point = int.len() as i64 + exp;
    let (int, frac) = if point <= 0 {
        (
            "0".to_string(),
            format!("{}{digits}", "0".repeat((-point) as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        let (i, f) = digits.split_at(point as usize);
        (i.to_string(), f.to_string())
    };
    let int = match int.trim_start_matches('0') {
        "" => "0",
        t => t,
    };
    Some(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

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

        /// Writing out an exponent keeps the number's value exactly: the same significant
        /// digits at the same power of ten, in a form with no exponent.
        #[test]
        fn written_out_exponents_keep_the_value(
            int in "[0-9]{1,12}",
            frac in proptest::option::of("[0-9]{1,12}"),
            exp in -40i64..40,
            upper in proptest::bool::ANY,
            neg in proptest::bool::ANY,
        ) {
            let v = format!(
                "{}{int}{}{}{exp}",
                if neg { "-" } else { "" },
                frac.as_deref().map(|f| format!(".{f}")).unwrap_or_default(),
                if upper { "E" } else { "e" },
            );
            let out = super::plain_decimal(&v).unwrap();
            proptest::prop_assert!(!out.contains(['e', 'E']), "{}", out);
            proptest::prop_assert_eq!(out.starts_with('-'), neg);
            // (significant digits, power of ten of the last one) of `digits` x 10^-scale.
            let norm = |digits: String, scale: i64| {
                let t = digits.trim_start_matches('0');
                let kept = t.trim_end_matches('0');
                (kept.to_string(), if kept.is_empty() { 0 } else { (t.len() - kept.len()) as i64 - scale })
            };
            let frac = frac.unwrap_or_default();
            let body = out.trim_start_matches('-');
            let (oi, of) = body.split_once('.').unwrap_or((body, ""));
            proptest::prop_assert_eq!(
                norm(format!("{oi}{of}"), of.len() as i64),
                norm(format!("{int}{frac}"), frac.len() as i64 - exp)
            );
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

    /// Numbers keep their digits (a price of 18 significant digits is not rounded through a
    /// float), nested values and booleans their JSON text, strings are unescaped, and a number
    /// in exponent notation bound for a decimal column is written out in plain digits.
    #[test]
    fn values_keep_their_exact_text() {
        let (_dir, mut r) = crate::test_reader(
            "jsonl: { path: in }",
            &["a", "b", "c", "d", "e", "px, type: \"decimal(38,10)\""],
            br#"{"a": 123456789.123456789, "b": {"y": 1, "x": 2.50}, "c": "t\u00e9\"", "d": true, "e": 1e2, "px": 1.5E-5}"#,
        );
        let d = r.next_batch().unwrap().unwrap();
        assert!(d.malformed.is_empty(), "{:?}", d.malformed);
        let row: Vec<Option<&str>> = (0..6).map(|c| d.batch.get(0, c)).collect();
        assert_eq!(
            row,
            [
                Some("123456789.123456789"),
                Some(r#"{"y": 1, "x": 2.50}"#),
                Some("t\u{e9}\""),
                Some("true"),
                Some("1e2"),
                Some("0.000015"),
            ]
        );
    }

    /// With `unknown_columns: reject`, a record with an undeclared key is quarantined with its
    /// place in the object: the key is the input's text (here an email), never repeated.
    #[test]
    fn an_undeclared_key_is_quarantined_by_its_place() {
        let (_dir, mut r) = crate::test_reader(
            "jsonl: { path: in }\n    unknown_columns: reject",
            &["a", "b"],
            b"{\"a\": \"x\", \"k@x.io\": 1, \"b\": 2}\n{\"b\": 3, \"a\": \"y\"}\n",
        );
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!((d.batch.len(), d.batch.get(0, 0)), (1, Some("y")));
        assert_eq!(d.malformed.len(), 1);
        let q = &d.malformed[0];
        assert_eq!(
            (
                q.pos,
                q.reasons[0].code.as_str(),
                q.reasons[0].rule.as_str()
            ),
            (1, "unknown_column", "columns(undeclared key 2)")
        );
        assert!(!format!("{:?}", q.reasons).contains('@'));
    }

    /// A key given twice is ambiguous (JSON parsers differ on which value wins): the record is
    /// quarantined, naming the key, never loaded with either value.
    #[test]
    fn a_key_given_twice_is_quarantined() {
        let (_dir, mut r) = crate::test_reader(
            "jsonl: { path: in }\n    unknown_columns: drop",
            &["a", "b"],
            b"{\"a\": \"x\", \"b\": 1, \"a\": \"y\"}\n{\"a\": \"z\"}\n{\"a\": \"w\", \"k@x.io\": 1, \"k@x.io\": 2}\n",
        );
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!((d.batch.len(), d.batch.get(0, 0)), (1, Some("z")));
        let got: Vec<(u64, &str, &str)> = d
            .malformed
            .iter()
            .map(|q| {
                (
                    q.pos,
                    q.reasons[0].code.as_str(),
                    q.reasons[0].rule.as_str(),
                )
            })
            .collect();
        // An undeclared key is the input's text: not repeated in the rule.
        assert_eq!(
            got,
            [
                (1, "invalid_json", "json(duplicate key a)"),
                (3, "invalid_json", "json(duplicate undeclared key)")
            ]
        );
    }

    /// A line that is not an object says where it breaks, never what it holds.
    #[test]
    fn lines_that_are_not_objects_say_where_they_break() {
        let (_dir, mut r) = crate::test_reader(
            "jsonl: { path: in }",
            &["a"],
            b"{\"a\": \"x\" \"b\": 1}\n{\"a\": NaN}\n{\"a\": \"secret@x.io\"\n[\"secret@x.io\"]\n\"secret@x.io\"\n{\"a\": 1} x\n{\"a\": \"ok\"}\n",
        );
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!((d.batch.len(), d.batch.get(0, 0)), (1, Some("ok")));
        let got: Vec<(u64, &str)> = d
            .malformed
            .iter()
            .map(|q| (q.pos, q.reasons[0].rule.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "json(syntax error at column 11)"),
                (2, "json(syntax error at column 7)"),
                (3, "json(line ends inside the object)"),
                (4, "json(not an object)"),
                (5, "json(not an object)"),
                (6, "json(syntax error at column 10)"),
            ]
        );
    }

    #[test]
    fn exponents_are_written_out_exactly() {
        for (v, want) in [
            ("1e2", Some("100")),
            ("1.5E-5", Some("0.000015")),
            ("-2.50e1", Some("-25.0")),
            ("12e-1", Some("1.2")),
            ("12e-2", Some("0.12")),
            ("0.0e0", Some("0.0")),
            ("5e-0", Some("5")),
            ("5E+3", Some("5000")),
            ("007.5e1", Some("75")),
            ("1e101", None),
            ("1.5", None),
            ("true", None),
        ] {
            assert_eq!(super::plain_decimal(v).as_deref(), want, "{v}");
        }
    }
}
