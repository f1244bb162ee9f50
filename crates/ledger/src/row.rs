//! The binary canonical encoding of output rows (row format 2, `docs/custody.md`), from the
//! verifier's side: the schema digest and a strict parser. The engine's encoder (from Arrow
//! batches) lives in `sealtrail_engine::custody`; both follow the same specification.
//!
//! ```text
//!  row    = ROW_TAG (32 bytes) || schema (32 bytes) || value(column 1) || ... || value(column n)
//!  schema = SHA-256( for each column: u32be(len(name)) || name || u32be(len(type)) || type )
//!  value  = 0x00 (null) | 0x01 || payload
//! ```
//!
//! Payloads, all integers big-endian: `bool` 1 byte (0 or 1); `int` i64; `uint` u64; `float`
//! the f64's IEEE bits (f32 widened, every NaN as `0x7ff8000000000000`); `string`, `binary`
//! u32 length then the bytes (a string's UTF-8); `date` i32 days since 1970-01-01;
//! `timestamp(s|ms|us|ns)` i64 in that unit; `decimal(S)` the unscaled i128; `list<T>` u32
//! count then each element as a `value` of `T`; `null` has only null values.
//!
//! The first 64 bytes are the same for every row of a table, so a writer hashes them once and
//! continues from that state for each row; they also bind the column names and types that
//! the JSON form (format 1) spelled out in every row. The tag's first byte (`s`) is never the
//! JSON form's (`{`), so no row's bytes are read in both formats.

use sha2::{Digest, Sha256};

/// The first 32 bytes of every row of format 2: `sealtrail-row/2` and 17 zero bytes.
pub const ROW_TAG: [u8; 32] = *b"sealtrail-row/2\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The canonical NaN of format 2.
pub const NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

/// SHA-256 over the columns' names and type names in order.
pub fn schema_digest<'a>(columns: impl IntoIterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, ty) in columns {
        h.update((name.len() as u32).to_be_bytes());
        h.update(name.as_bytes());
        h.update((ty.len() as u32).to_be_bytes());
        h.update(ty.as_bytes());
    }
    h.finalize().into()
}

/// A column type of format 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowType {
    Null,
    Bool,
    Int,
    Uint,
    Float,
    String,
    Binary,
    Date,
    Timestamp,
    Decimal,
    List(Box<RowType>),
}

impl RowType {
    /// Parses a type name (`int`, `timestamp(ms)`, `decimal(4)`, `list<string>` ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "null" => Self::Null,
            "bool" => Self::Bool,
            "int" => Self::Int,
            "uint" => Self::Uint,
            "float" => Self::Float,
            "string" => Self::String,
            "binary" => Self::Binary,
            "date" => Self::Date,
            "timestamp(s)" | "timestamp(ms)" | "timestamp(us)" | "timestamp(ns)" => Self::Timestamp,
            _ => {
                if let Some(inner) = s.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
                    Self::List(Box::new(Self::parse(inner)?))
                } else {
                    let scale = s.strip_prefix("decimal(")?.strip_suffix(')')?;
                    // The scale as Arrow writes it: an i8, no sign for positive values.
                    let v: i8 = scale.parse().ok()?;
                    if v.to_string() != scale {
                        return None;
                    }
                    Self::Decimal
                }
            }
        })
    }

    /// The payload width of fixed-size types.
    fn width(&self) -> Option<usize> {
        Some(match self {
            Self::Bool => 1,
            Self::Date => 4,
            Self::Int | Self::Uint | Self::Float | Self::Timestamp => 8,
            Self::Decimal => 16,
            _ => return None,
        })
    }
}

/// Why row bytes do not parse under their columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("the row does not start with the format 2 tag")]
    Tag,
    #[error("column `{0}` has an unknown type `{1}`")]
    Type(String, String),
    #[error("the row's schema digest is not that of its columns")]
    Schema,
    #[error("the value of column `{0}` is malformed")]
    Value(String),
    #[error("the row has bytes after its last column")]
    Trailing,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<usize> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// One `value` of type `t`; checks every byte the specification constrains.
    fn value(&mut self, t: &RowType) -> Option<()> {
        match self.take(1)?[0] {
            0 => return Some(()),
            1 => {}
            _ => return None,
        }
        match t {
            RowType::Null => None,
            RowType::Bool => (self.take(1)?[0] <= 1).then_some(()),
            RowType::Float => {
                let b = self.take(8)?;
                let x = f64::from_bits(u64::from_be_bytes(b.try_into().ok()?));
                (!x.is_nan() || x.to_bits() == NAN_BITS).then_some(())
            }
            RowType::String => {
                let n = self.u32()?;
                std::str::from_utf8(self.take(n)?).ok().map(|_| ())
            }
            RowType::Binary => {
                let n = self.u32()?;
                self.take(n).map(|_| ())
            }
            RowType::List(inner) => {
                for _ in 0..self.u32()? {
                    self.value(inner)?;
                }
                Some(())
            }
            fixed => self.take(fixed.width()?).map(|_| ()),
        }
    }
}

