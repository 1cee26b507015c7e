//! The file format: how a ledger store file is recognised, created and version-checked.
//!
//! A file is checked through a read-only connection before the write connection touches it,
//! so that a file from a newer format (or another application) is refused byte-for-byte
//! unchanged: not even the switch to WAL mode is written to it.

use std::path::Path;
use std::time::Duration;

use ledger_store::StoreError;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

/// `PRAGMA application_id` of a ledger store file ("LDGR"), so that tools like `file` and
/// this crate can tell it from other SQLite databases.
pub const APPLICATION_ID: i32 = 0x4C44_4752;

/// The store format this build writes, kept in `PRAGMA user_version`. Files of an older
/// format are migrated when opened for writing; files of a newer one are refused.
///
/// Format 3 indexes streams behind the log (`stream_index` and its mark, see `index.rs`)
/// instead of in an index every append writes to. Format 2 keys events by an integer stream
/// id (table `streams`) instead of the stream's name, and has no index on event ids. Format
/// 1 (a name in every event, ids unique in the whole file) was never deployed; its files are
/// refused rather than migrated.
pub const FORMAT_VERSION: i32 = 3;

/// Who writes the file, recorded in it so that a refusal can say which build wrote it.
const WRITER: &str = concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"));

/// How long a connection waits for another one's lock (another process writing, or WAL
/// recovery after a crash) before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The oldest format this build reads (and, when writing, migrates from).
const OLDEST_FORMAT: i32 = 2;

/// The layout, chosen for what a group commit writes: every page it changes goes to the WAL
/// whole (two system calls and a checksum each, then the sync), and later into the file.
///
/// - `events` is keyed by its position (the rowid), so a group commit's events fill the
///   table's last pages one after the other, and `read_all` is a range scan of the table.
///   It is the only table an append writes to (besides `streams`, once per stream).
/// - `stream_index` maps `(stream_id, version)` to positions, for the events up to the
///   position in `stream_index_mark`. It serves `read_stream`, the last version of a stream
///   the writer has not cached, and the idempotency checks. The writer fills it in batches
///   (see `index.rs`): an index that every append wrote to cost a leaf page per event.
/// - No index on `event_id`: ids are only compared with the events stored in the slots an
///   append aims for (see the crate documentation).
/// - `streams` maps names to ids. It changes only when a stream is created.
///
/// Measured with 256 streams of a few hundred events, one ~300-byte event per stream per
/// commit, format 2 (the index written by every append): about 300 WAL pages per commit
/// (4.9 KB per event), against 610 (9.8 KB) with format 1's name-keyed unique indexes on
/// `(stream, version)` and `event_id`, and 680 (10.9 KB) with the events themselves clustered
/// `WITHOUT ROWID` on `(stream_id, version)` plus an index on the position.
const CREATE_TABLES: &str = "
CREATE TABLE streams (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
CREATE TABLE events (
    position   INTEGER PRIMARY KEY,
    stream_id  INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    event_id   BLOB    NOT NULL,
    event_type TEXT    NOT NULL,
    payload    BLOB    NOT NULL
);
CREATE TABLE ledger_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// The stream index of format 3, created with a new file or by the migration from format 2.
const CREATE_STREAM_INDEX: &str = "
CREATE TABLE stream_index (
    stream_id INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
) WITHOUT ROWID;
CREATE TABLE stream_index_mark (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_through  INTEGER NOT NULL
);
";

/// Format 2 to 3: every stored event goes into `stream_index` (read in key order from the
/// old index), the mark after the last one, and the old index goes.
const MIGRATE_2_TO_3: &str = "
INSERT INTO stream_index (stream_id, version, position)
    SELECT stream_id, version, position FROM events ORDER BY stream_id, version;
INSERT INTO stream_index_mark (id, indexed_through)
    SELECT 1, coalesce(max(position), 0) FROM events;
DROP INDEX events_by_stream;
";

/// What a file turned out to hold.
enum Found {
    /// Nothing yet: a new or empty file.
    Fresh,
    /// A ledger store of a format this build reads.
    Ledger { format: i32 },
}

/// Maps an SQLite error met while opening or inspecting `path`.
fn open_error(path: &Path, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::Incompatible(format!(
            "{} is not a SQLite database, so not a ledger event store",
            path.display()
        )),
        _ => StoreError::Unavailable(format!("opening {}: {error}", path.display())),
    }
}

