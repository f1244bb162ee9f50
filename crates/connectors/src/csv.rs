//! CSV decoder (RFC 4180, read line by line with bounded memory).
//!
//! Hand-written rather than the `csv` crate because the engine needs, per record, the exact
//! source bytes and physical line number, and must keep going on malformed lines (quarantine
//! them with a reason) instead of stopping; that is a few dozen lines on top of `memchr`.
//!
//! Dialect: separator and quote configurable; `""` inside a quoted field is one quote; no
//! trimming; a quote is special only at the start of a field; text after a closing quote is
//! kept literally (as Python's csv module does). A quoted field may span lines (up to
//! [`MAX_RECORD_BYTES`]); the record's position is its first line. Line terminators are `\n`
//! or `\r\n` and are not part of the record.
//!
//! Encodings: UTF-8, any ASCII-compatible legacy encoding the spec declares (the spec checks
//! that the separator and quote cannot occur inside a multi-byte character), or UTF-16 (LE or
//! BE, as spreadsheets export "Unicode text"). Lines are found in the undecoded bytes (for
//! UTF-16, `\n` code units at even offsets; a byte order mark at the start of the file is
//! skipped); each record is then decoded to UTF-8 whole and split into fields. A record's
//! source bytes, which quarantine keeps and its commitment hashes, are always the file's own.
//!
//! Reasons produced here: `invalid_utf8` (or `invalid_encoding` for a legacy encoding),
//! `wrong_field_count`, `unterminated_quote`, `line_too_long` (a physical line over
//! [`MAX_LINE_BYTES`]: its first bytes are kept, the rest is read past, never held).

use crate::{Decoded, Error, Result, SourceReader};
use sealtrail_core::Reason;
use sealtrail_core::record::{PosKind, Quarantined, RawBatch};
use sealtrail_spec::raw::UnknownColumns;
use sealtrail_spec::{ColumnType, CsvOptions, Source};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// A quoted field may not make a record longer than this; beyond it the opening line is
/// quarantined as `unterminated_quote` (a stray quote must not swallow the rest of a file).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
pub use crate::MAX_LINE_BYTES;
/// Bytes read at a time: the first read of a file is [`FIRST_READ`] and each next one doubles,
/// up to [`READ_CHUNK`]. A small file then costs a small buffer (a source of thousands of small
/// files, or a fuzzer's inputs, filled 4 MiB with zeroes per file before).
const READ_CHUNK: usize = 4 << 20;
const FIRST_READ: usize = 64 << 10;

#[derive(Debug)]
pub struct CsvReader {
    source: Source,
    opts: CsvOptions,
    inputs: VecDeque<PathBuf>,
    batch_rows: usize,
    cur: Option<OpenFile>,
    fields: Vec<(usize, usize, bool)>,
    /// Bytes per record of the previous batch (the larger of its raw and field text), to
    /// size the next batch's buffers once instead of doubling them up to it (the copies and
    /// the freed halves cost time and, through fragmentation, resident memory).
    bytes_per_row: usize,
    /// Content digests of the files read to their end (incremental sources only).
    digests: Vec<(Arc<str>, String)>,
    /// Per input: the bytes an earlier run loaded, whose records are read past (a file that
    /// grew since: [`crate::SkipLoaded`]).
    skips: crate::SkipLoaded,
    /// Per input, the size it had when the run chose it: no more of it is read.
    sizes: crate::ReadSizes,
}

#[derive(Debug)]
struct OpenFile {
    name: Arc<str>,
    file: crate::files::InputBytes,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// Bytes the next [`refill`] reads.
    chunk: usize,
    /// Physical line number of the next line to read (1-based).
    line_no: u64,
    /// Offset in the file of `buf[0]`.
    base: u64,
    /// Records that start before this offset were loaded by an earlier run: read past.
    skip: u64,
    /// For each declared column, its index among the file's fields.
    map: Vec<Option<usize>>,
    nfields: usize,
}

/// How one record of text split.
enum Split {
    Complete,
    /// Ended inside a quoted field: the record continues on the next line. The field's
    /// opening quote is at `field`; `from` is the end of the text looked at (the text holds
    /// no closing quote after the opening one).
    Open {
        field: usize,
        from: usize,
    },
}

/// Splits `line` into fields: (start, end, quoted). For quoted fields the range excludes the
/// opening quote and includes everything up to the separator.
fn split(line: &[u8], delim: u8, quote: u8, out: &mut Vec<(usize, usize, bool)>) -> Split {
    out.clear();
    split_from(line, delim, quote, out, None)
}

/// [`split`], or with `resume` (what an [`Split::Open`] said of a prefix of `line`, whose
/// fields are still in `out`) the rest of a record that grew: nothing before the open field's
/// unscanned part is looked at again.
fn split_from(
    line: &[u8],
    delim: u8,
    quote: u8,
    out: &mut Vec<(usize, usize, bool)>,
    resume: Option<(usize, usize)>,
) -> Split {
    let n = line.len();
    let (mut i, mut scan_from) = match resume {
        Some((field, from)) => (field, Some(from)),
        None => (0, None),
    };
    loop {
        if i < n && line[i] == quote {
            let mut j = scan_from.take().unwrap_or(i + 1);
            let close = loop {
                match memchr::memchr(quote, &line[j..]) {
                    // No quote in `j..n`: a longer record is looked at from `n` on.
                    None => return Split::Open { field: i, from: n },
                    Some(q) if j + q + 1 < n && line[j + q + 1] == quote => j += q + 2,
                    Some(q) => break j + q,
                }
            };
            let end = memchr::memchr(delim, &line[close + 1..]).map_or(n, |k| close + 1 + k);
            out.push((i + 1, end, true));
            i = end;
        } else {
            let end = memchr::memchr(delim, &line[i..]).map_or(n, |k| i + k);
            out.push((i, end, false));
            i = end;
        }
        if i >= n {
            return Split::Complete;
        }
        i += 1; // the separator
        if i == n {
            out.push((n, n, false));
            return Split::Complete;
        }
    }
}

