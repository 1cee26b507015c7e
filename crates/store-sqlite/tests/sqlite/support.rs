//! Helpers shared by the test modules: temporary stores, events, and the conformance harness.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ledger_store::conformance::Harness;
use ledger_store::{EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use ledger_store_sqlite::SqliteStore;
use tempfile::TempDir;
use uuid::Uuid;

/// A temporary directory for store files, removed when dropped.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ledger-sqlite-test-")
        .tempdir()
        .expect("create a temporary directory")
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
pub async fn read_everything(store: &SqliteStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 5000).await.expect("read_all");
        let Some(last) = page.last() else { return all };
        after = Some(last.position);
        all.extend(page);
    }
}

/// Appends one event and expects it to succeed.
pub async fn append_one(store: &SqliteStore, stream: &str, expected: ExpectedVersion) -> NewEvent {
    let event = new_event("one");
    store
        .append(stream, expected, vec![event.clone()])
        .await
        .expect("append");
    event
}

/// The conformance harness: each `open` is a store on a new file in the harness's directory,
/// unless `shared`, in which case every `open` is another store (another writer) on one file.
/// Its stores move the log's tail into the stream index every `index_batch` events.
#[derive(Debug)]
pub struct SqliteHarness {
    dir: TempDir,
    shared: bool,
    files: AtomicUsize,
    index_batch: usize,
}

impl SqliteHarness {
    pub fn new() -> Self {
        Self {
            dir: temp_dir(),
            shared: false,
            files: AtomicUsize::new(0),
            index_batch: ledger_store_sqlite::INDEX_BATCH,
        }
    }

    /// Stores that index every few events, so that the suite crosses that step often.
    pub fn indexing_often(self) -> Self {
        Self {
            index_batch: 3,
            ..self
        }
    }

    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::new()
        }
    }

    fn next_path(&self) -> PathBuf {
        if self.shared {
            return self.dir.path().join("shared.db");
        }
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("store-{n}.db"))
    }
}

impl SqliteHarness {
    fn open_at(&self, path: &Path) -> SqliteStore {
        SqliteStore::open_with_index_batch(path, self.index_batch)
            .unwrap_or_else(|error| panic!("open {}: {error}", path.display()))
    }
}

pub fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap_or_else(|error| panic!("open {}: {error}", path.display()))
}

#[async_trait]
impl Harness for SqliteHarness {
    type Store = SqliteStore;

    async fn open(&self) -> SqliteStore {
        self.open_at(&self.next_path())
    }

    async fn reopen(&self, store: SqliteStore) -> SqliteStore {
        let path = store.path().to_owned();
        store.close().await.expect("close the store");
        self.open_at(&path)
    }
}
