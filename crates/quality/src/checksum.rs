//! Check-digit validators for financial identifiers. No allocation: mod-97 and Luhn are
//! computed while walking the characters.

/// Luhn check over ASCII digits (the last one is the check digit).
pub fn luhn(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 2 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    luhn_digits(b.iter().rev().map(|c| c - b'0'))
}

/// Luhn over digits given from the rightmost (check digit) leftwards.
fn luhn_digits(rev: impl Iterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in rev.enumerate() {
        let mut d = d as u32;
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// ISIN (ISO 6466): 2 letters, 9 alphanumerics, 1 check digit; letters become their
/// two-digit values (A=10 .. Z=35) and the digit string must pass Luhn.
pub fn isin(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 12
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..11]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        || !b[11].is_ascii_digit()
    {
        return false;
    }
    // Expand to digits (at most 2 per char), then Luhn from the right.
    let mut digits = [0u8; 24];
    let mut n = 0;
    for &c in b {
        if c.is_ascii_digit() {
            digits[n] = c - b'0';
            n += 1;
        } else {
            let v = c - b'A' + 10;
            digits[n] = v / 10;
            digits[n + 1] = v % 10;
            n += 2;
        }
    }
    luhn_digits(digits[..n].iter().rev().copied())
}

/// Remainder mod 97 of the number formed by expanding letters to A=10 .. Z=35.
fn mod97(chars: impl Iterator<Item = u8>) -> Option<u32> {
    let mut r = 0u32;
    for c in chars {
        match c {
            b'0'..=b'9' => r = (r * 10 + (c - b'0') as u32) % 97,
            b'A'..=b'Z' => r = (r * 100 + (c - b'A' + 10) as u32) % 97,
            _ => return None,
        }
    }
    Some(r)
}

/// LEI (ISO 17442): 20 alphanumerics, mod 97 == 1.
pub fn lei(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20 && b[18..].iter().all(u8::is_ascii_digit) && mod97(b.iter().copied()) == Some(1)
}

/// IBAN (ISO 13616): country letters, check digits 02..=98, 11..30 alphanumerics; moving the first
/// four characters to the end gives a number that is 1 mod 97. Spaces are not accepted.
pub fn iban(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 15
        || b.len() > 34
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    // Check digits 00, 01 and 99 can satisfy mod 97 too, but ISO 13616 never issues them.
    let check = (b[2] - b'0') * 10 + (b[3] - b'0');
    if !(2..=98).contains(&check) {
        return false;
    }
    mod97(b[4..].iter().chain(&b[..4]).copied()) == Some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_good_identifiers() {
        assert!(isin("US0378331005")); // Apple
        assert!(isin("GB0002634946")); // BAE Systems
        assert!(lei("5493001KJTIIGC8Y1R12"));
        assert!(iban("GB82WEST12345698765432"));
        assert!(iban("DE89370400440532013000"));
        assert!(luhn("4111111111111111"));
        assert!(luhn("79927398713"));
    }

    #[test]
    fn bad_check_digits_fail() {
        assert!(!isin("US0378331006"));
        assert!(!isin("us0378331005"));
        assert!(!lei("5493001KJTIIGC8Y1R13"));
        assert!(!iban("GB82WEST12345698765433"));
        assert!(!iban("GB82 WEST 1234 5698 7654 32"));
        // Mod 97 accepts 00 where 97 is the valid pair; ISO 13616 does not.
        let valid97 = (0..100_000u32)
            .map(|n| format!("DE97{n:018}"))
            .find(|s| iban(s))
            .unwrap();
        assert!(!iban(&valid97.replacen("97", "00", 1)));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn(""));
        assert!(!isin(""));
        assert!(!iban("ÄÖ82WEST12345698765432"));
    }

    proptest::proptest! {
        #[test]
        fn validators_never_panic(s in "\\PC{0,40}") {
            let _ = (isin(&s), lei(&s), iban(&s), luhn(&s));
        }

        #[test]
        fn one_changed_digit_breaks_luhn(pos in 0usize..16, delta in 1u8..10) {
            let good = b"4111111111111111";
            let mut bad = *good;
            bad[pos] = b'0' + (bad[pos] - b'0' + delta) % 10;
            proptest::prop_assert!(!luhn(std::str::from_utf8(&bad).unwrap()));
        }
    }
}
