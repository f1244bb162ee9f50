//! Synthetic financial data for the demo and the tests: deterministic for a given seed.
//!
//! Trades follow the reference workload's 17 columns (`../shared/WORKLOAD.md` A.1) with about
//! 0.5% defective lines split evenly over its nine reason codes; customers are JSON Lines with
//! names, emails, phones, card numbers, dates of birth and IBANs, with about 0.5% defects.
//! Returns the expected quarantine counts so callers can check the engine against them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const FIRST: &[&str] = &[
    "Anna", "Jürgen", "Zoë", "Олег", "Søren", "Łukasz", "María", "Giulia", "Hiroshi", "Chloé",
    "James", "Fatima", "Pieter", "Ingrid",
];
const LAST: &[&str] = &[
    "Schmidt",
    "Müller",
    "O'Brien",
    "Иванов",
    "Nowak",
    "García",
    "Rossi",
    "Tanaka",
    "Dubois",
    "Smith",
    "de Vries",
    "Lindqvist",
    "Andersen",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "bank.example",
    "post.example.net",
];
const CCY: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "HKD",
];
const MICS: &[&str] = &[
    "XLON", "XNYS", "XNAS", "XPAR", "XETR", "XAMS", "XSWX", "XTKS", "XHKG", "XMIL", "BATE", "CHIX",
];
const NOTES: &[&str] = &[
    "",
    "",
    "Block trade, allocate per standing instructions",
    "Client said \"urgent\", please expedite",
    "Partial fill; remainder cancelled",
    "Give-up to prime broker",
    "Call back on +44 20 7946 0958 regarding fill",
    "Confirm allocation with ops@example.com",
];
pub const TRADE_REASONS: [&str; 9] = [
    "invalid_utf8",
    "wrong_field_count",
    "empty_trade_id",
    "duplicate_trade_id",
    "invalid_quantity",
    "invalid_price",
    "unknown_currency",
    "invalid_isin",
    "invalid_timestamp",
];

