//! SQLite-specific behaviour beyond the shared suite: which event ids are compared, group
//! commit keeping appends independent, several writers on one file, read-only stores.

use std::sync::Arc;
use std::time::Duration;

use ledger_store::{Attachment, EventStore, ExpectedVersion, StoreError};
use ledger_store_sqlite::SqliteStore;
use tokio::task::JoinSet;

use crate::support::{append_one, new_event, open, read_everything, stream_name, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_is_an_empty_store() {
    let dir = temp_dir();
    let store = open(&dir.path().join("new.db"));
    assert_eq!(store.head_position().await.unwrap(), None);
    assert!(store.read_all(None, 10).await.unwrap().is_empty());
    let mut subscription = store.subscribe_all(None).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(100), subscription.next()).await;
    assert!(waited.is_err(), "an empty store delivered {waited:?}");
    store.close().await.unwrap();
}

/// An appender's attachment reaches this process's subscribers with the committed event and
/// is never stored: a read gets the payload alone. Until something subscribes, appenders are
/// told not to build one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_reach_this_processs_subscribers_and_are_never_stored() {
    let dir = temp_dir();
    let store = open(&dir.path().join("attached.db"));
    assert!(!store.wants_attachments(), "nothing subscribed yet");
    let mut subscription = store.subscribe_all(None).await.unwrap();
    assert!(store.wants_attachments());
    let stream = stream_name();
    let mut event = new_event("attached");
    event.attachment = Some(Attachment(Arc::new(String::from("decoded"))));
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the event is delivered")
        .unwrap();
    assert_eq!(delivered.payload, event.payload);
    let attached = delivered.attachment.expect("the attachment came along");
    assert_eq!(
        attached.0.downcast_ref::<String>().map(String::as_str),
        Some("decoded")
    );
    let read = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert!(read[0].attachment.is_none(), "an attachment was stored");
    let read_only = SqliteStore::open_read_only(&dir.path().join("attached.db")).unwrap();
    assert!(!read_only.wants_attachments());
    store.close().await.unwrap();
}

/// An event id is compared only with the event stored in the slot an append aims for (the
/// conformance rules): ids derive from (stream, command, index), so the store keeps no index
/// of ids and the same id in another stream, or at another version, is not a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_are_compared_with_the_slots_an_append_aims_for() {
    let dir = temp_dir();
    let store = open(&dir.path().join("ids.db"));
    let first = stream_name();
    let stored = append_one(&store, &first, ExpectedVersion::NoStream).await;

    // The same id (and content) as the first event of another stream: a new event there.
    let other = stream_name();
    let copied = store
        .append(&other, ExpectedVersion::NoStream, vec![stored.clone()])
        .await
        .unwrap();
    assert_eq!((copied.first_version, copied.last_version), (1, 1));

    // A retry into the taken slot is recognised by the stored event alone, in either stream.
    for stream in [&first, &other] {
        let retried = store
            .append(stream, ExpectedVersion::NoStream, vec![stored.clone()])
            .await
            .unwrap();
        let in_stream = store.read_stream(stream, 1, 1).await.unwrap();
        assert_eq!(retried.position, in_stream[0].position);
    }
    // The same id with other content in the taken slot is a conflict...
    let mut changed = stored.clone();
    changed.payload = br#"{"tag":"changed"}"#.to_vec();
    let conflict = store
        .append(&other, ExpectedVersion::NoStream, vec![changed.clone()])
        .await;
    assert!(
        matches!(conflict, Err(StoreError::EventIdConflict { event_id }) if event_id == stored.event_id),
        "{conflict:?}"
    );
    // ... and at a free slot, it is simply the stream's next event.
    let next = store
        .append(&first, ExpectedVersion::Exact(1), vec![changed])
        .await
        .unwrap();
    assert_eq!((next.first_version, next.last_version), (2, 2));

    // A batch aiming at a taken slot and a free one is not a retry: nothing is written.
    let batch = store
        .append(
            &other,
            ExpectedVersion::NoStream,
            vec![stored.clone(), new_event("fresh")],
        )
        .await;
    assert!(
        matches!(
            batch,
            Err(StoreError::WrongExpectedVersion { actual: 1, .. })
        ),
        "{batch:?}"
    );
    assert_eq!(store.read_stream(&other, 1, 10).await.unwrap().len(), 1);
    assert_eq!(read_everything(&store).await.len(), 3);
    store.close().await.unwrap();
}