/// The columns of a row in format 2, parsed and checked: tag, schema digest, every value
/// well-formed for its type, nothing after the last. Each column's value comes back as its
/// exact bytes (`0x00` for null), so two rows compare column by column without decoding.
pub fn parse<'a>(bytes: &'a [u8], columns: &[(String, String)]) -> Result<Vec<&'a [u8]>, RowError> {
    let mut c = Cursor { b: bytes, at: 0 };
    if c.take(32) != Some(&ROW_TAG[..]) {
        return Err(RowError::Tag);
    }
    let types = columns
        .iter()
        .map(|(n, t)| RowType::parse(t).ok_or_else(|| RowError::Type(n.clone(), t.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let digest = schema_digest(columns.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    if c.take(32) != Some(&digest[..]) {
        return Err(RowError::Schema);
    }
    let mut out = Vec::with_capacity(columns.len());
    for ((name, _), t) in columns.iter().zip(&types) {
        let start = c.at;
        c.value(t).ok_or_else(|| RowError::Value(name.clone()))?;
        out.push(&bytes[start..c.at]);
    }
    if c.at != bytes.len() {
        return Err(RowError::Trailing);
    }
    Ok(out)
}

/// The text of a parsed `string` value (`None` for null or another type's bytes).
pub fn string(value: &[u8]) -> Option<&str> {
    let rest = value.strip_prefix(&[1])?;
    let (len, s) = rest.split_first_chunk::<4>()?;
    (u32::from_be_bytes(*len) as usize == s.len())
        .then(|| std::str::from_utf8(s).ok())
        .flatten()
}

/// The texts of a parsed `list<string>` value.
pub fn strings(value: &[u8]) -> Option<Vec<&str>> {
    let mut c = Cursor {
        b: value.strip_prefix(&[1])?,
        at: 0,
    };
    let n = c.u32()?;
    let mut out = Vec::with_capacity(n.min(value.len()));
    for _ in 0..n {
        if c.take(1)? != [1] {
            return None;
        }
        let len = c.u32()?;
        out.push(std::str::from_utf8(c.take(len)?).ok()?);
    }
    (c.at == c.b.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[(&str, &str)]) -> Vec<(String, String)> {
        c.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn row(c: &[(String, String)], values: &[&[u8]]) -> Vec<u8> {
        let mut out = ROW_TAG.to_vec();
        out.extend_from_slice(&schema_digest(
            c.iter().map(|(a, b)| (a.as_str(), b.as_str())),
        ));
        values.iter().for_each(|v| out.extend_from_slice(v));
        out
    }

    #[test]
    fn rows_parse_into_their_column_values() {
        let c = cols(&[
            ("id", "string"),
            ("n", "int"),
            ("ok", "bool"),
            ("d", "decimal(4)"),
            ("ids", "list<string>"),
            ("x", "timestamp(ms)"),
        ]);
        let mut list = vec![1, 0, 0, 0, 2];
        for s in ["a", "bc"] {
            list.push(1);
            list.extend_from_slice(&(s.len() as u32).to_be_bytes());
            list.extend_from_slice(s.as_bytes());
        }
        let n = [&[1u8][..], &7i64.to_be_bytes()].concat();
        let d = [&[1u8][..], &12345i128.to_be_bytes()].concat();
        let b = row(
            &c,
            &[b"\x01\0\0\0\x02hi", &n, b"\x01\x01", &d, &list, b"\x00"],
        );
        let v = parse(&b, &c).unwrap();
        assert_eq!(string(v[0]), Some("hi"));
        assert_eq!(v[1], &n[..]);
        assert_eq!(strings(v[4]), Some(vec!["a", "bc"]));
        assert_eq!(v[5], b"\x00");
        assert_eq!(string(v[1]), None);
    }

    #[test]
    fn malformed_rows_are_refused() {
        let c = cols(&[("id", "string"), ("ok", "bool")]);
        let good = row(&c, &[b"\x01\0\0\0\x01a", b"\x01\x00"]);
        assert!(parse(&good, &c).is_ok());
        // Another schema (a renamed column) does not read the same bytes.
        assert_eq!(
            parse(&good, &cols(&[("id", "string"), ("ok2", "bool")])),
            Err(RowError::Schema)
        );
        assert_eq!(
            parse(&row(&c, &[b"\x01\0\0\0\x01a", b"\x01\x02"]), &c),
            Err(RowError::Value("ok".into()))
        );
        assert_eq!(
            parse(&row(&c, &[b"\x01\0\0\0\x01\xff", b"\x00"]), &c),
            Err(RowError::Value("id".into()))
        );
        assert_eq!(
            parse(&row(&c, &[b"\x02", b"\x00"]), &c),
            Err(RowError::Value("id".into()))
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse(&long, &c), Err(RowError::Trailing));
        assert_eq!(parse(b"{\"id\":1}", &c), Err(RowError::Tag));
        assert_eq!(
            parse(&good, &cols(&[("id", "text"), ("ok", "bool")])),
            Err(RowError::Type("id".into(), "text".into()))
        );
        for t in [
            "decimal(+4)",
            "decimal(04)",
            "decimal(300)",
            "list<>",
            "list<int",
        ] {
            assert_eq!(RowType::parse(t), None, "{t}");
        }
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(parse(&good[..n], &c).is_err());
        }
    }

    proptest::proptest! {
        /// Arbitrary values after a valid prefix, under arbitrary columns: parsed or refused,
        /// never a panic; what parses is split into exactly the bytes given.
        #[test]
        fn arbitrary_rows_never_panic(
            types in proptest::collection::vec(proptest::sample::select(vec![
                "null", "bool", "int", "uint", "float", "string", "binary", "date",
                "timestamp(ms)", "decimal(4)", "list<string>", "list<list<int>>", "bogus",
            ]), 0..6),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        ) {
            let c: Vec<(String, String)> = types
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("c{i}"), t.to_string()))
                .collect();
            let b = row(&c, &[&tail]);
            if let Ok(values) = parse(&b, &c) {
                proptest::prop_assert_eq!(values.len(), c.len());
                proptest::prop_assert_eq!(64 + values.iter().map(|v| v.len()).sum::<usize>(), b.len());
                for v in values {
                    let _ = (string(v), strings(v));
                }
            }
            let _ = (string(&tail), strings(&tail));
        }
    }
}