/// Reads what `connection` holds, refusing anything this build must not write to.
fn inspect(connection: &Connection, path: &Path) -> Result<Found, StoreError> {
    let failed = |error| open_error(path, error);
    let application_id: i32 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(failed)?;
    let format: i32 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(failed)?;
    let tables: i64 = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .map_err(failed)?;
    match application_id {
        APPLICATION_ID if format > FORMAT_VERSION => {
            // Best effort: a newer format may have moved this, and the refusal matters more.
            let writer: String = connection
                .query_row(
                    "SELECT value FROM ledger_meta WHERE key = 'written_by'",
                    [],
                    |row| row.get(0),
                )
                .unwrap_or_else(|_| "an unknown, newer build".to_owned());
            Err(StoreError::Incompatible(format!(
                "{} is in store format {format}, written by {writer}; this build ({WRITER}) \
                 reads formats up to {FORMAT_VERSION}. Upgrade the ledger to open it; \
                 the file was left unchanged",
                path.display()
            )))
        }
        APPLICATION_ID if format < 1 => Err(StoreError::Incompatible(format!(
            "{} is marked as a ledger store but has no format version; it was left unchanged",
            path.display()
        ))),
        APPLICATION_ID if format < OLDEST_FORMAT => Err(StoreError::Incompatible(format!(
            "{} is in store format {format}, older than any this build ({WRITER}) reads \
             (formats {OLDEST_FORMAT} to {FORMAT_VERSION}); it was left unchanged",
            path.display()
        ))),
        APPLICATION_ID => Ok(Found::Ledger { format }),
        0 if tables == 0 => Ok(Found::Fresh),
        0 => Err(StoreError::Incompatible(format!(
            "{} is a SQLite database of another application ({tables} tables, no ledger mark); \
             it was left unchanged",
            path.display()
        ))),
        other => Err(StoreError::Incompatible(format!(
            "{} belongs to another application (application_id {other:#010x}); \
             it was left unchanged",
            path.display()
        ))),
    }
}

/// Opens a read-only connection with the settings every connection of this crate uses.
pub(crate) fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

/// A connection that reads `path` as it is on disk and creates nothing: no `-wal` or `-shm`
/// file, no lock. Only right when there is no WAL content to read; `None` when the path
/// cannot be written as a URI.
fn open_untouched(path: &Path) -> Option<rusqlite::Result<Connection>> {
    let text = path.to_str()?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            // The characters a URI path cannot carry as they are.
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", u32::from(c))),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Some(Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ))
}

/// Checks, without writing anything, that `path` is missing, empty, or a ledger store of a
/// format this build reads.
pub(crate) fn check_compatible(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal_has_content = std::fs::metadata(&wal).is_ok_and(|wal| wal.len() > 0);
    // Without WAL content the file alone is the truth, and an immutable connection reads it
    // without creating side files. With WAL content (a running or crashed writer) a normal
    // read-only connection is needed to see it; its side files exist already, and a
    // read-only connection never checkpoints the WAL into the file, not even on close.
    let connection = match (wal_has_content, open_untouched(path)) {
        (false, Some(untouched)) => untouched,
        _ => open_read_only(path),
    }
    .map_err(|error| open_error(path, error))?;
    inspect(&connection, path).map(|_| ())
}

/// Opens the write connection: checks the file, switches it to WAL with full sync, and
/// creates or migrates the schema.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    check_compatible(path)?;
    let failed = |error| open_error(path, error);
    let mut connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use write-ahead logging (journal mode is {mode})",
            path.display()
        )));
    }
    // FULL: every commit syncs the WAL, so an acknowledged append survives a crash.
    // No automatic checkpoints: they would run inside the commit that crosses the threshold
    // and delay its appends; `checkpoint.rs` does them on a thread of its own.
    // The cache is sized for the index leaves the writer touches; larger caches cost more
    // than they save, because SQLite scans its cache at every commit.
    connection
        .execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA cache_size = -8192;
             PRAGMA temp_store = MEMORY;
             PRAGMA journal_size_limit = 67108864;",
        )
        .map_err(failed)?;

    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    // Again inside the write lock: another process may have created or upgraded the file
    // since the read-only look.
    match inspect(&transaction, path)? {
        Found::Fresh => {
            transaction.execute_batch(CREATE_TABLES).map_err(failed)?;
            transaction
                .execute_batch(CREATE_STREAM_INDEX)
                .map_err(failed)?;
            transaction
                .execute(
                    "INSERT INTO stream_index_mark (id, indexed_through) VALUES (1, 0)",
                    [],
                )
                .map_err(failed)?;
            transaction
                .pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(failed)?;
            transaction
                .pragma_update(None, "user_version", FORMAT_VERSION)
                .map_err(failed)?;
            transaction
                .execute(
                    "INSERT INTO ledger_meta (key, value) VALUES ('created_by', ?1)",
                    [WRITER],
                )
                .map_err(failed)?;
        }
        Found::Ledger { format } => migrate(&transaction, format, path)?,
    }
    transaction
        .execute(
            "INSERT INTO ledger_meta (key, value) VALUES ('written_by', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value
             WHERE value IS NOT excluded.value",
            [WRITER],
        )
        .map_err(failed)?;
    transaction.commit().map_err(failed)?;
    Ok(connection)
}

/// Brings a file of an older format up to [`FORMAT_VERSION`], inside the open transaction.
fn migrate(connection: &Connection, format: i32, path: &Path) -> Result<(), StoreError> {
    let failed = |error| open_error(path, error);
    match format {
        FORMAT_VERSION => Ok(()),
        2 => {
            connection
                .execute_batch(CREATE_STREAM_INDEX)
                .map_err(failed)?;
            connection.execute_batch(MIGRATE_2_TO_3).map_err(failed)?;
            connection
                .pragma_update(None, "user_version", FORMAT_VERSION)
                .map_err(failed)?;
            tracing::info!(path = %path.display(), "migrated the event store from format 2 to 3");
            Ok(())
        }
        // Formats before `OLDEST_FORMAT` are refused by `inspect`; a later format adds its
        // migration steps here.
        older => Err(StoreError::Incompatible(format!(
            "{} is in store format {older}, which this build cannot migrate",
            path.display()
        ))),
    }
}
