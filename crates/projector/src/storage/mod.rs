//! View files: one SQLite file per view, `DATA_DIR/views/{view}.sqlite`, in WAL mode.
//!
//! ```sql
//! rows (account_id TEXT PRIMARY KEY, version INTEGER NOT NULL, row TEXT NOT NULL,
//!       changed_at_position INTEGER NOT NULL)  -- row: the view's deterministic JSON
//! checkpoint (singleton = 1, view, row_format, file_id, position, last_recorded_at_us,
//!             events_applied)
//! ```
//!
//! Why it is safe to kill a projector at any instant: a batch's rows and the checkpoint that
//! covers them are written in one transaction, so the file always holds exactly the events up
//! to its checkpoint. `changed_at_position` is the position of the last event folded into a
//! row; followers in other processes read `WHERE changed_at_position > their position` to
//! pick up only what changed. `file_id` is new for every file, so a follower notices when a
//! rebuild has replaced the file.
//!
//! Format: `PRAGMA application_id` marks a view file ("LDGV"), `PRAGMA user_version` holds
//! [`VIEW_FILE_FORMAT`] and the checkpoint the view's row format. A newer file format or row
//! format is refused without writing; an older row format is rebuilt from the events (views
//! are derived data, so that loses nothing).
//!
//! `synchronous = NORMAL`: a commit survives the process being killed (the WAL is in the OS
//! cache); a power loss may lose the last commits, rows and checkpoint together, and the
//! projector then simply re-applies from the older checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as Clock};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::error::ProjectorError;
use crate::projection::ViewName;

mod lock;
mod read;

pub use lock::WriterLock;
pub use read::{read_all_rows, read_view_file, FileRead};

/// `PRAGMA application_id` of a view file: "LDGV".
pub const VIEW_APPLICATION_ID: i32 = 0x4C44_4756;

/// The file layout this build writes (`PRAGMA user_version`).
pub const VIEW_FILE_FORMAT: i64 = 1;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE rows (
    account_id          TEXT    PRIMARY KEY,
    version             INTEGER NOT NULL,
    row                 TEXT    NOT NULL,
    changed_at_position INTEGER NOT NULL
);
CREATE INDEX rows_by_change ON rows (changed_at_position);
CREATE TABLE checkpoint (
    singleton           INTEGER PRIMARY KEY CHECK (singleton = 1),
    view                TEXT    NOT NULL,
    row_format          INTEGER NOT NULL,
    file_id             TEXT    NOT NULL,
    position            INTEGER,
    last_recorded_at_us INTEGER,
    events_applied      INTEGER NOT NULL
);
";

const UPSERT_ROW: &str = "
INSERT INTO rows (account_id, version, row, changed_at_position) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (account_id) DO UPDATE SET
    version = excluded.version,
    row = excluded.row,
    changed_at_position = excluded.changed_at_position";

const UPDATE_CHECKPOINT: &str = "
UPDATE checkpoint SET position = ?1, last_recorded_at_us = ?2, events_applied = ?3
WHERE singleton = 1";

const READ_CHECKPOINT: &str = "
SELECT view, row_format, file_id, position, last_recorded_at_us, events_applied
FROM checkpoint WHERE singleton = 1";

/// The path of a view's file under `data_dir`.
pub fn view_path(data_dir: &Path, view: ViewName) -> PathBuf {
    views_dir(data_dir).join(format!("{view}.sqlite"))
}

/// The directory holding the view files.
pub fn views_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("views")
}

/// Where a rebuild builds the replacement of `live` before it is renamed over it.
pub(crate) fn shadow_path(live: &Path) -> PathBuf {
    let mut name = live.as_os_str().to_owned();
    name.push(".rebuild");
    PathBuf::from(name)
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Deletes a database file and its WAL, shared-memory and journal files, if present.
pub(crate) fn remove_database(path: &Path) -> Result<(), ProjectorError> {
    for file in [
        path.to_owned(),
        sidecar(path, "-wal"),
        sidecar(path, "-shm"),
        sidecar(path, "-journal"),
    ] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(ProjectorError::io(file, error)),
        }
    }
    Ok(())
}

