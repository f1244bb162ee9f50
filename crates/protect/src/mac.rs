//! HMAC-SHA256 (RFC 2104) whose keyed state is zeroized on drop.
//!
//! Why not the `hmac` crate: `hmac` 0.12 precomputes the same two states (SHA-256 after the
//! key XOR ipad and after the key XOR opad), but keeps them in `digest` types that implement
//! neither `Zeroize` nor a zeroizing `Drop`. Those two states are as good as the key: whoever
//! reads them can mint every token of the run. A tokenizer lives for a whole run, so its state
//! would be left in freed memory afterwards. Here the states are two `[u32; 8]` chaining values
//! we own and wipe; SHA-256 itself is not reimplemented, every block goes through
//! `sha2::compress256` (RustCrypto's compression function, SHA-NI where the CPU has it). What
//! is written by hand is HMAC's framing and SHA-256's final padding, both checked against the
//! RFC 4231 vectors and, for random keys and messages, against the `hmac` crate.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256, compress256};
use zeroize::{Zeroize, Zeroizing};

/// SHA-256's initial chaining value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK: usize = 64;

/// A keyed HMAC-SHA256: the key is absorbed once, each [`HmacSha256::mac`] costs the message's
/// blocks plus two.
#[derive(Clone)]
pub struct HmacSha256 {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl std::fmt::Debug for HmacSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSha256(«key»)")
    }
}

impl Drop for HmacSha256 {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

impl HmacSha256 {
    /// Any key length (RFC 2104: longer than a block is hashed first, shorter is zero-padded).
    pub fn new(key: &[u8]) -> Self {
        let mut k = Zeroizing::new([0u8; BLOCK]);
        if key.len() > BLOCK {
            let mut d: [u8; 32] = Sha256::digest(key).into();
            k[..32].copy_from_slice(&d);
            d.zeroize();
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let keyed = |pad: u8| {
            let mut block = Zeroizing::new([0u8; BLOCK]);
            for (b, kb) in block.iter_mut().zip(k.iter()) {
                *b = kb ^ pad;
            }
            let mut state = IV;
            compress256(
                &mut state,
                std::slice::from_ref(GenericArray::from_slice(&*block)),
            );
            state
        };
        Self {
            inner: keyed(0x36),
            outer: keyed(0x5c),
        }
    }

    /// HMAC-SHA256(key, msg).
    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let inner = Zeroizing::new(finish(self.inner, msg));
        finish(self.outer, &*inner)
    }
}

/// SHA-256 of (one block already absorbed into `state`) followed by `msg`.
fn finish(state: [u32; 8], msg: &[u8]) -> [u8; 32] {
    let mut state = Zeroizing::new(state);
    let tail_len = msg.len() % BLOCK;
    let (full, tail) = msg.split_at(msg.len() - tail_len);
    for block in full.chunks_exact(BLOCK) {
        compress256(
            &mut state,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    // Padding: 0x80, zeros, the message length in bits (the keyed block included) as u64be,
    // in one block or, when fewer than 9 bytes are left, two.
    let mut last = Zeroizing::new([0u8; 2 * BLOCK]);
    last[..tail_len].copy_from_slice(tail);
    last[tail_len] = 0x80;
    let n = if tail_len < BLOCK - 8 {
        BLOCK
    } else {
        2 * BLOCK
    };
    let bits = (BLOCK as u64 + msg.len() as u64) * 8;
    last[n - 8..n].copy_from_slice(&bits.to_be_bytes());
    for block in last[..n].chunks_exact(BLOCK) {
        compress256(
            &mut state,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;

    /// RFC 4231 test cases 1, 2, 3, 4, 6 and 7 (case 5 is a truncated output).
    #[test]
    fn rfc4231_known_answers() {
        let long_key = [0xaa; 131];
        let cases: [(&[u8], &[u8], &str); 6] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 20],
                &[0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                &(1..=25).collect::<Vec<u8>>(),
                &[0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &long_key,
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the HMAC \
                  algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(hex::encode(HmacSha256::new(key).mac(msg)), want);
        }
    }

    fn reference(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    /// Every padding boundary (55, 56, 63, 64, 119, 120 ... bytes) and key lengths around the
    /// block size, against the `hmac` crate.
    #[test]
    fn matches_the_hmac_crate_at_every_boundary() {
        for key_len in [0, 1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| i as u8 ^ 0x5a).collect();
            let h = HmacSha256::new(&key);
            for len in 0..300 {
                let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                assert_eq!(
                    h.mac(&msg),
                    reference(&key, &msg),
                    "key {key_len} msg {len}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn matches_the_hmac_crate(key in proptest::collection::vec(any::<u8>(), 0..150),
                                  msg in proptest::collection::vec(any::<u8>(), 0..400)) {
            prop_assert_eq!(HmacSha256::new(&key).mac(&msg), reference(&key, &msg));
        }
    }
}
