//! Every problem of a spec's shape at once.
//!
//! serde stops at the first key a struct does not know, and at the first value of the wrong
//! type. To report all of them (with a "did you mean" for typos), the YAML is read a second
//! time as a plain tree with the position of every key and value, and walked along the spec's
//! JSON Schema (generated from the raw types, so the two cannot disagree):
//! - keys the schema does not allow where they stand ([`UnknownKey`]); they are then blanked
//!   out of the text (same bytes, same line numbers) so that the rest of the spec can be
//!   checked in the same pass;
//! - values of the wrong type, values outside an enumeration, and required keys that are
//!   missing ([`WrongValue`]). A scalar's type is never guessed here: its text is read again
//!   by serde-saphyr as the type the schema asks for (`yes` is a boolean to it, `"5"` a whole
//!   number), and only what that reader refuses is reported.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;
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
        closest(&self.key, &self.allowed)
    }

    /// Its entry in the text.
    pub fn entry(&self) -> Entry {
        Entry {
            key: self.key.clone(),
            offset: self.offset,
        }
    }
}

/// A `key: value` entry of a mapping, by its key and the key's byte offset in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub offset: usize,
}

/// The candidate closest to `word`, when it is close enough to be a typo of it.
fn closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    closest_of(word, candidates.iter().map(String::as_str))
}

/// [`closest`] over any names.
pub(crate) fn closest_of<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|a| (strsim::damerau_levenshtein(word, a), a))
        .filter(|(d, a)| *d <= (a.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// A value the schema does not allow, or a required key that is not there.
#[derive(Debug, Clone, PartialEq)]
pub struct WrongValue {
    pub message: String,
    pub hint: String,
    pub line: u64,
    pub column: u64,
    /// The entry whose value this is, when the key is optional: left out of the text, its
    /// default applies and the rest of the spec can be checked. `None` for a missing key, a
    /// required key's value, or a list item.
    pub entry: Option<Entry>,
    /// The line of the mapping that holds it (where checks of that mapping report).
    pub map_line: u64,
}

/// What [`check`] finds, each list in document order.
#[derive(Debug, Default)]
pub struct Shape {
    pub unknown: Vec<UnknownKey>,
    pub wrong: Vec<WrongValue>,
}

/// A YAML node with the position of each mapping key and each value.
enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar(Scalar),
}

/// A scalar as the YAML reader saw it untyped (only used to say what was found; whether it
/// fits is decided by reading its text again as the wanted type).
enum Scalar {
    Null,
    Other,
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
                while let Some(k) = m.next_key::<Spanned<Key>>()? {
                    entries.push((k, m.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = s.next_element::<Spanned<Node>>()? {
                    items.push(x);
                }
                Ok(Node::Seq(items))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Null))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Null))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Other))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every unknown key, wrong value and missing key of `text`, each list in document order.
/// Empty when the text is not YAML this reader understands (the caller then reports what
/// serde said).
pub fn check(text: &str) -> Shape {
    let Ok(root) = serde_saphyr::from_str::<Spanned<Node>>(text) else {
        return Shape::default();
    };
    let schema = crate::json_schema();
    let mut w = Walk {
        text,
        root: &schema,
        path: Vec::new(),
        out: Shape::default(),
    };
    w.node(&root, &schema, &Place::default());
    w.out.unknown.sort_by_key(|u| u.offset);
    w.out.wrong.sort_by_key(|v| (v.line, v.column));
    w.out
}

/// The part of `s` that has one of `keys` (`properties` for a mapping, `items` for a list):
/// follows `$ref`s into `$defs` and looks into `anyOf`/`oneOf` branches (an `Option<T>` is
/// `T` or null). `s` itself when none has.
fn resolve<'a>(s: &'a Value, root: &'a Value, keys: &[&str]) -> &'a Value {
    find(s, root, keys, 0).unwrap_or(s)
}

fn find<'a>(s: &'a Value, root: &'a Value, keys: &[&str], depth: u32) -> Option<&'a Value> {
    if depth > 16 {
        return None;
    }
    if let Some(d) = deref(s, root) {
        return find(d, root, keys, depth + 1);
    }
    if keys.iter().any(|k| s.get(k).is_some()) {
        return Some(s);
    }
    ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| s.get(k).and_then(Value::as_array))
        .flatten()
        .find_map(|b| find(b, root, keys, depth + 1))
}