/// How far a view file got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Position of the last event applied; `None` before the first.
    pub position: Option<u64>,
    /// `recorded_at` of the last applied event that had one, in µs since the epoch.
    pub last_recorded_at_us: Option<i64>,
    /// Events applied into this file since it was created (skipped ones included).
    pub events_applied: u64,
    /// Identifies this file; a rebuilt file gets a new one.
    pub file_id: String,
}

/// One stored row, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub account_id: String,
    pub version: u64,
    pub changed_at_position: u64,
    /// The row's JSON, exactly as stored.
    pub row: String,
}

/// SQLite stores signed integers; positions and versions fit (both stores keep them far
/// below `i64::MAX`), and anything that would not is clamped rather than wrapped.
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The write side of a view file, owned by the one projector thread that writes the view.
#[derive(Debug)]
pub struct ViewFile {
    path: PathBuf,
    view: ViewName,
    connection: Connection,
}

/// Writes rows inside [`ViewFile::commit`]'s transaction.
pub struct RowWriter<'a> {
    statement: rusqlite::CachedStatement<'a>,
    path: &'a Path,
}

impl std::fmt::Debug for RowWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl RowWriter<'_> {
    /// Inserts or replaces one account's row.
    pub fn put(
        &mut self,
        account_id: &str,
        version: u64,
        row_json: &str,
        changed_at_position: u64,
    ) -> Result<(), ProjectorError> {
        self.statement
            .execute(params![
                account_id,
                to_sql(version),
                row_json,
                to_sql(changed_at_position)
            ])
            .map_err(|error| ProjectorError::sqlite(self.path, error))?;
        Ok(())
    }
}

