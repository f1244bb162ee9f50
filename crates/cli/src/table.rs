//! Plain-text tables for the CLI's listings (`runs`, `quarantine list`, `keys list`,
//! `classify`, `lineage`): each column as wide as its widest cell, since run ids, paths,
//! rule lists and column names vary too much for fixed widths (a long cell used to push the
//! rest of its line out of line with the heading). A few lines of code; no crate needed.

/// A table printed once all its rows are in.
pub(crate) struct Table {
    heads: Vec<&'static str>,
    right: Vec<bool>,
    indent: &'static str,
    /// Each row, and a line printed under it as it is (an error, a note).
    rows: Vec<(Vec<String>, Option<String>)>,
}

impl Table {
    /// Columns by heading; a heading that starts with `>` is aligned right (numbers), the `>`
    /// not shown.
    pub(crate) fn new(heads: &[&'static str]) -> Self {
        Self {
            heads: heads.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: heads.iter().map(|h| h.starts_with('>')).collect(),
            indent: "",
            rows: Vec::new(),
        }
    }

    /// Print every line after `indent`.
    pub(crate) fn indent(mut self, indent: &'static str) -> Self {
        self.indent = indent;
        self
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push((cells, None));
    }

    /// A row with a line of its own under it.
    pub(crate) fn row_with(&mut self, cells: Vec<String>, under: Option<String>) {
        self.rows.push((cells, under));
    }

    /// The heading and the rows, aligned, without trailing spaces.
    pub(crate) fn lines(&self) -> Vec<String> {
        let n = self.heads.len();
        let mut width: Vec<usize> = self.heads.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (w, c) in width.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::from(self.indent);
            for (i, c) in cells.take(n).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let pad = width[i].saturating_sub(c.chars().count());
                if self.right[i] {
                    s.extend(std::iter::repeat_n(' ', pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
            s.truncate(s.trim_end().len());
            s
        };
        let mut out = vec![line(&mut self.heads.iter().copied())];
        for (cells, under) in &self.rows {
            out.push(line(&mut cells.iter().map(String::as_str)));
            out.extend(under.iter().map(|u| format!("{}{u}", self.indent)));
        }
        out
    }

    pub(crate) fn print(&self) {
        for l in self.lines() {
            outln!("{l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["name", ">rows", "note"]).indent("  ");
        t.row(vec!["a".into(), "1".into(), "short".into()]);
        t.row_with(
            vec!["a much longer name".into(), "12345".into(), "".into()],
            Some("error: x".into()),
        );
        t.row(vec!["é".into(), "7".into(), "-".into()]);
        assert_eq!(
            t.lines(),
            [
                "  name                 rows  note",
                "  a                       1  short",
                "  a much longer name  12345",
                "  error: x",
                "  é                       7  -",
            ]
        );
    }
}
