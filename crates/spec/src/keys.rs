//! Every unknown key of a spec at once.
//!
//! serde stops at the first key a struct does not know. To report all of them (with a "did you
//! mean" for typos), the YAML is read a second time as a plain tree with the position of every
//! key, and walked along the spec's JSON Schema (generated from the raw types, so the two
//! cannot disagree). The unknown keys are then blanked out of the text (same bytes, same line
//! numbers) so that the rest of the spec can be checked in the same pass.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// A key the schema does not allow where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownKey {
    pub key: String,
    /// Where it is, as `sources.s.csv` (empty at the top level).
    pub within: String,
    /// The keys allowed there.
    pub allowed: Vec<String>,
    pub line: u64,
    pub column: u64,
    /// Byte offset of the key in the text.
    pub offset: usize,
}

impl UnknownKey {
    /// The allowed key closest to this one, when it is close enough to be a typo.
    pub fn suggestion(&self) -> Option<&str> {
        self.allowed
            .iter()
            .map(|a| (strsim::damerau_levenshtein(&self.key, a), a))
            .filter(|(d, a)| *d <= (a.len() / 3).max(1))
            .min_by_key(|(d, _)| *d)
            .map(|(_, a)| a.as_str())
    }
}

/// A YAML node with the position of each mapping key.
enum Node {
    Map(Vec<(serde_saphyr::Spanned<Key>, Node)>),
    Seq(Vec<Node>),
    Scalar,
}

/// A mapping key as text (YAML allows numbers and booleans as keys too).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = m.next_key::<serde_saphyr::Spanned<Key>>()? {
                    entries.push((k, m.next_value::<Node>()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = s.next_element::<Node>()? {
                    items.push(x);
                }
                Ok(Node::Seq(items))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// Every key of `text` that the spec's schema does not allow where it stands, in document
/// order. Empty when the text is not YAML this reader understands (the caller then reports
/// what serde said).
pub fn unknown_keys(text: &str) -> Vec<UnknownKey> {
    let Ok(root) = serde_saphyr::from_str::<Node>(text) else {
        return Vec::new();
    };
    let schema = crate::json_schema();
    let mut out = Vec::new();
    walk(&root, &schema, &schema, &mut Vec::new(), &mut out);
    out.sort_by_key(|u| u.offset);
    out
}

/// Follows `$ref`s into `$defs`, and takes the object branch of an `anyOf`/`oneOf` (an
/// `Option<T>` is `T` or null).
fn resolve<'a>(mut s: &'a Value, root: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(name) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            match root.get("$defs").and_then(|d| d.get(name)) {
                Some(d) => s = d,
                None => return s,
            }
            continue;
        }
        let branches = s.get("anyOf").or_else(|| s.get("oneOf"));
        if let Some(b) = branches.and_then(Value::as_array).and_then(|bs| {
            bs.iter()
                .find(|b| b.get("$ref").is_some() || b.get("properties").is_some())
        }) {
            s = b;
            continue;
        }
        return s;
    }
    s
}

fn walk(
    node: &Node,
    schema: &Value,
    root: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<UnknownKey>,
) {
    let schema = resolve(schema, root);
    match node {
        Node::Map(entries) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in entries {
                let key = &k.value.0;
                let sub = props
                    .and_then(|p| p.get(key))
                    .or_else(|| extra.filter(|e| e.is_object()));
                match sub {
                    Some(sub) => {
                        path.push(key.clone());
                        walk(v, sub, root, path, out);
                        path.pop();
                    }
                    None if extra == Some(&Value::Bool(false)) => out.push(UnknownKey {
                        key: key.clone(),
                        within: path.join(".").replace(".[", "["),
                        allowed: props.map_or_else(Vec::new, |p| p.keys().cloned().collect()),
                        line: k.referenced.line(),
                        column: k.referenced.column(),
                        offset: k.referenced.span().offset(),
                    }),
                    None => {}
                }
            }
        }
        Node::Seq(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    path.push(format!("[{i}]"));
                    walk(x, sub, root, path, out);
                    path.pop();
                }
            }
        }
        Node::Scalar => {}
    }
}

/// `text` with each of `keys` and its value replaced by spaces (newlines kept, so every other
/// line and byte offset stays where it was). `None` when a key is not where its offset says
/// (the text would be left unchanged or damaged).
pub fn blank_out(text: &str, keys: &[UnknownKey]) -> Option<String> {
    let mut b = text.as_bytes().to_vec();
    for k in keys {
        if !text.get(k.offset..)?.starts_with(k.key.as_str()) {
            return None;
        }
        let before = text[..k.offset].trim_end();
        if before.ends_with('{') || before.ends_with(',') {
            blank_flow_entry(&mut b, text, k.offset, before.len());
        } else {
            blank_block_entry(&mut b, text, k.offset);
        }
    }
    String::from_utf8(b).ok()
}

fn blank(b: &mut [u8], range: std::ops::Range<usize>) {
    for c in &mut b[range] {
        if *c != b'\n' && *c != b'\r' {
            *c = b' ';
        }
    }
}