impl ViewFile {
    /// Opens `path` as `view`'s file, creating it if missing. Refuses files of another kind
    /// or of a newer format without writing to them. A file whose rows have an older row
    /// format is emptied (its checkpoint reset to nothing), so the caller rebuilds it.
    pub fn open(
        path: &Path,
        view: ViewName,
        row_format: u32,
    ) -> Result<(ViewFile, Checkpoint), ProjectorError> {
        let failed = |error| ProjectorError::sqlite(path, error);
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
        // Inspect before the first write: the journal mode switch below writes the header.
        let fresh = inspect(&connection, path, view)?;
        let mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(failed)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ProjectorError::NotAViewFile {
                path: path.to_owned(),
                view,
                reason: format!("it cannot use write-ahead logging (journal mode {mode})"),
            });
        }
        // The cache holds the rows' B-tree pages a batch updates; 64 MiB covers a few hundred
        // thousand accounts, beyond that pages come from the OS cache. The WAL is checkpointed
        // every ~4 MiB and cut back to 1 MiB afterwards, so a view's disk use follows its data
        // (a 10,000-page checkpoint interval left 40 MB WAL files beside 100 KB views).
        connection
            .execute_batch(
                "PRAGMA synchronous = NORMAL;
                 PRAGMA cache_size = -65536;
                 PRAGMA wal_autocheckpoint = 1000;
                 PRAGMA journal_size_limit = 1048576;
                 PRAGMA temp_store = MEMORY;",
            )
            .map_err(failed)?;
        let mut file = ViewFile {
            path: path.to_owned(),
            view,
            connection,
        };
        if fresh {
            file.create(row_format)?;
        }
        let checkpoint = file.checkpoint_checked(row_format)?;
        Ok((file, checkpoint))
    }

    /// Creates `path` from nothing, deleting whatever was there.
    pub fn create_fresh(
        path: &Path,
        view: ViewName,
        row_format: u32,
    ) -> Result<(ViewFile, Checkpoint), ProjectorError> {
        remove_database(path)?;
        ViewFile::open(path, view, row_format)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn failed(&self, error: rusqlite::Error) -> ProjectorError {
        ProjectorError::sqlite(&self.path, error)
    }

    fn create(&mut self, row_format: u32) -> Result<(), ProjectorError> {
        let path = self.path.clone();
        let failed = |error| ProjectorError::sqlite(&path, error);
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        // Again under the write lock: another process may have created it meanwhile.
        let tables: i64 = transaction
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(failed)?;
        if tables == 0 {
            transaction.execute_batch(SCHEMA).map_err(failed)?;
            transaction
                .pragma_update(None, "application_id", VIEW_APPLICATION_ID)
                .map_err(failed)?;
            transaction
                .pragma_update(None, "user_version", VIEW_FILE_FORMAT)
                .map_err(failed)?;
            transaction
                .execute(
                    "INSERT INTO checkpoint (singleton, view, row_format, file_id, position,
                         last_recorded_at_us, events_applied)
                     VALUES (1, ?1, ?2, ?3, NULL, NULL, 0)",
                    params![self.view.as_str(), row_format, new_file_id()],
                )
                .map_err(failed)?;
        }
        transaction.commit().map_err(failed)
    }

    /// Reads the checkpoint, checking the view and row format; resets the file if its rows
    /// are of an older format.
    fn checkpoint_checked(&mut self, row_format: u32) -> Result<Checkpoint, ProjectorError> {
        let (view, stored_format, checkpoint) = read_checkpoint(&self.connection)
            .map_err(|error| self.failed(error))?
            .ok_or_else(|| ProjectorError::NotAViewFile {
                path: self.path.clone(),
                view: self.view,
                reason: "its checkpoint row is missing".into(),
            })?;
        if view != self.view.as_str() {
            return Err(ProjectorError::NotAViewFile {
                path: self.path.clone(),
                view: self.view,
                reason: format!("it holds the {view} view"),
            });
        }
        let ours = i64::from(row_format);
        if stored_format > ours {
            return Err(ProjectorError::NewerFormat {
                path: self.path.clone(),
                what: "rows of row format",
                found: stored_format,
                supported: ours,
            });
        }
        if stored_format < ours {
            tracing::warn!(
                view = %self.view,
                path = %self.path.display(),
                stored_format,
                row_format,
                "the view's rows have an older format; rebuilding it from the events"
            );
            let file_id = new_file_id();
            self.connection
                .execute_batch("BEGIN IMMEDIATE; DELETE FROM rows;")
                .and_then(|()| {
                    self.connection.execute(
                        "UPDATE checkpoint SET row_format = ?1, file_id = ?2, position = NULL,
                             last_recorded_at_us = NULL, events_applied = 0
                         WHERE singleton = 1",
                        params![row_format, file_id],
                    )
                })
                .and_then(|_| self.connection.execute_batch("COMMIT"))
                .map_err(|error| self.failed(error))?;
            return Ok(Checkpoint {
                position: None,
                last_recorded_at_us: None,
                events_applied: 0,
                file_id,
            });
        }
        Ok(checkpoint)
    }

    /// Calls `each` with every stored row.
    pub fn for_each_row(
        &self,
        each: impl FnMut(StoredRow) -> Result<(), ProjectorError>,
    ) -> Result<(), ProjectorError> {
        rows_where(&self.connection, &self.path, None, each)
    }

    /// Writes a batch: whatever `write_rows` puts, and `checkpoint`, in one transaction.
    pub fn commit(
        &mut self,
        checkpoint: &Checkpoint,
        write_rows: impl FnOnce(&mut RowWriter<'_>) -> Result<(), ProjectorError>,
    ) -> Result<(), ProjectorError> {
        let path = self.path.as_path();
        let failed = |error| ProjectorError::sqlite(path, error);
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        {
            let mut writer = RowWriter {
                statement: transaction.prepare_cached(UPSERT_ROW).map_err(failed)?,
                path,
            };
            write_rows(&mut writer)?;
        }
        transaction
            .prepare_cached(UPDATE_CHECKPOINT)
            .and_then(|mut statement| {
                statement.execute(params![
                    checkpoint.position.map(to_sql),
                    checkpoint.last_recorded_at_us,
                    to_sql(checkpoint.events_applied)
                ])
            })
            .map_err(failed)?;
        // Dropping the transaction on an error above rolls the whole batch back.
        transaction.commit().map_err(failed)
    }

    /// Takes the file out of WAL mode and closes it, so that it can be renamed: a database
    /// in WAL mode must never be renamed, because its `-wal` file is found by name and would
    /// be applied to whatever file has that name next.
    fn close_for_rename(self) -> Result<PathBuf, ProjectorError> {
        leave_wal(&self.connection, &self.path, self.view, BUSY_TIMEOUT)?;
        let ViewFile {
            path, connection, ..
        } = self;
        connection
            .close()
            .map_err(|(_, error)| ProjectorError::sqlite(&path, error))?;
        Ok(path)
    }

    /// Replaces this file by `shadow` (a rebuilt file of the same view): renames it over this
    /// path and reopens. Readers of the old file in other processes keep reading it until
    /// they reopen the path, which they do when they see its `file_id` change.
    ///
    /// `KeptOld` means nothing changed: this file is open as before and the shadow is left
    /// behind (deleted at the next start). `Err` means the path could not be reopened
    /// afterwards and this value is unusable.
    pub fn replace_with(
        &mut self,
        shadow: ViewFile,
        row_format: u32,
        busy_timeout: Duration,
    ) -> Result<SwitchOutcome, ProjectorError> {
        let shadow_path = match shadow.close_for_rename() {
            Ok(path) => path,
            Err(error) => return Ok(SwitchOutcome::KeptOld(error)),
        };
        // Leave WAL mode on the live file too, so that no `-wal` of the old file is left for
        // the new one to pick up. It needs every other connection closed; followers open the
        // file only briefly, so wait for a moment when none has it open.
        if let Err(error) = leave_wal(&self.connection, &self.path, self.view, busy_timeout) {
            return Ok(SwitchOutcome::KeptOld(error));
        }
        let placeholder = match Connection::open_in_memory() {
            Ok(connection) => connection,
            Err(error) => return Ok(SwitchOutcome::KeptOld(self.failed(error))),
        };
        let old = std::mem::replace(&mut self.connection, placeholder);
        let closed = old
            .close()
            .map_err(|(_, error)| ProjectorError::sqlite(&self.path, error));
        let renamed = closed.and_then(|()| {
            std::fs::rename(&shadow_path, &self.path)
                .map_err(|error| ProjectorError::io(&self.path, error))
        });
        if renamed.is_ok() {
            if let Err(error) = sync_directory(&self.path) {
                // The rename is done for this process and any other; only a power loss right
                // now could undo it, and then the old file is as consistent as the new one.
                tracing::warn!(%error, "could not sync the views directory after a switch-over");
            }
        }
        // Whichever file is at the path now (the new one, or the old one if the rename
        // failed) is a complete view file: reopen it.
        let (reopened, checkpoint) = ViewFile::open(&self.path, self.view, row_format)?;
        *self = reopened;
        Ok(match renamed {
            Ok(()) => SwitchOutcome::Switched(checkpoint),
            Err(error) => SwitchOutcome::KeptOld(error),
        })
    }
}

