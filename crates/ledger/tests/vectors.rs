//! Every case of the transparency-dev Merkle test vectors (`testdata/merkle`): valid cases
//! verify, every `wantErr` case is rejected with an error (and nothing panics).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sealtrail_ledger::merkle::{self, Hash, ProofError};
use serde_json::Value;
use std::path::PathBuf;

fn testdata() -> PathBuf {
    // The shared vectors live beside the repository in development, and are vendored in the
    // repository for clean clones.
    let vendored = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/merkle");
    assert!(vendored.is_dir(), "missing {}", vendored.display());
    vendored
}

fn cases(kind: &str) -> Vec<(String, Value)> {
    let pattern = format!("{}/{kind}/**/*.json", testdata().display());
    let mut out: Vec<(String, Value)> = glob::glob(&pattern)
        .unwrap()
        .map(|p| {
            let p = p.unwrap();
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.display().to_string(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no vectors for {kind}");
    out
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => B64.decode(s).unwrap(),
        _ => Vec::new(),
    }
}

fn hash(v: &Value) -> Result<Hash, ProofError> {
    let b = bytes(v);
    Hash::try_from(b.as_slice()).map_err(|_| ProofError::BadHashLength(b.len()))
}

fn proof(v: &Value) -> Result<Vec<Hash>, ProofError> {
    let list: Vec<Vec<u8>> = v
        .as_array()
        .map(|a| a.iter().map(bytes).collect())
        .unwrap_or_default();
    merkle::to_hashes(&list)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn check(name: &str, v: &Value, result: Result<(), ProofError>) -> bool {
    let want_err = v["wantErr"].as_bool().unwrap();
    assert_eq!(
        result.is_err(),
        want_err,
        "{name} ({}): got {result:?}",
        v["desc"]
    );
    want_err
}

#[test]
fn inclusion_vectors() {
    let (mut ok, mut bad) = (0, 0);
    for (name, v) in cases("inclusion") {
        let r = (|| {
            merkle::verify_inclusion(
                u(&v["leafIdx"]),
                u(&v["treeSize"]),
                &hash(&v["leafHash"])?,
                &proof(&v["proof"])?,
                &hash(&v["root"])?,
            )
        })();
        if check(&name, &v, r) {
            bad += 1
        } else {
            ok += 1
        }
    }
    assert!(ok > 5 && bad > 20, "{ok} valid, {bad} invalid");
}

#[test]
fn consistency_vectors() {
    let (mut ok, mut bad) = (0, 0);
    for (name, v) in cases("consistency") {
        let r = (|| {
            merkle::verify_consistency_raw(
                u(&v["size1"]),
                u(&v["size2"]),
                &bytes(&v["root1"]),
                &bytes(&v["root2"]),
                &proof(&v["proof"])?,
            )
        })();
        if check(&name, &v, r) {
            bad += 1
        } else {
            ok += 1
        }
    }
    assert!(ok > 5 && bad > 20, "{ok} valid, {bad} invalid");
}

#[test]
fn subtree_inclusion_vectors() {
    let (mut ok, mut bad) = (0, 0);
    for (name, v) in cases("subtreeinclusion") {
        let r = (|| {
            merkle::verify_subtree_inclusion(
                u(&v["leafIdx"]),
                u(&v["start"]),
                u(&v["end"]),
                &hash(&v["leafHash"])?,
                &proof(&v["proof"])?,
                &hash(&v["root"])?,
            )
        })();
        if check(&name, &v, r) {
            bad += 1
        } else {
            ok += 1
        }
    }
    assert!(ok > 5 && bad > 5, "{ok} valid, {bad} invalid");
}

#[test]
fn subtree_consistency_vectors() {
    let (mut ok, mut bad) = (0, 0);
    for (name, v) in cases("subtreeconsistency") {
        let r = (|| {
            merkle::verify_subtree_consistency_raw(
                u(&v["start"]),
                u(&v["end"]),
                u(&v["size"]),
                &proof(&v["proof"])?,
                &bytes(&v["root1"]),
                &bytes(&v["root2"]),
            )
        })();
        if check(&name, &v, r) {
            bad += 1
        } else {
            ok += 1
        }
    }
    assert!(ok > 5 && bad > 5, "{ok} valid, {bad} invalid");
}
