//! SQLite-specific behaviour beyond the shared suite: ids unique in the whole file, group
//! commit keeping appends independent, several writers on one file, read-only stores.

use std::sync::Arc;
use std::time::Duration;

use ledger_store::{EventStore, ExpectedVersion, StoreError};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_are_unique_in_the_whole_file() {
    let dir = temp_dir();
    let store = open(&dir.path().join("ids.db"));
    let first = stream_name();
    let stored = append_one(&store, &first, ExpectedVersion::NoStream).await;

    // The same id (and content) as the first event of another stream.
    let other = stream_name();
    let reused = store
        .append(&other, ExpectedVersion::NoStream, vec![stored.clone()])
        .await;
    assert!(
        matches!(reused, Err(StoreError::EventIdConflict { event_id }) if event_id == stored.event_id),
        "{reused:?}"
    );
    // The same id again at the head of its own stream (a different slot).
    let again = store
        .append(&first, ExpectedVersion::Exact(1), vec![stored.clone()])
        .await;
    assert!(
        matches!(again, Err(StoreError::EventIdConflict { .. })),
        "{again:?}"
    );
    // A batch whose second event reuses the id: nothing of the batch is written.
    let fresh = new_event("fresh");
    let batch = store
        .append(
            &other,
            ExpectedVersion::NoStream,
            vec![fresh.clone(), stored.clone()],
        )
        .await;
    assert!(
        matches!(batch, Err(StoreError::EventIdConflict { .. })),
        "{batch:?}"
    );
    assert!(store.read_stream(&other, 1, 10).await.unwrap().is_empty());

    // The refused appends left the writer's view of both streams intact.
    let outcome = store
        .append(&other, ExpectedVersion::NoStream, vec![fresh])
        .await
        .unwrap();
    assert_eq!((outcome.first_version, outcome.last_version), (1, 1));
    append_one(&store, &first, ExpectedVersion::Exact(1)).await;
    assert_eq!(read_everything(&store).await.len(), 3);
    store.close().await.unwrap();
}

/// Hundreds of appends land in shared transactions; the ones that must fail do, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_appends_independent() {
    let dir = temp_dir();
    let store = Arc::new(open(&dir.path().join("group.db")));
    let taken = stream_name();
    let stored = append_one(&store, &taken, ExpectedVersion::NoStream).await;

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Fresh,
        WrongVersion,
        ReusedId,
        BatchWithReusedId,
        FreshBatch,
    }
    let kinds = [
        Kind::Fresh,
        Kind::WrongVersion,
        Kind::ReusedId,
        Kind::BatchWithReusedId,
        Kind::FreshBatch,
    ];
    let mut tasks = JoinSet::new();
    for n in 0..400 {
        let kind = kinds[n % kinds.len()];
        let store = Arc::clone(&store);
        let stored = stored.clone();
        let taken = taken.clone();
        tasks.spawn(async move {
            let stream = stream_name();
            let result = match kind {
                Kind::Fresh => {
                    store
                        .append(&stream, ExpectedVersion::NoStream, vec![new_event("fresh")])
                        .await
                }
                Kind::WrongVersion => {
                    store
                        .append(&taken, ExpectedVersion::Exact(7), vec![new_event("wrong")])
                        .await
                }
                Kind::ReusedId => {
                    store
                        .append(&stream, ExpectedVersion::NoStream, vec![stored])
                        .await
                }
                Kind::BatchWithReusedId => {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::NoStream,
                            vec![new_event("a"), new_event("b"), stored],
                        )
                        .await
                }
                Kind::FreshBatch => {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::NoStream,
                            vec![new_event("a"), new_event("b"), new_event("c")],
                        )
                        .await
                }
            };
            let written = store.read_stream(&stream, 1, 10).await.unwrap().len();
            (kind, result, written)
        });
    }
    let mut written_total = 1;
    while let Some(done) = tasks.join_next().await {
        let (kind, result, written) = done.unwrap();
        match kind {
            Kind::Fresh => {
                assert_eq!(result.unwrap().last_version, 1);
                assert_eq!(written, 1);
            }
            Kind::FreshBatch => {
                assert_eq!(result.unwrap().last_version, 3);
                assert_eq!(written, 3);
            }
            Kind::WrongVersion => assert!(
                matches!(
                    result,
                    Err(StoreError::WrongExpectedVersion { actual: 1, .. })
                ),
                "{result:?}"
            ),
            Kind::ReusedId | Kind::BatchWithReusedId => {
                assert!(
                    matches!(result, Err(StoreError::EventIdConflict { .. })),
                    "{result:?}"
                );
                assert_eq!(written, 0, "a refused append left events behind");
            }
        }
        written_total += written;
    }
    assert_eq!(read_everything(&store).await.len(), written_total);
    assert_eq!(store.read_stream(&taken, 1, 10).await.unwrap().len(), 1);
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