/// How [`ViewFile::replace_with`] ended.
#[derive(Debug)]
pub enum SwitchOutcome {
    /// The rebuilt file is now the view file; its checkpoint.
    Switched(Checkpoint),
    /// The old file stays, unchanged; why the switch did not happen.
    KeptOld(ProjectorError),
}

/// Switches `connection`'s database from WAL to a rollback journal, retrying while other
/// connections have it open.
fn leave_wal(
    connection: &Connection,
    path: &Path,
    view: ViewName,
    timeout: Duration,
) -> Result<(), ProjectorError> {
    let started = Clock::now();
    loop {
        let result: rusqlite::Result<String> =
            connection.pragma_update_and_check(None, "journal_mode", "DELETE", |row| row.get(0));
        match result {
            Ok(mode) if mode.eq_ignore_ascii_case("delete") => return Ok(()),
            // SQLite answers with the unchanged mode, or BUSY, while others hold the file.
            Ok(_) | Err(_) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(mode) => {
                return Err(ProjectorError::SwitchOver {
                    path: path.to_owned(),
                    view,
                    reason: format!(
                        "it stayed in journal mode {mode}: other processes keep it open"
                    ),
                })
            }
            Err(error) => return Err(ProjectorError::sqlite(path, error)),
        }
    }
}

