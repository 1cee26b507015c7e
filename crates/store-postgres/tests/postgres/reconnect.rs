//! Connection loss: a subscription whose backend is terminated mid-stream reconnects and
//! goes on without gaps or duplicates, and the writer replaces a killed connection.

use std::time::Duration;

use ledger_store::{EventStore, ExpectedVersion, NewEvent, StoreError, Subscription};
use ledger_store_postgres::PostgresStore;
use uuid::Uuid;

use crate::support::{
    database, new_event, stream_name, terminate_backends, with_application_name, TestSchema,
};

const WAIT: Duration = Duration::from_secs(20);

/// A store whose connections carry a name of their own, so the test can find them.
async fn named_store(schema: &TestSchema) -> (PostgresStore, String) {
    let name = format!("lt-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = with_application_name(&schema.url, &name);
    let store = PostgresStore::connect_in_schema(&url, &schema.name)
        .await
        .expect("open the store");
    (store, name)
}

async fn receive(subscription: &mut Box<dyn Subscription>, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    let mut last = None;
    for _ in 0..count {
        let event = tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("the subscription stalled after {last:?}"))
            .expect("the subscription failed");
        assert!(
            last.is_none_or(|last| event.position == last + 1),
            "position {} after {last:?}: a gap or a repeat",
            event.position
        );
        last = Some(event.position);
        ids.push(event.event_id);
    }
    ids
}

async fn append_batches(
    store: &PostgresStore,
    stream: &str,
    version: &mut u64,
    count: usize,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut left = count;
    while left > 0 {
        let size = left.min(50);
        let events: Vec<NewEvent> = (0..size).map(|_| new_event("reconnect")).collect();
        ids.extend(events.iter().map(|e| e.event_id));
        let outcome = store
            .append(stream, ExpectedVersion::from_last_version(*version), events)
            .await
            .expect("append");
        *version = outcome.last_version;
        left -= size;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_terminated_backends() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let (store, name) = named_store(&schema).await;
    let subscriber = format!("{name}-subscription");
    let stream = stream_name();
    let mut version = 0;
    let mut subscription = store.subscribe_all(None).await.unwrap();

    // Caught up and idle, then killed: the next live events still arrive.
    let first = append_batches(&store, &stream, &mut version, 5).await;
    assert_eq!(receive(&mut subscription, 5).await, first);
    for round in 0..3 {
        assert!(
            terminate_backends(&url, &subscriber).await >= 1,
            "round {round}: no subscription backend to terminate"
        );
        let more = append_batches(&store, &stream, &mut version, 7).await;
        assert_eq!(receive(&mut subscription, 7).await, more, "round {round}");
    }

    // Killed in the middle of catching up over more than one page.
    let many = append_batches(&store, &stream, &mut version, 1200).await;
    let mut got = receive(&mut subscription, 100).await;
    assert!(terminate_backends(&url, &subscriber).await >= 1);
    got.extend(receive(&mut subscription, 600).await);
    assert!(terminate_backends(&url, &subscriber).await >= 1);
    got.extend(receive(&mut subscription, 500).await);
    assert_eq!(got, many, "events lost or repeated across reconnects");

    // Nothing more arrives: no event was delivered twice.
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(700), subscription.next()).await {
        panic!("an unexpected extra event: {:?}", extra.map(|e| e.position));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_after_the_writer_connection_is_killed() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let (store, name) = named_store(&schema).await;
    let stream = stream_name();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event("before")],
        )
        .await
        .unwrap();
    assert!(terminate_backends(&url, &name).await >= 1);

    // A retry with the same event is safe whatever happened to an attempt.
    let event = new_event("after");
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        match store
            .append(&stream, ExpectedVersion::Exact(1), vec![event.clone()])
            .await
        {
            Ok(outcome) => break outcome,
            Err(StoreError::Unavailable(message)) if attempts < 20 => {
                eprintln!("attempt {attempts}: {message}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("append after the kill: {error}"),
        }
    };
    assert_eq!(outcome.last_version, 2);
    let stored = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].event_id, event.event_id);
}
