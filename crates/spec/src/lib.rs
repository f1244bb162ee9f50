//! Pipeline specs: YAML in, a validated [`Pipeline`] out.
//!
//! Two stages, as in Vector's config compiler:
//! 1. [`raw`]: serde types mirroring the YAML (`deny_unknown_fields`, spans kept with
//!    [`raw::Loc`]), from which `sealtrail schema` generates the JSON Schema.
//! 2. [`compile`]: checks everything that serde cannot (exactly one connector per source,
//!    rule fields that fit the rule, columns that exist, regexes that compile, secrets that are
//!    references, sinks reading from something that exists...) and reports *every* problem at
//!    once as [`Diagnostic`]s naming file, line, column and a hint.
//!
//! ```
//! let yaml = "version: 1\npipeline: demo\nsources:\n  t:\n    csv: { path: 'in/*.csv' }\n    columns: [{ name: id }]\nsinks:\n  out:\n    from: t\n    parquet: { path: out }\nquarantine:\n  parquet: { path: q }\n";
//! let p = sealtrail_spec::parse_str(yaml, "demo.yaml".as_ref()).unwrap();
//! assert_eq!(p.name, "demo");
//! assert_eq!(p.sources[0].columns[0].name, "id");
//! ```

pub mod compile;
pub mod keys;
pub mod raw;

pub use compile::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a spec, with where it is and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Errors of this crate: the spec could not be read, or it is wrong (every problem listed).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read spec {path}: {source}; check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(d: &[Diagnostic]) -> String {
    let mut s = format!(
        "the spec has {} error{}:",
        d.len(),
        if d.len() == 1 { "" } else { "s" }
    );
    for x in d {
        s.push('\n');
        s.push_str(&x.to_string());
    }
    s
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// No spec may name a pipeline as a replay is named (`check` refuses names ending in
// `-replay`).
pub use sealtrail_core::{REPLAY_SUFFIX, replay_name};

/// Reads, parses and compiles a spec file.
pub fn load(path: &Path) -> Result<Pipeline> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// Parses and compiles spec text; `path` names the file in diagnostics and anchors relative
/// paths in the spec (they are relative to the spec's folder).
pub fn parse_str(text: &str, path: &Path) -> Result<Pipeline> {
    let raw = match raw::parse(text, path) {
        Ok(r) => r,
        Err(Error::Invalid(first)) => {
            return Err(Error::Invalid(with_every_shape_error(text, path, first)));
        }
        Err(e) => return Err(e),
    };
    let sha = sealtrail_core::sha256_hex(text.as_bytes());
    compile::compile(raw, path, sha)
}

/// serde stops at the first problem of a spec's shape. Every unknown key, wrong value and
/// missing key is reported instead ([`keys::check`]), and then everything else the spec gets
/// wrong once they are left out: the text with them blanked keeps its lines, so the positions
/// hold. A wrong value can be left out when its key is optional (its default applies); what
/// the checks of the spec's meaning then say about the mapping that held it is not reported
/// (it would be about the default, not what was written). When a wrong value cannot be left
/// out (a required key's, a list item, a missing key), the spec's meaning is checked once the
/// values are fixed.
fn with_every_shape_error(text: &str, path: &Path, first: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let shape = keys::check(text);
    if shape.unknown.is_empty() && shape.wrong.is_empty() {
        return first;
    }
    let mut out: Vec<Diagnostic> = shape.unknown.iter().map(|k| unknown_key(k, path)).collect();
    out.extend(shape.wrong.iter().map(|w| Diagnostic {
        file: path.to_path_buf(),
        line: w.line,
        column: w.column,
        message: w.message.clone(),
        hint: Some(w.hint.clone()),
    }));
    let mut gone: Vec<keys::Entry> = shape.unknown.iter().map(keys::UnknownKey::entry).collect();
    let all_gone = shape.wrong.iter().all(|w| w.entry.is_some());
    if all_gone {
        gone.extend(shape.wrong.iter().filter_map(|w| w.entry.clone()));
    }
    let rest = match keys::blank_out(text, &gone) {
        Some(clean) if all_gone => raw::parse(&clean, path)
            .and_then(|r| compile::compile(r, path, String::new()))
            .err(),
        Some(clean) => raw::parse(&clean, path).err(),
        None => Some(Error::Invalid(first)),
    };
    // Lines where what else is found would be about a left-out value, or serde's own words
    // for a problem the walk reported already.
    let quiet: Vec<u64> = shape
        .wrong
        .iter()
        .flat_map(|w| [w.line, w.map_line])
        .collect();
    if let Some(Error::Invalid(rest)) = rest {
        // Compared with the walk's findings only: the same problem of meaning in two places
        // has the same words twice.
        let walked = out.len();
        for d in rest {
            // serde's `unknown variant `tokenize`, expected one of ...`, placed at 1:1 when its
            // reader lost the position, for a value the walk reported where it stands.
            let variant = d
                .message
                .strip_prefix("unknown variant `")
                .and_then(|m| m.split_once('`'))
                .map(|(v, _)| format!("`{v}`"));
            let said = quiet.contains(&d.line)
                || out[..walked].iter().any(|o| {
                    o.message == d.message
                        // serde's `missing field `rule`` (at 1:1) for the walk's `missing
                        // field `rule` in `sources.s.checks[0]`` where it is missing.
                        || o.message.starts_with(&format!("{} in `", d.message))
                        || variant
                            .as_ref()
                            .is_some_and(|v| o.message.starts_with(v.as_str()))
                });
            if !said {
                out.push(d);
            }
        }
    }
    out.sort_by_key(|d| (d.line, d.column));
    out.dedup_by(|a, b| a.line == b.line && a.column == b.column && a.message == b.message);
    out
}

fn unknown_key(k: &keys::UnknownKey, path: &Path) -> Diagnostic {
    let within = if k.within.is_empty() {
        String::new()
    } else {
        format!(" in `{}`", k.within)
    };
    let allowed = k
        .allowed
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
    // `{ not_null: id }`: a check named by its rule as a key.
    let rule_as_key = k.within.contains(".checks[")
        && serde_json::from_value::<raw::CheckKind>(serde_json::Value::String(k.key.clone()))
            .is_ok();
    let hint = match k.suggestion() {
        _ if rule_as_key => format!(
            "a check names its rule under `rule:` and its column under `column:`: write `{{ rule: {}, column: ... }}`",
            k.key
        ),
        Some(s) => format!("did you mean `{s}`? Allowed here: {allowed}"),
        None => format!("remove or correct the key; allowed here: {allowed}"),
    };
    // `{ name: amount, type: decimal(12,2) }`: the flow mapping's comma cut the type, and its
    // scale `2)` reads as a key.
    let scale = k.key.trim().strip_suffix(')');
    if scale.is_some_and(|d| !d.trim().is_empty() && d.trim().bytes().all(|b| b.is_ascii_digit())) {
        return Diagnostic {
            file: path.to_path_buf(),
            line: k.line,
            column: k.column,
            message: format!(
                "`{}`{within} is the end of a `decimal(P,S)` type cut at its comma (in a `{{ ... }}` mapping a comma ends the value)",
                k.key
            ),
            hint: Some("put the type in quotes: `type: \"decimal(18,4)\"`".into()),
        };
    }
    Diagnostic {
        file: path.to_path_buf(),
        line: k.line,
        column: k.column,
        message: format!("unknown field `{}`{within}", k.key),
        hint: Some(hint),
    }
}

/// The JSON Schema of the spec format, generated from the raw types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::PipelineSpec);
    serde_json::to_value(schema).unwrap_or_default()
}
