//! The protection actions on one value. Each is a pure function of its keyed state, built once
//! per run (HMAC state, AES key schedule, FF1 cipher) and used for every value.
//!
//! Ciphertexts of `encrypt` in the sealtrail format name their key:
//! `st1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, with the `st1:<key id>` prefix as
//! associated data so a ciphertext cannot be relabelled. The `bare` format is the reference
//! job's: base64 of nonce ‖ ciphertext ‖ tag, no associated data (the key is implied).

use crate::detect;
use crate::ff1::{self, ShortFf1};
use crate::keyring::{KeyBytes, open_with, seal_with};
use crate::mac::HmacSha256;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use fpe::ff1::{FF1, FlexibleNumeralString};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// Keyed HMAC-SHA256 tokens: lowercase hex. Equal inputs give equal tokens under one key, so
/// joins on the token work; without the key a token reveals nothing. The keyed state is
/// zeroized on drop ([`HmacSha256`]).
#[derive(Clone)]
pub struct Tokenizer {
    mac: HmacSha256,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(«key»)")
    }
}

impl Tokenizer {
    pub fn new(key: &KeyBytes) -> Self {
        Self {
            mac: HmacSha256::new(key.expose()),
        }
    }
    pub fn token(&self, v: &[u8], out: &mut String) {
        hex_into(&self.mac.mac(v), out);
    }
}

pub(crate) fn hex_into(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Digests and tokens (32 bytes) are formatted on the stack and appended in one copy.
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (i, b) in chunk.iter().enumerate() {
            buf[2 * i] = HEX[(b >> 4) as usize];
            buf[2 * i + 1] = HEX[(b & 15) as usize];
        }
        let hex = &buf[..2 * chunk.len()];
        // Only ASCII hex digits were written.
        out.push_str(std::str::from_utf8(hex).unwrap_or_else(|_| unreachable!("ASCII")));
    }
}

/// SHA-256, lowercase hex. Unkeyed: fine for integrity, weak for low-entropy values (prefer a
/// token for those).
pub fn hash(v: &[u8], out: &mut String) {
    hex_into(&Sha256::digest(v), out);
}

/// NIST SP 800-38G FF1 over the decimal digits of a value (AES-256, radix 10); every other
/// character stays where it is, so `4111-1111-1111-1111` stays a dash-separated 16-digit number.
/// Values of up to 38 digits go through [`ShortFf1`] (machine integers, one AES block a round),
/// longer ones through the `fpe` crate; both compute the same function.
pub struct Fpe {
    short: Box<ShortFf1>,
    ff1: FF1<aes::Aes256>,
    tweak: Vec<u8>,
}

impl std::fmt::Debug for Fpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fpe(«key»)")
    }
}

/// Why a value could not be protected (never includes the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("FF1 needs at least 6 digits (radix 10)")]
    TooFewDigits,
    #[error("the value is not valid ciphertext for this key")]
    Undecryptable,
    #[error("the key for this data subject was shredded")]
    Shredded,
}

impl Fpe {
    pub fn new(key: &KeyBytes, tweak: &[u8]) -> Self {
        Self {
            short: Box::new(ShortFf1::new(key.expose(), tweak)),
            ff1: FF1::<aes::Aes256>::new(key.expose(), 10)
                .unwrap_or_else(|_| unreachable!("radix 10 is valid")),
            tweak: tweak.to_vec(),
        }
    }

