//! PostgreSQL-specific behaviour beyond the conformance suite: connection errors, choosing
//! the schema, concurrent starts, bytes kept as given, and the group commit's promise that
//! each append in a group succeeds or fails on its own.

use std::sync::Arc;

use ledger_store::{EventStore, ExpectedVersion, NewEvent, StoreError};
use ledger_store_postgres::{PostgresStore, FORMAT_VERSION};
use uuid::Uuid;

use crate::support::{database, new_event, raw, stream_name, TestSchema};

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 on loopback: refused at once, no server needed.
    match PostgresStore::connect("postgres://postgres@127.0.0.1:1/test").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("127.0.0.1:1/test"), "{message}");
            assert!(!message.contains('\n'), "{message}");
            assert!(message.starts_with("cannot connect"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_url_or_schema_is_invalid() {
    for url in [
        "postgres://postgres@127.0.0.1:5432/test?sslmode=bogus",
        "host='unterminated",
    ] {
        match PostgresStore::connect(url).await {
            Err(StoreError::Invalid(message)) => {
                assert!(
                    message.starts_with("not a usable postgres url"),
                    "{message}"
                )
            }
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
    }
    for schema in ["", &"s".repeat(64)] {
        match PostgresStore::connect_in_schema("postgres://postgres@127.0.0.1/test", schema).await {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("schema {schema:?}: expected Invalid, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_search_path_selects_the_schema() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let separator = if url.contains('?') { '&' } else { '?' };
    let with_path = format!("{url}{separator}options=-csearch_path%3D{}", schema.name);
    let store = PostgresStore::connect(&with_path).await.unwrap();
    assert_eq!(store.schema(), schema.name);
    let stream = stream_name();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("path")])
        .await
        .unwrap();
    let count: i64 = raw(&url)
        .await
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.ledger_events WHERE stream = $1",
                schema.quoted()
            ),
            &[&stream],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the event is not in the schema the URL named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_create_the_schema_once() {
    let Some(url) = database().await else { return };
    let schema = Arc::new(TestSchema::new(&url));
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let schema = Arc::clone(&schema);
        starts.spawn(
            async move { PostgresStore::connect_in_schema(&schema.url, &schema.name).await },
        );
    }
    let mut stores = Vec::new();
    while let Some(started) = starts.join_next().await {
        stores.push(started.unwrap().expect("a node failed to start"));
    }
    let rows = raw(&url)
        .await
        .query(
            &format!("SELECT format_version FROM {}.ledger_meta", schema.quoted()),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), FORMAT_VERSION);
    // Every node can write, and they share one order.
    for (n, store) in stores.iter().enumerate() {
        let outcome = store
            .append(
                &stream_name(),
                ExpectedVersion::NoStream,
                vec![new_event("node")],
            )
            .await
            .unwrap();
        assert_eq!(outcome.position, n as u64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_types_come_back_byte_for_byte() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let store = schema.open().await;
    let stream = stream_name();
    let payloads: Vec<Vec<u8>> = vec![
        // Key order, spacing and number spelling that jsonb would normalise.
        br#"{"z":1,  "a":{"y":1.50,"b":[3,1,2]},"a":"dup"}"#.to_vec(),
        vec![0, 159, 146, 150, 255, b'\n', 0],
        Vec::new(),
    ];
    let events: Vec<NewEvent> = payloads
        .iter()
        .map(|payload| NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "tÿpe with spaces\tand tab".to_owned(),
            payload: payload.clone(),
            attachment: None,
        })
        .collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    let stored = store.read_stream(&stream, 1, 10).await.unwrap();
    let got: Vec<(&str, &[u8])> = stored
        .iter()
        .map(|e| (e.event_type.as_str(), e.payload.as_slice()))
        .collect();
    let want: Vec<(&str, &[u8])> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.payload.as_slice()))
        .collect();
    assert_eq!(got, want);

    let mut nul_type = new_event("nul");
    nul_type.event_type = "bad\0type".to_owned();
    match store
        .append(&stream, ExpectedVersion::Exact(3), vec![nul_type])
        .await
    {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("a NUL in the event type: expected Invalid, got {other:?}"),
    }
}

/// Appends queued behind a held commit all go into the next group; conflicts, retries (of
/// stored events and of events earlier in the same group) and good appends in that group
/// each get their own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_append_in_a_group_stands_on_its_own() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let store = Arc::new(schema.open().await);
    let existing = stream_name();
    let stored = vec![new_event("stored-1"), new_event("stored-2")];
    let stored_outcome = store
        .append(&existing, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();

    let mut hold = store.hold_next_commit();
    let blocker = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .append(
                    &stream_name(),
                    ExpectedVersion::NoStream,
                    vec![new_event("blocker")],
                )
                .await
        })
    };
    hold.reached().await.expect("the held commit");

    // Queued while the writer is held: they form the next group together.
    let fresh = stream_name();
    let twice = new_event("twice");
    let mut changed = stored[0].clone();
    changed.payload = b"{}".to_vec();
    let cases: Vec<(&str, String, ExpectedVersion, Vec<NewEvent>)> = vec![
        (
            "good",
            fresh.clone(),
            ExpectedVersion::NoStream,
            vec![twice.clone()],
        ),
        (
            "retry in group",
            fresh.clone(),
            ExpectedVersion::NoStream,
            vec![twice.clone()],
        ),
        (
            "stale",
            existing.clone(),
            ExpectedVersion::NoStream,
            vec![new_event("stale")],
        ),
        (
            "retry of stored",
            existing.clone(),
            ExpectedVersion::NoStream,
            stored.clone(),
        ),
        (
            "id conflict",
            existing.clone(),
            ExpectedVersion::NoStream,
            vec![changed, stored[1].clone()],
        ),
        (
            "next",
            existing.clone(),
            ExpectedVersion::Exact(2),
            vec![new_event("next")],
        ),
        (
            "ahead",
            existing.clone(),
            ExpectedVersion::Exact(9),
            vec![new_event("ahead")],
        ),
        (
            "after next",
            existing.clone(),
            ExpectedVersion::Exact(3),
            vec![new_event("after")],
        ),
    ];
    // Each append is polled once, in order: that validates it and puts it in the writer's
    // queue, so the group holds them in this order.
    let mut pending = Vec::new();
    for (name, stream, expected, events) in &cases {
        let mut append = store.append(stream, *expected, events.clone());
        std::future::poll_fn(|context| {
            assert!(
                append.as_mut().poll(context).is_pending(),
                "{name} was answered while held"
            );
            std::task::Poll::Ready(())
        })
        .await;
        pending.push((*name, append));
    }
    hold.release();
    blocker.await.unwrap().unwrap();
    let mut answers = std::collections::HashMap::new();
    for (name, append) in pending {
        answers.insert(name, append.await);
    }

    let good = answers["good"].as_ref().expect("good");
    assert_eq!(
        answers["retry in group"].as_ref().expect("retry in group"),
        good
    );
    assert!(
        matches!(
            answers["stale"],
            Err(StoreError::WrongExpectedVersion { actual: 2, .. })
        ),
        "{:?}",
        answers["stale"]
    );
    assert_eq!(
        answers["retry of stored"]
            .as_ref()
            .expect("retry of stored"),
        &stored_outcome
    );
    assert!(
        matches!(
            answers["id conflict"],
            Err(StoreError::EventIdConflict { event_id }) if event_id == stored[0].event_id
        ),
        "{:?}",
        answers["id conflict"]
    );
    assert_eq!(answers["next"].as_ref().expect("next").last_version, 3);
    assert!(
        matches!(
            answers["ahead"],
            Err(StoreError::WrongExpectedVersion { actual: 3, .. })
        ),
        "{:?}",
        answers["ahead"]
    );
    assert_eq!(
        answers["after next"]
            .as_ref()
            .expect("after next")
            .last_version,
        4
    );

    assert_eq!(store.read_stream(&fresh, 1, 10).await.unwrap().len(), 1);
    assert_eq!(store.read_stream(&existing, 1, 10).await.unwrap().len(), 4);
}

