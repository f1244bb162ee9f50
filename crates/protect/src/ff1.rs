//! FF1 (NIST SP 800-38G, AES-256) in radix 10 for values of up to [`MAX_DIGITS`] digits,
//! computed with machine integers.
//!
//! Written by hand because the `fpe` crate, which [`crate::ops::Fpe`] still uses for longer
//! values, computes every round with arbitrary-precision integers and allocations (~8 µs a
//! 16-digit value here). For up to 38 digits every quantity of the algorithm fits a machine
//! integer: each half is below 10^19 < 2^64, `b` is at most 8 bytes, so `d` is at most 12 and
//! `y` below 2^96; the sum `NUM(A) + y` fits a `u128`. The algorithm is the standard's, step
//! for step (the comments name them); the tests check NIST's samples and, on random keys,
//! tweaks and values, that this and the `fpe` crate agree digit for digit.
//!
//! The PRF's input is `P || Q`. `P` depends on the length only, and `Q` is
//! `T || 0^pad || [i] || [NUM(B)]^b`, whose round-dependent bytes all sit in its last block:
//! the CBC-MAC state before that block is computed once per length (at most 33 of them, built
//! when the cipher is), so a round costs one AES block encryption.

use aes::Aes256;
use aes::cipher::{BlockEncrypt, KeyInit};
use zeroize::Zeroize;

/// Longest value (in digits) this module handles; longer ones go to the `fpe` crate.
pub const MAX_DIGITS: usize = 38;
/// FF1's minimum domain is radix^n >= 1,000,000.
pub const MIN_DIGITS: usize = 6;

const POW10: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// What a value of one length needs, derived from the key and tweak once.
struct Length {
    /// `b` of the standard: bytes of `NUM(B)` in `Q`.
    b: usize,
    /// `d`: bytes of the PRF output taken as `y`.
    d: usize,
    /// CBC-MAC state after `P` and every block of `Q` but its last (key-derived: zeroized).
    state: [u8; 16],
    /// The constant head of `Q`'s last block (tweak and padding bytes), `16 - b - 1` of them.
    head: [u8; 16],
}

/// FF1 over short decimal strings with one key and tweak. The key schedule and the derived
/// states are zeroized on drop.
pub struct ShortFf1 {
    aes: Aes256,
    lengths: Vec<Length>,
}

impl std::fmt::Debug for ShortFf1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShortFf1(«key»)")
    }
}

impl Drop for ShortFf1 {
    fn drop(&mut self) {
        for l in &mut self.lengths {
            l.state.zeroize();
            l.head.zeroize();
        }
        // `aes` zeroizes its round keys itself (the `zeroize` feature of `aes`).
    }
}

impl ShortFf1 {
    pub fn new(key: &[u8; 32], tweak: &[u8]) -> Self {
        let aes = Aes256::new(key.into());
        let t = tweak.len();
        let lengths = (MIN_DIGITS..=MAX_DIGITS)
            .map(|n| {
                // Steps 1, 3-5: u, v, b, d and P.
                let u = n / 2;
                let v = n - u;
                // ceil(v * log2(10)) is the bit length of 10^v (never a power of two).
                let bits = 64 - POW10[v].leading_zeros() as usize;
                let b = bits.div_ceil(8);
                let d = 4 * b.div_ceil(4) + 4;
                let mut p = [1u8, 2, 1, 0, 0, 10, 10, u as u8, 0, 0, 0, 0, 0, 0, 0, 0];
                p[8..12].copy_from_slice(&(n as u32).to_be_bytes());
                p[12..16].copy_from_slice(&(t as u32).to_be_bytes());
                // Q = T || 0^pad || [i]^1 || [NUM(B)]^b, a whole number of blocks.
                let pad = (16 - (t + b + 1) % 16) % 16;
                let mut fixed = tweak.to_vec();
                fixed.resize(t + pad, 0);
                let q_len = t + pad + b + 1;
                let mut state = p;
                encrypt(&aes, &mut state);
                for block in fixed[..q_len - 16].chunks_exact(16) {
                    xor(&mut state, block);
                    encrypt(&aes, &mut state);
                }
                let mut head = [0u8; 16];
                let tail = &fixed[q_len - 16..];
                head[..tail.len()].copy_from_slice(tail);
                fixed.zeroize();
                Length { b, d, state, head }
            })
            .collect();
        Self { aes, lengths }
    }

    /// Steps 6.i-6.iv: `y` for round `i` with the other half `num` (the PRF's output, first
    /// `d` bytes, as a number).
    fn y(&self, l: &Length, i: u8, num: u64) -> u128 {
        let mut block = l.head;
        block[16 - l.b - 1] = i;
        block[16 - l.b..].copy_from_slice(&num.to_be_bytes()[8 - l.b..]);
        xor(&mut block, &l.state);
        encrypt(&self.aes, &mut block);
        let y = block[..l.d]
            .iter()
            .fold(0u128, |acc, &x| (acc << 8) | x as u128);
        block.zeroize();
        y
    }