fn deref<'a>(s: &Value, root: &'a Value) -> Option<&'a Value> {
    let name = s.get("$ref")?.as_str()?.strip_prefix("#/$defs/")?;
    root.get("$defs")?.get(name)
}

/// What a schema accepts, gathered over its `$ref`s and `anyOf`/`oneOf` branches.
#[derive(Default)]
struct Accepts {
    /// Any text.
    text: bool,
    /// Only these texts (a Rust enum of unit variants).
    names: Vec<String>,
    boolean: bool,
    /// Whole numbers, with the schema's `format` (`uint32`, `uint64`, `int64`...).
    integer: Option<String>,
    number: bool,
    null: bool,
    list: bool,
    mapping: bool,
}

impl Accepts {
    fn of(s: &Value, root: &Value) -> Accepts {
        let mut a = Accepts::default();
        a.gather(s, root, 0);
        a
    }

    fn gather(&mut self, s: &Value, root: &Value, depth: u32) {
        if depth > 16 {
            return;
        }
        if let Some(d) = deref(s, root) {
            return self.gather(d, root, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            for b in s.get(key).and_then(Value::as_array).into_iter().flatten() {
                self.gather(b, root, depth + 1);
            }
        }
        let listed: Vec<&Value> = match (s.get("enum"), s.get("const")) {
            (Some(Value::Array(e)), _) => e.iter().collect(),
            (_, Some(c)) => vec![c],
            _ => Vec::new(),
        };
        for v in &listed {
            match v {
                Value::String(t) => self.names.push(t.clone()),
                Value::Null => self.null = true,
                _ => {}
            }
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for t in types {
            match t {
                "string" if listed.is_empty() => self.text = true,
                "boolean" => self.boolean = true,
                "integer" => {
                    let f = s.get("format").and_then(Value::as_str).unwrap_or("int64");
                    self.integer = Some(f.to_string());
                }
                "number" => self.number = true,
                "null" => self.null = true,
                "array" => self.list = true,
                "object" => self.mapping = true,
                _ => {}
            }
        }
        if s.get("properties").is_some() || s.get("additionalProperties").is_some() {
            self.mapping = true;
        }
    }

    /// Only the texts of an enumeration, no other scalar.
    fn only_names(&self) -> bool {
        !self.names.is_empty()
            && !self.text
            && !self.boolean
            && self.integer.is_none()
            && !self.number
    }

    fn takes_scalars(&self) -> bool {
        self.text || !self.names.is_empty() || self.boolean || self.integer.is_some() || self.number
    }

    /// Whether serde-saphyr reads `raw` (a scalar's text) as one of the accepted types.
    fn reads(&self, raw: &str) -> bool {
        use serde_saphyr::from_str;
        let text = || from_str::<String>(raw).ok();
        (self.text && text().is_some())
            || (!self.names.is_empty() && text().is_some_and(|t| self.names.contains(&t)))
            || (self.boolean && from_str::<bool>(raw).is_ok())
            || (self.number && from_str::<f64>(raw).is_ok())
            || match self.integer.as_deref() {
                Some("uint32") => from_str::<u32>(raw).is_ok(),
                Some("uint64" | "uint") => from_str::<u64>(raw).is_ok(),
                Some("int32") => from_str::<i32>(raw).is_ok(),
                Some(_) => from_str::<i64>(raw).is_ok(),
                None => false,
            }
            || (self.null && from_str::<Option<()>>(raw).is_ok_and(|v| v.is_none()))
    }

    /// What is expected, in the spec author's words.
    fn wanted(&self) -> String {
        let mut w: Vec<String> = Vec::new();
        if self.text {
            w.push("text".into());
        } else if !self.names.is_empty() {
            w.push(format!("one of {}", quoted(&self.names)));
        }
        if self.boolean {
            w.push("true or false".into());
        }
        match self.integer.as_deref() {
            Some(f) if f.starts_with("uint") => w.push("a whole number of 0 or more".into()),
            Some(_) => w.push("a whole number".into()),
            None if self.number => w.push("a number".into()),
            None => {}
        }
        if self.list {
            w.push("a list (`- item` lines, or `[a, b]`)".into());
        }
        if self.mapping {
            w.push("a mapping (`key: value` lines, or `{ key: value }`)".into());
        }
        w.join(" or ")
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Walk<'a> {
    text: &'a str,
    root: &'a Value,
    path: Vec<String>,
    out: Shape,
}

impl Walk<'_> {
    fn here(&self) -> String {
        self.path.join(".").replace(".[", "[")
    }

    fn wrong(&mut self, at: &serde_saphyr::Location, message: String, hint: String, from: &Place) {
        self.out.wrong.push(WrongValue {
            message,
            hint,
            line: at.line(),
            column: at.column(),
            entry: from.entry.clone(),
            map_line: from.map_line.unwrap_or(at.line()),
        });
    }

    fn node(&mut self, node: &Spanned<Node>, schema: &Value, from: &Place) {
        let accepts = Accepts::of(schema, self.root);
        let at = &node.referenced;
        match &node.value {
            Node::Map(entries) if accepts.mapping => {
                self.map(entries, at, resolve(schema, self.root, MAPPING));
            }
            Node::Seq(items) if accepts.list => {
                let s = resolve(schema, self.root, &["items"]);
                let Some(sub) = s.get("items") else { return };
                for (i, x) in items.iter().enumerate() {
                    self.path.push(format!("[{i}]"));
                    self.node(x, sub, &Place::default());
                    self.path.pop();
                }
            }
            Node::Map(_) | Node::Seq(_) => {
                if accepts.takes_scalars() || accepts.list || accepts.mapping {
                    let found = match node.value {
                        Node::Map(_) => "a mapping",
                        _ => "a list",
                    };
                    let msg = format!(
                        "expected {} for `{}`, found {found}",
                        accepts.wanted(),
                        self.here()
                    );
                    self.wrong(at, msg, SHAPE_HINT.into(), from);
                }
            }
            Node::Scalar(kind) => self.scalar(kind, at, &node.defined, &accepts, from),
        }
    }

    /// A scalar written at `at`, whose text is at `defined` (elsewhere when `at` is an alias
    /// of an anchored value).
    fn scalar(
        &mut self,
        kind: &Scalar,
        at: &serde_saphyr::Location,
        defined: &serde_saphyr::Location,
        accepts: &Accepts,
        from: &Place,
    ) {
        if !accepts.takes_scalars() {
            // A list or mapping is wanted. An empty value may be read as an empty one (or
            // as the default); anything else is certainly wrong.
            if matches!(kind, Scalar::Null) || !(accepts.list || accepts.mapping) {
                return;
            }
            let msg = format!(
                "expected {} for `{}`, found a single value",
                accepts.wanted(),
                self.here()
            );
            self.wrong(at, msg, SHAPE_HINT.into(), from);
            return;
        }
        let span = defined.span();
        let raw = match kind {
            Scalar::Null if span.len() == 0 => "null",
            _ => match self.text.get(span.offset()..span.offset() + span.len()) {
                Some(r) if !r.trim().is_empty() => r,
                // No text to read again: leave it to serde.
                _ => return,
            },
        };
        if accepts.reads(raw) {
            return;
        }
        // The value as written (its text, for a scalar the reader cannot read as text).
        let written = match kind {
            Scalar::Null => None,
            Scalar::Other => Some(
                serde_saphyr::from_str::<String>(raw).unwrap_or_else(|_| raw.trim().to_string()),
            ),
        };
        let shown = match &written {
            None => "nothing".to_string(),
            Some(t) => {
                let short: String = t.chars().take(40).collect();
                let more = if short.len() < t.len() { "..." } else { "" };
                format!("`{}`{more}", short.escape_debug())
            }
        };
        let here = self.here();
        let (msg, hint) = match &written {
            Some(word) if accepts.only_names() => {
                let allowed = quoted(&accepts.names);
                let hint = match closest(word, &accepts.names) {
                    Some(s) => format!("did you mean `{s}`? Allowed here: {allowed}"),
                    None => format!("allowed here: {allowed}"),
                };
                (format!("{shown} is not a value `{here}` takes"), hint)
            }
            _ => (
                format!("expected {} for `{here}`, found {shown}", accepts.wanted()),
                SHAPE_HINT.to_string(),
            ),
        };
        self.wrong(at, msg, hint, from);
    }

    fn map(
        &mut self,
        entries: &[(Spanned<Key>, Spanned<Node>)],
        at: &serde_saphyr::Location,
        schema: &Value,
    ) {
        let props = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let unknown_before = self.out.unknown.len();
        for (k, v) in entries {
            let key = &k.value.0;
            let sub = props
                .and_then(|p| p.get(key))
                .or_else(|| extra.filter(|e| e.is_object()));
            match sub {
                Some(sub) => {
                    let from = Place {
                        entry: (!required.contains(&key.as_str())).then(|| Entry {
                            key: key.clone(),
                            offset: k.referenced.span().offset(),
                        }),
                        // The checks of meaning report on the spec's top-level keys where
                        // each stands, not on the top level as a whole.
                        map_line: (!self.path.is_empty()).then(|| at.line()),
                    };
                    self.path.push(key.clone());
                    self.node(v, sub, &from);
                    self.path.pop();
                }
                None if extra == Some(&Value::Bool(false)) => self.out.unknown.push(UnknownKey {
                    key: key.clone(),
                    within: self.here(),
                    allowed: props.map_or_else(Vec::new, |p| p.keys().cloned().collect()),
                    line: k.referenced.line(),
                    column: k.referenced.column(),
                    offset: k.referenced.span().offset(),
                }),
                None => {}
            }
        }
        // Required keys not written, unless a misspelling of them was just reported.
        for r in required {
            let written = entries.iter().any(|(k, _)| k.value.0 == r);
            let misspelt = self.out.unknown[unknown_before..]
                .iter()
                .any(|u| u.suggestion() == Some(r));
            if !written && !misspelt {
                let within = match self.here() {
                    h if h.is_empty() => String::new(),
                    h => format!(" in `{h}`"),
                };
                let msg = format!("missing field `{r}`{within}");
                let hint =
                    format!("add `{r}:`; it is required here (`sealtrail schema` describes it)");
                self.wrong(at, msg, hint, &Place::default());
            }
        }
    }
}

/// Where a value stands: the optional entry it is the value of, and its mapping's line.
#[derive(Default)]
struct Place {
    entry: Option<Entry>,
    map_line: Option<u64>,
}

const MAPPING: &[&str] = &["properties", "additionalProperties"];

const SHAPE_HINT: &str =
    "see `sealtrail schema` for the expected shape, or an example in `examples/`";

/// `text` with each of `keys` and its value replaced by spaces (newlines kept, so every other
/// line and byte offset stays where it was). `None` when a key is not where its offset says
/// (the text would be left unchanged or damaged).
pub fn blank_out(text: &str, keys: &[Entry]) -> Option<String> {
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

    fn unknown_keys(text: &str) -> Vec<UnknownKey> {
        check(text).unknown
    }

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
                ("compresion", "sinks.o.parquet", 15, Some("compression")),
            ]
        );
        assert_eq!(found[1].column, 28);
        assert!(found[1].allowed.contains(&"encoding".to_string()));
    }

    #[test]
    fn blanking_the_unknown_keys_leaves_a_valid_spec_with_the_same_lines() {
        let keys = unknown_keys(SPEC);
        let entries: Vec<Entry> = keys.iter().map(UnknownKey::entry).collect();
        let clean = blank_out(SPEC, &entries).unwrap();
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
        let entries: Vec<Entry> = keys.iter().map(UnknownKey::entry).collect();
        let clean = blank_out(spec, &entries).unwrap();
        assert!(unknown_keys(&clean).is_empty(), "{clean}");
        let p = crate::raw::parse(&clean, "p.yaml".as_ref()).unwrap();
        let s = &p.sources["s"].value;
        let cols: Vec<&str> = s.columns.iter().map(|c| c.value.name.as_str()).collect();
        assert_eq!(cols, ["id", "n"], "{clean}");
        assert_eq!(clean.lines().count(), spec.lines().count());
    }

    /// Wrong values of every kind in one spec: each is found where it stands.
    const WRONG: &str = "version: one\npipeline: p\nbatch_rows: -5\nsources:\n  s:\n    csv: { path: [a, b], header: maybe }\n    unknown_columns: ignore\n    columns:\n      - { name: id, required: yes }\n      - { type: int64 }\n    checks:\n      - { rule: not_nul, column: id }\n      - { rule: between, column: id, min: low, max: 10 }\n    protect:\n      - { column: id, action: token, keep_last: 4.5 }\n      - { column: id, action: mask, bands: 3 }\nsinks: [o]\nquarantine:\n  parquet: { path: out/q }\n";

    fn wrong(spec: &str) -> Vec<(u64, u64, String)> {
        check(spec)
            .wrong
            .into_iter()
            .map(|w| (w.line, w.column, w.message))
            .collect()
    }

    #[test]
    fn every_wrong_value_and_missing_key_is_found_where_it_stands() {
        let got = wrong(WRONG);
        let want: Vec<(u64, u64, &str)> = vec![
            (
                1,
                10,
                "expected a whole number of 0 or more for `version`, found `one`",
            ),
            (
                3,
                13,
                "expected a whole number of 0 or more for `batch_rows`, found `-5`",
            ),
            (
                6,
                18,
                "expected text for `sources.s.csv.path`, found a list",
            ),
            (
                6,
                34,
                "expected true or false for `sources.s.csv.header`, found `maybe`",
            ),
            (
                7,
                22,
                "`ignore` is not a value `sources.s.unknown_columns` takes",
            ),
            (10, 9, "missing field `name` in `sources.s.columns[1]`"),
            (
                12,
                17,
                "`not_nul` is not a value `sources.s.checks[0].rule` takes",
            ),
            (
                13,
                43,
                "expected a number for `sources.s.checks[1].min`, found `low`",
            ),
            (
                15,
                49,
                "expected a whole number of 0 or more for `sources.s.protect[0].keep_last`, found `4.5`",
            ),
            (
                16,
                44,
                "expected a list (`- item` lines, or `[a, b]`) for `sources.s.protect[1].bands`, found a single value",
            ),
            (
                17,
                8,
                "expected a mapping (`key: value` lines, or `{ key: value }`) for `sinks`, found a list",
            ),
        ];
        let got_ref: Vec<(u64, u64, &str)> =
            got.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
        assert_eq!(got_ref, want);
        // `yes` is a boolean to the YAML reader, so `required: yes` is not reported; a
        // misspelt enumeration value gets the closest allowed one.
        let rule = check(WRONG)
            .wrong
            .into_iter()
            .find(|w| w.line == 12)
            .unwrap();
        assert!(
            rule.hint.starts_with("did you mean `not_null`?"),
            "{}",
            rule.hint
        );
        assert!(check(WRONG).unknown.is_empty());
    }

    #[test]
    fn values_the_yaml_reader_takes_are_not_reported() {
        // Quoted numbers, YAML 1.1 booleans, numbers as text, nulls for optional fields.
        let spec = "version: \"1\"\npipeline: 2024\nbatch_rows: 0x10\ndescription:\nsources:\n  s:\n    csv: { path: 1.5, header: off, delimiter: ~ }\n    columns: [{ name: true, required: on }]\n    checks:\n      - { rule: between, column: x, min: 1, max: \"2.5\" }\nsinks: {}\nquarantine: { parquet: { path: q } }\n";
        assert_eq!(wrong(spec), vec![]);
        crate::raw::parse(spec, "p.yaml".as_ref()).unwrap();
        // An alias is read where its anchor defines the value.
        let aliased = "version: &v 1\npipeline: p\nbatch_rows: *v\nsources: {}\nsinks: {}\nquarantine: { parquet: { path: &q q } }\ndescription: *q\n";
        assert_eq!(wrong(aliased), vec![]);
        crate::raw::parse(aliased, "p.yaml".as_ref()).unwrap();
        let wrong_alias =
            "version: 1\npipeline: &p p\nbatch_rows: *p\nsources: {}\nsinks: {}\nquarantine: {}\n";
        assert_eq!(
            wrong(wrong_alias),
            [(
                3,
                13,
                "expected a whole number of 0 or more for `batch_rows`, found `p`".to_string()
            )]
        );
    }

    #[test]
    fn a_missing_key_spelt_wrong_is_reported_once_as_a_typo() {
        let spec = "version: 1\npipline: p\nsources: {}\nsinks: {}\n";
        let shape = check(spec);
        assert_eq!(shape.unknown.len(), 1);
        assert_eq!(shape.unknown[0].suggestion(), Some("pipeline"));
        let missing: Vec<&str> = shape.wrong.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(missing, ["missing field `quarantine`"]);
    }

    /// No example spec has a problem of shape (the walk must never report what serde takes).
    #[test]
    fn the_example_specs_have_nothing_to_report() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&p).unwrap();
                let shape = check(&text);
                assert!(
                    shape.unknown.is_empty() && shape.wrong.is_empty(),
                    "{p:?}: {shape:?}"
                );
                seen += 1;
            }
        }
        assert!(seen >= 3);
    }

    #[test]
    fn text_that_is_not_yaml_has_no_unknown_keys_to_report() {
        assert!(unknown_keys("sources: [\n").is_empty());
        assert!(unknown_keys("").is_empty());
    }
}
