//! The published C2SP signed-note example, byte for byte, and checkpoint round trips.

use sealtrail_ledger::note::{Checkpoint, NoteError, NoteSigner, NoteVerifier};

fn vector() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/signed-note/peterneumann.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn signs_the_published_example_byte_for_byte_and_verifies_it() {
    let v = vector();
    let signer = NoteSigner::parse(v["signer_key"].as_str().unwrap()).unwrap();
    let verifier = NoteVerifier::parse(v["verifier_key"].as_str().unwrap()).unwrap();
    let text = v["text"].as_str().unwrap();
    let note = v["note"].as_str().unwrap();
    assert_eq!(signer.sign(text).unwrap(), note);
    assert_eq!(verifier.open(note).unwrap(), text);
    assert_eq!(signer.verifier(), verifier);
    assert_eq!(
        verifier.to_key_string(),
        v["verifier_key"].as_str().unwrap()
    );
    assert_eq!(
        &*signer.to_secret_string(),
        v["signer_key"].as_str().unwrap()
    );
    // The secret never shows in Debug output.
    assert!(!format!("{signer:?}").contains("AYEKFAL"));
}

#[test]
fn changed_text_or_signature_or_key_is_rejected() {
    let v = vector();
    let verifier = NoteVerifier::parse(v["verifier_key"].as_str().unwrap()).unwrap();
    let note = v["note"].as_str().unwrap();
    let changed = note.replacen("cryptography", "Cryptography", 1);
    assert!(matches!(
        verifier.open(&changed),
        Err(NoteError::BadSignature(_))
    ));
    let other = NoteSigner::from_seed("PeterNeumann", &[7; 32])
        .unwrap()
        .verifier();
    assert!(matches!(other.open(note), Err(NoteError::NotSigned(_))));
    let truncated = &note[..note.len() - 10];
    assert!(verifier.open(truncated).is_err());
    assert!(verifier.open("no signatures\n").is_err());
    assert!(
        NoteVerifier::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .is_err()
    );
}

#[test]
fn checkpoints_round_trip_through_a_signed_note() {
    let cp = Checkpoint {
        origin: "example.com/sealtrail/test".into(),
        size: 1234,
        root: [9; 32],
        extensions: vec!["sealtrail-prev 1200".into()],
    };
    let signer = NoteSigner::from_seed("example.com/sealtrail/test", &[1; 32]).unwrap();
    let note = signer.sign(&cp.to_text()).unwrap();
    let text = signer.verifier().open(&note).unwrap();
    assert_eq!(Checkpoint::parse(text).unwrap(), cp);
    for bad in ["o\n01\nAAAA\n", "o\n1\nAAAA\n", "\n1\n", "o\nx\n"] {
        assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
    }
}

/// A co-signed note (a ledger's signing-key hand-over) carries both signatures, each key
/// opens it, and the key that signed last is the one in charge.
#[test]
fn a_cosigned_note_opens_with_either_key_and_names_the_last_signer() {
    let old = NoteSigner::from_seed("example.com/log", &[1; 32]).unwrap();
    let new = NoteSigner::from_seed("example.com/log", &[2; 32]).unwrap();
    let text = "example.com/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    let once = old.sign(text).unwrap();
    let both = new.cosign(&once).unwrap();
    assert!(both.starts_with(&once) && both.lines().count() == once.lines().count() + 1);
    for k in [&old, &new] {
        assert_eq!(k.verifier().open(&both).unwrap(), text);
    }
    assert!(new.verifier().signed_last(&both) && !old.verifier().signed_last(&both));
    assert!(old.verifier().signed_last(&once) && !new.verifier().signed_last(&once));
    assert_eq!(
        sealtrail_ledger::note::unverified_text(&both).unwrap(),
        text
    );
    // The second signature is over the same text: changing the text breaks both.
    let forged = both.replacen("\n1\n", "\n2\n", 1);
    for k in [&old, &new] {
        assert!(matches!(
            k.verifier().open(&forged),
            Err(NoteError::BadSignature(_))
        ));
    }
}