/// Hundreds of appends land in shared transactions; the ones that must fail do, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_appends_independent() {
    let dir = temp_dir();
    let store = Arc::new(open(&dir.path().join("group.db")));
    let taken = stream_name();
    let stored = vec![new_event("taken-1"), new_event("taken-2")];
    let original = store
        .append(&taken, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Fresh,
        WrongVersion,
        Retry,
        ConflictingRetry,
        BatchOverTheHead,
        FreshBatch,
    }
    let kinds = [
        Kind::Fresh,
        Kind::WrongVersion,
        Kind::Retry,
        Kind::ConflictingRetry,
        Kind::BatchOverTheHead,
        Kind::FreshBatch,
    ];
    let mut tasks = JoinSet::new();
    for n in 0..420 {
        let kind = kinds[n % kinds.len()];
        let store = Arc::clone(&store);
        let stored = stored.clone();
        let taken = taken.clone();
        tasks.spawn(async move {
            let stream = stream_name();
            let (target, expected, events) = match kind {
                Kind::Fresh => (stream, ExpectedVersion::NoStream, vec![new_event("fresh")]),
                Kind::WrongVersion => (taken, ExpectedVersion::Exact(7), vec![new_event("wrong")]),
                Kind::Retry => (taken, ExpectedVersion::NoStream, stored),
                Kind::ConflictingRetry => {
                    let mut changed = stored;
                    changed[1].payload = format!(r#"{{"n":{n}}}"#).into_bytes();
                    (taken, ExpectedVersion::NoStream, changed)
                }
                Kind::BatchOverTheHead => (
                    taken,
                    ExpectedVersion::Exact(1),
                    vec![stored[1].clone(), new_event("over")],
                ),
                Kind::FreshBatch => (
                    stream,
                    ExpectedVersion::NoStream,
                    vec![new_event("a"), new_event("b"), new_event("c")],
                ),
            };
            let result = store.append(&target, expected, events).await;
            let written = store.read_stream(&target, 1, 10).await.unwrap().len();
            (kind, result, written)
        });
    }
    let mut written_total = 2;
    while let Some(done) = tasks.join_next().await {
        let (kind, result, written) = done.unwrap();
        match kind {
            Kind::Fresh => {
                assert_eq!(result.unwrap().last_version, 1);
                assert_eq!(written, 1);
                written_total += written;
            }
            Kind::FreshBatch => {
                assert_eq!(result.unwrap().last_version, 3);
                assert_eq!(written, 3);
                written_total += written;
            }
            Kind::Retry => assert_eq!(result.unwrap(), original),
            Kind::WrongVersion | Kind::BatchOverTheHead => assert!(
                matches!(
                    result,
                    Err(StoreError::WrongExpectedVersion { actual: 2, .. })
                ),
                "{kind:?}: {result:?}"
            ),
            Kind::ConflictingRetry => assert!(
                matches!(result, Err(StoreError::EventIdConflict { event_id }) if event_id == stored[1].event_id),
                "{result:?}"
            ),
        }
    }
    assert_eq!(read_everything(&store).await.len(), written_total);
    assert_eq!(store.read_stream(&taken, 1, 10).await.unwrap().len(), 2);
}

/// Identical retries racing each other (likely in one group commit) all get the same outcome,
/// and the events are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_identical_retries_store_once() {
    let dir = temp_dir();
    let store = Arc::new(open(&dir.path().join("retries.db")));
    let stream = stream_name();
    let batch = vec![new_event("a"), new_event("b")];
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        let batch = batch.clone();
        tasks.spawn(async move {
            store
                .append(&stream, ExpectedVersion::NoStream, batch)
                .await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.unwrap().unwrap());
    }
    assert!(
        outcomes.windows(2).all(|pair| pair[0] == pair[1]),
        "{outcomes:?}"
    );
    assert_eq!(store.read_stream(&stream, 1, 10).await.unwrap().len(), 2);
}