/// `key: value` inside `{ ... }`: up to the next `,` or the closing bracket at the same depth
/// (outside quotes), with one comma.
fn blank_flow_entry(b: &mut [u8], text: &str, start: usize, before_end: usize) {
    let bytes = text.as_bytes();
    let (mut depth, mut quote, mut i) = (0usize, None::<u8>, start);
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' => quote = Some(c),
                b'[' | b'{' => depth += 1,
                b']' | b'}' if depth == 0 => break,
                b']' | b'}' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            },
        }
        i += 1;
    }
    if bytes.get(i) == Some(&b',') {
        blank(b, start..i + 1);
    } else {
        blank(b, start..i);
        // The last entry: drop the comma before it instead.
        if bytes.get(before_end - 1) == Some(&b',') {
            blank(b, before_end - 1..before_end);
        }
    }
}

/// `key: value` on its own line (maybe after `- `): the rest of the line and every following
/// line indented deeper than the key (or a `-` list at the key's own indentation).
fn blank_block_entry(b: &mut [u8], text: &str, start: usize) {
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let indent = start - line_start;
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let value_inline = text[start..line_end]
        .split_once(':')
        .is_some_and(|(_, v)| !v.trim().is_empty() && !v.trim_start().starts_with('#'));
    blank(b, start..line_end);
    let mut at = line_end;
    while at < text.len() {
        let next = text[at + 1..].find('\n').map_or(text.len(), |i| at + 1 + i);
        let line = &text[at + 1..next];
        let trimmed = line.trim_start_matches(' ');
        let own = line.len() - trimmed.len();
        let child = trimmed.is_empty()
            || trimmed.starts_with('#')
            || own > indent
            || (own == indent && !value_inline && (trimmed == "-" || trimmed.starts_with("- ")));
        if !child {
            break;
        }
        blank(b, at + 1..next);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "version: 1\npipeline: p\nbatch_row: 10\nsources:\n  s:\n    csv: { path: in/*.csv, delimeter: \";\", header: true }\n    columns:\n      - { name: id, type: int64, requird: true }\n      - name: note\n        clas: none\n        nested:\n          deeper: 1\n      - name: x\nsinks:\n  o: { from: s, audience: internal, parquet: { path: out/o, compresion: zstd } }\nquarantine:\n  parquet: { path: out/q }\n";

    #[test]
    fn every_unknown_key_is_found_with_its_place_and_a_suggestion() {
        let found = unknown_keys(SPEC);
        let got: Vec<(&str, &str, u64, Option<&str>)> = found
            .iter()
            .map(|u| (u.key.as_str(), u.within.as_str(), u.line, u.suggestion()))
            .collect();
        assert_eq!(
            got,
            [
                ("batch_row", "", 3, Some("batch_rows")),
                ("delimeter", "sources.s.csv", 6, Some("delimiter")),
                ("requird", "sources.s.columns[0]", 8, Some("required")),
                ("clas", "sources.s.columns[1]", 10, Some("class")),
                ("nested", "sources.s.columns[1]", 11, None),
                ("compresion", "sinks.o.parquet", 15, None),
            ]
        );
        assert_eq!(found[1].column, 28);
        assert!(found[1].allowed.contains(&"encoding".to_string()));
    }

    #[test]
    fn blanking_the_unknown_keys_leaves_a_valid_spec_with_the_same_lines() {
        let keys = unknown_keys(SPEC);
        let clean = blank_out(SPEC, &keys).unwrap();
        assert_eq!(clean.len(), SPEC.len());
        assert_eq!(clean.lines().count(), SPEC.lines().count());
        assert!(unknown_keys(&clean).is_empty(), "{clean}");
        let p = crate::raw::parse(&clean, "p.yaml".as_ref()).unwrap();
        assert_eq!(p.batch_rows, None);
        // What the typos did not touch is still there.
        assert!(clean.contains("header: true }") && clean.contains("- name: x"));
        assert!(clean.contains("{ path: out/o   "), "{clean}");
    }

    /// The shapes an unknown key's entry takes: first of a list item, with a block list at
    /// its own indentation, first and last of a flow mapping, a flow value over two lines.
    #[test]
    fn every_shape_of_entry_is_blanked_whole() {
        let spec = "version: 1\npipeline: p\nextra:\n- a\n- { b: 1 }\nsources:\n  s:\n    csv: { bogus: [1, \"x,}\"], path: a.csv }\n    columns:\n      - bad: 1\n        name: id\n      - { name: n, wrong: { a: 1,\n          b: 2 } }\nsinks:\n  o: { from: s, parquet: { path: o }, last: 1 }\nquarantine:\n  parquet: { path: q }\n";
        let keys = unknown_keys(spec);
        let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["extra", "bogus", "bad", "wrong", "last"]);
        let clean = blank_out(spec, &keys).unwrap();
        assert!(unknown_keys(&clean).is_empty(), "{clean}");
        let p = crate::raw::parse(&clean, "p.yaml".as_ref()).unwrap();
        let s = &p.sources["s"].value;
        let cols: Vec<&str> = s.columns.iter().map(|c| c.value.name.as_str()).collect();
        assert_eq!(cols, ["id", "n"], "{clean}");
        assert_eq!(clean.lines().count(), spec.lines().count());
    }

    #[test]
    fn text_that_is_not_yaml_has_no_unknown_keys_to_report() {
        assert!(unknown_keys("sources: [\n").is_empty());
        assert!(unknown_keys("").is_empty());
    }
}
