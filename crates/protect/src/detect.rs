//! Classification: what kind of sensitive value a column holds, from its name and a sample of
//! its values, with validators rather than bare patterns (Luhn for card numbers, mod-97 for
//! IBAN and LEI, the ISIN check digit, SSN and NINO allocation rules), and a scanner for
//! sensitive spans embedded in free text.
//!
//! ```
//! use sealtrail_protect::detect::{classify_column, value_kind};
//! use sealtrail_core::class::{Kind, Tag};
//! assert_eq!(value_kind("4111 1111 1111 1111"), Some(Kind::CardPan));
//! assert_eq!(value_kind("4111111111111112"), None); // fails Luhn: an order id, not a card
//! let c = classify_column("contact", &["ann@example.com", "bo@example.org"]);
//! assert_eq!((c.kind, c.tag), (Some(Kind::Email), Tag::Pii));
//! ```

use regex::Regex;
use sealtrail_core::class::{Kind, Tag};
use sealtrail_quality::checksum;
use std::ops::Range;
use std::sync::LazyLock;

/// The reference job's patterns (WORKLOAD.md A.4), also used to find spans in free text.
pub const EMAIL_PATTERN: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}";
pub const PHONE_PATTERN: &str = r"\+?\(?[0-9][0-9 ().-]{7,}[0-9]";

static EMAIL: LazyLock<Regex> = LazyLock::new(|| re(&format!("^{EMAIL_PATTERN}$")));
pub(crate) static EMAIL_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| re(EMAIL_PATTERN));
pub(crate) static PHONE_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| re(PHONE_PATTERN));
static IBAN_IN_TEXT: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"));
static PAN_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| re(r"\b[0-9](?:[ -]?[0-9]){12,18}\b"));
static SSN: LazyLock<Regex> = LazyLock::new(|| re(r"^([0-9]{3})-([0-9]{2})-([0-9]{4})$"));
static SSN_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| re(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"));
static NINO: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]$")
});
static BIC: LazyLock<Regex> =
    LazyLock::new(|| re(r"^[A-Z]{4}([A-Z]{2})[A-Z0-9]{2}(?:[A-Z0-9]{3})?$"));
static DATE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:([0-9]{4})-[0-9]{2}-[0-9]{2}|[0-9]{2}[/.][0-9]{2}[/.]([0-9]{4}))$"));
/// A calendar date at the start of a phone-shaped run: the date and hour of a timestamp
/// (`2026-01-01 00` of `2026-01-01 00:00:00+00`, `31.12.2026 23` of `31.12.2026 23:59`) match
/// [`PHONE_PATTERN`] up to the first colon. See [`date_lead`].
static DATE_LEAD: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[1-9]|[12][0-9]|3[01])[.-](?:0[1-9]|[12][0-9]|3[01])[.-](?:19|20)[0-9]{2})",
    )
});
static AMOUNT: LazyLock<Regex> =
    LazyLock::new(|| re(r"^\(?(?:[0-9]{1,3}(?: [0-9]{3})+|[0-9]+)\.[0-9]{1,2}\)?$"));
static AREA_CODE: LazyLock<Regex> = LazyLock::new(|| re(r"^\([0-9]{1,5}\)"));
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b[0-9]{1,5}[A-Z]? +(?:[\p{L}'.-]+ +){0,4}(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|boulevard|blvd|way|court|ct|place|pl|square|sq|close|crescent|terrace|strasse|straße|rue|via|calle)\b",
    )
});
static UK_POSTCODE: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}\b"));

fn re(p: &str) -> Regex {
    // The patterns are constants of this file; a test compiles every one.
    Regex::new(p).unwrap_or_else(|e| panic!("built-in pattern does not compile: {e}"))
}

/// ISO 3166-1 alpha-2 codes that issue IBANs or BICs commonly seen in trading data; a BIC or
/// IBAN with another country code is not taken for one.
const COUNTRIES: &str = "AD AE AL AT AU AZ BA BE BG BH BR BY CA CH CN CR CY CZ DE DK DO EE EG ES FI FO FR GB GE GI GL GR GT HK HR HU IE IL IN IQ IS IT JO JP KR KW KZ LB LC LI LT LU LV MC MD ME MK MR MT MU MX NL NO NZ PK PL PS PT QA RO RS RU SA SC SE SG SI SK SM ST SV TL TN TR UA US VA VG XK ZA";

