//! The shared store conformance suite against a real EventStoreDB / KurrentDB node, run when
//! `LEDGER_TEST_ESDB` holds a connection string (e.g. `esdb://localhost:2113?tls=false`),
//! plus checks of the public API that need no server.

use async_trait::async_trait;
use ledger_store::conformance::{run_all, Harness};
use ledger_store::{EventStore, ExpectedVersion, NewEvent, StoreError};
use ledger_store_esdb::mapping::{expected_stream_state, version_of_revision};
use ledger_store_esdb::{normalise_connection_string, redact, EsdbStore};
use uuid::Uuid;

/// Names the server to test against; the suite is skipped when it is unset.
const ENV: &str = "LEDGER_TEST_ESDB";

#[derive(Debug)]
struct EsdbHarness {
    conn: String,
}

impl EsdbHarness {
    fn connect(&self) -> EsdbStore {
        match EsdbStore::connect(&self.conn) {
            Ok(store) => store,
            Err(e) => panic!("{ENV}={}: {e}", redact(&self.conn)),
        }
    }
}

#[async_trait]
impl Harness for EsdbHarness {
    type Store = EsdbStore;

    async fn open(&self) -> EsdbStore {
        // The suite's streams are unique (`account-conf-{uuid}`), so every test shares the
        // server's one database.
        self.connect()
    }

    async fn reopen(&self, store: EsdbStore) -> EsdbStore {
        // The data lives in the server: a restart of the ledger is a new client.
        drop(store);
        self.connect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_a_live_server() {
    let Some(conn) = std::env::var(ENV)
        .ok()
        .filter(|conn| !conn.trim().is_empty())
    else {
        println!("skipped: set {ENV} to an EventStoreDB connection string (esdb://localhost:2113?tls=false) to run the conformance suite");
        return;
    };
    let harness = EsdbHarness { conn };
    if let Err(e) = harness.connect().check_connection().await {
        panic!("{ENV} names no reachable node: {e}");
    }
    run_all(&harness).await;
}

#[test]
fn connection_strings_are_normalised_for_the_client() {
    let cases = [
        (
            "esdb://localhost:2113?tls=false",
            "esdb://localhost:2113?tls=false",
        ),
        ("esdb://node", "esdb://node:2113"),
        (
            "esdb://a:2113,b:2113,c:2113?tls=false",
            "esdb://a:2113,b:2113,c:2113?tls=false",
        ),
        (
            "esdb+discover://cluster.internal:2113",
            "esdb+discover://cluster.internal:2113",
        ),
        ("kurrentdb://db:2113/", "kurrentdb://db:2113"),
        (
            "kurrentdb+discover://cluster.internal?tls=false",
            "kurrentdb+discover://cluster.internal:2113?tls=false",
        ),
    ];
    for (given, expected) in cases {
        match normalise_connection_string(given) {
            Ok(normalised) => assert_eq!(normalised, expected, "{given}"),
            Err(e) => panic!("{given}: {e}"),
        }
    }
    for bad in [
        "",
        "localhost:2113",
        "http://h:2113",
        "esdb://h:70000",
        "esdb://h?tsl=false",
    ] {
        assert!(
            matches!(
                normalise_connection_string(bad),
                Err(StoreError::Invalid(_))
            ),
            "{bad:?} should be Invalid"
        );
    }
}

#[test]
fn versions_are_one_based_revisions_zero_based() {
    assert_eq!(version_of_revision(0), 1);
    assert!(matches!(
        expected_stream_state(ExpectedVersion::NoStream),
        Ok(kurrentdb::StreamState::NoStream)
    ));
    assert!(matches!(
        expected_stream_state(ExpectedVersion::Exact(3)),
        Ok(kurrentdb::StreamState::StreamRevision(2))
    ));
}

/// A node that does not answer: every operation is `Unavailable`, and stays retryable (the
/// client is replaced after a failed connection instead of failing for good).
#[tokio::test]
async fn an_unreachable_node_is_unavailable_and_retryable() {
    // A loopback port nobody listens on: bind one, note it, let it go.
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(address) => address.port(),
        Err(e) => panic!("cannot find a free loopback port: {e}"),
    };
    let conn = format!(
        "esdb://127.0.0.1:{port}?tls=false&maxDiscoverAttempts=1&discoveryInterval=50&gossipTimeout=1000"
    );
    let store = match EsdbStore::connect(&conn) {
        Ok(store) => store,
        Err(e) => panic!("connect is lazy and should succeed: {e}"),
    };

    let stream = format!("account-offline-{}", Uuid::new_v4());
    for attempt in 0..3 {
        match store.read_stream(&stream, 1, 10).await {
            // kurrentdb stops its connection task after a failed attempt and answers
            // "Connection is closed" ever after; each retry here must be a new attempt.
            Err(StoreError::Unavailable(message)) => assert!(
                !message.contains("Connection is closed"),
                "read attempt {attempt} reused a dead client: {message}"
            ),
            other => panic!("read attempt {attempt}: {other:?}"),
        }
    }
    let event = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "account_opened".into(),
        payload: br#"{"tier":"free"}"#.to_vec(),
        attachment: None,
    };
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await;
    assert!(
        matches!(appended, Err(StoreError::Unavailable(_))),
        "{appended:?}"
    );
    let head = store.head_position().await;
    assert!(matches!(head, Err(StoreError::Unavailable(_))), "{head:?}");
    let all = store.read_all(None, 10).await;
    assert!(matches!(all, Err(StoreError::Unavailable(_))), "{all:?}");
    let subscribed = store.subscribe_all(None).await;
    assert!(
        matches!(subscribed, Err(StoreError::Unavailable(_))),
        "subscribe_all should fail up front"
    );
    assert!(matches!(
        store.check_connection().await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_network() {
    // Nothing listens on this string's host; every call below must fail before using it.
    let store = match EsdbStore::connect("esdb://127.0.0.1:1?tls=false") {
        Ok(store) => store,
        Err(e) => panic!("{e}"),
    };
    let event = || NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "account_opened".into(),
        payload: b"{}".to_vec(),
        attachment: None,
    };
    for stream in ["", "$all", "orders-1", "account-", "account-1\n"] {
        let result = store
            .append(stream, ExpectedVersion::NoStream, vec![event()])
            .await;
        assert!(
            matches!(result, Err(StoreError::Invalid(_))),
            "{stream}: {result:?}"
        );
    }
    let empty = store
        .append("account-1", ExpectedVersion::NoStream, Vec::new())
        .await;
    assert!(matches!(empty, Err(StoreError::Invalid(_))), "{empty:?}");
    let mut untyped = event();
    untyped.event_type.clear();
    let untyped = store
        .append("account-1", ExpectedVersion::NoStream, vec![untyped])
        .await;
    assert!(
        matches!(untyped, Err(StoreError::Invalid(_))),
        "{untyped:?}"
    );
    let twice = event();
    let duplicate = store
        .append(
            "account-1",
            ExpectedVersion::NoStream,
            vec![twice.clone(), twice],
        )
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Invalid(_))),
        "{duplicate:?}"
    );
    assert!(matches!(
        store.read_stream("", 1, 10).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(store.read_stream("account-1", 1, 0).await, Ok(events) if events.is_empty()));
    assert!(matches!(store.read_all(None, 0).await, Ok(events) if events.is_empty()));
}