    fn run(&self, v: &str, encrypt: bool) -> Result<String, OpError> {
        let mut digits = [0u8; ff1::MAX_DIGITS];
        let mut n = 0;
        for b in v.bytes().filter(u8::is_ascii_digit) {
            if n < digits.len() {
                digits[n] = b - b'0';
            }
            n += 1;
        }
        // radix^len >= 1_000_000 is FF1's minimum domain.
        if n < ff1::MIN_DIGITS {
            return Err(OpError::TooFewDigits);
        }
        let long: Vec<u8>;
        let out: &[u8] = if n <= ff1::MAX_DIGITS {
            self.short.apply(&mut digits[..n], encrypt);
            &digits[..n]
        } else {
            let ns = FlexibleNumeralString::from(
                v.bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| (b - b'0') as u16)
                    .collect::<Vec<u16>>(),
            );
            let out: Vec<u16> = if encrypt {
                self.ff1.encrypt(&self.tweak, &ns)
            } else {
                self.ff1.decrypt(&self.tweak, &ns)
            }
            .map_err(|_| OpError::TooFewDigits)?
            .into();
            long = out.into_iter().map(|d| d as u8).collect();
            &long
        };
        let mut d = out.iter();
        let mut s = String::with_capacity(v.len());
        s.extend(v.chars().map(|c| {
            if c.is_ascii_digit() {
                char::from(b'0' + d.next().copied().unwrap_or(0))
            } else {
                c
            }
        }));
        digits.zeroize();
        Ok(s)
    }
    pub fn encrypt(&self, v: &str) -> Result<String, OpError> {
        self.run(v, true)
    }
    pub fn decrypt(&self, v: &str) -> Result<String, OpError> {
        self.run(v, false)
    }
}

/// AES-256-GCM with a random 96-bit nonce per value.
pub struct Sealer {
    aead: Aes256Gcm,
    /// `st1:<key id>:`, or empty for the bare format.
    prefix: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.prefix)
    }
}

impl Sealer {
    /// The sealtrail format, naming `key_id` in every ciphertext.
    pub fn new(key_id: &str, key: &KeyBytes) -> Self {
        Self {
            aead: Aes256Gcm::new(key.expose().into()),
            prefix: format!("st1:{key_id}:"),
        }
    }
    /// The bare format: base64(nonce ‖ ciphertext ‖ tag), no associated data.
    pub fn bare(key: &KeyBytes) -> Self {
        Self {
            aead: Aes256Gcm::new(key.expose().into()),
            prefix: String::new(),
        }
    }
    fn aad(&self) -> &[u8] {
        self.prefix.trim_end_matches(':').as_bytes()
    }
    /// Text ciphertext.
    pub fn seal(&self, plain: &[u8], out: &mut String) {
        let sealed = seal_with(&self.aead, self.aad(), plain);
        out.push_str(&self.prefix);
        B64.encode_string(sealed, out);
    }
    /// Binary ciphertext: the prefix, then nonce ‖ ciphertext ‖ tag as bytes.
    pub fn seal_bytes(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = self.prefix.as_bytes().to_vec();
        out.extend(seal_with(&self.aead, self.aad(), plain));
        out
    }
    pub fn open(&self, text: &str) -> Result<Vec<u8>, OpError> {
        let body = text
            .strip_prefix(&self.prefix)
            .ok_or(OpError::Undecryptable)?;
        let sealed = B64.decode(body).map_err(|_| OpError::Undecryptable)?;
        open_with(&self.aead, self.aad(), &sealed).ok_or(OpError::Undecryptable)
    }
    pub fn open_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, OpError> {
        let body = bytes
            .strip_prefix(self.prefix.as_bytes())
            .ok_or(OpError::Undecryptable)?;
        open_with(&self.aead, self.aad(), body).ok_or(OpError::Undecryptable)
    }
}

/// The key id named by a sealtrail-format ciphertext (text or binary), if it is one.
pub fn key_id_of(ct: &[u8]) -> Option<&str> {
    let rest = ct.strip_prefix(b"st1:")?;
    // Key ids are `name@version` or `subject:<hex>`: find the `:` that ends the id.
    let end = if rest.starts_with(b"subject:") {
        8 + rest[8..].iter().position(|b| *b == b':')?
    } else {
        rest.iter().position(|b| *b == b':')?
    };
    std::str::from_utf8(&rest[..end]).ok()
}