/// [`COUNTRIES`] as a table indexed by the two letters (a lookup, where splitting the list
/// for every value cost ~10 % of the release guard's run).
const COUNTRY_TABLE: [bool; 26 * 26] = {
    let b = COUNTRIES.as_bytes();
    let mut t = [false; 26 * 26];
    let mut i = 0;
    while i + 1 < b.len() {
        t[(b[i] - b'A') as usize * 26 + (b[i + 1] - b'A') as usize] = true;
        i += 3;
    }
    t
};

fn is_country(c: &str) -> bool {
    match c.as_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            COUNTRY_TABLE[(a - b'A') as usize * 26 + (b - b'A') as usize]
        }
        _ => false,
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn is_pan(s: &str) -> bool {
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
    {
        return false;
    }
    let d = digits(s);
    (13..=19).contains(&d.len()) && matches!(d.as_bytes()[0], b'2'..=b'6') && checksum::luhn(&d)
}

fn is_iban(s: &str) -> bool {
    if !s.contains(' ') {
        // Most values: no copy. The check digits (3rd and 4th) are digits.
        let b = s.as_bytes();
        return (15..=34).contains(&b.len())
            && s.get(..2).is_some_and(is_country)
            && b[2].is_ascii_digit()
            && b[3].is_ascii_digit()
            && s.is_ascii()
            && checksum::iban(s);
    }
    let compact: String = s.chars().filter(|c| *c != ' ').collect();
    compact.is_ascii()
        && compact.len() >= 15
        && compact.len() <= 34
        && is_country(&compact[..2])
        && checksum::iban(&compact)
}

fn is_ssn(s: &str) -> bool {
    let Some(c) = SSN.captures(s) else {
        return false;
    };
    let area = &c[1];
    area != "000" && area != "666" && !area.starts_with('9') && &c[2] != "00" && &c[3] != "0000"
}

fn is_nino(s: &str) -> bool {
    NINO.captures(s)
        .is_some_and(|c| !matches!(&c[1], "BG" | "GB" | "NK" | "KN" | "TN" | "NT" | "ZZ"))
}

fn is_bic(s: &str) -> bool {
    BIC.captures(s).is_some_and(|c| is_country(&c[1]))
}

/// A telephone number as people write it: 7 to 15 digits, only `+ ( ) - . /` and spaces
/// besides, and the look of a phone number (a leading `+` or `(`, or two or more groups).
/// A bare digit run is not taken for a phone: it is as likely an id or an amount.
fn is_phone(s: &str) -> bool {
    let s = s.trim();
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || b" +()-./x".contains(&b))
    {
        return false;
    }
    let n = s.bytes().filter(u8::is_ascii_digit).count();
    if !(7..=15).contains(&n)
        || DATE.is_match(s)
        || date_lead(s).is_some()
        || s.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return false;
    }
    // An amount: `18 361 220.73` (thousands apart), `(1903406.82)` (a negative one as
    // accounts write it). A parenthesis opens an area code, closed after at most five digits.
    if AMOUNT.is_match(s) || (s.starts_with('(') && !AREA_CODE.is_match(s)) {
        return false;
    }
    let groups = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .count();
    // Grouped numbers without a country or area prefix need ten digits: `12-345-6789` is as
    // likely a reference code; two groups apart (`0207 9460958`) are not a range
    // (`8993 - 13715`).
    s.starts_with('+')
        || s.starts_with('(')
        || (groups >= 3 && n >= 10)
        || (groups == 2 && s.contains(' ') && !s.contains(" - "))
}

/// The length of the calendar date `s` starts with, when a space or nothing follows it.
fn date_lead(s: &str) -> Option<usize> {
    DATE_LEAD
        .find(s)
        .map(|m| m.end())
        .filter(|&end| matches!(s.as_bytes().get(end), None | Some(b' ')))
}

