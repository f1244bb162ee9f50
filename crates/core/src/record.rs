//! Records as decoded, before any check: text fields plus where they came from.
//!
//! A [`RawBatch`] holds well-formed records of one input (one file, one table read), with
//! their field text (unescaped, `None` for null), their position and their exact source bytes
//! (kept for quarantine and, later, record commitments). Records that cannot even be split into
//! fields (invalid UTF-8, wrong field count, invalid JSON) never enter a batch: the decoder
//! turns them straight into [`Quarantined`] records.

use crate::Reason;
use std::ops::Range;
use std::sync::Arc;

/// Marks a null field in `spans`.
const NULL: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct RawBatch {
    /// The file or table the records come from.
    pub input: Arc<str>,
    /// What `positions` count: physical lines (text files) or rows.
    pub pos_kind: PosKind,
    ncols: usize,
    text: String,
    spans: Vec<(u32, u32)>,
    positions: Vec<u64>,
    raw: Vec<u8>,
    raw_spans: Vec<Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosKind {
    /// 1-based physical line number.
    Line,
    /// 0-based row index.
    Row,
    /// A key value, kept as the record's first raw field (database sources).
    Key,
}

impl RawBatch {
    pub fn new(input: Arc<str>, pos_kind: PosKind, ncols: usize) -> Self {
        Self {
            input,
            pos_kind,
            ncols,
            text: String::new(),
            spans: Vec::new(),
            positions: Vec::new(),
            raw: Vec::new(),
            raw_spans: Vec::new(),
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

    pub fn ncols(&self) -> usize {
        self.ncols
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

    /// Field `col` of record `row`.
    #[inline]
    pub fn get(&self, row: usize, col: usize) -> Option<&str> {
        let (s, e) = self.spans[row * self.ncols + col];
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

/// A record that failed, with everything needed to find, understand and repair it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub input: Arc<str>,
    pub pos_kind: PosKind,
    pub pos: u64,
    /// For [`PosKind::Key`]: the key value.
    pub key: Option<String>,
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
        assert_eq!(b.get(1, 1), Some("y"));
        assert_eq!(b.raw(1), b"\"x\",y");
        assert_eq!(b.position(1), 3);
    }
}
