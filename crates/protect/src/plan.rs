//! A source's policies resolved against its classification ([`resolve`]), then bound to keys
//! and applied to typed batches ([`Protector`]).
//!
//! Resolution picks, for every declared column, the most specific policies that apply: those
//! naming the column, else those selecting its kind, else its tag. A column classified
//! sensitive with no policy is a [`Problem`]: protection is never silently skipped. Every
//! output column carries a [`ColumnState`]: its tag, and which action (if any) protected it,
//! which the release check follows through SQL to each sink.

use crate::detect::Classification;
use crate::keyring::{KeyBytes, Keyring, Purpose};
use crate::ops::{self, Fpe, Mask, OpError, Sealer, Tokenizer};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Date32Type, Field, Float64Type, Schema, SchemaRef};
use sealtrail_core::Reason;
use sealtrail_core::class::{Kind, Tag};
use sealtrail_spec::{Action, Derive, Generalise, KeySource, Selector, Source};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What an output column of the protection stage carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnState {
    pub name: String,
    /// The source column it comes from.
    pub origin: String,
    /// The tag of its content as delivered: the source column's tag when raw, hashed without
    /// a key from a guessable kind (a card number, an email...) or a card number masked to
    /// show more than PCI DSS allows; `none` when a protection action produced it.
    pub tag: Tag,
    pub kind: Option<Kind>,
    /// The action that produced it; `None` when the value is delivered raw.
    pub protected_by: Option<&'static str>,
}

/// One output column: which input, which action, what name.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub input: usize,
    pub action: Action,
    pub name: String,
    pub at: (u64, u64),
}

/// Something a spec must fix before it may run.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: (u64, u64),
    pub message: String,
    pub hint: String,
}

/// The resolved protection of one source.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub outputs: Vec<Resolved>,
    pub states: Vec<ColumnState>,
    pub digest: Option<String>,
}

/// The classification of each column: the spec's declaration when there is one, else the
/// classifier's (from the name alone when `samples` is empty).
pub fn classify_source(source: &Source, samples: &[Vec<String>]) -> Vec<Classification> {
    source
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c.class {
            Some((tag, kind)) => Classification {
                tag,
                kind,
                confidence: 1.0,
                evidence: "declared in the spec".into(),
            },
            None => {
                let sample: &[String] = samples.get(i).map(Vec::as_slice).unwrap_or(&[]);
                crate::detect::classify_column(&c.name, sample)
            }
        })
        .collect()
}