/// A date of birth: a real date, between 100 and 16 years ago.
fn is_birth_date(s: &str) -> bool {
    let Some(c) = DATE.captures(s) else {
        return false;
    };
    let year: i32 = c
        .get(1)
        .or(c.get(2))
        .and_then(|y| y.as_str().parse().ok())
        .unwrap_or(0);
    let now: i32 = chrono::Utc::now()
        .format("%Y")
        .to_string()
        .parse()
        .unwrap_or(2026);
    (now - 100..=now - 16).contains(&year)
}

/// A person's name: two to four words of letters (any script), each starting with a capital
/// where the script has case; or a run of CJK characters. Only ever weak evidence.
fn is_name_shaped(s: &str) -> bool {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.is_empty() || words.len() > 4 || s.chars().count() > 60 {
        return false;
    }
    let letters = |w: &str| {
        w.chars()
            .all(|c| c.is_alphabetic() || c == '\'' || c == '-' || c == '.')
    };
    if words.len() == 1 {
        // CJK names are often written without a space.
        let w = words[0];
        return (2..=6).contains(&w.chars().count())
            && w.chars().all(|c| ('\u{3040}'..='\u{9fff}').contains(&c));
    }
    words.iter().all(|w| {
        letters(w)
            && w.chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || !c.is_lowercase())
    })
}

/// A cheap first look (one pass over the bytes): could [`value_kind`] or [`scan_text`] find
/// anything but public reference data in `v`? Every sensitive kind needs an `@` (emails), a
/// `:` (IPv6), 15 characters or more (IBANs, and text long enough to embed anything), six
/// digits or more (card numbers, phones, SSNs, NINOs) or four digits and three dots (IPv4); an
/// LEI is 20 characters.
pub fn worth_a_look(v: &str) -> bool {
    if v.len() >= 15 {
        return true;
    }
    let (mut digits, mut dots) = (0, 0);
    for b in v.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'@' | b':' => return true,
            b'.' => dots += 1,
            _ => {}
        }
    }
    digits >= 6 || (dots >= 3 && digits >= 4)
}

/// The kind of one value, if a validator recognises it. Checked from the most to the least
/// specific. Names and addresses are not recognised from a value alone (see
/// [`classify_column`]).
pub fn value_kind(v: &str) -> Option<Kind> {
    first_kind(v, |_| true)
}

/// The first kind, in [`value_kind`]'s order, among those `wanted`, whose validator accepts
/// `v`: the validators of other kinds are not run (an LEI bound for an audience cleared for it
/// is not checked for its check digits).
pub fn first_kind(v: &str, wanted: impl Fn(Kind) -> bool) -> Option<Kind> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    // Cheap shape gates before each validator: most values fail them all.
    let n = v.len();
    let checks: [(Kind, &dyn Fn() -> bool); 9] = [
        (Kind::Email, &|| v.contains('@') && EMAIL.is_match(v)),
        (Kind::Iban, &|| n >= 15 && is_iban(v)),
        (Kind::CardPan, &|| n >= 13 && is_pan(v)),
        (Kind::Isin, &|| checksum::isin(v)),
        (Kind::Lei, &|| n == 20 && checksum::lei(v)),
        (Kind::NationalId, &|| {
            (n == 11 && is_ssn(v)) || ((9..=13).contains(&n) && is_nino(v))
        }),
        (Kind::IpAddress, &|| {
            v.contains(['.', ':']) && v.parse::<std::net::IpAddr>().is_ok()
        }),
        (Kind::Bic, &|| (n == 8 || n == 11) && is_bic(v)),
        (Kind::Phone, &|| is_phone(v)),
    ];
    checks
        .into_iter()
        .find(|(k, accepts)| wanted(*k) && accepts())
        .map(|(k, _)| k)
}

/// Whether `v` may hold several parts, each of which could be sensitive: text of words, a
/// list (`a@x.com;b@y.com`, `a, b`), or a document (a JSON array or object, as nested Parquet
/// values and JSON Lines objects read; a PostgreSQL array or composite). Such values are
/// scanned for embedded spans ([`scan_text`]); a value that is one thing is validated whole.
pub fn has_parts(v: &str) -> bool {
    v.contains(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '|' | '[' | '{'))
}