/// A record's text: its bytes as they are when the encoding is UTF-8 and they are valid, decoded
/// to UTF-8 for a legacy encoding; `None` when they do not decode (no replacement characters:
/// a record that does not decode is quarantined, never loaded altered). The record's source
/// bytes, which quarantine keeps and commitments hash, are never the decoded text.
fn decode<'a>(enc: &'static encoding_rs::Encoding, raw: &'a [u8]) -> Option<Cow<'a, str>> {
    if enc == encoding_rs::UTF_8 {
        std::str::from_utf8(raw).ok().map(Cow::Borrowed)
    } else {
        enc.decode_without_bom_handling_and_without_replacement(raw)
    }
}

/// A column name from a file, as an error message may show it: control characters (a
/// terminal escape sequence, NUL bytes) and bidirectional overrides escaped, other text kept.
fn shown(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                c.escape_unicode().to_string()
            }
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Appends the unescaped content of a quoted field (`""` -> `"`, closing quote dropped).
fn unescape_into(s: &str, quote: char, out: &mut String) {
    let mut rest = s;
    while let Some(q) = rest.find(quote) {
        out.push_str(&rest[..q]);
        let after = &rest[q + 1..];
        if after.starts_with(quote) {
            out.push(quote);
            rest = &after[1..];
        } else {
            // Closing quote: whatever follows up to the separator is kept literally.
            out.push_str(after);
            return;
        }
    }
    out.push_str(rest);
}

/// A header name and a declared column name that differ at most in ASCII case and the spaces
/// around the header name.
fn alike(header: &str, declared: &str) -> bool {
    header.trim().eq_ignore_ascii_case(declared)
}

