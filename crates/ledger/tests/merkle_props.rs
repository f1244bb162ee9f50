//! Proofs against a naive reference tree (RFC 9162's recursive definitions, written out),
//! over random sizes; every single-bit mutation of a valid proof is rejected.

use proptest::prelude::*;
use sealtrail_ledger::merkle::{self, Hash, MemTree, leaf_hash, node_hash};

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn k(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]).
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => merkle::empty_root(),
        1 => d[0],
        n => node_hash(&mth(&d[..k(n)]), &mth(&d[k(n)..])),
    }
}

/// PATH(m, D[n]).
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return vec![];
    }
    let k = k(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b).
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn flips(p: &[Hash]) -> impl Iterator<Item = Vec<Hash>> + '_ {
    (0..p.len() * 256).map(move |bit| {
        let mut q = p.to_vec();
        q[bit / 256][(bit % 256) / 8] ^= 1 << (bit % 8);
        q
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn inclusion_matches_the_reference_and_resists_bit_flips(n in 1u64..300, pick in any::<u64>()) {
        let l = leaves(n);
        let t = MemTree::new(l.clone());
        prop_assert_eq!(t.root(), mth(&l));
        prop_assert_eq!(merkle::root(&l), mth(&l));
        let m = pick % n;
        let p = t.inclusion_proof(m).unwrap();
        prop_assert_eq!(&p, &path(m as usize, &l));
        let root = t.root();
        prop_assert!(merkle::verify_inclusion(m, n, &l[m as usize], &p, &root).is_ok());
        for q in flips(&p) {
            prop_assert!(merkle::verify_inclusion(m, n, &l[m as usize], &q, &root).is_err());
        }
        // Wrong index or wrong leaf. (A wrong tree size can give the same proof shape and
        // root: the size is bound by the signed checkpoint, not by the proof.)
        if n > 1 {
            prop_assert!(merkle::verify_inclusion((m + 1) % n, n, &l[m as usize], &p, &root).is_err());
        }
        prop_assert!(merkle::verify_inclusion(m, n, &leaf_hash(b"x"), &p, &root).is_err());
    }

    #[test]
    fn consistency_matches_the_reference_and_resists_bit_flips(n in 2u64..300, pick in any::<u64>()) {
        let l = leaves(n);
        let t = MemTree::new(l.clone());
        let m = 1 + pick % (n - 1);
        let p = merkle::consistency_proof(&t, m, n).unwrap();
        prop_assert_eq!(&p, &subproof(m as usize, &l, true));
        let (r1, r2) = (mth(&l[..m as usize]), t.root());
        prop_assert!(merkle::verify_consistency(m, n, &r1, &r2, &p).is_ok());
        for q in flips(&p) {
            prop_assert!(merkle::verify_consistency(m, n, &r1, &r2, &q).is_err());
        }
        prop_assert!(merkle::verify_consistency(m, n, &r2, &r1, &p).is_err());
    }
}