/// Each node's writer guesses heads from what it committed itself; another node moving a
/// stream on must turn those guesses into the exact answers, never into a gap or a
/// duplicate version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_heads_of_another_node_are_caught() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let (a, b, c) = (
        schema.open().await,
        schema.open().await,
        schema.open().await,
    );
    let stream = stream_name();
    a.append(&stream, ExpectedVersion::NoStream, vec![new_event("a1")])
        .await
        .unwrap();
    let b_event = new_event("b2");
    let b_outcome = b
        .append(&stream, ExpectedVersion::Exact(1), vec![b_event.clone()])
        .await
        .unwrap();

    // A still believes the stream is at 1.
    match a
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![new_event("a-stale")],
        )
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual: 2, .. }) => {}
        other => panic!("a stale head: expected WrongExpectedVersion at 2, got {other:?}"),
    }
    let retried = a
        .append(&stream, ExpectedVersion::Exact(1), vec![b_event])
        .await
        .expect("a retry of B's append through A");
    assert_eq!(retried, b_outcome);
    a.append(&stream, ExpectedVersion::Exact(2), vec![new_event("a3")])
        .await
        .unwrap();

    // C has never seen the stream.
    match c
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("c-new")])
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual: 3, .. }) => {}
        other => panic!("NoStream on an existing stream: got {other:?}"),
    }
    match c
        .append(
            &stream,
            ExpectedVersion::Exact(7),
            vec![new_event("c-ahead")],
        )
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual: 3, .. }) => {}
        other => panic!("an expected version ahead of the stream: got {other:?}"),
    }
    c.append(&stream, ExpectedVersion::Exact(3), vec![new_event("c4")])
        .await
        .unwrap();
    let versions: Vec<u64> = a
        .read_stream(&stream, 1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}
