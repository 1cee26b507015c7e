//! The outbox on a real SQLite file: a replayed batch adds nothing, each account offers only
//! its oldest pending notification (so order holds through retries), a parked one lets the
//! next go, and the checkpoint survives reopening.

use std::time::Duration;

use ledger_alerts::{Batch, Row, SqliteOutbox};
use ledger_service::alerts::{Attempt, Outbox};

fn row(id: &str, account_id: &str, position: u64) -> Row {
    Row {
        id: id.into(),
        account_id: account_id.into(),
        position,
        kind: "balance.low",
        url: "https://example.com/hook".into(),
        body: format!("{{\"id\":\"{id}\"}}"),
    }
}

fn batch(rows: Vec<Row>, position: u64) -> Batch {
    Batch {
        rows,
        position: Some(position),
        ..Batch::default()
    }
}

fn due_ids(outbox: &SqliteOutbox, now_ms: i64, busy: &[String]) -> Vec<String> {
    let due = outbox.due(now_ms, 10, busy).expect("due");
    due.into_iter().map(|pending| pending.id).collect()
}

#[tokio::test]
async fn a_replayed_batch_adds_nothing_and_the_checkpoint_survives_reopening() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("alerts.sqlite");
    let outbox = SqliteOutbox::open(&path).expect("open");
    assert_eq!(outbox.checkpoint(), None);
    outbox
        .commit(&batch(vec![row("n1", "a", 3), row("n2", "a", 4)], 4), 1_000)
        .expect("commit");
    // A restart that replays from an older checkpoint derives the same ids again.
    outbox
        .commit(&batch(vec![row("n2", "a", 4), row("n3", "a", 5)], 5), 2_000)
        .expect("commit the replay");
    assert_eq!(outbox.counts().expect("counts").pending, 3);
    assert!(outbox.wait_for(5, Duration::from_millis(10)).await);
    assert!(!outbox.wait_for(6, Duration::from_millis(10)).await);
    drop(outbox);
    let reopened = SqliteOutbox::open(&path).expect("reopen");
    assert_eq!(reopened.checkpoint(), Some(5));
    assert_eq!(reopened.account("a").expect("read").pending, 3);
}

#[test]
fn each_account_offers_its_oldest_pending_notification_until_it_is_delivered_or_parked() {
    let dir = tempfile::tempdir().expect("a directory");
    let outbox = SqliteOutbox::open(&dir.path().join("alerts.sqlite")).expect("open");
    let rows = vec![row("a1", "a", 1), row("b1", "b", 2), row("a2", "a", 3)];
    outbox.commit(&batch(rows, 3), 1_000).expect("commit");
    assert_eq!(due_ids(&outbox, 1_000, &[]), ["a1", "b1"]);
    assert_eq!(due_ids(&outbox, 1_000, &["a".to_string()]), ["b1"]);

    let seq_of = |id: &str| {
        let due = outbox.due(i64::MAX, 10, &[]).expect("due");
        due.into_iter().find(|p| p.id == id).expect("pending").seq
    };
    let retry = Attempt::Retry {
        error: "receiver answered 500".into(),
        next_at_ms: 5_000,
    };
    outbox.record(seq_of("a1"), &retry).expect("record");
    // a1 waits for its retry, and a2 must not overtake it.
    assert_eq!(due_ids(&outbox, 2_000, &[]), ["b1"]);
    // Across accounts, whatever has been due longest goes first.
    assert_eq!(due_ids(&outbox, 5_000, &[]), ["b1", "a1"]);

    let park = Attempt::Park {
        error: "receiver answered 500".into(),
        at_ms: 6_000,
    };
    outbox.record(seq_of("a1"), &park).expect("park");
    outbox
        .record(seq_of("b1"), &Attempt::Delivered { at_ms: 6_000 })
        .expect("deliver");
    assert_eq!(due_ids(&outbox, 6_000, &[]), ["a2"]);
    let a = outbox.account("a").expect("read");
    assert_eq!((a.pending, a.delivered, a.failed.len()), (1, 0, 1));
    assert_eq!(a.failed[0].attempts, 2);
    assert_eq!(a.failed[0].last_error, "receiver answered 500");
    let counts = outbox.counts().expect("counts");
    assert_eq!((counts.pending, counts.delivered, counts.failed), (1, 1, 1));
}
