//! The stream index behind the log: a file of format 2 is migrated to it, the writer moves
//! the log's tail into it in batches, and reads by stream agree with the log whatever part
//! of a stream is indexed, in this process or in another one that only has the file.

use std::path::Path;

use ledger_store::{EventStore, ExpectedVersion, NewEvent, StoreError};
use ledger_store_sqlite::{SqliteStore, APPLICATION_ID, FORMAT_VERSION};
use rusqlite::{params, Connection};
use uuid::Uuid;

use crate::support::{new_event, open, read_everything, temp_dir};

/// A store file as format 2 wrote it: stream ids, an index every append wrote to.
const FORMAT_2: &str = "
CREATE TABLE streams (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE events (
    position INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL, version INTEGER NOT NULL,
    event_id BLOB NOT NULL, event_type TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE UNIQUE INDEX events_by_stream ON events (stream_id, version);
CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO ledger_meta (key, value) VALUES ('created_by', 'ledger-store-sqlite 0.1.0');
INSERT INTO streams (id, name) VALUES (1, 'account-a'), (2, 'account-b');
";

/// The events of the format 2 file: (stream id, version, tag), in position order.
const FORMAT_2_EVENTS: [(i64, i64, &str); 5] = [
    (1, 1, "a1"),
    (2, 1, "b1"),
    (1, 2, "a2"),
    (1, 3, "a3"),
    (2, 2, "b2"),
];

fn event_id(tag: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, tag.as_bytes())
}

fn stored_event(tag: &str) -> NewEvent {
    NewEvent {
        event_id: event_id(tag),
        event_type: "test_event".to_owned(),
        payload: format!(r#"{{"tag":"{tag}"}}"#).into_bytes(),
        attachment: None,
    }
}

fn write_format_2(path: &Path) {
    let connection = Connection::open(path).unwrap();
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    connection.execute_batch(FORMAT_2).unwrap();
    for (stream_id, version, tag) in FORMAT_2_EVENTS {
        let event = stored_event(tag);
        connection
            .execute(
                "INSERT INTO events (stream_id, version, event_id, event_type, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    stream_id,
                    version,
                    &event.event_id.as_bytes()[..],
                    event.event_type,
                    event.payload
                ],
            )
            .unwrap();
    }
    connection
        .pragma_update(None, "application_id", APPLICATION_ID)
        .unwrap();
    connection.pragma_update(None, "user_version", 2).unwrap();
}

async fn tags(store: &SqliteStore, stream: &str, from_version: u64) -> Vec<(u64, String)> {
    store
        .read_stream(stream, from_version, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|event| {
            let payload = String::from_utf8(event.payload).unwrap();
            (event.version, payload)
        })
        .collect()
}

fn payload(tag: &str) -> String {
    format!(r#"{{"tag":"{tag}"}}"#)
}

/// (stream_id, version, position) rows of `stream_index`, and the mark.
fn index_of(path: &Path) -> (Vec<(i64, i64, i64)>, i64) {
    let connection = Connection::open(path).unwrap();
    let rows = connection
        .prepare("SELECT stream_id, version, position FROM stream_index ORDER BY 1, 2")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    let mark = connection
        .query_row("SELECT indexed_through FROM stream_index_mark", [], |row| {
            row.get(0)
        })
        .unwrap();
    (rows, mark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_file_is_read_as_it_is_and_migrated_when_opened_for_writing() {
    let dir = temp_dir();
    let path = dir.path().join("format2.db");
    write_format_2(&path);

    // Read-only: read through the old index, and nothing is written.
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(
        tags(&reader, "account-a", 2).await,
        vec![(2, payload("a2")), (3, payload("a3"))]
    );
    drop(reader);
    let version: i32 = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2, "a read-only store migrated the file");

    let store = open(&path);
    let (rows, mark) = index_of(&path);
    assert_eq!(
        rows,
        vec![(1, 1, 1), (1, 2, 3), (1, 3, 4), (2, 1, 2), (2, 2, 5)],
        "every stored event is indexed"
    );
    assert_eq!(mark, 5);
    let connection = Connection::open(&path).unwrap();
    let user_version: i32 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(user_version, FORMAT_VERSION);
    let old_index: i64 = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events_by_stream'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(old_index, 0, "the old index is gone");

    // The migrated streams read, append and recognise retries as before.
    assert_eq!(
        tags(&store, "account-b", 1).await,
        vec![(1, payload("b1")), (2, payload("b2"))]
    );
    let retried = store
        .append(
            "account-a",
            ExpectedVersion::Exact(1),
            vec![stored_event("a2")],
        )
        .await
        .unwrap();
    assert_eq!((retried.first_version, retried.position), (2, 3));
    let conflict = store
        .append(
            "account-a",
            ExpectedVersion::Exact(2),
            vec![new_event("late")],
        )
        .await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::WrongExpectedVersion { actual: 3, .. })
        ),
        "{conflict:?}"
    );
    let next = store
        .append(
            "account-a",
            ExpectedVersion::Exact(3),
            vec![new_event("a4")],
        )
        .await
        .unwrap();
    assert_eq!((next.first_version, next.position), (4, 6));
    store.close().await.unwrap();
}

