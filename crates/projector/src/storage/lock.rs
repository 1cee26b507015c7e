//! The one-writer-per-view lock.

use std::path::Path;

use rusqlite::Connection;

use super::views_dir;
use crate::error::ProjectorError;
use crate::projection::ViewName;

/// Keeps other projectors from writing a view while this one does: an exclusive lock on
/// `views/{view}.lock`, held for the life of the value and released by the OS if the process
/// dies. The lock is SQLite's own file locking, so it needs nothing beyond `rusqlite`.
#[derive(Debug)]
pub struct WriterLock {
    _connection: Connection,
}

impl WriterLock {
    pub fn acquire(data_dir: &Path, view: ViewName) -> Result<WriterLock, ProjectorError> {
        let path = views_dir(data_dir).join(format!("{view}.lock"));
        let failed = |error| ProjectorError::sqlite(&path, error);
        let connection = Connection::open(&path).map_err(failed)?;
        // Exclusive locking mode keeps the lock taken by the first write until close.
        connection
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(failed)?;
        let locked = connection
            .execute_batch(
                "BEGIN EXCLUSIVE;
             CREATE TABLE IF NOT EXISTS holder (singleton INTEGER PRIMARY KEY, pid INTEGER);
             COMMIT;",
            )
            .and_then(|()| {
                connection.execute(
                    "INSERT OR REPLACE INTO holder VALUES (1, ?1)",
                    [std::process::id()],
                )
            });
        match locked {
            Ok(_) => Ok(WriterLock {
                _connection: connection,
            }),
            Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                Err(ProjectorError::Locked { view, path })
            }
            Err(error) => Err(failed(error)),
        }
    }
}
