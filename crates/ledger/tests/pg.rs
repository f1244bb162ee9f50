//! The PostgreSQL backend against a real server: append-only enforced by triggers and by
//! privileges, two concurrent writers that never fork, conflicting checkpoints refused, and
//! tampering inside the database found by the same verifier as for the tiles folder.

use sealtrail_ledger::entry::Event;
use sealtrail_ledger::log::LedgerLog;
use sealtrail_ledger::merkle::{self, NodeSource};
use sealtrail_ledger::note::{Checkpoint, NoteSigner};
use sealtrail_ledger::pg::PgLedger;
use sealtrail_ledger::tiles::TileReader;
use sealtrail_ledger::verify::{Tamper, VerifyError, verify};
use sqlx::Connection;
use std::path::Path;

const ORIGIN: &str = "pg.test.example/ledger";

fn url() -> String {
    std::env::var("SEALTRAIL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own per test and process: the database is shared.
fn schema(test: &str) -> String {
    format!("st_ledger_{test}_{}", std::process::id())
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[9; 32]).unwrap()
}

fn ev(i: u64) -> Event {
    Event::RunEnded {
        run_id: format!("run-{i}"),
        rows_in: i,
        rows_loaded: i,
        rows_quarantined: 0,
    }
}

/// Runs SQL on a fresh connection (as `url`'s user); returns the error text, if any.
fn sql(url: &str, stmt: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.to_string()))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

fn fresh(test: &str) -> (String, PgLedger) {
    let s = schema(test);
    sql(&url(), &format!("DROP SCHEMA IF EXISTS {s} CASCADE")).unwrap();
    let l = PgLedger::connect(&url(), &s, Some(signer()), "test-writer").unwrap();
    l.init().unwrap();
    (s, l)
}

fn export_and_verify(l: &PgLedger, dir: &Path) -> Result<u64, VerifyError> {
    let v = l.verify(dir, &signer().verifier(), None, 2).map(|v| v.size);
    // The export is an ordinary tiles folder: the file verifier agrees when all is well.
    if v.is_ok() {
        assert_eq!(
            verify(dir, &signer().verifier(), None, 2).unwrap().size,
            v.as_ref().copied().unwrap()
        );
    }
    v
}

#[test]
fn updates_deletes_and_truncates_are_refused_by_trigger_and_by_privilege() {
    let (s, mut l) = fresh("append_only");
    l.append((0..5).map(ev).collect()).unwrap();
    // The owner (a superuser here) is stopped by the triggers.
    for stmt in [
        format!("UPDATE {s}.entries SET written_by = 'x' WHERE seq = 1"),
        format!("DELETE FROM {s}.entries WHERE seq = 4"),
        format!("TRUNCATE {s}.entries"),
        format!("UPDATE {s}.checkpoints SET note = 'x'"),
        format!("DELETE FROM {s}.checkpoints"),
        format!("TRUNCATE {s}.checkpoints"),
        format!("DELETE FROM {s}.head"),
        format!("TRUNCATE {s}.head"),
    ] {
        let err = sql(&url(), &stmt).expect_err(&stmt);
        assert!(err.contains("append-only"), "{stmt}: {err}");
    }
    let err = sql(&url(), &format!("UPDATE {s}.head SET size = 1")).unwrap_err();
    assert!(err.contains("may only grow"), "{err}");

    // A writer role can append, and is refused changes by privilege before any trigger.
    let role = format!("st_writer_{}", std::process::id());
    let _ = sql(
        &url(),
        &format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"),
    );
    sql(&url(), &format!("CREATE ROLE {role} LOGIN")).unwrap();
    l.grant_writer(&role).unwrap();
    let role_url = {
        let u = url();
        let (scheme, rest) = u.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{role}@{host}")
    };
    let mut w = PgLedger::connect(&role_url, &s, Some(signer()), "role-writer").unwrap();
    let a = w.append(vec![ev(5), ev(6)]).unwrap();
    assert_eq!((a.first_seq, a.size), (5, 7));
    for stmt in [
        format!("UPDATE {s}.entries SET written_by = 'x'"),
        format!("DELETE FROM {s}.entries"),
        format!("TRUNCATE {s}.entries"),
        format!("DELETE FROM {s}.checkpoints"),
    ] {
        let err = sql(&role_url, &stmt).expect_err(&stmt);
        assert!(err.contains("permission denied"), "{stmt}: {err}");
    }
    drop(w);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(export_and_verify(&l, dir.path()).unwrap(), 7);
    drop(l);
    sql(
        &url(),
        &format!("DROP SCHEMA {s} CASCADE; DROP OWNED BY {role}; DROP ROLE {role}"),
    )
    .unwrap();
}