/// Appends `count` one-event appends round-robin over `streams`, each at its stream's
/// version.
async fn append_round_robin(
    store: &SqliteStore,
    streams: &[&str],
    versions: &mut [u64],
    count: usize,
) {
    for n in 0..count {
        let which = n % streams.len();
        let outcome = store
            .append(
                streams[which],
                ExpectedVersion::from_last_version(versions[which]),
                vec![new_event(&format!(
                    "{}-{}",
                    streams[which],
                    versions[which] + 1
                ))],
            )
            .await
            .unwrap();
        versions[which] = outcome.last_version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_moves_into_the_index_in_batches_and_every_reader_sees_whole_streams() {
    let dir = temp_dir();
    let path = dir.path().join("batches.db");
    let streams = ["account-x", "account-y", "account-z"];
    let mut versions = [0; 3];
    let store = SqliteStore::open_with_index_batch(&path, 4).unwrap();

    append_round_robin(&store, &streams, &mut versions, 4).await;
    let (rows, mark) = index_of(&path);
    assert!(
        rows.is_empty() && mark == 0,
        "4 events stay in the tail: {rows:?} {mark}"
    );

    // Four committed events make a batch: the next commit moves them, with the mark.
    append_round_robin(&store, &streams, &mut versions, 1).await;
    let (rows, mark) = index_of(&path);
    assert_eq!(rows, vec![(1, 1, 1), (1, 2, 4), (2, 1, 2), (3, 1, 3)]);
    assert_eq!(mark, 4);

    append_round_robin(&store, &streams, &mut versions, 5).await;
    let (rows, mark) = index_of(&path);
    assert_eq!(
        (rows.len(), mark),
        (8, 8),
        "two batches, two events in the tail"
    );

    // Each stream reads whole and in order from any version, in this process (index,
    // memory) and in a read-only one (index, log after the mark).
    let reader = SqliteStore::open_read_only(&path).unwrap();
    let everything = read_everything(&store).await;
    for stream in streams {
        let expected: Vec<_> = everything
            .iter()
            .filter(|event| event.stream == stream)
            .cloned()
            .collect();
        for from_version in 1..=5 {
            let from_here = store.read_stream(stream, from_version, 100).await.unwrap();
            let from_file = reader.read_stream(stream, from_version, 100).await.unwrap();
            let want: Vec<_> = expected
                .iter()
                .filter(|event| event.version >= from_version)
                .cloned()
                .collect();
            assert_eq!(
                from_here, want,
                "{stream} from {from_version}, this process"
            );
            assert_eq!(from_file, want, "{stream} from {from_version}, read-only");
        }
        for from_version in 1..=3 {
            let two = store.read_stream(stream, from_version, 2).await.unwrap();
            let want: Vec<_> = expected
                .iter()
                .filter(|event| event.version >= from_version)
                .take(2)
                .cloned()
                .collect();
            assert_eq!(two, want, "{stream} from {from_version}, at most two");
        }
    }

    // After a restart the tail is read back from the log: versions go on where they were.
    store.close().await.unwrap();
    let store = SqliteStore::open_with_index_batch(&path, 4).unwrap();
    append_round_robin(&store, &streams, &mut versions, 3).await;
    assert_eq!(versions, [6, 4, 3]);
    let (rows, mark) = index_of(&path);
    assert_eq!(
        (rows.len(), mark),
        (12, 12),
        "the reloaded tail moved with the new events"
    );
    store.close().await.unwrap();
}

/// A batch larger than a slice moves over several group commits while appends go on, from
/// two writers taking turns on one file (each commit of one makes the other reload); at
/// every step each stream reads whole, here and in a process that only has the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_moves_a_slice_per_commit_while_two_writers_append() {
    let dir = temp_dir();
    let path = dir.path().join("slices.db");
    let batch = ledger_store_sqlite::INDEX_SLICE * 2 + 100;
    let stores = [
        std::sync::Arc::new(SqliteStore::open_with_index_batch(&path, batch).unwrap()),
        std::sync::Arc::new(SqliteStore::open_with_index_batch(&path, batch).unwrap()),
    ];
    let reader = SqliteStore::open_read_only(&path).unwrap();
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let store = std::sync::Arc::clone(&stores[writer % 2]);
            tokio::spawn(async move {
                let stream = format!("account-{writer}");
                for version in 0..(batch as u64 * 4 / 16) {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::from_last_version(version),
                            vec![new_event(&format!("{stream}-{version}"))],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Check while they append: what is read is always a whole prefix of the stream.
    let mut checks = 0;
    while writers.iter().any(|writer| !writer.is_finished()) {
        for which in [&*stores[0], &*stores[1], &reader] {
            let events = which.read_stream("account-3", 1, 100_000).await.unwrap();
            let versions: Vec<u64> = events.iter().map(|event| event.version).collect();
            let whole: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(versions, whole, "a prefix of the stream, without gaps");
        }
        checks += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(checks > 0);
    let (rows, mark) = index_of(&path);
    let events = batch as i64 * 4;
    assert!(
        mark >= events - 2 * batch as i64,
        "batches kept moving: mark {mark} after {events} events"
    );
    let at_or_before_mark = rows.iter().filter(|row| row.2 <= mark).count();
    assert_eq!(
        at_or_before_mark as i64, mark,
        "every event up to the mark is indexed"
    );
    let everything = read_everything(&stores[0]).await;
    for writer in 0..16 {
        let stream = format!("account-{writer}");
        let expected: Vec<_> = everything
            .iter()
            .filter(|event| event.stream == stream)
            .cloned()
            .collect();
        for which in [&*stores[0], &*stores[1], &reader] {
            assert_eq!(
                which.read_stream(&stream, 1, 100_000).await.unwrap(),
                expected
            );
        }
    }
    for store in stores {
        std::sync::Arc::into_inner(store)
            .unwrap()
            .close()
            .await
            .unwrap();
    }
}

/// Two writers committing strictly in turn: each commit makes the other reload its tail,
/// and a batch larger than a slice must still move (it once started over at every reload,
/// so the mark never moved and the tail grew without end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_taking_turns_on_one_file_still_move_batches() {
    let dir = temp_dir();
    let path = dir.path().join("turns.db");
    let batch = ledger_store_sqlite::INDEX_SLICE * 2 + 100;
    let stores = [
        SqliteStore::open_with_index_batch(&path, batch).unwrap(),
        SqliteStore::open_with_index_batch(&path, batch).unwrap(),
    ];
    let events = batch as u64 * 2;
    for version in 0..events {
        stores[(version % 2) as usize]
            .append(
                "account-turns",
                ExpectedVersion::from_last_version(version),
                vec![new_event(&version.to_string())],
            )
            .await
            .unwrap();
    }
    let (rows, mark) = index_of(&path);
    assert!(
        mark >= batch as i64,
        "no batch moved in {events} events: mark {mark}"
    );
    assert_eq!(rows.iter().filter(|row| row.2 <= mark).count() as i64, mark);
    for store in &stores {
        let read = store
            .read_stream("account-turns", 1, usize::MAX)
            .await
            .unwrap();
        assert_eq!(read.len() as u64, events);
    }
    for store in stores {
        store.close().await.unwrap();
    }
}