    /// Encrypts (or decrypts) `digits` (values 0-9, most significant first) in place. The
    /// caller guarantees `MIN_DIGITS <= digits.len() <= MAX_DIGITS`.
    pub fn apply(&self, digits: &mut [u8], encrypt: bool) {
        let n = digits.len();
        debug_assert!((MIN_DIGITS..=MAX_DIGITS).contains(&n));
        let l = &self.lengths[n - MIN_DIGITS];
        let u = n / 2;
        let v = n - u;
        let num = |ds: &[u8]| ds.iter().fold(0u64, |acc, &x| acc * 10 + x as u64);
        // Step 2: A and B as numbers (STR/NUM are exact for these lengths).
        let (mut a, mut b) = (num(&digits[..u]), num(&digits[u..]));
        if encrypt {
            for i in 0..10u8 {
                // Steps 6.v-6.ix: m = u on even rounds, v on odd ones.
                let m = POW10[if i % 2 == 0 { u } else { v }] as u128;
                let c = ((a as u128 + self.y(l, i, b)) % m) as u64;
                a = b;
                b = c;
            }
        } else {
            for i in (0..10u8).rev() {
                let m = POW10[if i % 2 == 0 { u } else { v }] as u128;
                let c = ((b as u128 + m - self.y(l, i, a) % m) % m) as u64;
                b = a;
                a = c;
            }
        }
        // Step 7: A || B, as u and v digits.
        for (slot, (mut x, len)) in [(0, (a, u)), (u, (b, v))] {
            for k in (0..len).rev() {
                digits[slot + k] = (x % 10) as u8;
                x /= 10;
            }
        }
    }
}

fn xor(a: &mut [u8; 16], b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

fn encrypt(aes: &Aes256, block: &mut [u8; 16]) {
    aes.encrypt_block(aes::Block::from_mut_slice(&mut block[..]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpe::ff1::{FF1, FlexibleNumeralString};

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }
    fn text(d: &[u8]) -> String {
        d.iter().map(|x| char::from(b'0' + x)).collect()
    }

    const NIST_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3cef4359d8d580aa4f7f036d6f04fc6a94";

    /// NIST SP 800-38G FF1 samples 7 and 8 (AES-256, radix 10).
    #[test]
    fn nist_samples() {
        let key: [u8; 32] = hex::decode(NIST_KEY).unwrap().try_into().unwrap();
        for (tweak, out) in [
            (&[][..], "6657667009"),
            (
                &[0x39, 0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31, 0x30][..],
                "1001623463",
            ),
        ] {
            let f = ShortFf1::new(&key, tweak);
            let mut d = digits("0123456789");
            f.apply(&mut d, true);
            assert_eq!(text(&d), out);
            f.apply(&mut d, false);
            assert_eq!(text(&d), "0123456789");
        }
    }

    /// Every length, with the smallest and largest values (where `NUM(A) + y` comes closest to
    /// overflowing), agrees with the `fpe` crate both ways.
    #[test]
    fn every_length_and_the_extremes_agree() {
        let key = [7u8; 32];
        let f = ShortFf1::new(&key, b"card");
        let reference = FF1::<Aes256>::new(&key, 10).unwrap();
        for n in MIN_DIGITS..=MAX_DIGITS {
            for fill in [0u8, 9] {
                let value = vec![fill; n];
                let ns = FlexibleNumeralString::from(vec![fill as u16; n]);
                let enc: Vec<u16> = reference.encrypt(b"card", &ns).unwrap().into();
                let dec: Vec<u16> = reference.decrypt(b"card", &ns).unwrap().into();
                for (encrypt, want) in [(true, enc), (false, dec)] {
                    let mut d = value.clone();
                    f.apply(&mut d, encrypt);
                    let got: Vec<u16> = d.iter().map(|&x| x as u16).collect();
                    assert_eq!(got, want, "{n} digits of {fill}, encrypt {encrypt}");
                }
            }
        }
    }

    proptest::proptest! {
        /// On random keys, tweaks (0-40 bytes: one to three blocks of Q) and values of every
        /// length handled, the result is the `fpe` crate's, and decrypting gives the input back.
        #[test]
        fn agrees_with_the_fpe_crate(
            key in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            tweak in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            value in proptest::collection::vec(0u8..10, MIN_DIGITS..=MAX_DIGITS),
        ) {
            let f = ShortFf1::new(&key, &tweak);
            let mut d = value.clone();
            f.apply(&mut d, true);
            let reference = FF1::<Aes256>::new(&key, 10).unwrap();
            let want: Vec<u16> = reference
                .encrypt(&tweak, &FlexibleNumeralString::from(value.iter().map(|&x| x as u16).collect::<Vec<_>>()))
                .unwrap()
                .into();
            proptest::prop_assert_eq!(d.iter().map(|&x| x as u16).collect::<Vec<_>>(), want);
            f.apply(&mut d, false);
            proptest::prop_assert_eq!(d, value);
        }
    }
}