fn digits(r: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + r.random_range(0..10u8)))
        .collect()
}
fn alnum(r: &mut StdRng, n: usize) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..n)
        .map(|_| char::from(A[r.random_range(0..A.len())]))
        .collect()
}
fn expand(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                c.to_string()
            } else {
                (c as u32 - 'A' as u32 + 10).to_string()
            }
        })
        .collect()
}
fn luhn_digit(body: &str) -> u32 {
    let mut sum = 0;
    for (i, c) in body.chars().rev().enumerate() {
        let mut d = c.to_digit(10).unwrap_or(0);
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    (10 - sum % 10) % 10
}
fn mod97(s: &str) -> u32 {
    s.chars()
        .fold(0u32, |r, c| (r * 10 + c.to_digit(10).unwrap_or(0)) % 97)
}
pub fn iban(r: &mut StdRng) -> String {
    let (cc, bban) = match r.random_range(0..3) {
        0 => (
            "GB",
            format!(
                "{}{}",
                ["WEST", "BUKB", "NWBK"][r.random_range(0..3)],
                digits(r, 14)
            ),
        ),
        1 => ("DE", digits(r, 18)),
        _ => (
            "FR",
            format!("{}{}{}", digits(r, 10), alnum(r, 11), digits(r, 2)),
        ),
    };
    let check = 98 - mod97(&expand(&format!("{bban}{cc}00")));
    format!("{cc}{check:02}{bban}")
}
pub fn pan(r: &mut StdRng) -> String {
    let body = format!("{}{}", ["4", "51", "55"][r.random_range(0..3)], "");
    let body = format!("{body}{}", digits(r, 15 - body.len()));
    format!("{body}{}", luhn_digit(&body))
}
fn isin(r: &mut StdRng) -> String {
    let p = format!(
        "{}{}",
        ["US", "GB", "DE", "FR", "NL"][r.random_range(0..5)],
        alnum(r, 9)
    );
    format!("{p}{}", luhn_digit(&expand(&p)))
}
fn lei(r: &mut StdRng) -> String {
    let p = format!(
        "{}00{}",
        ["5493", "2138", "5299"][r.random_range(0..3)],
        alnum(r, 12)
    );
    format!("{p}{:02}", 98 - mod97(&expand(&format!("{p}00"))))
}
fn name(r: &mut StdRng) -> String {
    format!(
        "{} {}",
        FIRST[r.random_range(0..FIRST.len())],
        LAST[r.random_range(0..LAST.len())]
    )
}
fn email(r: &mut StdRng, n: &str) -> String {
    let local: String = n
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_lowercase();
    let local = if local.is_empty() {
        "client".to_string()
    } else {
        local
    };
    format!(
        "{local}{}@{}",
        r.random_range(1..999),
        DOMAINS[r.random_range(0..DOMAINS.len())]
    )
}
fn phone(r: &mut StdRng) -> String {
    format!(
        "+{} {} {}",
        ["44", "49", "33", "1"][r.random_range(0..4)],
        digits(r, 3),
        digits(r, 7)
    )
}
fn q(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The `trade_id` of generated trade `i` (from 0). Trade 0 is never a defect.
pub fn trade_id(i: usize) -> String {
    format!("TRD-{:012}", i as u64 * 7919 + 100_000)
}

/// Writes `dir/trades_<rows>.csv`; returns expected quarantine counts by reason.
pub fn trades(
    dir: &Path,
    rows: usize,
    seed: u64,
) -> std::io::Result<(std::path::PathBuf, BTreeMap<String, u64>)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("trades_{rows}.csv"));
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut r = StdRng::seed_from_u64(seed);
    writeln!(
        w,
        "trade_id,trade_ts,trade_date,account_iban,customer_name,customer_email,customer_phone,card_pan,isin,side,quantity,price,currency,venue_mic,trader_id,counterparty_lei,notes"
    )?;
    let per_kind = ((rows as f64 * 0.005 / 9.0).round() as usize).max(1);
    let mut expected = BTreeMap::new();
    // Defect slots: evenly spread, never on the first row (a duplicate needs an earlier one).
    let total = (per_kind * 9).min(rows.saturating_sub(1) / 2);
    let stride = if total > 0 {
        rows / (total + 1)
    } else {
        rows + 1
    };
    let mut ids: Vec<String> = Vec::with_capacity(rows);
    for i in 0..rows {
        let slot = if stride > 0 && i > 0 && i % stride == 0 && i / stride <= total {
            Some((i / stride - 1) % 9)
        } else {
            None
        };
        let kind = slot.map(|k| TRADE_REASONS[k]);
        let mut id = trade_id(i);
        let ms = 1_735_722_000_000u64 + i as u64 * 997;
        let secs = (ms / 1000) as i64;
        let dt = chrono_like(secs, ms % 1000);
        let mut ts = dt.0.clone();
        let n = name(&mut r);
        let e = if r.random_range(0..100) < 3 {
            String::new()
        } else {
            email(&mut r, &n)
        };
        let card = if r.random_range(0..10) < 3 {
            String::new()
        } else {
            pan(&mut r)
        };
        let mut isin_v = isin(&mut r);
        let mut qty = ((10f64).powf(r.random_range(0.0..6.0)) as u64)
            .max(1)
            .to_string();
        let mut price = format!("{:.4}", 0.5 * 10f64.powf(r.random_range(0.0..4.0)));
        let mut ccy = CCY[r.random_range(0..CCY.len())].to_string();
        let mut fields_extra = false;
        match kind {
            Some("empty_trade_id") => id.clear(),
            Some("duplicate_trade_id") => id = ids[r.random_range(0..ids.len())].clone(),
            Some("invalid_quantity") => qty = format!("-{qty}"),
            Some("invalid_price") => {
                price = ["N/A", "abc", "12.34.56", "#VALUE!"][r.random_range(0..4)].into()
            }
            Some("unknown_currency") => ccy = ["XYZ", "BTC", "GPB"][r.random_range(0..3)].into(),
            Some("invalid_isin") => {
                let last = isin_v.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
                isin_v.push(char::from(
                    b'0' + ((last + 1 + r.random_range(0..9)) % 10) as u8,
                ));
            }
            Some("invalid_timestamp") => {
                ts = [
                    "not-a-date",
                    "2025-02-30T10:15:00.000Z",
                    "2025-13-45T25:61:00.000Z",
                    "31/12/2025 25:00",
                ][r.random_range(0..4)]
                .into()
            }
            Some("wrong_field_count") => fields_extra = true,
            _ => {}
        }
        // Ids a later duplicate may reuse: lines that reach the unique check and register there.
        if !matches!(
            kind,
            Some("duplicate_trade_id" | "empty_trade_id" | "wrong_field_count" | "invalid_utf8")
        ) {
            ids.push(id.clone());
        }
        let note = NOTES[r.random_range(0..NOTES.len())];
        let side = if r.random_range(0..2) == 0 {
            "BUY"
        } else {
            "SELL"
        };
        let line = format!(
            "{id},{ts},{},{},{},{e},{},{card},{isin_v},{side},{qty},{price},{ccy},{},TR{},{},{}",
            dt.1,
            iban(&mut r),
            q(&n),
            phone(&mut r),
            MICS[r.random_range(0..MICS.len())],
            digits(&mut r, 5),
            lei(&mut r),
            if fields_extra {
                "Split fill, see ticket".to_string()
            } else {
                q(note)
            }
        );
        let mut bytes = line.into_bytes();
        if kind == Some("invalid_utf8") {
            // A Latin-1 encoded name, as a misconfigured export would write it.
            let at = bytes.iter().position(|&b| b == b',').unwrap_or(0) + 1;
            bytes.splice(at..at, [b'R', b'e', b'n', 0xE9, b' ']);
        }
        w.write_all(&bytes)?;
        w.write_all(b"\n")?;
        if let Some(k) = kind {
            *expected.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    w.flush()?;
    Ok((path, expected))
}

/// (timestamp text, date text) for epoch seconds and milliseconds.
fn chrono_like(secs: i64, ms: u64) -> (String, String) {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = sealtrail_core::civil_from_days(days);
    let date = format!("{y:04}-{m:02}-{d:02}");
    (
        format!(
            "{date}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        ),
        date,
    )
}

/// Writes `dir/customers_<rows>.jsonl`; returns expected quarantine counts by reason.
pub fn customers(
    dir: &Path,
    rows: usize,
    seed: u64,
) -> std::io::Result<(std::path::PathBuf, BTreeMap<String, u64>)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("customers_{rows}.jsonl"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut r = StdRng::seed_from_u64(seed ^ 0xC057);
    let kinds = [
        "invalid_json",
        "invalid_email",
        "invalid_pan",
        "invalid_iban",
        "duplicate_customer",
    ];
    let every = (rows / ((rows as f64 * 0.005).ceil() as usize).max(1)).max(2);
    let mut expected = BTreeMap::new();
    for i in 0..rows {
        let kind = (i > 0 && i % every == 0).then(|| kinds[(i / every) % kinds.len()]);
        let n = name(&mut r);
        let id = if kind == Some("duplicate_customer") {
            1000
        } else {
            1000 + i as u64
        };
        let mut em = email(&mut r, &n);
        let mut card = pan(&mut r);
        let mut ib = iban(&mut r);
        match kind {
            Some("invalid_email") => em = em.replace('@', " at "),
            Some("invalid_pan") => {
                let last = card.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
                card.push(char::from(b'0' + ((last + 3) % 10) as u8));
            }
            Some("invalid_iban") => ib = ib.replacen(&ib[2..4], "00", 1),
            _ => {}
        }
        let country = ["GB", "DE", "FR"][r.random_range(0..3)];
        let dob = format!(
            "{}-{:02}-{:02}",
            r.random_range(1940..2005),
            r.random_range(1..13),
            r.random_range(1..29)
        );
        let obj = serde_json::json!({
            "customer_id": id, "name": n, "email": em, "phone": phone(&mut r), "card_pan": card,
            "date_of_birth": dob, "iban": ib, "country": country,
            "onboarded_at": format!("2024-{:02}-{:02}T10:00:00Z", r.random_range(1..13), r.random_range(1..29)),
        });
        let mut line = obj.to_string();
        if kind == Some("invalid_json") {
            line.truncate(line.len() / 2);
        }
        writeln!(w, "{line}")?;
        if let Some(k) = kind {
            *expected.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    w.flush()?;
    Ok((path, expected))
}
