//! The worked example of `docs/ledger-format.md`, recomputed: the document must contain
//! exactly the text generated here (run with SEALTRAIL_PRINT_EXAMPLE=1 to print it).

use base64::Engine;
use sealtrail_ledger::entry::{Entry, Event, SinkRoot};
use sealtrail_ledger::merkle::{leaf_hash, node_hash};
use sealtrail_ledger::note::{Checkpoint, NoteSigner};
use sealtrail_ledger::tiles;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn example() -> String {
    let t = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    let events = [
        Event::RunStarted {
            run_id: "r1".into(),
            pipeline: "trades".into(),
            spec_sha256: [0xab; 32],
            resumed: false,
            inputs: vec!["data/t.csv".into()],
        },
        Event::BatchCommitted {
            run_id: "r1".into(),
            source: "trades".into(),
            batch: 0,
            rows_in: 3,
            rows_loaded: 2,
            rows_quarantined: 1,
            spec_sha256: [0xab; 32],
            transforms_sha256: [0xcd; 32],
            policy_sha256: [0xef; 32],
            input_root: [0x11; 32],
            outputs: vec![SinkRoot {
                sink: "out".into(),
                rows: 2,
                root: [0x22; 32],
            }],
        },
        Event::RunEnded {
            run_id: "r1".into(),
            rows_in: 3,
            rows_loaded: 2,
            rows_quarantined: 1,
        },
    ];
    let mut out = String::from(
        "Three entries with time 1767225600000000 (2026-01-01T00:00:00Z), signed with the Ed25519\nkey whose seed is 32 bytes of 0x01, origin `example.com/ledger`. Hex is lowercase.\n",
    );
    let mut prev = [0u8; 32];
    let mut leaves = Vec::new();
    let mut bytes = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        let e = Entry {
            seq: i as u64,
            prev,
            time_micros: t,
            event,
        };
        let b = e.encode();
        assert_eq!(Entry::decode(&b).unwrap(), e);
        prev = leaf_hash(&b);
        out.push_str(&format!(
            "\nEntry {i} ({}), {} bytes:\n\n```text\n{}\n```\n\nleaf hash `{}`\n",
            e.event.name(),
            b.len(),
            hex(&b)
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n"),
            hex(&prev)
        ));
        leaves.push(prev);
        bytes.push(b);
    }
    let n01 = node_hash(&leaves[0], &leaves[1]);
    let root = node_hash(&n01, &leaves[2]);
    let signer = NoteSigner::from_seed("example.com/ledger", &[1; 32]).unwrap();
    let cp = Checkpoint {
        origin: "example.com/ledger".into(),
        size: 3,
        root,
        extensions: vec!["time 2026-01-01T00:00:00Z".into()],
    };
    let note = signer.sign(&cp.to_text()).unwrap();
    out.push_str(&format!(
        "\nNode over entries 0 and 1: `{}`\n\nRoot of the tree of size 3 = node(node(0, 1), leaf 2): `{}`\n(base64 `{}`)\n",
        hex(&n01),
        hex(&root),
        base64::engine::general_purpose::STANDARD.encode(root)
    ));
    out.push_str(&format!(
        "\nFiles: `tile/0/000.p/3` is the three leaf hashes (96 bytes); `tile/entries/000.p/3` is\n{} bytes (each entry after its u16 length). Verifier key:\n`{}`. The checkpoint file:\n\n```text\n{}```\n",
        tiles::encode_bundle(&bytes).len(),
        signer.verifier().to_key_string(),
        note
    ));
    out
}

#[test]
fn the_document_holds_the_recomputed_example() {
    let ex = example();
    if std::env::var_os("SEALTRAIL_PRINT_EXAMPLE").is_some() {
        println!("{ex}");
    }
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ledger-format.md"),
    )
    .unwrap();
    assert!(
        doc.contains(&ex),
        "docs/ledger-format.md section 6 differs from:\n{ex}"
    );
}