/// Resolves the policies of `source` against `classes` (one per declared column).
pub fn resolve(source: &Source, classes: &[Classification]) -> Result<Resolution, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut outputs = Vec::new();
    let mut states = Vec::new();
    for (i, col) in source.columns.iter().enumerate() {
        let class = &classes[i];
        let sensitive = class.is_sensitive();
        let by = |f: &dyn Fn(&Selector) -> bool| {
            source
                .protect
                .iter()
                .filter(|p| f(&p.selector))
                .collect::<Vec<_>>()
        };
        let mut rules = by(&|s| matches!(s, Selector::Column(c) if *c == col.name));
        if rules.is_empty() && sensitive {
            rules = by(&|s| matches!(s, Selector::Kind(k) if Some(*k) == class.kind));
        }
        if rules.is_empty() && sensitive {
            rules = by(&|s| matches!(s, Selector::Tag(t) if *t == class.tag));
        }
        if rules.is_empty() {
            if sensitive {
                problems.push(Problem {
                    at: col.at,
                    message: format!(
                        "source `{}`: column `{}` holds {} ({}, confidence {:.2}: {}) and has no protection policy",
                        source.name,
                        col.name,
                        class.kind.map_or("sensitive data".to_string(), |k| k.to_string()),
                        class.tag,
                        class.confidence,
                        class.evidence
                    ),
                    hint: format!(
                        "add a policy under `protect:` (e.g. `- {{ column: {}, action: {} }}`; or `drop`, `mask`, `encrypt`...), or `action: keep` to deliver it raw to restricted sinks, or declare `class: none` on the column if it is not sensitive",
                        col.name,
                        // Free text keeps its words: only the sensitive spans go.
                        if class.kind == Some(Kind::FreeText) { "redact" } else { "token" }
                    ),
                });
            }
            outputs.push(Resolved {
                input: i,
                action: Action::Keep,
                name: col.name.clone(),
                at: col.at,
            });
            states.push(ColumnState {
                name: col.name.clone(),
                origin: col.name.clone(),
                tag: if sensitive { class.tag } else { Tag::None },
                kind: class.kind,
                protected_by: None,
            });
            continue;
        }
        for r in rules {
            if matches!(r.action, Action::Drop) {
                continue;
            }
            let name = r.output.clone().unwrap_or_else(|| col.name.clone());
            // An unkeyed SHA-256 of a value from a small or guessable space (a card number, a
            // phone number, a date of birth, an email address from a list) is reversed by
            // hashing every candidate: it stays the data it was for the release check (PCI DSS
            // 4.0, 3.5.1.1, asks for keyed hashes of card numbers). Free text is no such space.
            let guessable = matches!(r.action, Action::Hash)
                && sensitive
                && class.kind.is_some_and(|k| k != Kind::FreeText);
            // A card number masked to show more than its first 6 and last 4 digits is still a
            // card number (PCI DSS 4.0, 3.4.1 and 3.5.1: at most the BIN and the last four; an
            // 8-digit BIN only for PANs of 16 digits or more, and a 13-digit PAN with 8 + 4
            // shown is one Luhn digit from whole).
            let shown = matches!(r.action, Action::Mask { keep_first, keep_last, fixed: None, .. }
                    if keep_first > 6 || keep_last > 4)
                && sensitive
                && class.kind == Some(Kind::CardPan);
            let weak = guessable || shown;
            let raw = matches!(r.action, Action::Keep) || weak;
            outputs.push(Resolved {
                input: i,
                action: r.action.clone(),
                name: name.clone(),
                at: r.at,
            });
            states.push(ColumnState {
                name,
                origin: col.name.clone(),
                tag: if raw { class.tag } else { Tag::None },
                kind: if raw { class.kind } else { None },
                protected_by: (!raw || weak).then(|| r.action.name()),
            });
        }
    }
    if let Some(d) = &source.digest {
        states.push(ColumnState {
            name: d.clone(),
            origin: d.clone(),
            tag: Tag::None,
            kind: None,
            protected_by: Some("hash"),
        });
    }
    let mut seen = HashSet::new();
    for (s, o) in states.iter().zip(
        outputs
            .iter()
            .map(|o| o.at)
            .chain(std::iter::once(source.at)),
    ) {
        if !seen.insert(s.name.clone()) {
            problems.push(Problem {
                at: o,
                message: format!(
                    "source `{}`: two protection outputs are named `{}`",
                    source.name, s.name
                ),
                hint: "give each policy output its own name with `as:`".into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(Resolution {
            outputs,
            states,
            digest: source.digest.clone(),
        })
    } else {
        Err(problems)
    }
}

/// Arrow schema of the protection stage's output.
pub fn output_schema(source_schema: &Schema, r: &Resolution) -> SchemaRef {
    let mut fields: Vec<Field> = r
        .outputs
        .iter()
        .map(|o| {
            let input = source_schema.field(o.input);
            let ty = match &o.action {
                Action::Keep => input.data_type().clone(),
                Action::Derive(Derive::HasValue) => DataType::Boolean,
                _ => DataType::Utf8,
            };
            let nullable = !matches!(o.action, Action::Derive(Derive::HasValue));
            Field::new(&o.name, ty, nullable)
        })
        .collect();
    if let Some(d) = &r.digest {
        fields.push(Field::new(d, DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

#[derive(Debug)]
enum Op {
    Keep,
    Mask(Mask),
    Token(Tokenizer),
    Fpe(Fpe),
    Encrypt(Sealer),
    EncryptSubject(usize),
    Hash,
    Year,
    Month,
    Band(Vec<f64>),
    District,
    HasValue,
    EmailDomain,
    AgeBand,
    CountryOfIban,
    Redact(String, Vec<regex::Regex>),
}

/// Errors binding keys to a plan.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Key(#[from] crate::keyring::KeyError),
    #[error("{0}")]
    External(String),
}

/// Policies bound to their keys, ready for batches.
#[derive(Debug)]
pub struct Protector {
    ops: Vec<(usize, Op, String)>,
    schema: SchemaRef,
    digest: bool,
    keyring: Option<Arc<std::sync::Mutex<Keyring>>>,
    today: i32,
    guards: Vec<crate::guard::Guard>,
}

fn external(r: &sealtrail_spec::SecretRef) -> Result<KeyBytes, BindError> {
    let s = r.resolve().map_err(BindError::External)?;
    KeyBytes::from_hex(s.expose())
        .map_err(|e| BindError::External(format!("key {}: {e}", describe(r))))
}

fn describe(r: &sealtrail_spec::SecretRef) -> String {
    match r {
        sealtrail_spec::SecretRef::Env(n) => format!("env:{n}"),
        sealtrail_spec::SecretRef::File(p) => format!("file:{}", p.display()),
        sealtrail_spec::SecretRef::Literal(_) => "(literal)".into(),
    }
}

impl Protector {
    /// Binds every action to its key (creating keyring keys on first use).
    pub fn new(
        source: &Source,
        source_schema: &Schema,
        r: &Resolution,
        keyring: Arc<std::sync::Mutex<Keyring>>,
    ) -> Result<Self, BindError> {
        let mut ops = Vec::new();
        let ring = || {
            keyring
                .lock()
                .map_err(|_| BindError::External("the keyring lock is poisoned".into()))
        };
        for o in &r.outputs {
            let op = match &o.action {
                Action::Drop | Action::Keep => Op::Keep,
                Action::Mask {
                    keep_first,
                    keep_last,
                    fixed,
                    digits_only,
                    with,
                } => Op::Mask(Mask {
                    keep_first: *keep_first,
                    keep_last: *keep_last,
                    fixed: fixed.clone(),
                    digits_only: *digits_only,
                    with: *with,
                }),
                Action::Token { key } => Op::Token(Tokenizer::new(&match key {
                    KeySource::Keyring(n) => ring()?.active(n, Purpose::Token)?.1,
                    KeySource::External(x) => external(x)?,
                })),
                Action::Fpe { key, tweak } => {
                    let k = match key {
                        KeySource::Keyring(n) => ring()?.active(n, Purpose::Fpe)?.1,
                        KeySource::External(x) => external(x)?,
                    };
                    Op::Fpe(Fpe::new(&k, tweak.as_bytes()))
                }
                Action::Encrypt {
                    subject: Some(s), ..
                } => Op::EncryptSubject(source.column_index(s).ok_or_else(|| {
                    BindError::External(format!(
                        "subject column `{s}` is not declared in source `{}`",
                        source.name
                    ))
                })?),
                Action::Encrypt { key, bare, .. } => {
                    let (id, k) = match key {
                        KeySource::Keyring(n) => ring()?.active(n, Purpose::Encrypt)?,
                        KeySource::External(x) => (describe(x), external(x)?),
                    };
                    Op::Encrypt(if *bare {
                        Sealer::bare(&k)
                    } else {
                        Sealer::new(&id, &k)
                    })
                }
                Action::Hash => Op::Hash,
                Action::Generalise(Generalise::Year) => Op::Year,
                Action::Generalise(Generalise::Month) => Op::Month,
                Action::Generalise(Generalise::Band(b)) => Op::Band(b.clone()),
                Action::Generalise(Generalise::District) => Op::District,
                Action::Derive(Derive::HasValue) => Op::HasValue,
                Action::Derive(Derive::EmailDomain) => Op::EmailDomain,
                Action::Derive(Derive::AgeBand) => Op::AgeBand,
                Action::Derive(Derive::CountryOfIban) => Op::CountryOfIban,
                Action::Redact { with, patterns } => Op::Redact(with.clone(), patterns.clone()),
            };
            ops.push((
                o.input,
                op,
                format!("{}({})", o.action.name(), source.columns[o.input].name),
            ));
        }
        let today =
            (chrono::Utc::now().date_naive() - chrono::NaiveDate::default()).num_days() as i32;
        Ok(Self {
            ops,
            schema: output_schema(source_schema, r),
            digest: r.digest.is_some(),
            keyring: Some(keyring),
            today,
            guards: Vec::new(),
        })
    }

    /// Checks every value of these raw columns before a batch goes on (see [`crate::guard`]).
    pub fn with_guards(mut self, guards: Vec<crate::guard::Guard>) -> Self {
        self.guards = guards;
        self
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Protects `batch`. `raw_sha256(i)` is the SHA-256 of row `i`'s source bytes (for the
    /// digest column; the engine already holds it as the record's input commitment, so it is
    /// not hashed twice). Rows an action could not protect come back with their reason; their
    /// outputs are null and the caller must not load them.
    pub fn apply(
        &self,
        batch: &RecordBatch,
        raw_sha256: impl Fn(usize) -> [u8; 32],
    ) -> Result<(RecordBatch, Vec<(usize, Reason)>), arrow::error::ArrowError> {
        let n = batch.num_rows();
        let mut failed: Vec<(usize, Reason)> = Vec::new();
        let mut text_cache: HashMap<usize, ArrayRef> = HashMap::new();
        let mut as_text = |i: usize| -> Result<ArrayRef, arrow::error::ArrowError> {
            if let Some(a) = text_cache.get(&i) {
                return Ok(a.clone());
            }
            let a = arrow::compute::cast(batch.column(i), &DataType::Utf8)?;
            text_cache.insert(i, a.clone());
            Ok(a)
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.ops.len() + 1);
        for (input, op, label) in &self.ops {
            let col: ArrayRef = match op {
                Op::Keep => batch.column(*input).clone(),
                Op::HasValue => {
                    let a = batch.column(*input);
                    let mut b = BooleanBuilder::with_capacity(n);
                    let text = as_text(*input)?;
                    let t = text.as_string::<i32>();
                    for r in 0..n {
                        b.append_value(a.is_valid(r) && !t.value(r).is_empty());
                    }
                    Arc::new(b.finish())
                }
                Op::Year | Op::Month | Op::AgeBand => {
                    let d = arrow::compute::cast(batch.column(*input), &DataType::Date32)?;
                    let d = d.as_primitive::<Date32Type>();
                    let mut b = StringBuilder::with_capacity(n, n * 8);
                    for r in 0..n {
                        if d.is_null(r) {
                            b.append_null();
                            continue;
                        }
                        let days = d.value(r);
                        match op {
                            Op::AgeBand => b.append_value(ops::age_band(days, self.today)),
                            _ => {
                                let date = chrono::NaiveDate::default()
                                    + chrono::Duration::days(days as i64);
                                let f = if matches!(op, Op::Year) {
                                    "%Y"
                                } else {
                                    "%Y-%m"
                                };
                                b.append_value(date.format(f).to_string());
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                Op::Band(bounds) => {
                    let x = arrow::compute::cast(batch.column(*input), &DataType::Float64)?;
                    let x = x.as_primitive::<Float64Type>();
                    let v: StringArray = (0..n)
                        .map(|r| x.is_valid(r).then(|| ops::band(x.value(r), bounds)))
                        .collect();
                    Arc::new(v)
                }
                Op::EncryptSubject(subject) => {
                    let text = as_text(*input)?;
                    let t = text.as_string::<i32>();
                    let subj = as_text(*subject)?;
                    let s = subj.as_string::<i32>();
                    let distinct: Vec<&str> = {
                        let mut set: Vec<&str> = (0..n)
                            .filter(|&r| t.is_valid(r) && s.is_valid(r))
                            .map(|r| s.value(r))
                            .collect();
                        set.sort_unstable();
                        set.dedup();
                        set
                    };
                    let keys = match &self.keyring {
                        Some(k) => k
                            .lock()
                            .map_err(|_| {
                                arrow::error::ArrowError::ComputeError(
                                    "keyring lock poisoned".into(),
                                )
                            })?
                            .subject_keys(&distinct)
                            .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?,
                        None => vec![None; distinct.len()],
                    };
                    let sealers: HashMap<&str, Option<Sealer>> = distinct
                        .iter()
                        .zip(keys)
                        .map(|(d, k)| (*d, k.map(|(id, key)| Sealer::new(&id, &key))))
                        .collect();
                    let mut b = StringBuilder::with_capacity(n, n * 64);
                    let mut out = String::new();
                    for r in 0..n {
                        if t.is_null(r) {
                            b.append_null();
                            continue;
                        }
                        match s.is_valid(r).then(|| sealers.get(s.value(r))).flatten() {
                            Some(Some(sealer)) => {
                                out.clear();
                                sealer.seal(t.value(r).as_bytes(), &mut out);
                                b.append_value(&out);
                            }
                            // Shredded subject: nothing may be written that could be read.
                            Some(None) => b.append_null(),
                            None => {
                                failed.push((r, Reason::new("protect_failed", label.clone())));
                                b.append_null();
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
                _ => {
                    let text = as_text(*input)?;
                    let t = text.as_string::<i32>();
                    // The output's size, to allocate it once: a batch's column is megabytes,
                    // and growing it by doubling copies it and fragments the heap.
                    let text_bytes = t.values().len();
                    let cap = match op {
                        Op::Token(_) | Op::Hash => n * 64,
                        Op::Encrypt(_) => text_bytes / 3 * 4 + n * 64,
                        Op::Mask(_) | Op::Redact(..) | Op::EmailDomain | Op::CountryOfIban => {
                            text_bytes
                        }
                        _ => text_bytes * 2,
                    };
                    let mut b = StringBuilder::with_capacity(n, cap);
                    let mut out = String::with_capacity(128);
                    for r in 0..n {
                        if t.is_null(r) {
                            b.append_null();
                            continue;
                        }
                        let v = t.value(r);
                        out.clear();
                        let res: Result<bool, OpError> = match op {
                            Op::Mask(m) => {
                                m.apply(v, &mut out);
                                Ok(true)
                            }
                            Op::Token(tk) => {
                                tk.token(v.as_bytes(), &mut out);
                                Ok(true)
                            }
                            Op::Fpe(f) => f.encrypt(v).map(|s| {
                                out.push_str(&s);
                                true
                            }),
                            Op::Encrypt(s) => {
                                s.seal(v.as_bytes(), &mut out);
                                Ok(true)
                            }
                            Op::Hash => {
                                ops::hash(v.as_bytes(), &mut out);
                                Ok(true)
                            }
                            Op::District => {
                                out.push_str(&ops::district(v));
                                Ok(true)
                            }
                            Op::EmailDomain => Ok(match ops::email_domain(v) {
                                Some(d) => {
                                    out.push_str(&d);
                                    true
                                }
                                None => false,
                            }),
                            Op::CountryOfIban => {
                                let c: String = v.trim().chars().take(2).collect();
                                let ok = c.len() == 2 && c.chars().all(|c| c.is_ascii_alphabetic());
                                out.push_str(&c.to_ascii_uppercase());
                                Ok(ok)
                            }
                            Op::Redact(with, patterns) if patterns.is_empty() => {
                                ops::redact(v, with, &mut out);
                                Ok(true)
                            }
                            Op::Redact(with, patterns) => {
                                let mut s = std::borrow::Cow::Borrowed(v);
                                for p in patterns {
                                    if let std::borrow::Cow::Owned(o) =
                                        p.replace_all(&s, with.as_str())
                                    {
                                        s = std::borrow::Cow::Owned(o);
                                    }
                                }
                                out.push_str(&s);
                                Ok(true)
                            }
                            _ => Ok(false),
                        };
                        match res {
                            Ok(true) => b.append_value(&out),
                            Ok(false) => b.append_null(),
                            Err(e) => {
                                failed.push((
                                    r,
                                    Reason::new("protect_failed", format!("{label}: {e}")),
                                ));
                                b.append_null();
                            }
                        }
                    }
                    Arc::new(b.finish())
                }
            };
            cols.push(col);
        }
        for g in &self.guards {
            let text = as_text(g.column)?;
            let rejected: HashSet<usize> = failed.iter().map(|f| f.0).collect();
            failed.extend(g.inspect(text.as_string::<i32>(), |r| rejected.contains(&r)));
        }
        if self.digest {
            let mut b = StringBuilder::with_capacity(n, n * 64);
            let mut out = String::with_capacity(64);
            for r in 0..n {
                out.clear();
                ops::hex_into(&raw_sha256(r), &mut out);
                b.append_value(&out);
            }
            cols.push(Arc::new(b.finish()));
        }
        failed.sort_by_key(|f| f.0);
        failed.dedup_by_key(|f| f.0);
        let out = if cols.is_empty() {
            RecordBatch::try_new_with_options(
                self.schema.clone(),
                cols,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
            )?
        } else {
            RecordBatch::try_new(self.schema.clone(), cols)?
        };
        Ok((out, failed))
    }
}