/// A sensitive span found in free text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub range: Range<usize>,
    pub kind: Kind,
}

/// Finds the sensitive spans in free text: IBANs and card numbers (validated), emails, US
/// SSNs and phone numbers, without overlaps, in text order.
pub fn scan_text(text: &str) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut add = |range: Range<usize>, kind| {
        if !spans
            .iter()
            .any(|s| s.range.start < range.end && range.start < s.range.end)
        {
            spans.push(Span { range, kind });
        }
    };
    for m in IBAN_IN_TEXT.find_iter(text) {
        if is_iban(m.as_str()) {
            add(m.range(), Kind::Iban);
        }
    }
    for m in EMAIL_IN_TEXT.find_iter(text) {
        add(m.range(), Kind::Email);
    }
    for m in PAN_IN_TEXT.find_iter(text) {
        if is_pan(m.as_str()) {
            add(m.range(), Kind::CardPan);
        }
    }
    for m in SSN_IN_TEXT.find_iter(text) {
        if is_ssn(m.as_str()) {
            add(m.range(), Kind::NationalId);
        }
    }
    let mut at = 0;
    while let Some(m) = PHONE_IN_TEXT.find_at(text, at) {
        at = m.end();
        if let Some(date) = date_lead(m.as_str()) {
            // Look again after the date: a phone number may follow it (`on 2026-01-01 555
            // 123 4567` is one match of the pattern).
            at = m.start() + date;
        } else if is_phone(m.as_str()) {
            add(m.range(), Kind::Phone);
        }
    }
    spans.sort_by_key(|s| s.range.start);
    spans
}

/// What the column's name suggests.
fn name_hint(name: &str) -> Option<Kind> {
    // Split snake_case, kebab-case and camelCase into lowercase words.
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c == '_' || c == '-' || c == ' ' || c == '.' {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let has = |w: &str| words.iter().any(|x| x == w);
    let joined = words.join("_");
    let any = |ws: &[&str]| ws.iter().any(|w| has(w));
    const PERSON: [&str; 15] = [
        "customer",
        "client",
        "first",
        "last",
        "given",
        "family",
        "middle",
        "holder",
        "person",
        "beneficiary",
        "contact",
        "employee",
        "trader",
        "user",
        "maiden",
    ];
    // First match wins: the most specific names come first.
    let rules = [
        (
            Kind::Email,
            any(&["email", "mail"]) || joined.contains("e_mail"),
        ),
        (Kind::Iban, has("iban")),
        (
            Kind::CardPan,
            any(&["pan", "cc", "ccn"])
                || joined.contains("card_number")
                || (has("card") && !any(&["type", "brand"])),
        ),
        (Kind::Isin, has("isin")),
        (Kind::Lei, has("lei")),
        (Kind::Bic, any(&["bic", "swift"])),
        (
            Kind::Phone,
            any(&["phone", "tel", "telephone", "mobile", "msisdn"]),
        ),
        (
            Kind::DateOfBirth,
            any(&["dob", "birth", "birthdate", "birthday"]),
        ),
        (
            Kind::NationalId,
            any(&["ssn", "nino", "passport"])
                || joined.contains("national_id")
                || joined.contains("tax_id")
                || (has("tin") && has("tax")),
        ),
        (Kind::IpAddress, has("ip") || joined.contains("remote_addr")),
        (
            Kind::PostalAddress,
            any(&["address", "street", "postcode", "zip", "postal"]),
        ),
        (
            Kind::AccountNumber,
            any(&["account", "acct"]) && !any(&["type", "token"]),
        ),
        (
            Kind::PersonName,
            any(&["surname", "forename"])
                || joined == "name"
                || joined == "full_name"
                || (has("name") && any(&PERSON)),
        ),
        (
            Kind::FreeText,
            any(&[
                "notes",
                "note",
                "comment",
                "comments",
                "memo",
                "description",
                "remarks",
                "message",
                "text",
            ]),
        ),
    ];
    rules.into_iter().find(|(_, hit)| *hit).map(|(k, _)| k)
}

/// The classification of one column.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    pub tag: Tag,
    pub kind: Option<Kind>,
    /// 0..1: how sure the classifier is.
    pub confidence: f64,
    /// Why, in a few words (counts and names only, never a value).
    pub evidence: String,
}