#[test]
fn two_concurrent_writers_never_sign_conflicting_checkpoints() {
    let (s, l) = fresh("two_writers");
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut l =
                    PgLedger::connect(&url(), &s, Some(signer()), &format!("writer-{w}")).unwrap();
                let mut acked = Vec::new();
                for i in 0..40u64 {
                    let n = 1 + (i + w) % 4;
                    let a = l
                        .append((0..n).map(|k| ev(w * 1000 + i * 10 + k)).collect())
                        .unwrap();
                    acked.push((a.first_seq, a.size, a.root));
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(u64, u64, [u8; 32])> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let total: u64 = (0..2u64)
        .map(|w| (0..40u64).map(|i| 1 + (i + w) % 4).sum::<u64>())
        .sum();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(export_and_verify(&l, dir.path()).unwrap(), total);

    // Every acknowledged append covers its own range of numbers: no number given twice.
    let mut ranges: Vec<(u64, u64)> = acked.iter().map(|a| (a.0, a.1)).collect();
    ranges.sort();
    let mut next = 0;
    for (first, size) in ranges {
        assert_eq!(first, next, "appends overlap or leave a gap");
        next = size;
    }
    assert_eq!(next, total);
    // Every checkpoint either writer signed is a prefix of the one final tree.
    let tiles = TileReader::new(dir.path(), total);
    for (_, size, root) in &acked {
        assert_eq!(&merkle::subtree(&tiles, 0, *size).unwrap(), root);
    }
    let notes = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&url()).await.unwrap();
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT note FROM {s}.checkpoints"
            )))
            .fetch_all(&mut c)
            .await
            .unwrap()
        })
    };
    assert_eq!(
        notes.len(),
        acked.len() + 1,
        "one checkpoint per append, plus init"
    );
    let v = signer().verifier();
    for n in notes {
        let cp = Checkpoint::parse(v.open(&n).unwrap()).unwrap();
        assert!(cp.time().is_some());
        assert_eq!(cp.root, merkle::subtree(&tiles, 0, cp.size).unwrap());
    }
    let leaf0 = tiles.node(0, 0).unwrap();
    assert_ne!(leaf0, [0; 32]);
    drop(l);
    sql(&url(), &format!("DROP SCHEMA {s} CASCADE")).unwrap();
}

#[test]
fn the_database_refuses_a_conflicting_or_older_checkpoint() {
    let (s, mut l) = fresh("conflict");
    l.append((0..3).map(ev).collect()).unwrap();
    l.append((3..6).map(ev).collect()).unwrap();
    let bad_root = format!("'\\x{}'::bytea", "ab".repeat(32));
    for size in [6, 3] {
        let err = sql(
            &url(),
            &format!(
                "INSERT INTO {s}.checkpoints (size, root, note, signed_by) VALUES ({size}, {bad_root}, 'forged', 'x')"
            ),
        )
        .unwrap_err();
        assert!(err.contains("conflicts with one already signed"), "{err}");
    }
    // Re-signing the same tree (an idle log) is allowed and yields a fresh note.
    let note = l.resign().unwrap();
    assert!(note.contains("\n6\n"));
    drop(l);
    sql(&url(), &format!("DROP SCHEMA {s} CASCADE")).unwrap();
}