/// Masking: keep the first and/or last characters, replace the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub keep_first: usize,
    pub keep_last: usize,
    /// Replace the whole value by this text instead.
    pub fixed: Option<String>,
    /// Consider only the ASCII digits of the value (a phone number's punctuation is dropped).
    pub digits_only: bool,
    /// The masking character; `None` leaves only the kept characters.
    pub with: Option<char>,
}

impl Mask {
    pub fn apply(&self, v: &str, out: &mut String) {
        if let Some(f) = &self.fixed {
            out.push_str(f);
            return;
        }
        if v.is_ascii() {
            return self.apply_ascii(v, out);
        }
        self.apply_chars(v, out);
    }

    /// The same as [`Mask::apply_chars`] on ASCII text, byte by byte and with the kept ends
    /// copied whole (phone numbers and card numbers are ASCII).
    fn apply_ascii(&self, v: &str, out: &mut String) {
        let n = if self.digits_only {
            v.bytes().filter(u8::is_ascii_digit).count()
        } else {
            v.len()
        };
        let (first, last) = self.ends(n);
        if !self.digits_only {
            // Every byte is a character: the kept ends are byte ranges of `v`.
            out.push_str(&v[..first]);
            if let Some(m) = self.with {
                out.extend(std::iter::repeat_n(m, n - first - last));
            }
            out.push_str(&v[n - last..]);
            return;
        }
        for (i, c) in v.bytes().filter(u8::is_ascii_digit).enumerate() {
            if i < first || i >= n - last {
                out.push(char::from(c));
            } else if let Some(m) = self.with {
                out.push(m);
            }
        }
    }

    /// How many characters stay visible at each end of a value of `n` counted characters.
    fn ends(&self, n: usize) -> (usize, usize) {
        // Never reveal everything: a value no longer than what is kept is masked whole.
        if self.keep_first + self.keep_last >= n {
            (0, 0)
        } else {
            (self.keep_first, self.keep_last)
        }
    }

    fn apply_chars(&self, v: &str, out: &mut String) {
        let keep = |c: &char| !self.digits_only || c.is_ascii_digit();
        let n = v.chars().filter(keep).count();
        let (first, last) = self.ends(n);
        for (i, c) in v.chars().filter(keep).enumerate() {
            if i < first || i >= n - last {
                out.push(c);
            } else if let Some(m) = self.with {
                out.push(m);
            }
        }
    }
}

/// Free text with every sensitive span (IBAN, email, card number, SSN, phone) replaced.
/// Emails are replaced before phones, as the reference job specifies.
pub fn redact(text: &str, with: &str, out: &mut String) {
    let mut at = 0;
    for s in detect::scan_text(text) {
        out.push_str(&text[at..s.range.start]);
        out.push_str(with);
        at = s.range.end;
    }
    out.push_str(&text[at..]);
}

/// The domain of an email address, lowercased (after the last `@`).
pub fn email_domain(v: &str) -> Option<String> {
    v.rsplit_once('@').map(|(_, d)| d.to_lowercase())
}

/// Age band of a birth date (days since 1970) on `today`.
pub fn age_band(birth_days: i32, today_days: i32) -> &'static str {
    let from = chrono::NaiveDate::from_num_days_from_ce_opt(birth_days + 719_163);
    let to = chrono::NaiveDate::from_num_days_from_ce_opt(today_days + 719_163);
    let (Some(b), Some(t)) = (from, to) else {
        return "unknown";
    };
    // A date of birth after today is no age (it was "<18", a band it is not in).
    let Some(age) = t.years_since(b) else {
        return "unknown";
    };
    match age {
        0..=17 => "<18",
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    }
}