impl CsvReader {
    pub fn new(source: Source, opts: CsvOptions, inputs: Vec<PathBuf>, batch_rows: usize) -> Self {
        Self {
            source,
            opts,
            inputs: inputs.into(),
            batch_rows: batch_rows.max(1),
            cur: None,
            fields: Vec::new(),
            bytes_per_row: 64,
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

    fn open(&mut self, path: PathBuf) -> Result<OpenFile> {
        let name: Arc<str> = path.display().to_string().into();
        let unreadable = |e: std::io::Error| Error::Unreadable {
            input: name.to_string(),
            reason: e.to_string(),
        };
        let file = crate::files::InputBytes::open_upto(
            &path,
            self.opts.files.incremental,
            self.sizes.get(&path).copied(),
        )
        .map_err(unreadable)?;
        let mut f = OpenFile {
            name: name.clone(),
            file,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            chunk: FIRST_READ,
            line_no: 1,
            base: 0,
            skip: self.skips.get(&path).copied().unwrap_or(0),
            map: Vec::new(),
            nfields: 0,
        };
        // A byte order mark names the file's encoding. UTF-16's is not part of any record,
        // header line or not (UTF-8's is dropped from the header). Another encoding's mark
        // means the spec names the wrong one: every line would decode to nonsense, so the
        // file is refused, saying what to declare, rather than quarantined line by line.
        let mut from = 0;
        refill(&mut f, &mut from)?;
        if let Some((marked, len)) = encoding_rs::Encoding::for_bom(&f.buf) {
            let declared = self.opts.encoding;
            if marked != declared {
                return Err(Error::Unreadable {
                    input: name.to_string(),
                    reason: format!(
                        "the file starts with the byte order mark of {}, but the spec declares encoding {}; declare `encoding: {}`",
                        marked.name(),
                        declared.name(),
                        marked.name().to_ascii_lowercase()
                    ),
                });
            }
            if Units::of(declared) != Units::Bytes {
                f.pos = len;
            }
        }
        let ncols = self.source.columns.len();
        if !self.opts.header {
            f.map = (0..ncols).map(Some).collect();
            f.nfields = ncols;
            return Ok(f);
        }
        let (start, end, header_lines) = match next_record(
            &mut f,
            self.opts.encoding,
            self.opts.quote,
            &mut self.fields,
            self.opts.delimiter,
        )? {
            Some(Next::Record(start, end, lines)) => (start, end, lines),
            Some(Next::TooLong(_)) => {
                return Err(Error::Unreadable {
                    input: name.to_string(),
                    reason: format!(
                        "the header line is longer than {MAX_LINE_BYTES} bytes (is this a CSV file?)"
                    ),
                });
            }
            None => {
                // Zero bytes: no header to check and no record to lose. Feeds deliver such
                // files for "nothing today"; failing the run would hold back every other file.
                // (The engine warns about it once, when it chooses the run's inputs.)
                f.map = vec![None; ncols];
                return Ok(f);
            }
        };
        let enc = self.opts.encoding;
        let header = decode(enc, &f.buf[start..end]).ok_or_else(|| Error::Schema {
            input: name.to_string(),
            source_name: self.source.name.clone(),
            reason: format!("the header line is not valid {}", enc.name()),
        })?;
        let header = header.strip_prefix('\u{feff}').unwrap_or(&header);
        split(
            header.as_bytes(),
            self.opts.delimiter,
            self.opts.quote,
            &mut self.fields,
        );
        let names: Vec<String> = self
            .fields
            .iter()
            .map(|&(a, b, q)| {
                let mut s = String::new();
                if q {
                    unescape_into(&header[a..b], self.opts.quote as char, &mut s)
                } else {
                    s.push_str(&header[a..b])
                }
                s
            })
            .collect();
        // ASCII text in UTF-16 without a byte order mark reads as text with a NUL byte between
        // characters: a header that does not fit says so.
        let hint = if Units::of(enc) == Units::Bytes && header.contains('\0') {
            " (the header holds NUL bytes: is the file UTF-16? declare `encoding: utf-16le` or `utf-16be`)"
        } else {
            ""
        };
        let schema_err = |reason: String| Error::Schema {
            input: name.to_string(),
            source_name: self.source.name.clone(),
            reason: reason + hint,
        };
        // A header line that names no declared column, even in another case or with spaces,
        // is most likely the file's first record (a file without a header line, read with
        // `header: true`): its fields are data, and an error must not repeat them.
        let names_a_column = |n: &String| self.source.columns.iter().any(|c| alike(n, &c.name));
        if !self.source.columns.is_empty() && !names.iter().any(names_a_column) {
            return Err(schema_err(format!(
                "every declared column is missing from the header line, whose {} field(s) name none of them ({} expected): if the file has no header line, set `header: false` (the fields are not shown here: they may be data)",
                names.len(),
                self.source
                    .columns
                    .iter()
                    .map(|c| format!("`{}`", c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(schema_err(format!(
                    "the header names column `{}` twice",
                    shown(n)
                )));
            }
        }
        let mut missing = Vec::new();
        for c in &self.source.columns {
            let at = names.iter().position(|n| n == &c.name);
            if at.is_none() && c.required {
                missing.push(c.name.clone());
            }
            f.map.push(at);
        }
        if !missing.is_empty() {
            // A header name that differs only in case or surrounding spaces is named: names
            // are matched exactly, and `ID` or ` id` is easy to miss in a message.
            let near: Vec<String> = missing
                .iter()
                .filter_map(|m| {
                    let n = names.iter().find(|n| alike(n, m))?;
                    Some(format!("`{}` for `{m}`", shown(n)))
                })
                .collect();
            let near = if near.is_empty() {
                String::new()
            } else {
                format!(
                    " (the header has {}: names match exactly, case and spaces included; rename the column in the spec or in the file)",
                    near.join(", ")
                )
            };
            return Err(schema_err(format!(
                "required column(s) {} missing from the header{near}",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self.source.unknown_columns == UnknownColumns::Reject {
            let unknown: Vec<String> = names
                .iter()
                .filter(|n| self.source.column_index(n).is_none())
                .map(|n| format!("`{}`", shown(n)))
                .collect();
            if !unknown.is_empty() {
                return Err(schema_err(format!(
                    "undeclared column(s) {}; declare them under `columns:` or set `unknown_columns: drop`",
                    unknown.join(", ")
                )));
            }
        }
        f.nfields = names.len();
        f.line_no += header_lines.max(1);
        f.pos = end;
        consume_terminator(&mut f, Units::of(self.opts.encoding));
        Ok(f)
    }
}

/// How lines end in a file's bytes: a `\n` byte (UTF-8 and the ASCII-compatible legacy
/// encodings), or a `\n` code unit of UTF-16 (two bytes, at an even offset from the start of
/// the file; the buffer's start stays at one, as it only ever drops whole records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Units {
    Bytes,
    Utf16 { le: bool },
}

impl Units {
    fn of(enc: &'static encoding_rs::Encoding) -> Self {
        if enc == encoding_rs::UTF_16LE {
            Units::Utf16 { le: true }
        } else if enc == encoding_rs::UTF_16BE {
            Units::Utf16 { le: false }
        } else {
            Units::Bytes
        }
    }

    /// Bytes of one code unit.
    fn width(self) -> usize {
        match self {
            Units::Bytes => 1,
            Units::Utf16 { .. } => 2,
        }
    }

    /// Whether the code unit at `at` is the ASCII character `c`.
    fn is(self, buf: &[u8], at: usize, c: u8) -> bool {
        match self {
            Units::Bytes => buf.get(at) == Some(&c),
            Units::Utf16 { le } => {
                let want = if le { [c, 0] } else { [0, c] };
                buf.get(at..at + 2) == Some(&want[..])
            }
        }
    }

    /// Where the first `\n` at or after `from` starts.
    fn find_lf(self, buf: &[u8], from: usize) -> Option<usize> {
        match self {
            Units::Bytes => memchr::memchr(b'\n', &buf[from..]).map(|k| from + k),
            // The byte 0x0A, then whether it is the unit's low byte at an even offset.
            Units::Utf16 { le } => memchr::memchr_iter(b'\n', &buf[from..])
                .filter_map(|k| {
                    if le {
                        Some(from + k)
                    } else {
                        (from + k).checked_sub(1)
                    }
                })
                .find(|&at| at >= from && (at - from).is_multiple_of(2) && self.is(buf, at, b'\n')),
        }
    }

    /// Where the line that ends with the `\n` at `lf` ends once a `\r` before it is dropped
    /// (not before `start`).
    fn line_end(self, buf: &[u8], start: usize, lf: usize) -> usize {
        let w = self.width();
        if lf >= start + w && self.is(buf, lf - w, b'\r') {
            lf - w
        } else {
            lf
        }
    }
}

/// Whether a record opens a quoted field it does not close (it then goes on at the next
/// line), asked again each time the record grows by a line: each byte is looked at once
/// (splitting the whole record again at every line let one stray quote before a megabyte of
/// short lines cost minutes). Byte encodings are split as they are; UTF-16 is decoded line by
/// line first (a line end is a whole code unit, so the pieces decode as the whole would), and
/// a record that does not decode is complete: it is quarantined as it stands.
#[derive(Default)]
struct QuoteScan {
    /// Bytes of the record looked at so far.
    fed: usize,
    /// The record's text so far (UTF-16 only).
    text: Vec<u8>,
    /// Where the last look ended inside an open quoted field.
    open: Option<(usize, usize)>,
}

impl QuoteScan {
    fn opens(
        &mut self,
        enc: &'static encoding_rs::Encoding,
        rec: &[u8],
        delim: u8,
        quote: u8,
        scratch: &mut Vec<(usize, usize, bool)>,
    ) -> bool {
        let new = &rec[self.fed.min(rec.len())..];
        self.fed = rec.len();
        let text: &[u8] = match Units::of(enc) {
            Units::Bytes => rec,
            Units::Utf16 { .. } => match decode(enc, new) {
                Some(t) => {
                    self.text.extend_from_slice(t.as_bytes());
                    &self.text
                }
                None => return false,
            },
        };
        let split = match self.open {
            // A first line without a quote is complete (most lines: no split needed).
            None if memchr::memchr(quote, text).is_none() => return false,
            None => split(text, delim, quote, scratch),
            Some(at) => split_from(text, delim, quote, scratch, Some(at)),
        };
        match split {
            Split::Open { field, from } => {
                self.open = Some((field, from));
                true
            }
            Split::Complete => false,
        }
    }
}

/// Skips the line terminator at `f.pos` (if any) and counts the line.
fn consume_terminator(f: &mut OpenFile, u: Units) {
    let w = u.width();
    if u.is(&f.buf, f.pos, b'\r') && u.is(&f.buf, f.pos + w, b'\n') {
        f.pos += w;
    }
    if u.is(&f.buf, f.pos, b'\n') {
        f.pos += w;
    }
}

/// What [`next_record`] found.
enum Next {
    /// A record's byte range in `f.buf` (terminator excluded) and the number of physical
    /// lines it spans (0 when it is cut short at its first line: an unterminated quote).
    Record(usize, usize, u64),
    /// A physical line longer than [`MAX_LINE_BYTES`]: its first [`MAX_LINE_BYTES`] bytes
    /// (the rest was read past, never held).
    TooLong(Vec<u8>),
}

/// Finds the next record in the buffer, reading more as needed, and leaves `f.pos` at its
/// end (at its terminator); `None` at end of file.
fn next_record(
    f: &mut OpenFile,
    enc: &'static encoding_rs::Encoding,
    quote: u8,
    scratch: &mut Vec<(usize, usize, bool)>,
    delim: u8,
) -> Result<Option<Next>> {
    let u = Units::of(enc);
    let w = u.width();
    let mut scan_from = f.pos;
    let mut lines = 1u64;
    let mut quotes = QuoteScan::default();
    loop {
        match u.find_lf(&f.buf, scan_from) {
            Some(end) => {
                let line_end = u.line_end(&f.buf, f.pos, end);
                if lines == 1 && line_end - f.pos > MAX_LINE_BYTES {
                    return too_long(f, u, Some(line_end)).map(Some);
                }
                // Only records that open a quote can continue on the next line.
                let rec = &f.buf[f.pos..line_end];
                if quotes.opens(enc, rec, delim, quote, scratch) {
                    if line_end - f.pos < MAX_RECORD_BYTES && (end + w < f.buf.len() || !f.eof) {
                        scan_from = end + w;
                        lines += 1;
                        if scan_from >= f.buf.len() && !f.eof {
                            refill(f, &mut scan_from)?;
                        }
                        continue;
                    }
                    // Too long or file ends inside quotes: cut at the first line.
                    return Ok(Some(cut_at_first_line(f, u)));
                }
                let start = f.pos;
                f.pos = line_end;
                return Ok(Some(Next::Record(start, line_end, lines)));
            }
            // A line with no end in sight is not held whole: memory stays bounded whatever
            // the file (a binary file, a document on one line...).
            None if !f.eof && lines == 1 && f.buf.len() - f.pos > MAX_LINE_BYTES => {
                return too_long(f, u, None).map(Some);
            }
            // A quoted field going on past the record limit: cut at the first line.
            None if !f.eof && lines > 1 && f.buf.len() - f.pos > MAX_RECORD_BYTES => {
                return Ok(Some(cut_at_first_line(f, u)));
            }
            None if !f.eof => refill(f, &mut scan_from)?,
            None => {
                if f.pos >= f.buf.len() {
                    return Ok(None);
                }
                if lines == 1 && f.buf.len() - f.pos > MAX_LINE_BYTES {
                    return too_long(f, u, Some(f.buf.len())).map(Some);
                }
                // Last line without a terminator.
                let start = f.pos;
                let rec = &f.buf[start..];
                let open = quotes.opens(enc, rec, delim, quote, scratch);
                let end = if open {
                    u.find_lf(&f.buf, start).unwrap_or(f.buf.len())
                } else {
                    f.buf.len()
                };
                f.pos = end;
                return Ok(Some(Next::Record(start, end, if open { 0 } else { lines })));
            }
        }
    }
}

/// The first line of the record at `f.pos`, as a record cut short (its quoted field does not
/// end within the limits).
fn cut_at_first_line(f: &mut OpenFile, u: Units) -> Next {
    let end = u.find_lf(&f.buf, f.pos).unwrap_or(f.pos);
    let le = u.line_end(&f.buf, f.pos, end);
    let start = f.pos;
    f.pos = le;
    Next::Record(start, le, 0)
}

/// The line at `f.pos`, longer than [`MAX_LINE_BYTES`]: its head, with `f.pos` moved to its
/// end (`end`, or found by reading past the rest when not in the buffer yet).
fn too_long(f: &mut OpenFile, u: Units, end: Option<usize>) -> Result<Next> {
    let head = f.buf[f.pos..f.pos + MAX_LINE_BYTES].to_vec();
    match end {
        Some(end) => f.pos = end,
        None => skip_line(f, u)?,
    }
    Ok(Next::TooLong(head))
}

/// Reads past the line at `f.pos` without keeping it, up to its terminator (left for
/// [`consume_terminator`]) or the end of the file.
fn skip_line(f: &mut OpenFile, u: Units) -> Result<()> {
    let w = u.width();
    loop {
        if let Some(lf) = u.find_lf(&f.buf, f.pos) {
            f.pos = u.line_end(&f.buf, f.pos, lf);
            return Ok(());
        }
        if f.eof {
            f.pos = f.buf.len();
            return Ok(());
        }
        // Drop whole code units only (a `\r` at the end may start the terminator).
        let mut keep = f.buf.len() - (f.buf.len() - f.pos) % w;
        if u.is(&f.buf, keep.saturating_sub(w), b'\r') {
            keep -= w;
        }
        f.pos = keep.max(f.pos);
        let mut scan = f.pos;
        refill(f, &mut scan)?;
    }
}

/// Moves unread bytes to the front and reads the next chunk.
fn refill(f: &mut OpenFile, scan_from: &mut usize) -> Result<()> {
    let keep = f.pos;
    f.buf.drain(..keep);
    f.base += keep as u64;
    *scan_from -= keep;
    f.pos = 0;
    let old = f.buf.len();
    f.buf.resize(old + f.chunk, 0);
    f.chunk = (f.chunk * 2).min(READ_CHUNK);
    let mut filled = old;
    while filled < f.buf.len() {
        match f.file.read(&mut f.buf[filled..]) {
            Ok(0) => {
                f.eof = true;
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Unreadable {
                    input: f.name.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    f.buf.truncate(filled);
    Ok(())
}

/// One split record's fields, in the order of the declared columns.
struct Fields<'a> {
    /// The declared columns' field numbers (`None`: not in the file).
    map: &'a [Option<usize>],
    /// Each field's span of `text`, and whether it was quoted.
    spans: &'a [(usize, usize, bool)],
    text: &'a str,
    quote: u8,
    empty_is_null: bool,
}

impl Fields<'_> {
    /// Appends the record's values to `batch`; with `COMMA`, the first comma of the columns
    /// `comma` marks is read as a decimal point.
    #[inline(always)]
    fn push_into<const COMMA: bool>(&self, batch: &mut RawBatch, comma: &[bool]) {
        for (i, m) in self.map.iter().enumerate() {
            let Some(j) = m else {
                batch.push(None);
                continue;
            };
            let (a, b, quoted) = self.spans[*j];
            let comma = COMMA && comma[i];
            if a == b && self.empty_is_null {
                batch.push(None);
            } else if quoted || comma {
                let s = batch.text_len();
                if quoted {
                    unescape_into(&self.text[a..b], self.quote as char, batch.text_mut());
                } else {
                    batch.text_mut().push_str(&self.text[a..b]);
                }
                if comma {
                    // One comma at most becomes the point; a second one (a thousands
                    // separator) stays, and the value does not parse.
                    let t = batch.text_mut();
                    if let Some(i) = t[s..].find(',') {
                        t.replace_range(s + i..s + i + 1, ".");
                    }
                }
                if self.empty_is_null && batch.text_len() == s {
                    batch.push(None);
                } else {
                    batch.push_span(s);
                }
            } else {
                batch.push(Some(&self.text[a..b]));
            }
        }
    }
}

impl SourceReader for CsvReader {
    fn next_batch(&mut self) -> Result<Option<Decoded>> {
        loop {
            if self.cur.is_none() {
                let Some(path) = self.inputs.pop_front() else {
                    return Ok(None);
                };
                self.cur = Some(self.open(path)?);
            }
            let ncols = self.source.columns.len();
            let (delim, quote, empty_is_null, enc) = (
                self.opts.delimiter,
                self.opts.quote,
                self.opts.empty_is_null,
                self.opts.encoding,
            );
            // Columns whose decimal comma is read as a point (`decimal: ","`).
            let comma: Vec<bool> = self
                .source
                .columns
                .iter()
                .map(|c| {
                    self.opts.decimal_comma
                        && matches!(c.ty, ColumnType::Decimal { .. } | ColumnType::Float64)
                })
                .collect();
            let units = Units::of(enc);
            let Some(f) = self.cur.as_mut() else { continue };
            let mut batch = RawBatch::with_capacity(
                f.name.clone(),
                PosKind::Line,
                ncols,
                self.batch_rows,
                // A few percent over the last batch's size, at most the text limit.
                (self.batch_rows * self.bytes_per_row / 64 * 67).min(RawBatch::MAX_TEXT_BYTES),
            );
            let mut malformed = Vec::new();
            let mut rows = 0;
            while rows < self.batch_rows
                && batch.text_len().max(batch.raw_len())
                    < RawBatch::MAX_TEXT_BYTES - (MAX_RECORD_BYTES + MAX_LINE_BYTES) * 2
            {
                let at = f.base + f.pos as u64;
                let (start, end, lines) = match next_record(f, enc, quote, &mut self.fields, delim)?
                {
                    Some(Next::Record(start, end, lines)) => (start, end, lines),
                    Some(Next::TooLong(_)) if at < f.skip => {
                        f.line_no += 1;
                        consume_terminator(f, units);
                        continue;
                    }
                    Some(Next::TooLong(head)) => {
                        malformed.push(Quarantined {
                            input: f.name.clone(),
                            pos_kind: PosKind::Line,
                            pos: f.line_no,
                            key: None,
                            subject: None,
                            raw: head,
                            reasons: vec![Reason::new(
                                "line_too_long",
                                format!("line(max {MAX_LINE_BYTES} bytes)"),
                            )],
                        });
                        f.line_no += 1;
                        consume_terminator(f, units);
                        rows += 1;
                        continue;
                    }
                    None => break,
                };
                let line_no = f.line_no;
                f.line_no += lines.max(1);
                if at < f.skip {
                    crate::check_not_straddling(&f.name, f.base + end as u64, f.skip)?;
                    consume_terminator(f, units);
                    continue;
                }
                consume_terminator(f, units);
                // An empty line holds no record when records have two or more fields (as a
                // blank line in JSON Lines): skipped, not quarantined as a record with one
                // field (exports often end with one). With one field it is an empty value.
                if start == end && lines != 0 && f.nfields > 1 {
                    continue;
                }
                rows += 1;
                let raw = &f.buf[start..end];
                let bad = |code: &str, rule: &str| Quarantined {
                    input: f.name.clone(),
                    pos_kind: PosKind::Line,
                    pos: line_no,
                    key: None,
                    subject: None,
                    raw: raw.to_vec(),
                    reasons: vec![Reason::new(code, rule)],
                };
                let Some(text) = decode(enc, raw) else {
                    malformed.push(if enc == encoding_rs::UTF_8 {
                        bad("invalid_utf8", "decode(utf-8)")
                    } else {
                        bad("invalid_encoding", &format!("decode({})", enc.name()))
                    });
                    continue;
                };
                if lines == 0 {
                    malformed.push(bad("unterminated_quote", "csv(quote)"));
                    continue;
                }
                split(text.as_bytes(), delim, quote, &mut self.fields);
                if self.fields.len() != f.nfields {
                    malformed.push(bad("wrong_field_count", "csv(field_count)"));
                    continue;
                }
                batch.begin(line_no, raw);
                // Two copies of the loop: a source without a decimal comma (nearly all of
                // them) pays nothing per field for the option.
                let fields = Fields {
                    map: &f.map,
                    spans: &self.fields,
                    text: &text,
                    quote,
                    empty_is_null,
                };
                if self.opts.decimal_comma {
                    fields.push_into::<true>(&mut batch, &comma);
                } else {
                    fields.push_into::<false>(&mut batch, &comma);
                }
            }
            if rows == 0 {
                if let Some(short) = f.file.short_by() {
                    return Err(crate::changed_while_read(&f.name, short));
                }
                // At the end of the file: every byte went through the hasher.
                if let Some(d) = f.file.finish() {
                    self.digests.push((f.name.clone(), d));
                }
                self.cur = None;
                continue;
            }
            self.bytes_per_row = (batch.raw_len().max(batch.text_len()) / rows).max(16);
            return Ok(Some(Decoded { batch, malformed }));
        }
    }

    fn content_digests(&mut self) -> Vec<(Arc<str>, String)> {
        std::mem::take(&mut self.digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Option<Vec<String>> {
        let mut v = Vec::new();
        match split(line.as_bytes(), b',', b'"', &mut v) {
            Split::Open { .. } => None,
            Split::Complete => Some(
                v.iter()
                    .map(|&(a, b, q)| {
                        let mut s = String::new();
                        if q {
                            unescape_into(&line[a..b], '"', &mut s)
                        } else {
                            s.push_str(&line[a..b])
                        }
                        s
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn rfc4180_fields() {
        assert_eq!(fields("a,b,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(fields("a,,").unwrap(), ["a", "", ""]);
        assert_eq!(
            fields("\"x,y\",\"say \"\"hi\"\"\",\"\"").unwrap(),
            ["x,y", "say \"hi\"", ""]
        );
        assert_eq!(fields("a\"b,c").unwrap(), ["a\"b", "c"]);
        assert_eq!(fields("\"ab\"cd,e").unwrap(), ["abcd", "e"]);
        assert_eq!(fields("").unwrap(), [""]);
        assert!(fields("\"open,b").is_none());
    }

    /// Reads `bytes` as a CSV file with columns `name, note` in `encoding`: the records'
    /// fields and raw bytes, and the quarantined lines with their first reason.
    #[allow(clippy::type_complexity)]
    fn read_encoded(
        encoding: &str,
        bytes: &[u8],
    ) -> (
        Vec<(Vec<Option<String>>, Vec<u8>)>,
        Vec<(u64, String, Vec<u8>)>,
    ) {
        let (_dir, mut r) = crate::test_reader(
            &format!("csv: {{ path: in, encoding: {encoding} }}"),
            &["name", "note"],
            bytes,
        );
        let (mut rows, mut bad) = (Vec::new(), Vec::new());
        while let Some(d) = r.next_batch().unwrap() {
            for i in 0..d.batch.len() {
                let vals = (0..2)
                    .map(|c| d.batch.get(i, c).map(String::from))
                    .collect();
                rows.push((vals, d.batch.raw(i).to_vec()));
            }
            for q in d.malformed {
                bad.push((q.pos, q.reasons[0].code.clone(), q.raw));
            }
        }
        (rows, bad)
    }

    #[test]
    fn empty_lines_are_not_records_of_two_or_more_fields() {
        let (rows, bad) = read_encoded("utf-8", b"name,note\r\n\r\na,1\n\nb,\"x\n\ny\"\n \n\n\n");
        let names: Vec<_> = rows.iter().map(|(v, _)| v[0].clone()).collect();
        assert_eq!(names, [Some("a".to_string()), Some("b".to_string())]);
        // Blank lines inside a quoted value stay part of it; a line holding a space is a
        // record (of one field), quarantined with its line number.
        assert_eq!(rows[1].1, b"b,\"x\n\ny\"");
        assert_eq!(bad, [(8, "wrong_field_count".to_string(), b" ".to_vec())]);
        // With one field, an empty line is an empty value.
        let (_dir, mut r) = crate::test_reader("csv: { path: in }", &["name"], b"name\na\n\nb\n");
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!(d.batch.len(), 3);
        assert!(d.malformed.is_empty());
    }

    #[test]
    fn legacy_encodings_decode_to_utf8_and_keep_the_source_bytes() {
        let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        // windows-1252: ü is 0xFC, ë 0xEB, € 0x80.
        let (rows, bad) = read_encoded(
            "windows-1252",
            b"name,note\nM\xfcller,\x80 5\n\"Zo\xeb, \"\"la\"\"\",x\r\n",
        );
        assert!(bad.is_empty());
        assert_eq!(rows[0].0, some(&["Müller", "€ 5"]));
        assert_eq!(rows[0].1, b"M\xfcller,\x80 5");
        assert_eq!(rows[1].0, some(&["Zoë, \"la\"", "x"]));
        // Shift_JIS: 山田 is 8E 52 93 63 (trail bytes in the ASCII range: `R`, `c`); a lone
        // lead byte 0x82 before the separator does not decode and is quarantined with its
        // bytes; the lines around it load.
        let (rows, bad) = read_encoded(
            "shift_jis",
            b"name,note\n\x8e\x52\x93\x63,x\n\x82,y\nok,\x8e\x52\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, some(&["山田", "x"]));
        assert_eq!(rows[1].0, some(&["ok", "山"]));
        assert_eq!(
            bad,
            [(3, "invalid_encoding".to_string(), b"\x82,y".to_vec())]
        );
        // UTF-8 keeps its own reason for lines that do not decode.
        let (rows, bad) = read_encoded("utf-8", b"name,note\n\xfc,x\na,b\n");
        assert_eq!(rows.len(), 1);
        assert_eq!(bad[0].1, "invalid_utf8");
    }

    /// With `decimal: ","` a number column's decimal comma reads as a point (quoted or not);
    /// text columns keep their commas, a second comma stays (the value does not parse), and
    /// the raw bytes stay as written.
    #[test]
    fn a_decimal_comma_reads_as_a_point_in_number_columns() {
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in, delimiter: \";\", decimal: \",\" }",
            &[
                "amount, type: \"decimal(9,2)\"",
                "rate, type: float64",
                "note",
            ],
            b"amount;rate;note\n1234,56;0,5;a,b\n\"7,25\";1;c\n1,234,5;2,0;d\n",
        );
        let d = r.next_batch().unwrap().unwrap();
        let row = |i: usize| -> Vec<Option<&str>> { (0..3).map(|c| d.batch.get(i, c)).collect() };
        assert_eq!(row(0), [Some("1234.56"), Some("0.5"), Some("a,b")]);
        assert_eq!(row(1), [Some("7.25"), Some("1"), Some("c")]);
        assert_eq!(row(2), [Some("1.234,5"), Some("2.0"), Some("d")]);
        assert_eq!(d.batch.raw(0), b"1234,56;0,5;a,b");
    }

    fn utf16(s: &str, le: bool) -> Vec<u8> {
        s.encode_utf16()
            .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() })
            .collect()
    }

    #[test]
    fn utf16_files_split_on_code_units_and_keep_their_source_bytes() {
        let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        for le in [true, false] {
            let enc = if le { "utf-16le" } else { "utf-16be" };
            let mut file = if le {
                vec![0xff, 0xfe]
            } else {
                vec![0xfe, 0xff]
            };
            // `Ċ` (U+010A) holds the byte 0x0A, which is not a line end; `😀` is a surrogate
            // pair; a quoted field spans two lines; `\r\n` ends a line.
            file.extend(utf16("name,note\nĊrla,\"a, \"\"b\"\"\nc\"\r\n😀,x\n", le));
            // An unpaired surrogate does not decode: that line alone is quarantined.
            let bad_line = if le {
                vec![0x00, 0xd8, b'y', 0]
            } else {
                vec![0xd8, 0x00, 0, b'y']
            };
            file.extend(&bad_line);
            file.extend(utf16("\nlast,ok", le));
            let (rows, bad) = read_encoded(enc, &file);
            assert_eq!(rows.len(), 3, "{enc}: {rows:?}");
            assert_eq!(rows[0].0, some(&["Ċrla", "a, \"b\"\nc"]), "{enc}");
            assert_eq!(rows[0].1, utf16("Ċrla,\"a, \"\"b\"\"\nc\"", le), "{enc}");
            assert_eq!(rows[1].0, some(&["😀", "x"]), "{enc}");
            assert_eq!(rows[2].0, some(&["last", "ok"]), "{enc}");
            // Physical lines: header 1, the quoted record 2-3, 😀 4, the bad line 5.
            assert_eq!(
                bad,
                [(5, "invalid_encoding".to_string(), bad_line)],
                "{enc}"
            );
        }
        // A file cut inside a code unit: the last line does not decode and is quarantined.
        let mut file = utf16("name,note\na,b\nc,d", true);
        file.pop();
        let (rows, bad) = read_encoded("utf-16le", &file);
        assert_eq!(rows.len(), 1);
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].0, bad[0].1.as_str()), (3, "invalid_encoding"));
        // Another encoding's mark: the spec names the wrong encoding, and is told which.
        let be = [&[0xfe, 0xff][..], &utf16("name,note\n", false)].concat();
        let le = [&[0xff, 0xfe][..], &utf16("name,note\n", true)].concat();
        let utf8 = b"\xef\xbb\xbfname,note\n".to_vec();
        for (declared, file, want) in [
            (
                "utf-16le",
                &be,
                "of UTF-16BE, but the spec declares encoding UTF-16LE; declare `encoding: utf-16be`",
            ),
            (
                "utf-8",
                &le,
                "of UTF-16LE, but the spec declares encoding UTF-8; declare `encoding: utf-16le`",
            ),
            (
                "windows-1252",
                &utf8,
                "of UTF-8, but the spec declares encoding windows-1252; declare `encoding: utf-8`",
            ),
        ] {
            let (_dir, mut r) = crate::test_reader(
                &format!("csv: {{ path: in, encoding: {declared} }}"),
                &["name", "note"],
                file,
            );
            let e = r.next_batch().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        // Without a mark, UTF-16 read as UTF-8 shows NUL bytes: the error says what they mean.
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in }",
            &["name", "note"],
            &utf16("name,note\na,b\n", true),
        );
        let e = r.next_batch().unwrap_err().to_string();
        assert!(
            e.contains("every declared column is missing from the header line, whose 2 field(s) name none of them")
                && !e.contains("n\\u{0}a")
                && e.contains("(the header holds NUL bytes: is the file UTF-16?"),
            "{e}"
        );
    }

    /// A required column whose name the header spells in another case, or with spaces around
    /// it, is named in the error beside the one declared.
    #[test]
    fn a_header_name_differing_in_case_or_spaces_is_pointed_out() {
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in }",
            &[
                "id, required: true",
                "note, required: true",
                "other, required: true",
            ],
            b"ID, note ,x\n1,a,b\n",
        );
        let e = r.next_batch().unwrap_err().to_string();
        assert!(
            e.contains("required column(s) `id`, `note`, `other` missing from the header (the header has `ID` for `id`, ` note ` for `note`: names match exactly"),
            "{e}"
        );
    }

    /// A file without a header line read with `header: true`: its first record is taken for
    /// the header, and the error says what to do without repeating the record's fields.
    #[test]
    fn a_first_record_taken_for_a_header_is_not_repeated() {
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in }",
            &["id", "email"],
            b"1,alice@example.com\n2,bob@example.org\n",
        );
        let e = r.next_batch().unwrap_err().to_string();
        assert!(
            e.contains("every declared column is missing from the header line, whose 2 field(s) name none of them (`id`, `email` expected): if the file has no header line, set `header: false`"),
            "{e}"
        );
        assert!(!e.contains("alice"), "{e}");
        // A real header with one column more names it (it is a column name, not data).
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in }",
            &["id", "email"],
            b"id,email,venue\n1,a@b.c,X\n",
        );
        let e = r.next_batch().unwrap_err().to_string();
        assert!(e.contains("undeclared column(s) `venue`"), "{e}");
    }

    #[test]
    fn utf16_without_a_header_skips_the_byte_order_mark() {
        let mut file = vec![0xff, 0xfe];
        file.extend(utf16("a;b\r\n", true));
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in, encoding: utf-16, header: false, delimiter: ';' }",
            &["name", "note"],
            &file,
        );
        let d = r.next_batch().unwrap().unwrap();
        assert_eq!(d.batch.len(), 1);
        assert_eq!(
            (d.batch.get(0, 0), d.batch.get(0, 1)),
            (Some("a"), Some("b"))
        );
        assert_eq!(d.batch.raw(0), &utf16("a;b", true)[..]);
        assert!(r.next_batch().unwrap().is_none());
    }

    /// A stray quote before many short lines (200,000: looking at the whole record again at
    /// every line took 88 s here in a debug build): the opening line is quarantined when the
    /// file ends inside its quoted field, and every line after it loads.
    #[test]
    fn a_stray_quote_before_many_lines_quarantines_only_its_line() {
        let mut file = b"name,note\n\"stray,x\n".to_vec();
        for _ in 0..200_000 {
            file.extend_from_slice(b"a,b\n");
        }
        let (rows, bad) = read_encoded("utf-8", &file);
        assert_eq!(rows.len(), 200_000);
        assert_eq!(
            bad,
            [(2, "unterminated_quote".to_string(), b"\"stray,x".to_vec())]
        );
    }

    /// A line over the limit (a binary file, a document on one line) is quarantined with its
    /// first bytes and read past, never held; the lines around it load, and a last line over
    /// the limit without a terminator too. In UTF-16 as in UTF-8.
    #[test]
    fn a_line_over_the_limit_is_quarantined_with_its_head() {
        for le in [None, Some(true)] {
            let enc = if le.is_some() { "utf-16le" } else { "utf-8" };
            let text = |s: &str| match le {
                Some(le) => utf16(s, le),
                None => s.as_bytes().to_vec(),
            };
            // Seven characters over the limit, in bytes of the encoding.
            let long = "x".repeat(MAX_LINE_BYTES / if le.is_some() { 2 } else { 1 } + 7);
            let mut file = text("name,note\na,b\n");
            file.extend(text(&long));
            file.extend(text("\r\nc,d\n"));
            file.extend(text(&long));
            let (rows, bad) = read_encoded(enc, &file);
            assert_eq!(rows.len(), 2, "{enc}");
            assert_eq!(
                rows[1].0,
                [Some("c".to_string()), Some("d".to_string())],
                "{enc}"
            );
            let got: Vec<(u64, &str, usize)> = bad
                .iter()
                .map(|(p, r, raw)| (*p, r.as_str(), raw.len()))
                .collect();
            assert_eq!(
                got,
                [
                    (3, "line_too_long", MAX_LINE_BYTES),
                    (5, "line_too_long", MAX_LINE_BYTES)
                ],
                "{enc}"
            );
        }
        let mut file = "n".repeat(MAX_LINE_BYTES + 1).into_bytes();
        file.extend_from_slice(b"\na\n");
        let (_dir, mut r) = crate::test_reader("csv: { path: in }", &["name"], &file);
        let e = r.next_batch().map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("header line is longer than"), "{e}");
    }

    #[test]
    fn an_empty_file_holds_no_records_and_a_blank_header_misses_the_columns() {
        let (_dir, mut r) = crate::test_reader("csv: { path: in }", &["name"], b"");
        assert!(r.next_batch().unwrap().is_none());
        let (_dir, mut r) = crate::test_reader("csv: { path: in }", &["name"], b"\n");
        // A line that is not a header (here: empty) is still refused.
        let e = r.next_batch().map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("undeclared column") || e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn a_header_that_does_not_decode_fails_the_file() {
        let (_dir, mut r) = crate::test_reader(
            "csv: { path: in, encoding: euc-kr }",
            &["name"],
            b"na\xffme\nx\n",
        );
        let e = r.next_batch().unwrap_err().to_string();
        assert!(e.contains("header line is not valid EUC-KR"), "{e}");
    }

    proptest::proptest! {
        /// Quoting any values the way writers do and splitting gives them back.
        #[test]
        fn quoting_round_trips(vals in proptest::collection::vec("[a-z,\" ]{0,8}", 1..6)) {
            let line: Vec<String> = vals.iter().map(|v| if v.contains([',', '"']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v.clone() }).collect();
            proptest::prop_assert_eq!(fields(&line.join(",")).unwrap(), vals);
        }

        /// Any bytes as a UTF-16 file (drawn from the bytes that matter: line ends, quotes,
        /// separators, surrogate halves, byte order marks): no panic, every loaded record's
        /// source bytes decode, and every record comes out once, loaded or quarantined, in
        /// order of position.
        #[test]
        fn utf16_files_of_any_bytes_decode_or_quarantine(
            body in proptest::collection::vec(proptest::sample::select(vec![0u8, b'\n', b'\r', b'"', b',', b'a', 0xd8, 0xdc, 0xfe, 0xff]), 0..96),
            le in proptest::prelude::any::<bool>(),
        ) {
            let enc = if le { "utf-16le" } else { "utf-16be" };
            let mut file = utf16("name,note\n", le);
            file.extend(&body);
            let (_dir, mut r) = crate::test_reader(
                &format!("csv: {{ path: in, encoding: {enc} }}"),
                &["name", "note"],
                &file,
            );
            let mut positions = Vec::new();
            while let Some(d) = r.next_batch().unwrap() {
                for i in 0..d.batch.len() {
                    let e = encoding_rs::Encoding::for_label(enc.as_bytes()).unwrap();
                    proptest::prop_assert!(decode(e, d.batch.raw(i)).is_some());
                    positions.push(d.batch.position(i));
                }
                positions.extend(d.malformed.iter().map(|q| q.pos));
            }
            positions.sort_unstable();
            let before = positions.len();
            positions.dedup();
            proptest::prop_assert_eq!(before, positions.len());
            proptest::prop_assert!(positions.iter().all(|&p| p >= 2));
        }

        /// Looking at a growing record line by line answers as splitting it whole would.
        #[test]
        fn quote_scans_line_by_line_agree_with_whole_splits(
            lines in proptest::collection::vec("[a\",]{0,6}", 1..8),
            utf16 in proptest::prelude::any::<bool>(),
        ) {
            let enc = if utf16 { encoding_rs::UTF_16LE } else { encoding_rs::UTF_8 };
            let mut scan = QuoteScan::default();
            let (mut scratch, mut whole) = (Vec::new(), Vec::new());
            let mut rec = String::new();
            for (k, line) in lines.iter().enumerate() {
                if k > 0 {
                    rec.push('\n');
                }
                rec.push_str(line);
                let bytes = if utf16 { super::tests::utf16(&rec, true) } else { rec.clone().into_bytes() };
                let open = scan.opens(enc, &bytes, b',', b'"', &mut scratch);
                let want = matches!(split(rec.as_bytes(), b',', b'"', &mut whole), Split::Open { .. });
                proptest::prop_assert_eq!(open, want, "{:?}", rec);
                if !open {
                    break;
                }
            }
        }

        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut v = Vec::new();
            let _ = split(&bytes, b',', b'"', &mut v);
        }
    }
}
