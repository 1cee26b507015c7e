//! The file format checks: a store file is marked and versioned, and files this build must
//! not write (a newer format, another application's database, not a database) are refused
//! with `Incompatible` and left byte-for-byte unchanged.

use std::path::Path;

use ledger_store::{EventStore, ExpectedVersion, StoreError};
use ledger_store_sqlite::{SqliteStore, APPLICATION_ID, FORMAT_VERSION};
use rusqlite::Connection;

use crate::support::{append_one, open, stream_name, temp_dir};

/// Every file next to the store (the database, and any -wal or -shm) with its bytes.
#[derive(PartialEq, Eq)]
struct Snapshot(Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for Snapshot {
    // Names and sizes: the bytes themselves would drown the failure message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|(name, bytes)| format!("{name} ({} bytes)", bytes.len())),
            )
            .finish()
    }
}

fn snapshot(dir: &Path) -> Snapshot {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    Snapshot(files)
}

fn expect_refused(path: &Path, must_mention: &[&str]) {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    for (how, result) in [
        ("open", SqliteStore::open(path)),
        ("open_read_only", SqliteStore::open_read_only(path)),
    ] {
        match result {
            Err(StoreError::Incompatible(message)) => {
                for word in must_mention {
                    assert!(
                        message.contains(word),
                        "{how}: {message:?} should mention {word:?}"
                    );
                }
            }
            other => panic!(
                "{how} of {}: expected Incompatible, got {other:?}",
                path.display()
            ),
        }
        assert_eq!(snapshot(dir), before, "{how} changed the files");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_is_marked_with_its_format() {
    let dir = temp_dir();
    let path = dir.path().join("marked.db");
    let store = open(&path);
    append_one(&store, &stream_name(), ExpectedVersion::NoStream).await;
    let connection = Connection::open(&path).unwrap();
    let application_id: i32 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .unwrap();
    let user_version: i32 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    let journal_mode: String = connection
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    let written_by: String = connection
        .query_row(
            "SELECT value FROM ledger_meta WHERE key = 'written_by'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(application_id, APPLICATION_ID);
    assert_eq!(user_version, FORMAT_VERSION);
    assert_eq!(journal_mode, "wal");
    assert!(
        written_by.starts_with("ledger-store-sqlite "),
        "{written_by}"
    );
    drop(connection);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_a_newer_format_is_refused_unchanged() {
    let dir = temp_dir();
    let path = dir.path().join("newer.db");
    let store = open(&path);
    let stream = stream_name();
    append_one(&store, &stream, ExpectedVersion::NoStream).await;
    store.close().await.unwrap();

    // What a newer build would leave behind.
    let newer = FORMAT_VERSION + 1;
    {
        let connection = Connection::open(&path).unwrap();
        connection
            .pragma_update(None, "user_version", newer)
            .unwrap();
        connection
            .execute(
                "UPDATE ledger_meta SET value = 'ledger-store-sqlite 9.9.9' WHERE key = 'written_by'",
                [],
            )
            .unwrap();
    }
    expect_refused(
        &path,
        &[
            &format!("format {newer}"),
            "ledger-store-sqlite 9.9.9",
            "Upgrade",
        ],
    );

    // The same build still opens the file once it is back to the current format.
    {
        let connection = Connection::open(&path).unwrap();
        connection
            .pragma_update(None, "user_version", FORMAT_VERSION)
            .unwrap();
    }
    let store = open(&path);
    assert_eq!(store.read_stream(&stream, 1, 10).await.unwrap().len(), 1);
    store.close().await.unwrap();
}

/// Format 1 (stream names in every event, ids unique in the whole file) was never deployed;
/// this build neither reads nor migrates it, and says so without touching the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_an_older_unreadable_format_is_refused_unchanged() {
    let dir = temp_dir();
    let path = dir.path().join("older.db");
    let store = open(&path);
    append_one(&store, &stream_name(), ExpectedVersion::NoStream).await;
    store.close().await.unwrap();
    {
        let connection = Connection::open(&path).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
    }
    expect_refused(&path, &["format 1", "left unchanged"]);
}

#[test]
fn another_applications_database_is_refused_unchanged() {
    let dir = temp_dir();
    let plain = dir.path().join("plain.db");
    Connection::open(&plain)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hello');")
        .unwrap();
    expect_refused(&plain, &["another application"]);

    let dir = temp_dir();
    let marked = dir.path().join("marked.db");
    Connection::open(&marked)
        .unwrap()
        .execute_batch("PRAGMA application_id = 1234; CREATE TABLE t (x);")
        .unwrap();
    expect_refused(&marked, &["another application"]);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_unchanged() {
    let dir = temp_dir();
    let path = dir.path().join("text.db");
    std::fs::write(
        &path,
        "these are not the bytes of a SQLite database\n".repeat(100),
    )
    .unwrap();
    expect_refused(&path, &["not a SQLite database"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_becomes_a_store() {
    let dir = temp_dir();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    let store = open(&path);
    append_one(&store, &stream_name(), ExpectedVersion::NoStream).await;
    assert!(store.head_position().await.unwrap().is_some());
    store.close().await.unwrap();
}

/// A newer build still running: its format change is only in the WAL, not yet in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_still_in_the_wal_is_refused_unchanged() {
    let dir = temp_dir();
    let path = dir.path().join("running.db");
    open(&path).close().await.unwrap();

    let newer = Connection::open(&path).unwrap();
    newer
        .execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA user_version = {};",
            FORMAT_VERSION + 1
        ))
        .unwrap();
    let wal = dir.path().join("running.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the change should be in the WAL"
    );
    let before = (std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap());
    match SqliteStore::open(&path) {
        Err(StoreError::Incompatible(message)) => {
            assert!(
                message.contains(&format!("format {}", FORMAT_VERSION + 1)),
                "{message}"
            )
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    let after = (std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap());
    assert!(before == after, "the database or its WAL changed");
    drop(newer);
}