#[test]
fn tampering_inside_the_database_is_named_by_the_verifier() {
    let (s, mut l) = fresh("tamper");
    for i in 0..4 {
        l.append((i * 10..i * 10 + 10).map(ev).collect()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(export_and_verify(&l, dir.path()).unwrap(), 40);

    // A row added beyond the checkpoint (no trigger stops an INSERT) is named.
    let copy_39_to_40 = format!(
        "INSERT INTO {s}.entries (seq, leaf_hash, entry, written_by) SELECT 40, leaf_hash, entry, 'x' FROM {s}.entries WHERE seq = 39"
    );
    sql(&url(), &copy_39_to_40).unwrap();
    let dir = tempfile::tempdir().unwrap();
    match export_and_verify(&l, dir.path()) {
        Err(VerifyError::Tampered(Tamper::BeyondCheckpoint { size: 40, rows: 1 })) => {}
        other => panic!("expected a row beyond the checkpoint, got {other:?}"),
    }
    sql(
        &url(),
        &format!(
            "ALTER TABLE {s}.entries DISABLE TRIGGER append_only;
             DELETE FROM {s}.entries WHERE seq = 40;
             ALTER TABLE {s}.entries ENABLE TRIGGER append_only;"
        ),
    )
    .unwrap();

    // A superuser switches the trigger off and edits an entry's bytes.
    sql(
        &url(),
        &format!(
            "ALTER TABLE {s}.entries DISABLE TRIGGER append_only;
             UPDATE {s}.entries SET entry = set_byte(entry, 19, get_byte(entry, 19) # 1) WHERE seq = 17;
             ALTER TABLE {s}.entries ENABLE TRIGGER append_only;"
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    match export_and_verify(&l, dir.path()) {
        Err(VerifyError::Tampered(Tamper::Modified { seq: 17, .. })) => {}
        other => panic!("expected entry 17 modified, got {other:?}"),
    }

    // ... or deletes one.
    sql(
        &url(),
        &format!(
            "ALTER TABLE {s}.entries DISABLE TRIGGER append_only;
             DELETE FROM {s}.entries WHERE seq = 17;
             ALTER TABLE {s}.entries ENABLE TRIGGER append_only;"
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    match export_and_verify(&l, dir.path()) {
        Err(VerifyError::Tampered(Tamper::Deleted { seq: 17, found: 18 })) => {}
        other => panic!("expected entry 17 deleted, got {other:?}"),
    }
    // Deleting the newest entry: the writer notices its head and the entries disagree and
    // refuses to append on top.
    sql(
        &url(),
        &format!(
            "ALTER TABLE {s}.entries DISABLE TRIGGER append_only;
             DELETE FROM {s}.entries WHERE seq = 39;
             ALTER TABLE {s}.entries ENABLE TRIGGER append_only;"
        ),
    )
    .unwrap();
    let err = l.append(vec![ev(99)]).unwrap_err().to_string();
    assert!(err.contains("changed outside sealtrail"), "{err}");

    // A copy of entry 16 put in the hole is seen as a duplicate.
    sql(
        &url(),
        &format!(
            "INSERT INTO {s}.entries (seq, leaf_hash, entry, written_by) SELECT 39, leaf_hash, entry, 'x' FROM {s}.entries WHERE seq = 38;
             INSERT INTO {s}.entries (seq, leaf_hash, entry, written_by) SELECT 17, leaf_hash, entry, 'x' FROM {s}.entries WHERE seq = 16;"
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    match export_and_verify(&l, dir.path()) {
        Err(VerifyError::Tampered(Tamper::Inserted {
            pos: 17,
            claims: 16,
        })) => {}
        other => panic!("expected a duplicate at 17, got {other:?}"),
    }
    drop(l);
    sql(&url(), &format!("DROP SCHEMA {s} CASCADE")).unwrap();
}

#[test]
fn connection_errors_name_no_secret() {
    let err = PgLedger::connect(
        "postgres://alice:Sup3rS3cret@127.0.0.1:1/test",
        "sealtrail_ledger",
        None,
        "w",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(
        !err.contains("Sup3rS3cret") && !err.contains("alice"),
        "{err}"
    );
    let err = PgLedger::connect(&url(), "Bad-Name", None, "w")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a usable schema name"), "{err}");
}

/// A hand-over of the signing key in PostgreSQL: one transaction appends the entry and its
/// checkpoint signed by both keys; the export carries that checkpoint (`rotations/<size>`)
/// so a verifier holding the old key follows it; a writer elsewhere still holding the old key
/// is refused, and the new key appends.
#[test]
fn the_signing_key_is_handed_over_in_the_database() {
    let (s, mut l) = fresh("rotation");
    l.append((0..5).map(ev).collect()).unwrap();
    let mut elsewhere = PgLedger::connect(&url(), &s, Some(signer()), "old-writer").unwrap();
    let new = || NoteSigner::from_seed(ORIGIN, &[10; 32]).unwrap();
    let a = l.rotate_signer(new(), [1; 32]).unwrap();
    assert_eq!((a.first_seq, a.size), (5, 6));
    assert!(new().verifier().signed_last(&a.checkpoint));
    assert!(signer().verifier().open(&a.checkpoint).is_ok());
    l.append((6..9).map(ev).collect()).unwrap();
    match elsewhere.append(vec![ev(99)]) {
        Err(sealtrail_ledger::log::LogError::NotSigner { key }) => {
            assert_eq!(key, signer().verifier().who())
        }
        other => panic!("{other:?}"),
    }
    for (verifier, followed) in [(signer().verifier(), vec![5]), (new().verifier(), vec![])] {
        let d = tempfile::tempdir().unwrap();
        let ok = l.verify(d.path(), &verifier, None, 2).unwrap();
        assert_eq!((ok.size, &ok.handovers), (9, &followed));
        assert_eq!(ok.signer, new().verifier());
        assert!(d.path().join("rotations/6").exists());
    }
    drop(elsewhere);
    sql(&url(), &format!("DROP SCHEMA {s} CASCADE")).unwrap();
}

/// The server ends the writer's connection between two appends (a restart, a failover, an
/// idle timeout): the next append connects again and goes on, one log, nothing lost.
#[test]
fn an_append_after_the_server_ended_the_connection_connects_again() {
    let s = schema("reconnect");
    sql(&url(), &format!("DROP SCHEMA IF EXISTS {s} CASCADE")).unwrap();
    let app = format!("st_ledger_reconnect_{}", std::process::id());
    let with_app = format!("{}?application_name={app}", url());
    let mut l = PgLedger::connect(&with_app, &s, Some(signer()), "test-writer").unwrap();
    l.init().unwrap();
    l.append((0..3).map(ev).collect()).unwrap();
    // The writer's own session, found by its name, and ended.
    sql(
        &url(),
        &format!(
            "DO $$ BEGIN IF (SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}') <> 1 THEN RAISE EXCEPTION 'no writer session'; END IF; END $$; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'"
        ),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let a = l.append((3..5).map(ev).collect()).unwrap();
    assert_eq!((a.first_seq, a.size), (3, 5));
    let d = tempfile::tempdir().unwrap();
    assert_eq!(export_and_verify(&l, d.path()).unwrap(), 5);
    drop(l);
    sql(&url(), &format!("DROP SCHEMA {s} CASCADE")).unwrap();
}
