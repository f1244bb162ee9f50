//! The classifier on a labelled corpus with hard negatives (figures reported in
//! docs/protection.md), and properties of the protection actions.

use proptest::prelude::*;
use sealtrail_protect::corpus::{corpus, precision_recall};
use sealtrail_protect::keyring::KeyBytes;
use sealtrail_protect::ops::{Fpe, Mask, Sealer, Tokenizer, hash, redact};

#[test]
fn precision_and_recall_on_the_labelled_corpus() {
    let c = corpus(10, 200, 7);
    let (p, r, wrong) = precision_recall(&c);
    println!(
        "columns {}  precision {p:.3}  recall {r:.3}  wrong {wrong:?}",
        c.len()
    );
    assert!(p >= 0.95, "precision {p}: {wrong:?}");
    assert!(r >= 0.95, "recall {r}: {wrong:?}");
}

fn key() -> KeyBytes {
    KeyBytes::from_slice(&[9; 32]).unwrap()
}

proptest! {
    /// No protected output ever equals its input for a non-trivial value.
    #[test]
    fn protected_outputs_never_equal_their_input(v in "[ -~]{6,40}", d in "[0-9]{6,19}") {
        let mut o = String::new();
        Tokenizer::new(&key()).token(v.as_bytes(), &mut o);
        prop_assert_ne!(&o, &v);
        o.clear();
        hash(v.as_bytes(), &mut o);
        prop_assert_ne!(&o, &v);
        o.clear();
        let s = Sealer::new("k@1", &key());
        s.seal(v.as_bytes(), &mut o);
        prop_assert_ne!(&o, &v);
        prop_assert_eq!(s.open(&o).unwrap(), v.as_bytes());
        o.clear();
        Mask { keep_first: 0, keep_last: 4, fixed: None, digits_only: false, with: Some('*') }.apply(&v, &mut o);
        prop_assert!(v.len() <= 4 || o != v || v.chars().rev().skip(4).all(|c| c == '*'));
        // FF1 is a permutation of the digits: it can map a value to itself with probability
        // 10^-len, so check the round trip and that the format is kept.
        let f = Fpe::new(&key(), b"t");
        let e = f.encrypt(&d).unwrap();
        prop_assert_eq!(e.len(), d.len());
        prop_assert!(e.bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(f.decrypt(&e).unwrap(), d.clone());
        prop_assert!(d.len() < 10 || e != d);
    }

    /// Redaction removes every email it is given inside free text.
    #[test]
    fn redaction_removes_embedded_emails(pre in "[a-z ]{0,20}", user in "[a-z]{1,10}", post in "[a-z ]{0,20}") {
        let email = format!("{user}@example.com");
        let text = format!("{pre} {email} {post}");
        let mut o = String::new();
        redact(&text, "[REDACTED]", &mut o);
        prop_assert!(!o.contains(&email));
    }
}
