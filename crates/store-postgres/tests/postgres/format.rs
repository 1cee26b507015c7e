//! The format check: a schema is marked with its format version, and a schema this build
//! must not write (a newer format, tables the ledger did not create) is refused with
//! `Incompatible` and left exactly as it was.

use ledger_store::{EventStore, ExpectedVersion, StoreError};
use ledger_store_postgres::{PostgresStore, FORMAT_VERSION};
use tokio_postgres::Client;

use crate::support::{database, new_event, raw, stream_name, TestSchema};

/// Everything in the schema: each table's name, columns and rows, as text.
async fn snapshot(client: &Client, schema: &TestSchema) -> Vec<String> {
    let tables: Vec<String> = client
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1
             ORDER BY table_name",
            &[&schema.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut lines = Vec::new();
    for table in tables {
        let rows = client
            .query(
                &format!(
                    "SELECT t::text FROM {}.\"{table}\" t ORDER BY t::text",
                    schema.quoted()
                ),
                &[],
            )
            .await
            .unwrap();
        lines.push(format!("table {table}"));
        lines.extend(rows.iter().map(|row| row.get::<_, String>(0)));
    }
    lines
}

async fn expect_refused(schema: &TestSchema, must_mention: &[&str]) {
    let client = raw(&schema.url).await;
    let before = snapshot(&client, schema).await;
    match PostgresStore::connect_in_schema(&schema.url, &schema.name).await {
        Err(StoreError::Incompatible(message)) => {
            for word in must_mention {
                assert!(
                    message.contains(word),
                    "{message:?} should mention {word:?}"
                );
            }
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert_eq!(
        snapshot(&client, schema).await,
        before,
        "the refused schema changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_is_marked_with_its_format() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let store = schema.open().await;
    let version: i32 = raw(&url)
        .await
        .query_one(
            &format!("SELECT format_version FROM {}.ledger_meta", schema.quoted()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, FORMAT_VERSION);
    // Opening again leaves it as it is and keeps the events.
    let stream = stream_name();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("kept")])
        .await
        .unwrap();
    store.close().await.unwrap();
    let store = schema.open().await;
    assert_eq!(store.read_stream(&stream, 1, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_is_refused_and_left_unchanged() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    let store = schema.open().await;
    store
        .append(
            &stream_name(),
            ExpectedVersion::NoStream,
            vec![new_event("old")],
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    let newer = FORMAT_VERSION + 1;
    raw(&url)
        .await
        .execute(
            &format!(
                "UPDATE {}.ledger_meta SET format_version = $1",
                schema.quoted()
            ),
            &[&newer],
        )
        .await
        .unwrap();
    expect_refused(
        &schema,
        &[
            &schema.name,
            &format!("format {newer}"),
            &format!("format {FORMAT_VERSION}"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_the_ledger_did_not_create_are_refused() {
    let Some(url) = database().await else { return };
    let schema = TestSchema::new(&url);
    raw(&url)
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.ledger_events (id int); INSERT INTO {s}.ledger_events VALUES (7);",
            s = schema.quoted()
        ))
        .await
        .unwrap();
    expect_refused(&schema, &["no format version"]).await;
}
