//! Helpers shared by the test modules: finding the test database, a schema per test, the
//! conformance harness, events, and raw connections for looking behind the store's back.

use std::time::Duration;

use async_trait::async_trait;
use ledger_store::conformance::Harness;
use ledger_store::{EventStore, NewEvent, RecordedEvent};
use ledger_store_postgres::PostgresStore;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// The database used when `LEDGER_TEST_POSTGRES` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database's URL, or `None` (after a loud note) when no server answers there and
/// this is not CI. On CI (`CI` set) a missing server fails the test: CI always provides one,
/// so silence there would hide that the suite did not run.
pub async fn database() -> Option<String> {
    let url = std::env::var("LEDGER_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let why = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, NoTls),
    )
    .await
    {
        Ok(Ok((client, connection))) => {
            drop(client);
            drop(connection);
            return Some(url);
        }
        Ok(Err(error)) => error.to_string() + &source_text(&error),
        Err(_) => "no answer within 10 s".to_owned(),
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "no PostgreSQL answers at {url} ({why}); CI must provide the database the \
             PostgreSQL store tests run against (set LEDGER_TEST_POSTGRES)"
        );
    }
    eprintln!(
        "\n************************************************************************\n\
         SKIPPING a PostgreSQL store test: no server answers at {url} ({why}).\n\
         Set LEDGER_TEST_POSTGRES to a database URL to run it.\n\
         ************************************************************************\n"
    );
    None
}

fn source_text(error: &tokio_postgres::Error) -> String {
    std::error::Error::source(error)
        .map(|cause| format!(": {cause}"))
        .unwrap_or_default()
}

/// A raw connection, for what the tests do behind the store's back.
pub async fn raw(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("raw connection to the test database");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A schema of one test, dropped (best effort) when the test ends, passed or failed.
#[derive(Debug)]
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: format!("ledger_test_{}", Uuid::new_v4().simple()),
        }
    }

    /// A new store (a new "node") on this schema.
    pub async fn open(&self) -> PostgresStore {
        PostgresStore::connect_in_schema(&self.url, &self.name)
            .await
            .unwrap_or_else(|error| panic!("open a store in {}: {error}", self.name))
    }

    /// The quoted schema name, for raw SQL.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.name)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        // Drop cannot await, and may run while a runtime is blocked in a panic: a thread
        // with a runtime of its own does the work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let connect = tokio_postgres::connect(&url, NoTls);
                let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connect)
                    .await
                    .ok()?
                    .ok()?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let drop = client.batch_execute(&statement);
                tokio::time::timeout(Duration::from_secs(30), drop)
                    .await
                    .ok()?
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop test schema {}", self.name);
        }
    }
}

/// The conformance harness: every `open` is a new store (another node) on the harness's
/// schema.
#[derive(Debug)]
pub struct PgHarness {
    pub schema: TestSchema,
}

impl PgHarness {
    /// A harness on a fresh schema, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let url = database().await?;
        Some(Self {
            schema: TestSchema::new(&url),
        })
    }
}

#[async_trait]
impl Harness for PgHarness {
    type Store = PostgresStore;

    async fn open(&self) -> PostgresStore {
        self.schema.open().await
    }

    async fn reopen(&self, store: PostgresStore) -> PostgresStore {
        store.close().await.expect("close the store");
        self.schema.open().await
    }
}

pub fn new_event(tag: &str) -> NewEvent {
    let event_id = Uuid::new_v4();
    NewEvent {
        event_id,
        event_type: "test_event".to_owned(),
        payload: format!(r#"{{"tag":"{tag}","event_id":"{event_id}"}}"#).into_bytes(),
        attachment: None,
    }
}

pub fn stream_name() -> String {
    format!("account-test-{}", Uuid::new_v4())
}

/// Every event of the store, in global order.
pub async fn read_everything(store: &PostgresStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 5000).await.expect("read_all");
        let Some(last) = page.last() else { return all };
        after = Some(last.position);
        all.extend(page);
    }
}

/// `url` with `application_name` set, so a test can find its store's backends in
/// `pg_stat_activity`.
pub fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Terminates the backends whose `application_name` is `name`; returns how many.
pub async fn terminate_backends(url: &str, name: &str) -> i64 {
    raw(url)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("terminate backends")
        .get(0)
}
