//! Records as decoded, before any check: text fields plus where they came from.
//!
//! A [`RawBatch`] holds well-formed records of one or more inputs (files, one table read),
//! with their field text (unescaped, `None` for null), their input and position and their exact
//! source bytes (kept for quarantine and, later, record commitments). A decoder fills a batch
//! from one input; the engine appends the batches of small files to one another
//! ([`RawBatch::append`]) so that a batch is one commit however small the files. Records that cannot even be split into
//! fields (invalid UTF-8, wrong field count, invalid JSON) never enter a batch: the decoder
//! turns them straight into [`Quarantined`] records.

use crate::Reason;
use std::ops::Range;
use std::sync::Arc;

/// Marks a null field in `spans`.
const NULL: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct RawBatch {
    /// The inputs (files or tables) the records come from, in reading order: (index of the
    /// first row read from it, its name). An input may hold no row of the batch (all its
    /// records were malformed): it then starts where the next one does.
    inputs: Vec<(usize, Arc<str>)>,
    /// What `positions` count: physical lines (text files) or rows.
    pub pos_kind: PosKind,
    ncols: usize,
    key_col: Option<usize>,
    /// Per row, how many earlier rows of the read share its key (empty: none do).
    key_repeats: Vec<u32>,
    text: String,
    spans: Vec<(u32, u32)>,
    positions: Vec<u64>,
    raw: Vec<u8>,
    raw_spans: Vec<Range<usize>>,
    /// Whether the field text was freed ([`RawBatch::release_fields`]).
    released: bool,
    /// The column naming each record's data subject ([`RawBatch::subject`]).
    subject_col: Option<usize>,
    /// After release, the subject column's text and one span per row (all a quarantined
    /// record needs besides its raw bytes: the subject whose key seals it).
    kept_text: String,
    kept_spans: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosKind {
    /// 1-based physical line number.
    Line,
    /// 0-based row index.
    Row,
    /// 0-based row index of the read, with a key column naming the row (database sources).
    Key,
}

impl RawBatch {
    pub fn new(input: Arc<str>, pos_kind: PosKind, ncols: usize) -> Self {
        Self {
            inputs: vec![(0, input)],
            pos_kind,
            ncols,
            key_col: None,
            key_repeats: Vec::new(),
            text: String::new(),
            spans: Vec::new(),
            positions: Vec::new(),
            raw: Vec::new(),
            raw_spans: Vec::new(),
            released: false,
            subject_col: None,
            kept_text: String::new(),
            kept_spans: Vec::new(),
        }
    }

    pub fn with_capacity(
        input: Arc<str>,
        pos_kind: PosKind,
        ncols: usize,
        rows: usize,
        bytes: usize,
    ) -> Self {
        let mut b = Self::new(input, pos_kind, ncols);
        b.text.reserve(bytes);
        b.raw.reserve(bytes);
        b.spans.reserve(rows * ncols);
        b.positions.reserve(rows);
        b.raw_spans.reserve(rows);
        b
    }

    /// Names the column whose value identifies a row (for [`PosKind::Key`] batches).
    pub fn set_key_column(&mut self, col: usize) {
        self.key_col = Some(col);
    }
    /// Names the column holding each record's data subject (kept when the fields are
    /// released, for [`RawBatch::subject`]).
    pub fn set_subject_column(&mut self, col: usize) {
        self.subject_col = Some(col);
    }
    /// The data subject of `row` (the subject column's text), if the batch names a subject
    /// column and the value is not null; also after [`RawBatch::release_fields`].
    pub fn subject(&self, row: usize) -> Option<&str> {
        let col = self.subject_col?;
        if !self.released {
            return self.get(row, col);
        }
        let &(s, e) = self.kept_spans.get(row)?;
        (s != NULL).then(|| &self.kept_text[s as usize..e as usize])
    }
    /// Records that the row begun last is the `n`th (1-based) of the read to repeat the key
    /// of an earlier row; its [`RawBatch::key`] becomes `KEY#n+1`.
    pub fn set_key_repeat(&mut self, n: u32) {
        let row = self.positions.len().saturating_sub(1);
        if self.key_repeats.len() <= row {
            self.key_repeats.resize(row + 1, 0);
        }
        self.key_repeats[row] = n;
    }
    /// The identifying key of `row`, when the batch has a key column and the value is not null:
    /// the value, or `VALUE#n` for the `n`th row of the read with that value (`n` >= 2).
    pub fn key(&self, row: usize) -> Option<std::borrow::Cow<'_, str>> {
        let k = self.get(row, self.key_col?)?;
        Some(match self.key_repeats.get(row) {
            Some(&n) if n > 0 => format!("{k}#{}", u64::from(n) + 1).into(),
            _ => k.into(),
        })
    }

    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// The input row `row` was read from.
    pub fn input(&self, row: usize) -> &Arc<str> {
        // The first input starts at row 0, so some input starts at or before any row.
        let i = self.inputs.partition_point(|(first, _)| *first <= row);
        &self.inputs[i.saturating_sub(1)].1
    }
    /// The input read first (the only one of a batch a decoder filled).
    pub fn first_input(&self) -> &Arc<str> {
        &self.inputs[0].1
    }
    /// Every input of the batch in reading order, with the rows read from it.
    pub fn inputs(&self) -> impl Iterator<Item = (Range<usize>, &Arc<str>)> {
        let rows = self.len();
        self.inputs
            .iter()
            .enumerate()
            .map(move |(i, (first, name))| {
                let end = self.inputs.get(i + 1).map_or(rows, |(next, _)| *next);
                (*first..end, name)
            })
    }
    /// Gives each input `rename` names another name (the name a run recorded for an input it
    /// now reads from elsewhere).
    pub fn rename_inputs(&mut self, mut rename: impl FnMut(&str) -> Option<Arc<str>>) {
        for (_, name) in &mut self.inputs {
            if let Some(n) = rename(name) {
                *name = n;
            }
        }
    }

    /// Whether [`RawBatch::append`] takes `other`: the same shape of records, fields not yet
    /// released, and text that stays addressable.
    pub fn can_append(&self, other: &RawBatch) -> bool {
        self.pos_kind == other.pos_kind
            && self.ncols == other.ncols
            && self.key_col == other.key_col
            && self.subject_col == other.subject_col
            && !self.released
            && !other.released
            && self.text.len() + other.text.len() < Self::MAX_TEXT_BYTES
    }

    /// Appends the records of `other` (read after this batch's), keeping their inputs and
    /// positions. The caller checks [`RawBatch::can_append`] first; a batch it refuses is
    /// handed back unchanged.
    pub fn append(&mut self, other: RawBatch) -> Result<(), Box<RawBatch>> {
        if !self.can_append(&other) {
            return Err(Box::new(other));
        }
        let rows = self.len();
        let text_at = self.text.len() as u32;
        let raw_at = self.raw.len();
        for (first, name) in other.inputs {
            match self.inputs.last() {
                Some((_, last)) if *last == name => {}
                _ => self.inputs.push((rows + first, name)),
            }
        }
        if !self.key_repeats.is_empty() || !other.key_repeats.is_empty() {
            self.key_repeats.resize(rows, 0);
            self.key_repeats.extend_from_slice(&other.key_repeats);
        }
        self.text.push_str(&other.text);
        self.spans.extend(other.spans.iter().map(|&(s, e)| {
            if s == NULL {
                (NULL, NULL)
            } else {
                (s + text_at, e + text_at)
            }
        }));
        self.positions.extend_from_slice(&other.positions);
        self.raw.extend_from_slice(&other.raw);
        self.raw_spans.extend(
            other
                .raw_spans
                .into_iter()
                .map(|r| r.start + raw_at..r.end + raw_at),
        );
        Ok(())
    }
    pub fn len(&self) -> usize {
        self.positions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Starts a record; push exactly `ncols` fields next, then the next record may start.
    pub fn begin(&mut self, pos: u64, raw: &[u8]) {
        debug_assert_eq!(self.spans.len(), self.positions.len() * self.ncols);
        self.positions.push(pos);
        let start = self.raw.len();
        self.raw.extend_from_slice(raw);
        self.raw_spans.push(start..self.raw.len());
    }

    /// Appends one field of the current record.
    pub fn push(&mut self, value: Option<&str>) {
        match value {
            None => self.spans.push((NULL, NULL)),
            Some(v) => {
                let s = self.text.len() as u32;
                self.text.push_str(v);
                self.spans.push((s, self.text.len() as u32));
            }
        }
    }

    /// Appends one field built piecewise by the caller: `start` is `text_len()` before writing.
    pub fn push_span(&mut self, start: usize) {
        self.spans.push((start as u32, self.text.len() as u32));
    }

    /// The text buffer, for decoders that unescape into it directly.
    pub fn text_mut(&mut self) -> &mut String {
        &mut self.text
    }
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
    /// Bytes of raw records held.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }
    /// Bytes of each field over every record (what a text column of it will hold), in one
    /// pass over the batch.
    pub fn column_bytes(&self) -> Vec<usize> {
        let mut out = vec![0usize; self.ncols];
        if self.ncols == 0 {
            return out;
        }
        for rec in self.spans.chunks_exact(self.ncols) {
            for (acc, &(s, e)) in out.iter_mut().zip(rec) {
                *acc += e.saturating_sub(s) as usize;
            }
        }
        out
    }

    /// Frees the field text once the batch is typed, when no key column names its records:
    /// what stays is each record's raw bytes and position (all quarantine needs). Half of a
    /// batch's memory, while it waits for and goes through protection. Fields read afterwards
    /// are `None`; the subject column's text (short ids) is kept for [`RawBatch::subject`].
    pub fn release_fields(&mut self) {
        if self.key_col.is_some() {
            return;
        }
        if let Some(col) = self.subject_col {
            let rows = self.len();
            let mut text = String::new();
            let mut spans = Vec::with_capacity(rows);
            for row in 0..rows {
                spans.push(match self.get(row, col) {
                    None => (NULL, NULL),
                    Some(v) => {
                        let s = text.len() as u32;
                        text.push_str(v);
                        (s, text.len() as u32)
                    }
                });
            }
            self.kept_text = text;
            self.kept_spans = spans;
        }
        self.text = String::new();
        self.spans = Vec::new();
        self.released = true;
    }

    /// Field `col` of record `row`.
    #[inline]
    pub fn get(&self, row: usize, col: usize) -> Option<&str> {
        // Out of range is a bug (a panic, as indexing would be), except after release.
        let (s, e) = match self.spans.get(row * self.ncols + col) {
            Some(&span) => span,
            None if self.released => return None,
            None => panic!("field ({row}, {col}) of a batch of {} records", self.len()),
        };
        if s == NULL {
            None
        } else {
            Some(&self.text[s as usize..e as usize])
        }
    }

    pub fn position(&self, row: usize) -> u64 {
        self.positions[row]
    }
    /// The record's exact source bytes.
    pub fn raw(&self, row: usize) -> &[u8] {
        &self.raw[self.raw_spans[row].clone()]
    }

    /// Text buffers are addressed with u32 offsets; decoders cut batches before this size.
    pub const MAX_TEXT_BYTES: usize = (u32::MAX - 1) as usize;
}

/// The canonical encoding of a record read from a typed source (Parquet, PostgreSQL), used as
/// its "raw bytes" in quarantine and for its commitment: a compact JSON object whose keys are
/// the declared column names in declared order and whose values are the field text as JSON
/// strings, or `null`. Strings are escaped as serde_json writes them: `"` and `\\` and the
/// control characters below U+0020 only (as `\\n`, `\\t`, ... or `\\u00XX`), everything else
/// as UTF-8. See `docs/spec.md` ("Canonical row encoding").
pub fn canonical_row(names: &[&str], values: &[Option<&str>]) -> Vec<u8> {
    debug_assert_eq!(names.len(), values.len());
    let mut out = Vec::with_capacity(16 * names.len());
    out.push(b'{');
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a &str cannot fail.
        let _ = serde_json::to_writer(&mut out, n);
        out.push(b':');
        match v {
            Some(v) => {
                let _ = serde_json::to_writer(&mut out, v);
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    out
}

/// A record that failed, with everything needed to find, understand and repair it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub input: Arc<str>,
    pub pos_kind: PosKind,
    pub pos: u64,
    /// For [`PosKind::Key`]: the key value.
    pub key: Option<String>,
    /// The record's data subject as read (the source's subject column), when known: its raw
    /// bytes are then sealed under that subject's key. In memory only, never written.
    pub subject: Option<String>,
    pub raw: Vec<u8>,
    /// Every rule it failed, in check order; the first is the primary reason.
    pub reasons: Vec<Reason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_nulls_round_trip() {
        let mut b = RawBatch::new("f.csv".into(), PosKind::Line, 2);
        b.begin(2, b"a,");
        b.push(Some("a"));
        b.push(None);
        b.begin(3, b"\"x\",y");
        let start = b.text_len();
        b.text_mut().push('x');
        b.push_span(start);
        b.push(Some("y"));
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(0, 0), Some("a"));
        assert_eq!(b.get(0, 1), None);
        assert_eq!(b.get(1, 0), Some("x"));
        // Per-column text sizes (what typed text columns are allocated for); nulls take none.
        assert_eq!(b.column_bytes(), vec![2, 1]);
        assert_eq!(b.raw_len(), 2 + 5);
        assert_eq!(
            RawBatch::new("e".into(), PosKind::Row, 0).column_bytes(),
            Vec::<usize>::new()
        );
        assert_eq!(b.get(1, 1), Some("y"));
        assert_eq!(b.raw(1), b"\"x\",y");
        assert_eq!(b.position(1), 3);
        // Released, a batch keeps its raw records and positions; its fields read as `None`.
        b.release_fields();
        assert_eq!(
            (b.get(1, 0), b.raw(1), b.position(1)),
            (None, &b"\"x\",y"[..], 3)
        );
        assert_eq!(b.subject(0), None, "no subject column named");
    }

    #[test]
    fn appended_batches_keep_each_records_input_position_and_fields() {
        let mut a = RawBatch::new("a.csv".into(), PosKind::Line, 2);
        a.begin(2, b"1,x");
        a.push(Some("1"));
        a.push(Some("x"));
        // An input whose records were all malformed holds no row.
        let empty = RawBatch::new("empty.csv".into(), PosKind::Line, 2);
        let mut b = RawBatch::new("b.csv".into(), PosKind::Line, 2);
        for (pos, raw) in [(2, "2,"), (5, "3,z")] {
            b.begin(pos, raw.as_bytes());
            let (id, note) = raw.split_once(',').unwrap();
            b.push(Some(id));
            b.push((!note.is_empty()).then_some(note));
        }
        assert!(a.can_append(&empty) && a.append(empty).is_ok());
        assert!(a.append(b).is_ok());
        // More of the last input continues it.
        let mut more = RawBatch::new("b.csv".into(), PosKind::Line, 2);
        more.begin(6, b"4,w");
        more.push(Some("4"));
        more.push(Some("w"));
        assert!(a.append(more).is_ok());
        let rows: Vec<_> = (0..a.len())
            .map(|r| {
                (
                    &**a.input(r),
                    a.position(r),
                    a.get(r, 0),
                    a.get(r, 1),
                    a.raw(r),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("a.csv", 2, Some("1"), Some("x"), &b"1,x"[..]),
                ("b.csv", 2, Some("2"), None, &b"2,"[..]),
                ("b.csv", 5, Some("3"), Some("z"), &b"3,z"[..]),
                ("b.csv", 6, Some("4"), Some("w"), &b"4,w"[..]),
            ]
        );
        let parts: Vec<_> = a.inputs().map(|(r, n)| (r, n.to_string())).collect();
        assert_eq!(
            parts,
            [
                (0..1, "a.csv".to_string()),
                (1..1, "empty.csv".to_string()),
                (1..4, "b.csv".to_string())
            ]
        );
        a.rename_inputs(|n| (n == "b.csv").then(|| Arc::from("moved/b.csv")));
        assert_eq!(&**a.input(3), "moved/b.csv");
        assert_eq!(&**a.first_input(), "a.csv");
        // Batches of another shape, or released, are handed back unchanged.
        let other = RawBatch::new("c.csv".into(), PosKind::Line, 3);
        assert_eq!(a.append(other).unwrap_err().ncols(), 3);
        let mut released = RawBatch::new("d.csv".into(), PosKind::Line, 2);
        released.release_fields();
        assert!(!a.can_append(&released));
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn the_subject_column_outlives_the_release_of_the_fields() {
        let mut b = RawBatch::new("f.csv".into(), PosKind::Line, 2);
        b.set_subject_column(1);
        for (pos, (a, s)) in [("x", Some("C-1")), ("y", None), ("z", Some("C-22"))]
            .into_iter()
            .enumerate()
        {
            b.begin(pos as u64 + 2, a.as_bytes());
            b.push(Some(a));
            b.push(s);
        }
        let before: Vec<_> = (0..3).map(|r| b.subject(r).map(str::to_owned)).collect();
        assert_eq!(before, [Some("C-1".into()), None, Some("C-22".into())]);
        b.release_fields();
        assert_eq!((b.get(0, 0), b.get(0, 1)), (None, None), "fields are freed");
        let after: Vec<_> = (0..3).map(|r| b.subject(r).map(str::to_owned)).collect();
        assert_eq!(after, before);
        assert_eq!(b.subject(3), None);
    }

    #[test]
    fn canonical_row_is_json_in_declared_order() {
        let out = canonical_row(&["b", "a", "c"], &[Some("x\"y"), None, Some("é\n")]);
        assert_eq!(
            out,
            "{\"b\":\"x\\\"y\",\"a\":null,\"c\":\"é\\n\"}".as_bytes()
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["c"], "é\n");
    }
}