/// Makes a rename in `file`'s directory durable.
fn sync_directory(file: &Path) -> Result<(), ProjectorError> {
    let Some(directory) = file.parent() else {
        return Ok(());
    };
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| ProjectorError::io(directory, error))
}

/// A new file id: random, so that a rebuilt file never reuses an old one.
fn new_file_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether `path` is a fresh database (to be created); errors for anything that is not a
/// view file of `view` in a format this build writes.
fn inspect(connection: &Connection, path: &Path, view: ViewName) -> Result<bool, ProjectorError> {
    let failed = |error| ProjectorError::sqlite(path, error);
    let not_a_view = |reason: String| ProjectorError::NotAViewFile {
        path: path.to_owned(),
        view,
        reason,
    };
    let application_id: i32 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => {
                not_a_view("it is not a SQLite database".into())
            }
            _ => failed(error),
        })?;
    let format: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(failed)?;
    let tables: i64 = connection
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(failed)?;
    match application_id {
        VIEW_APPLICATION_ID if format > VIEW_FILE_FORMAT => Err(ProjectorError::NewerFormat {
            path: path.to_owned(),
            what: "view file format",
            found: format,
            supported: VIEW_FILE_FORMAT,
        }),
        VIEW_APPLICATION_ID if format < 1 => Err(not_a_view("it has no format version".into())),
        VIEW_APPLICATION_ID => Ok(false),
        0 if tables == 0 => Ok(true),
        0 => Err(not_a_view(format!(
            "it is a database of another application ({tables} schema objects, no view mark)"
        ))),
        other => Err(not_a_view(format!(
            "it belongs to another application (application_id {other:#010x})"
        ))),
    }
}

/// Reads the checkpoint row: (view, row format, checkpoint).
fn read_checkpoint(connection: &Connection) -> rusqlite::Result<Option<(String, i64, Checkpoint)>> {
    connection
        .prepare_cached(READ_CHECKPOINT)?
        .query_row([], |row| {
            let position: Option<i64> = row.get(3)?;
            let events_applied: i64 = row.get(5)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                Checkpoint {
                    file_id: row.get(2)?,
                    position: position.map(from_sql),
                    last_recorded_at_us: row.get(4)?,
                    events_applied: from_sql(events_applied),
                },
            ))
        })
        .optional()
}

/// Calls `each` with every row changed after `after` (every row for `None`).
fn rows_where(
    connection: &Connection,
    path: &Path,
    after: Option<u64>,
    mut each: impl FnMut(StoredRow) -> Result<(), ProjectorError>,
) -> Result<(), ProjectorError> {
    let failed = |error| ProjectorError::sqlite(path, error);
    let mut statement = connection
        .prepare_cached(
            "SELECT account_id, version, changed_at_position, row FROM rows
             WHERE changed_at_position > ?1",
        )
        .map_err(failed)?;
    let mut rows = statement
        .query([after.map_or(-1, to_sql)])
        .map_err(failed)?;
    while let Some(row) = rows.next().map_err(failed)? {
        let version: i64 = row.get(1).map_err(failed)?;
        let changed: i64 = row.get(2).map_err(failed)?;
        each(StoredRow {
            account_id: row.get(0).map_err(failed)?,
            version: from_sql(version),
            changed_at_position: from_sql(changed),
            row: row.get(3).map_err(failed)?,
        })?;
    }
    Ok(())
}