/// Two stores (two writers with their own caches) on one file stay correct: each notices
/// the other's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_file() {
    let dir = temp_dir();
    let path = dir.path().join("two.db");
    let a = open(&path);
    let b = open(&path);
    let stream = stream_name();
    append_one(&a, &stream, ExpectedVersion::NoStream).await;
    let result = b
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("b")])
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::WrongExpectedVersion { actual: 1, .. })
        ),
        "{result:?}"
    );
    append_one(&b, &stream, ExpectedVersion::Exact(1)).await;
    // `a` last saw version 1; it must not trust that.
    let result = a
        .append(&stream, ExpectedVersion::Exact(1), vec![new_event("a")])
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::WrongExpectedVersion { actual: 2, .. })
        ),
        "{result:?}"
    );
    append_one(&a, &stream, ExpectedVersion::Exact(2)).await;

    // Concurrent appends from both writers to one stream, retrying on conflicts.
    let a = Arc::new(a);
    let b = Arc::new(b);
    let mut tasks = JoinSet::new();
    for (n, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut known = 3;
            for _ in 0..25 {
                loop {
                    let event = new_event(&format!("writer-{n}"));
                    match store
                        .append(&stream, ExpectedVersion::Exact(known), vec![event])
                        .await
                    {
                        Ok(outcome) => {
                            known = outcome.last_version;
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => known = actual,
                        Err(error) => panic!("writer {n}: {error}"),
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let events = a.read_stream(&stream, 1, 1000).await.unwrap();
    assert_eq!(events.len(), 103);
    assert!(events.iter().zip(1..).all(|(e, v)| e.version == v));
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_reads_and_follows_but_never_writes() {
    let dir = temp_dir();
    let path = dir.path().join("ro.db");
    assert!(matches!(
        SqliteStore::open_read_only(&path),
        Err(StoreError::Unavailable(_))
    ));
    let writer = open(&path);
    let stream = stream_name();
    let first = append_one(&writer, &stream, ExpectedVersion::NoStream).await;

    let reader = SqliteStore::open_read_only(&path).unwrap();
    let refused = reader
        .append(&stream, ExpectedVersion::Exact(1), vec![new_event("no")])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let events = reader.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, first.event_id);

    // The read-only store has no writer to wake it: it finds new events by polling.
    let mut subscription = reader
        .subscribe_all(Some(events[0].position))
        .await
        .unwrap();
    let second = append_one(&writer, &stream, ExpectedVersion::Exact(1)).await;
    let next = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("the read-only subscription saw the append")
        .unwrap();
    assert_eq!(next.event_id, second.event_id);
    assert_eq!(reader.head_position().await.unwrap(), Some(next.position));
}

/// Closing waits for queued appends; everything acknowledged is there after reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_reopen_keeps_everything() {
    let dir = temp_dir();
    let path = dir.path().join("reopen.db");
    let store = open(&path);
    let stream = stream_name();
    let mut expected = Vec::new();
    for version in 0..20 {
        expected
            .push(append_one(&store, &stream, ExpectedVersion::from_last_version(version)).await);
    }
    let head = store.head_position().await.unwrap();
    store.close().await.unwrap();

    let store = open(&path);
    assert_eq!(store.head_position().await.unwrap(), head);
    let events = store.read_stream(&stream, 1, 100).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let expected_ids: Vec<_> = expected.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, expected_ids);
    // The writer starts from what is stored, not from an empty cache.
    let result = store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("late")])
        .await;
    assert!(
        matches!(
            result,
            Err(StoreError::WrongExpectedVersion { actual: 20, .. })
        ),
        "{result:?}"
    );
    store.close().await.unwrap();
}

/// A subscription takes its own writer's new events from memory (the window of recent
/// commits). Where another writer on the same file appended in between, the window has a
/// gap, and the subscription must read those from the file: every event, in order, once,
/// whether it follows live or catches up on a run of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gets_another_writers_appends_between_its_own_writers_in_order() {
    const EVENTS: usize = 60;
    let dir = temp_dir();
    let path = dir.path().join("two-writers.db");
    let mine = open(&path);
    let other = open(&path);
    let mut subscription = mine.subscribe_all(None).await.expect("subscribe");
    let (mine_stream, other_stream) = (stream_name(), stream_name());
    let (mut mine_version, mut other_version) = (0, 0);
    let mut followed = Vec::with_capacity(EVENTS);
    for index in 0..EVENTS {
        // Runs of one to three appends by each writer, so gaps come in several sizes.
        if index % 5 < 2 {
            let expected = ExpectedVersion::from_last_version(other_version);
            append_one(&other, &other_stream, expected).await;
            other_version += 1;
        } else {
            let expected = ExpectedVersion::from_last_version(mine_version);
            append_one(&mine, &mine_stream, expected).await;
            mine_version += 1;
        }
        // Live for the first half, one event after each append; the rest is caught up on.
        if index < EVENTS / 2 {
            followed.push(next_within_10_s(subscription.as_mut()).await);
        }
    }
    while followed.len() < EVENTS {
        followed.push(next_within_10_s(subscription.as_mut()).await);
    }
    assert_eq!(followed, read_everything(&mine).await);
    let positions: Vec<u64> = followed.iter().map(|event| event.position).collect();
    assert_eq!(positions, (1..=EVENTS as u64).collect::<Vec<_>>());
}

async fn next_within_10_s(
    subscription: &mut dyn ledger_store::Subscription,
) -> ledger_store::RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("each event arrives within 10 s")
        .expect("the subscription reads")
}
