//! Reads: a small pool of read-only connections used on blocking threads, and the queries.
//!
//! In WAL mode a reader sees the last committed snapshot and never waits for the writer, so
//! reads are served by their own connections instead of queueing behind appends.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use ledger_store::{GlobalPosition, RecordedEvent, StoreError, StreamVersion};
use rusqlite::{Connection, OptionalExtension, Row};
use uuid::Uuid;

use crate::index::{self, SharedTail};
use crate::schema;

/// Read connections per store, at most. Every read waits for one of these instead of
/// opening a connection of its own: a fresh connection parses the schema again and a burst of
/// reads (a retry storm) would otherwise grow threads, open files and memory with the load.
/// Two cores gain nothing from more.
pub(crate) const READERS_MAX: usize = 4;

/// Read-only connections to one file: a fixed number, each with its statement cache, so a
/// statement is prepared once per connection and reused.
#[derive(Debug)]
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: a read holds one while it runs, so at most
    /// `READERS_MAX` connections exist and at most as many blocking threads read at once.
    permits: tokio::sync::Semaphore,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::with_capacity(READERS_MAX)),
            permits: tokio::sync::Semaphore::new(READERS_MAX),
        }
    }

    /// Runs `read` on a pooled connection on the calling thread. Callers hold a permit, or
    /// run before the store serves anyone (opening), so the pool never exceeds its size.
    pub(crate) fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means another reader panicked; the Vec is still usable.
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => schema::open_read_only(&self.path).map_err(|error| self.failed(error))?,
        };
        let result = read(&connection).map_err(|error| self.failed(error));
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < READERS_MAX {
            idle.push(connection);
        }
        result
    }

    /// Runs `read` on a pooled connection on a blocking thread, after waiting for a free
    /// connection.
    pub(crate) async fn run<T, F>(self: &std::sync::Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|error| StoreError::Unavailable(format!("the readers closed: {error}")))?;
        let pool = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.with_connection(read))
            .await
            .map_err(|error| StoreError::Unavailable(format!("a read failed: {error}")))?
    }

    fn failed(&self, error: rusqlite::Error) -> StoreError {
        StoreError::Unavailable(format!("reading {}: {error}", self.path.display()))
    }
}

/// Converts between the store's unsigned numbers and SQLite's signed integers. Every stored
/// value fits (validation keeps versions below `i64::MAX`); larger requests are clamped,
/// which reads the same (nothing) as the exact value would.
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64, column: usize) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(column, value))
}

/// Decodes a row of `SELECT position, version, event_id, event_type, payload, ...` of
/// `stream`.
fn recorded(stream: String, row: &Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let id: [u8; 16] = row.get(2)?;
    Ok(RecordedEvent {
        position: from_sql(row.get(0)?, 0)?,
        stream,
        version: from_sql(row.get(1)?, 1)?,
        event_id: Uuid::from_bytes(id),
        event_type: row.get(3)?,
        payload: row.get(4)?,
        attachment: None,
    })
}

pub(crate) fn read_stream(
    connection: &Connection,
    tail: Option<&SharedTail>,
    stream: &str,
    from_version: StreamVersion,
    limit: usize,
) -> rusqlite::Result<Vec<RecordedEvent>> {
    let format: i32 = connection
        .prepare_cached("PRAGMA user_version")?
        .query_row([], |row| row.get(0))?;
    if format < 3 {
        return read_stream_format_2(connection, stream, from_version, limit);
    }
    // One snapshot for the index, its mark and the events.
    let snapshot = connection.unchecked_transaction()?;
    let Some(id) = index::stream_id(&snapshot, stream)? else {
        return Ok(Vec::new());
    };
    let positions = index::stream_positions(&snapshot, tail, id, to_sql(from_version), limit)?;
    let mut event = snapshot.prepare_cached(
        "SELECT position, version, event_id, event_type, payload FROM events WHERE position = ?1",
    )?;
    let mut events = Vec::with_capacity(positions.len());
    for (_, position) in positions {
        // The memory may hold positions committed after this snapshot: they are not read.
        match event
            .query_row([position], |row| recorded(stream.to_owned(), row))
            .optional()?
        {
            Some(found) => events.push(found),
            None => break,
        }
    }
    Ok(events)
}

/// `read_stream` on a file of format 2, through its index on `(stream_id, version)`: a
/// read-only store may open a file that no writer of this build has migrated yet.
fn read_stream_format_2(
    connection: &Connection,
    stream: &str,
    from_version: StreamVersion,
    limit: usize,
) -> rusqlite::Result<Vec<RecordedEvent>> {
    let mut statement = connection.prepare_cached(
        "SELECT e.position, e.version, e.event_id, e.event_type, e.payload
         FROM streams s CROSS JOIN events e ON e.stream_id = s.id
         WHERE s.name = ?1 AND e.version >= ?2 ORDER BY e.version LIMIT ?3",
    )?;
    let rows = statement.query_map(
        rusqlite::params![stream, to_sql(from_version), to_sql(limit as u64)],
        |row| recorded(stream.to_owned(), row),
    )?;
    rows.collect()
}

pub(crate) fn read_all(
    connection: &Connection,
    after: Option<GlobalPosition>,
    limit: usize,
) -> rusqlite::Result<Vec<RecordedEvent>> {
    // A range of the table in position order, each event's stream name by its id.
    let mut statement = connection.prepare_cached(
        "SELECT e.position, e.version, e.event_id, e.event_type, e.payload, s.name
         FROM events e CROSS JOIN streams s ON s.id = e.stream_id
         WHERE e.position > ?1 ORDER BY e.position LIMIT ?2",
    )?;
    // Positions start at 1, so "after nothing" is "after 0".
    let after = after.map_or(0, to_sql);
    let rows = statement.query_map(rusqlite::params![after, to_sql(limit as u64)], |row| {
        recorded(row.get(5)?, row)
    })?;
    rows.collect()
}

pub(crate) fn head_position(connection: &Connection) -> rusqlite::Result<Option<GlobalPosition>> {
    let head: Option<i64> = connection
        .prepare_cached("SELECT max(position) FROM events")?
        .query_row([], |row| row.get(0))?;
    head.map(|head| from_sql(head, 0)).transpose()
}