impl Classification {
    /// Sensitive data, with the confidence at which a classification is acted upon.
    pub fn is_sensitive(&self) -> bool {
        self.tag.is_sensitive() && self.confidence >= THRESHOLD
    }

    pub fn none(evidence: impl Into<String>) -> Self {
        Self {
            tag: Tag::None,
            kind: None,
            confidence: 0.9,
            evidence: evidence.into(),
        }
    }
    fn of(kind: Kind, confidence: f64, evidence: String) -> Self {
        Self {
            tag: kind.default_tag(),
            kind: Some(kind),
            confidence: (confidence * 100.0).round() / 100.0,
            evidence,
        }
    }
}

/// Confidence at or above which a classification is acted upon.
pub const THRESHOLD: f64 = 0.5;

/// Classifies a column from its name and a sample of its values (empty values are ignored).
/// With no values, the name alone decides, at lower confidence.
pub fn classify_column<S: AsRef<str>>(name: &str, sample: &[S]) -> Classification {
    let hint = name_hint(name);
    let values: Vec<&str> = sample
        .iter()
        .map(|s| s.as_ref().trim())
        .filter(|s| !s.is_empty())
        .collect();
    let n = values.len();
    if n == 0 {
        return match hint {
            Some(k) => Classification::of(k, 0.6, format!("name `{name}`; no values sampled")),
            None => Classification::none("no values sampled; name says nothing"),
        };
    }
    // Value evidence: the share of values each validator accepts.
    let mut counts = std::collections::HashMap::<Kind, usize>::new();
    for v in &values {
        if let Some(k) = value_kind(v) {
            *counts.entry(k).or_default() += 1;
        }
    }
    let best = counts
        .iter()
        .max_by_key(|(k, c)| (**c, **k))
        .map(|(k, c)| (*k, *c));
    let share = |c: usize| c as f64 / n as f64;
    let pct = |c: usize| format!("{:.0}%", 100.0 * share(c));
    if let Some((k, c)) = best
        && share(c) >= 0.8
    {
        let named = hint == Some(k);
        return Classification::of(
            k,
            if named {
                0.99
            } else {
                0.9 * share(c).min(1.0) + 0.05
            },
            format!(
                "{} of {n} values are valid {k}{}",
                pct(c),
                if named { ", and so says the name" } else { "" }
            ),
        );
    }
    if let Some((k, c)) = best
        && share(c) >= 0.5
    {
        return Classification::of(k, 0.7, format!("{} of {n} values are valid {k}", pct(c)));
    }
    // Addresses are recognisable by a house number and a street word.
    if hint.is_none() {
        let c = values.iter().filter(|v| ADDRESS.is_match(v)).count();
        if share(c) >= 0.6 {
            return Classification::of(
                Kind::PostalAddress,
                0.75,
                format!("{} of {n} values look like street addresses", pct(c)),
            );
        }
    }
    // Free text: sensitive spans embedded in longer text, or in lists and documents (a JSON
    // array of email addresses has no spaces): the values the guard scans alike.
    let texty = values.iter().filter(|v| has_parts(v)).count();
    if share(texty) >= 0.5 {
        let with_spans = values.iter().filter(|v| !scan_text(v).is_empty()).count();
        if with_spans > 0 {
            return Classification::of(
                Kind::FreeText,
                (0.7 + share(with_spans) * 3.0).min(0.95),
                format!(
                    "free text; {} of {n} values contain an email, phone, card or IBAN",
                    pct(with_spans)
                ),
            );
        }
    }
    match hint {
        Some(Kind::PersonName) => {
            let c = values.iter().filter(|v| is_name_shaped(v)).count();
            if share(c) >= 0.6 {
                Classification::of(
                    Kind::PersonName,
                    0.8 + 0.15 * share(c),
                    format!("name `{name}` and {} of {n} values look like names", pct(c)),
                )
            } else {
                Classification::of(
                    Kind::PersonName,
                    0.5,
                    format!(
                        "name `{name}`, though only {} of values look like names",
                        pct(c)
                    ),
                )
            }
        }
        Some(Kind::DateOfBirth) => {
            let c = values.iter().filter(|v| is_birth_date(v)).count();
            Classification::of(
                Kind::DateOfBirth,
                if share(c) >= 0.8 { 0.97 } else { 0.6 },
                format!(
                    "name `{name}`; {} of {n} values are plausible birth dates",
                    pct(c)
                ),
            )
        }
        Some(Kind::PostalAddress) => {
            let c = values
                .iter()
                .filter(|v| ADDRESS.is_match(v) || UK_POSTCODE.is_match(v))
                .count();
            Classification::of(
                Kind::PostalAddress,
                if share(c) >= 0.5 { 0.95 } else { 0.6 },
                format!(
                    "name `{name}`; {} of {n} values look like addresses",
                    pct(c)
                ),
            )
        }
        Some(Kind::AccountNumber) => {
            let c = values
                .iter()
                .filter(|v| (6..=20).contains(&digits(v).len()))
                .count();
            Classification::of(
                Kind::AccountNumber,
                if share(c) >= 0.8 { 0.9 } else { 0.55 },
                format!(
                    "name `{name}`; {} of {n} values are 6-20 digit numbers",
                    pct(c)
                ),
            )
        }
        Some(Kind::FreeText) => Classification::none(format!(
            "free text with no sensitive span in {n} sampled values"
        )),
        // A validator kind named but (mostly) not found in the values: believe the values,
        // unless there is some support.
        Some(k) => {
            let c = counts.get(&k).copied().unwrap_or(0);
            if share(c) >= 0.3 {
                Classification::of(
                    k,
                    0.6,
                    format!("name `{name}`; {} of {n} values are valid {k}", pct(c)),
                )
            } else {
                Classification::none(format!(
                    "name suggests {k} but only {} of {n} values are valid {k}",
                    pct(c)
                ))
            }
        }
        None => {
            let c = values.iter().filter(|v| is_birth_date(v)).count();
            if share(c) >= 0.9 {
                return Classification::of(
                    Kind::DateOfBirth,
                    0.55,
                    format!("{} of {n} values are dates 16-100 years ago", pct(c)),
                );
            }
            Classification::none(match best {
                Some((k, c)) => format!("only {} of {n} values are valid {k}", pct(c)),
                None => format!("no sensitive value among {n} sampled"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_reject_lookalikes() {
        assert_eq!(value_kind("GB82 WEST 1234 5698 7654 32"), Some(Kind::Iban));
        assert_eq!(value_kind("GB82WEST12345698765433"), None);
        assert_eq!(value_kind("4539578763621486"), Some(Kind::CardPan));
        assert_eq!(value_kind("4539578763621487"), None);
        assert_eq!(value_kind("US0378331005"), Some(Kind::Isin));
        assert_eq!(value_kind("US0378331006"), None);
        assert_eq!(value_kind("5493001KJTIIGC8Y1R12"), Some(Kind::Lei));
        assert_eq!(value_kind("123-45-6789"), Some(Kind::NationalId));
        assert_ne!(value_kind("666-45-6789"), Some(Kind::NationalId));
        assert_eq!(value_kind("AB 12 34 56 C"), Some(Kind::NationalId));
        assert_eq!(value_kind("DEUTDEFF"), Some(Kind::Bic));
        assert_eq!(value_kind("+44 20 7946 0958"), Some(Kind::Phone));
        assert_eq!(value_kind("(555) 123-4567"), Some(Kind::Phone));
        assert_eq!(value_kind("2025-03-14"), None);
        assert_eq!(value_kind("2026-01-01 00"), None);
        assert_eq!(value_kind("31.12.2026 23"), None);
        assert_eq!(value_kind("2125-05-12 34"), Some(Kind::Phone));
        // Amounts and ranges are not phone numbers; phones in their usual shapes are.
        for v in [
            "(19034063.82)",
            "(1234567)",
            "18 361 220.73",
            "8993 - 13715",
        ] {
            assert_eq!(value_kind(v), None, "{v}");
        }
        for v in [
            "(020) 7946 0958",
            "(555)555-0123",
            "01.23.45.67.89",
            "07700 900123",
        ] {
            assert_eq!(value_kind(v), Some(Kind::Phone), "{v}");
        }
        assert_eq!(value_kind("1234.5678"), None);
        assert_eq!(value_kind("12345678"), None);
        assert_eq!(value_kind("10.0.0.1"), Some(Kind::IpAddress));
    }

    #[test]
    fn lists_and_documents_of_sensitive_values_are_free_text() {
        let emails: Vec<String> = (0..20)
            .map(|i| format!(r#"["ann{i}@example.com","bob{i}@corp.example"]"#))
            .collect();
        let c = classify_column("contacts", &emails);
        assert_eq!(c.kind, Some(Kind::FreeText), "{c:?}");
        let ibans: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"iban":"GB82WEST12345698765432","n":{i}}}"#))
            .collect();
        assert_eq!(classify_column("meta", &ibans).kind, Some(Kind::FreeText));
        let listed: Vec<String> = (0..20)
            .map(|i| format!("a{i}@x.example;b@y.example"))
            .collect();
        assert_eq!(classify_column("cc", &listed).kind, Some(Kind::FreeText));
        // Timestamps as PostgreSQL prints them hold no phone number.
        let ts: Vec<String> = (0..20)
            .map(|i| format!("2026-01-{:02} 00:00:00+00", i + 1))
            .collect();
        assert!(!classify_column("at", &ts).is_sensitive());
        // Documents without any sensitive value are nothing.
        let plain: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"n":{i},"tags":["a","b"]}}"#))
            .collect();
        assert!(!classify_column("meta", &plain).is_sensitive());
    }

    #[test]
    fn free_text_spans() {
        let t = "call +44 20 7946 0958 or mail a.b@example.com, card 4539 5787 6362 1486";
        let kinds: Vec<Kind> = scan_text(t).into_iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![Kind::Phone, Kind::Email, Kind::CardPan]);
        assert!(scan_text("order 4539578763621487 shipped").is_empty());
        // A timestamp is no phone number, though PHONE_PATTERN matches its date and hour.
        for t in [
            "booked 2026-01-01 00:00:00+00 by desk",
            "amended 31.12.2026 23:59, see ticket",
            "[\"2026-03-04 10:11:12\",\"2026-03-05T09:00:00Z\"]",
        ] {
            assert!(scan_text(t).is_empty(), "{t}: {:?}", scan_text(t));
        }
        assert!(scan_text("paid (1903406.82) and 18 361 220.73 EUR, qty 8993 - 13715").is_empty());
        // ... and a phone number after a date is still found.
        for (t, phone) in [
            ("call 2026-01-01 then +44 20 7946 0958", "+44 20 7946 0958"),
            ("on 2026-01-01 555 123 4567 called", "555 123 4567"),
            // The hour before it goes with it (redacting too much is safe).
            ("at 2026-01-01 10 (555) 123-4567", "10 (555) 123-4567"),
        ] {
            let spans = scan_text(t);
            assert_eq!(spans.len(), 1, "{t}: {spans:?}");
            assert_eq!(&t[spans[0].range.clone()], phone, "{t}");
        }
    }

    #[test]
    fn order_ids_are_not_cards() {
        // 16-digit ids: about one in ten passes Luhn by chance.
        let ids: Vec<String> = (0..200u64)
            .map(|i| format!("{}", 4_000_000_000_000_000u64 + i * 7_919))
            .collect();
        let c = classify_column("order_id", &ids);
        assert_eq!(c.tag, Tag::None, "{c:?}");
    }

    #[test]
    fn names_need_the_column_name() {
        let v = ["Ann Smith", "José Álvarez", "Ivan Petrov", "山田太郎"];
        assert_eq!(
            classify_column("customer_name", &v).kind,
            Some(Kind::PersonName)
        );
        assert_eq!(
            classify_column("city", &["New York", "San Francisco"]).tag,
            Tag::None
        );
    }

    #[test]
    fn country_codes_are_looked_up_exactly() {
        for c in COUNTRIES.split(' ') {
            assert!(is_country(c), "{c}");
        }
        for c in ["", "G", "gb", "GBR", "XX", "ZZ", "é", "Gé"] {
            assert!(!is_country(c), "{c}");
        }
    }

    /// [`value_kind`] as it was before the shape gates: every validator on every value. The
    /// oracle the gated version must agree with.
    fn ungated(v: &str) -> Option<Kind> {
        let v = v.trim();
        if v.is_empty() {
            None
        } else if EMAIL.is_match(v) {
            Some(Kind::Email)
        } else if is_iban(v) {
            Some(Kind::Iban)
        } else if is_pan(v) {
            Some(Kind::CardPan)
        } else if checksum::isin(v) {
            Some(Kind::Isin)
        } else if v.len() == 20 && checksum::lei(v) {
            Some(Kind::Lei)
        } else if is_ssn(v) || is_nino(v) {
            Some(Kind::NationalId)
        } else if v.parse::<std::net::IpAddr>().is_ok() {
            Some(Kind::IpAddress)
        } else if is_bic(v) {
            Some(Kind::Bic)
        } else if is_phone(v) {
            Some(Kind::Phone)
        } else {
            None
        }
    }

    /// The gates, the kind filter and the first look change no answer on `v`: the gated
    /// classification equals the ungated one; asking for one kind finds it exactly when it is
    /// the first kind accepted, or a later one (the validators of other kinds not run); and a
    /// value the first look skips holds nothing sensitive, whole or embedded.
    fn gates_agree(v: &str) -> Result<(), String> {
        let all = ungated(v);
        if value_kind(v) != all {
            return Err(format!("{v:?}: gated {:?}, ungated {all:?}", value_kind(v)));
        }
        if let Some(k) = all
            && first_kind(v, |x| x == k) != Some(k)
        {
            return Err(format!("{v:?}: {k:?} alone not found"));
        }
        let sensitive = first_kind(v, |k| k.default_tag() != Tag::None);
        if !worth_a_look(v) && (sensitive.is_some() || !scan_text(v).is_empty()) {
            return Err(format!(
                "{v:?}: skipped by the first look, holds {sensitive:?}"
            ));
        }
        Ok(())
    }

    #[test]
    fn the_gates_agree_with_the_ungated_validators_on_the_labelled_corpus() {
        let mut checked = 0;
        for column in crate::corpus::corpus(20, 50, 7) {
            for v in &column.values {
                gates_agree(v).unwrap();
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    proptest::proptest! {
        /// The same on generated text (non-ASCII, any shape) and on digit-heavy values near
        /// the validators' shapes.
        #[test]
        fn the_gates_agree_with_the_ungated_validators(
            v in "(\\PC|[0-9A-Z @.:+-]){0,40}|[0-9 ().+-]{5,22}|[A-Z]{2}[0-9]{2}[A-Z0-9 ]{10,30}"
        ) {
            proptest::prop_assert!(gates_agree(&v).is_ok(), "{}", gates_agree(&v).unwrap_err());
        }
    }

    #[test]
    fn gated_validators_still_accept_their_kinds() {
        for (v, k) in [
            ("client@example.com", Kind::Email),
            ("NO9386011117947", Kind::Iban),
            ("4539578763621486", Kind::CardPan),
            ("4539 5787 6362 1486", Kind::CardPan),
            ("123-45-6789", Kind::NationalId),
            ("AB123456C", Kind::NationalId),
            ("10.0.0.1", Kind::IpAddress),
            ("2001:db8::1", Kind::IpAddress),
            ("DEUTDEFF500", Kind::Bic),
        ] {
            assert_eq!(value_kind(v), Some(k), "{v}");
        }
    }
}