/// The band an amount falls in, given ascending bounds: `<b0`, `b0-b1`, ..., `>=bn`.
pub fn band(x: f64, bounds: &[f64]) -> String {
    let fmt = |b: f64| {
        if b.fract() == 0.0 {
            format!("{b:.0}")
        } else {
            b.to_string()
        }
    };
    match bounds.iter().position(|b| x < *b) {
        Some(0) => format!("<{}", fmt(bounds[0])),
        Some(i) => format!("{}-{}", fmt(bounds[i - 1]), fmt(bounds[i])),
        None => format!(">={}", bounds.last().map_or("0".into(), |b| fmt(*b))),
    }
}

/// Postcode to district: the UK outward code (before the space, or all but the last three
/// characters), else the first three characters (US ZIP3, and most other systems' region).
pub fn district(v: &str) -> String {
    let v = v.trim().to_uppercase();
    if let Some((out, inw)) = v.split_once(' ')
        && inw.len() == 3
    {
        return out.to_string();
    }
    let n = v.chars().count();
    let uk = v.is_ascii() && n >= 5 && v.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if uk {
        v.chars().take(n - 3).collect()
    } else {
        v.chars().take(3).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> KeyBytes {
        KeyBytes::from_slice(&[b; 32]).unwrap()
    }

    #[test]
    fn age_bands_by_whole_years_and_none_for_a_birth_after_today() {
        let day = |y, m, d| {
            (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()
                - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
        };
        let today = day(2026, 12, 5);
        assert_eq!(age_band(day(2008, 12, 6), today), "<18");
        assert_eq!(age_band(day(2008, 12, 5), today), "18-24");
        assert_eq!(age_band(day(1961, 12, 5), today), "65+");
        assert_eq!(age_band(today, today), "<18");
        assert_eq!(age_band(day(2026, 12, 6), today), "unknown");
        assert_eq!(age_band(day(2030, 1, 1), today), "unknown");
    }

    /// RFC 4231 test case 2 (HMAC-SHA256, key "Jefe") through our hex encoding. Our keys are 32
    /// bytes, so the RFC's short key is padded the way HMAC pads it: with zeros.
    #[test]
    fn hmac_known_answer() {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(b"Jefe");
        let t = Tokenizer::new(&KeyBytes::from_slice(&k).unwrap());
        let mut s = String::new();
        t.token(b"what do ya want for nothing?", &mut s);
        assert_eq!(
            s,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// NIST SP 800-38G FF1 samples 7-9 (AES-256), radix 10 samples 7 and 8.
    #[test]
    fn ff1_known_answers() {
        let k =
            KeyBytes::from_hex("2b7e151628aed2a6abf7158809cf4f3cef4359d8d580aa4f7f036d6f04fc6a94")
                .unwrap();
        let f = Fpe::new(&k, &[]);
        assert_eq!(f.encrypt("0123456789").unwrap(), "6657667009");
        assert_eq!(f.decrypt("6657667009").unwrap(), "0123456789");
        let f = Fpe::new(
            &k,
            &[0x39, 0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31, 0x30],
        );
        assert_eq!(f.encrypt("0123456789").unwrap(), "1001623463");
        let f = Fpe::new(&key(1), &[]);
        let ct = f.encrypt("4111-1111-1111-1111").unwrap();
        assert_eq!(ct.len(), 19);
        assert_eq!(&ct[4..5], "-");
        assert_eq!(f.decrypt(&ct).unwrap(), "4111-1111-1111-1111");
        assert_eq!(f.encrypt("12345"), Err(OpError::TooFewDigits));
        // Past 38 digits the `fpe` crate takes over; the round trip holds either way.
        let long = "1234567890-1234567890-1234567890-1234567890-12";
        let ct = f.encrypt(long).unwrap();
        assert_ne!(ct, long);
        assert_eq!(f.decrypt(&ct).unwrap(), long);
    }

    /// NIST GCM test vector (gcmEncryptExtIV256, Count 0 with 128-bit plaintext): checks that our
    /// framing is nonce ‖ ciphertext ‖ tag with the standard AES-256-GCM underneath.
    #[test]
    fn aes_gcm_known_answer() {
        use aes_gcm::aead::{Aead, Payload};
        let k =
            KeyBytes::from_hex("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22")
                .unwrap();
        let nonce = hex::decode("0d18e06c7c725ac9e362e1ce").unwrap();
        let pt = hex::decode("2db5168e932556f8089a0622981d017d").unwrap();
        let c = Aes256Gcm::new(k.expose().into());
        let ct = c
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload { msg: &pt, aad: &[] },
            )
            .unwrap();
        assert_eq!(
            hex::encode(&ct),
            "fa4362189661d163fcd6a56d8bf0405ad636ac1bbedd5cc3ee727dc2ab4a9489"
        );
        let mut framed = nonce.clone();
        framed.extend(&ct);
        let s = Sealer::bare(&k);
        assert_eq!(s.open(&B64.encode(&framed)).unwrap(), pt);
    }

    #[test]
    fn sealed_values_name_their_key_and_resist_relabelling() {
        let s = Sealer::new("email@2", &key(7));
        let mut ct = String::new();
        s.seal(b"ann@example.com", &mut ct);
        assert!(ct.starts_with("st1:email@2:"));
        assert_eq!(key_id_of(ct.as_bytes()), Some("email@2"));
        assert_eq!(s.open(&ct).unwrap(), b"ann@example.com");
        let relabelled = ct.replace("email@2", "email@3");
        assert!(Sealer::new("email@3", &key(7)).open(&relabelled).is_err());
        let b = s.seal_bytes(b"raw line");
        assert_eq!(key_id_of(&b), Some("email@2"));
        assert_eq!(s.open_bytes(&b).unwrap(), b"raw line");
        assert_eq!(key_id_of(b"st1:subject:ab12:xyz"), Some("subject:ab12"));
    }

    proptest::proptest! {
        /// The ASCII path masks exactly as the character path does, for every setting.
        #[test]
        fn ascii_masks_equal_the_character_path(
            v in "[ -~]{0,24}",
            kf in 0usize..6,
            kl in 0usize..6,
            digits_only: bool,
            with in proptest::option::of(proptest::prop_oneof![
                proptest::strategy::Just('*'),
                proptest::strategy::Just('\u{2022}'),
            ]),
        ) {
            let m = Mask { keep_first: kf, keep_last: kl, fixed: None, digits_only, with };
            let (mut fast, mut slow) = (String::new(), String::new());
            m.apply(&v, &mut fast);
            m.apply_chars(&v, &mut slow);
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn masks_and_generalisations() {
        let m = |kf, kl, digits_only, with| {
            let mut o = String::new();
            Mask {
                keep_first: kf,
                keep_last: kl,
                fixed: None,
                digits_only,
                with,
            }
            .apply("+44 (20) 7946-0958", &mut o);
            o
        };
        assert_eq!(m(0, 2, true, Some('*')), "**********58");
        assert_eq!(m(0, 4, true, None), "0958");
        assert_eq!(m(3, 0, false, Some('#')), "+44###############");
        let mut o = String::new();
        Mask {
            keep_first: 0,
            keep_last: 4,
            fixed: None,
            digits_only: false,
            with: Some('*'),
        }
        .apply("123", &mut o);
        assert_eq!(o, "***");
        assert_eq!(band(1500.0, &[1000.0, 10000.0]), "1000-10000");
        assert_eq!(band(5.0, &[1000.0]), "<1000");
        assert_eq!(band(1e6, &[1000.0, 10000.0]), ">=10000");
        assert_eq!(district("SW1A 1AA"), "SW1A");
        assert_eq!(district("EC1A1BB"), "EC1A");
        assert_eq!(district("94105"), "941");
        assert_eq!(
            email_domain("A.b@Example.COM").as_deref(),
            Some("example.com")
        );
        let mut o = String::new();
        redact("mail a@b.io or +1 (555) 123-4567 now", "[REDACTED]", &mut o);
        assert_eq!(o, "mail [REDACTED] or [REDACTED] now");
    }
}
