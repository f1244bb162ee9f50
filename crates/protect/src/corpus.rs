//! A labelled corpus of generated columns, with hard negatives, for measuring the classifier.
//!
//! Each column has a name, values and the kind it truly holds (or none). Hard negatives are
//! columns that look sensitive and are not: 16-digit order ids that fail Luhn, numbers shaped
//! like phone numbers (amounts, quantities, reference codes), dates that are not birth dates,
//! city and product names, upper-case codes of IBAN or BIC length that fail their checks.
//! `precision_recall` runs the classifier on it; the docs report its figures.

use crate::detect::classify_column;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sealtrail_core::class::Kind;

/// One labelled column.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub name: String,
    pub values: Vec<String>,
    pub truth: Option<Kind>,
}

fn luhn_complete(prefix: &str) -> String {
    for d in 0..10 {
        let s = format!("{prefix}{d}");
        if sealtrail_quality::checksum::luhn(&s) {
            return s;
        }
    }
    unreachable!("one check digit always fits")
}

fn iban(rng: &mut StdRng) -> String {
    let bban: String = (0..18)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect();
    // Check digits: 98 - (BBAN + "DE00" as digits) mod 97.
    let digits = format!("{bban}131400");
    let r = digits
        .bytes()
        .fold(0u32, |acc, b| (acc * 10 + (b - b'0') as u32) % 97);
    format!("DE{:02}{bban}", 98 - r)
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// The corpus: `per_kind` columns of each kind and of each hard negative, `rows` values each.
pub fn corpus(per_kind: usize, rows: usize, seed: u64) -> Vec<Labelled> {
    let mut rng = StdRng::seed_from_u64(seed);
    let first = [
        "Ann", "José", "Ivan", "Mei", "Olga", "Lukas", "Fatima", "Kenji", "Zoë",
    ];
    let last = [
        "Smith", "Álvarez", "Petrov", "Chen", "Nowak", "Müller", "Haddad", "Sato",
    ];
    let domains = ["example.com", "mail.example.org", "bank.example.net"];
    let streets = [
        "High Street",
        "Station Road",
        "Rue de la Paix",
        "Main St",
        "Elm Avenue",
    ];
    let cities = [
        "London",
        "New York",
        "Paris",
        "São Paulo",
        "Tokyo",
        "Zürich",
    ];
    let words = [
        "settled", "late", "client", "called", "about", "the", "trade", "please", "confirm", "desk",
    ];
    let mut out = Vec::new();
    let mut col = |name: &str, truth: Option<Kind>, f: &mut dyn FnMut(&mut StdRng) -> String| {
        for i in 0..per_kind {
            let values = (0..rows).map(|_| f(&mut rng)).collect();
            out.push(Labelled {
                name: if i % 2 == 0 {
                    name.to_string()
                } else {
                    format!("col_{i}")
                },
                values,
                truth,
            });
        }
    };
    col("customer_email", Some(Kind::Email), &mut |r| {
        // Local parts are ASCII, as nearly all real addresses are.
        let ascii = [
            "ann", "jose", "ivan", "mei", "olga", "lukas", "fatima", "kenji", "zoe",
        ];
        format!(
            "{}.{}{}@{}",
            pick(r, &ascii),
            pick(r, &ascii),
            r.random_range(1..99),
            pick(r, &domains)
        )
    });
    col(
        "phone",
        Some(Kind::Phone),
        &mut |r| match r.random_range(0..3) {
            0 => format!(
                "+44 20 {} {}",
                r.random_range(1000..9999),
                r.random_range(1000..9999)
            ),
            1 => format!(
                "({}) {}-{}",
                r.random_range(200..999),
                r.random_range(200..999),
                r.random_range(1000..9999)
            ),
            _ => format!(
                "+49 30 {}{}",
                r.random_range(100..999),
                r.random_range(10000..99999)
            ),
        },
    );
    col("card_number", Some(Kind::CardPan), &mut |r| {
        luhn_complete(&format!(
            "4{:014}",
            r.random_range(0..100_000_000_000_000u64)
        ))
    });
    col("iban", Some(Kind::Iban), &mut iban);
    col("ssn", Some(Kind::NationalId), &mut |r| {
        format!(
            "{:03}-{:02}-{:04}",
            r.random_range(1..665),
            r.random_range(1..99),
            r.random_range(1..9999)
        )
    });
    col("client_ip", Some(Kind::IpAddress), &mut |r| {
        format!(
            "10.{}.{}.{}",
            r.random_range(0..255),
            r.random_range(0..255),
            r.random_range(1..255)
        )
    });
    col("customer_name", Some(Kind::PersonName), &mut |r| {
        format!("{} {}", pick(r, &first), pick(r, &last))
    });
    col("date_of_birth", Some(Kind::DateOfBirth), &mut |r| {
        format!(
            "{}-{:02}-{:02}",
            r.random_range(1940..2005),
            r.random_range(1..13),
            r.random_range(1..29)
        )
    });
    col("address", Some(Kind::PostalAddress), &mut |r| {
        format!(
            "{} {}, {}",
            r.random_range(1..300),
            pick(r, &streets),
            pick(r, &cities)
        )
    });
    col("notes", Some(Kind::FreeText), &mut |r| {
        let mut s: Vec<String> = (0..6).map(|_| pick(r, &words).to_string()).collect();
        if r.random_range(0..5) == 0 {
            s.push(format!(
                "{}@{}",
                pick(r, &first).to_lowercase(),
                pick(r, &domains)
            ));
        }
        s.join(" ")
    });
    // Hard negatives.
    col("order_id", None, &mut |r| {
        format!(
            "{}",
            4_000_000_000_000_000u64 + r.random_range(0..999_999_999_999u64)
        )
    });
    col("amount", None, &mut |r| {
        format!(
            "{}.{:02}",
            r.random_range(1000..99_999_999),
            r.random_range(0..100)
        )
    });
    col("reference", None, &mut |r| {
        format!(
            "{}-{}-{}",
            r.random_range(10..99),
            r.random_range(100..999),
            r.random_range(1000..9999)
        )
    });
    col("trade_date", None, &mut |r| {
        format!(
            "2025-{:02}-{:02}",
            r.random_range(1..13),
            r.random_range(1..29)
        )
    });
    // Timestamps kept as text (the phone pattern matches their date and hour).
    col("booked_at", None, &mut |r| {
        format!(
            "2025-{:02}-{:02} {:02}:{:02}:00+00",
            r.random_range(1..13),
            r.random_range(1..29),
            r.random_range(0..24),
            r.random_range(0..60)
        )
    });
    // Amounts as statements print them: thousands apart, negatives in parentheses.
    col("shown", None, &mut |r| {
        let (m, t, u, c) = (
            r.random_range(1..999),
            r.random_range(0..1000),
            r.random_range(0..1000),
            r.random_range(0..100),
        );
        match r.random_range(0..2) {
            0 => format!("{m} {t:03} {u:03}.{c:02}"),
            _ => format!("({m}{t:03}{u:03}.{c:02})"),
        }
    });
    // Ranges.
    col("band", None, &mut |r| {
        let lo = r.random_range(1000..9999);
        format!("{lo} - {}", lo + r.random_range(1000..99_999))
    });
    col("city", None, &mut |r| pick(r, &cities).to_string());
    col("product_code", None, &mut |r| {
        (0..22)
            .map(|_| char::from(b'A' + r.random_range(0..26u8)))
            .collect()
    });
    col("quantity", None, &mut |r| {
        format!("{}", r.random_range(1..10_000_000))
    });
    col("comment", None, &mut |r| {
        (0..6)
            .map(|_| pick(r, &words))
            .collect::<Vec<_>>()
            .join(" ")
    });
    out
}

/// (precision, recall) of "sensitive, of the right kind" over the corpus; plus the columns
/// the classifier got wrong.
pub fn precision_recall(c: &[Labelled]) -> (f64, f64, Vec<String>) {
    let (mut tp, mut fp, mut fneg) = (0u32, 0u32, 0u32);
    let mut wrong = Vec::new();
    for l in c {
        let got = classify_column(&l.name, &l.values);
        let predicted = got.is_sensitive().then_some(()).and(got.kind);
        match (predicted, l.truth) {
            (Some(p), Some(t)) if p == t => tp += 1,
            (Some(_), Some(_)) => {
                fp += 1;
                fneg += 1;
                wrong.push(format!("{}: {:?} as {:?}", l.name, l.truth, predicted));
            }
            (Some(_), None) => {
                fp += 1;
                wrong.push(format!("{}: none as {:?}", l.name, predicted));
            }
            (None, Some(_)) => {
                fneg += 1;
                wrong.push(format!("{}: {:?} missed", l.name, l.truth));
            }
            (None, None) => {}
        }
    }
    let p = tp as f64 / (tp + fp).max(1) as f64;
    let r = tp as f64 / (tp + fneg).max(1) as f64;
    (p, r, wrong)
}
