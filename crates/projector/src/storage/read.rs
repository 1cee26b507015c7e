//! Reading a view file from outside the projector that writes it: followers in other
//! processes, and the rebuild's checks.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::*;
use crate::error::ProjectorError;
use crate::projection::ViewName;

/// What a reader of a view file found in one look.
#[derive(Debug)]
pub enum FileRead {
    /// The file does not exist (yet).
    Missing,
    /// The file is the one last seen and has not moved past `position`.
    Unchanged,
    /// Rows changed since the position asked about, in the file last seen.
    Changed {
        checkpoint: Checkpoint,
        rows: Vec<StoredRow>,
    },
    /// A different file (new, or rebuilt): every row.
    Replaced {
        checkpoint: Checkpoint,
        rows: Vec<StoredRow>,
    },
}

/// Reads a view file from outside the projector that writes it: its checkpoint, and the
/// rows changed since `seen` (a file id and the position read last time), all from one
/// snapshot. The connection is opened for this read and closed after it, so that readers
/// never hold the file open long enough to stand in the way of a rebuild's switch-over.
pub fn read_view_file(
    path: &Path,
    view: ViewName,
    seen: Option<(&str, Option<u64>)>,
) -> Result<FileRead, ProjectorError> {
    if !path.exists() {
        return Ok(FileRead::Missing);
    }
    let failed = |error| ProjectorError::sqlite(path, error);
    let mut connection = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(connection) => connection,
        // Renamed away between the check and the open: look again next time.
        Err(error) if !path.exists() => {
            tracing::debug!(path = %path.display(), %error, "view file vanished while opening");
            return Ok(FileRead::Missing);
        }
        Err(error) => return Err(failed(error)),
    };
    connection.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    let transaction = connection.transaction().map_err(failed)?;
    if inspect(&transaction, path, view)? {
        // Created but not yet initialised by its projector.
        return Ok(FileRead::Missing);
    }
    let (stored_view, _, checkpoint) =
        read_checkpoint(&transaction)
            .map_err(failed)?
            .ok_or_else(|| ProjectorError::NotAViewFile {
                path: path.to_owned(),
                view,
                reason: "its checkpoint row is missing".into(),
            })?;
    if stored_view != view.as_str() {
        return Err(ProjectorError::NotAViewFile {
            path: path.to_owned(),
            view,
            reason: format!("it holds the {stored_view} view"),
        });
    }
    let same_file = seen.filter(|(file_id, _)| *file_id == checkpoint.file_id);
    let read = match same_file {
        Some((_, position)) if position == checkpoint.position => FileRead::Unchanged,
        Some((_, position)) => {
            let mut rows = Vec::new();
            rows_where(&transaction, path, position, |row| {
                rows.push(row);
                Ok(())
            })?;
            FileRead::Changed { checkpoint, rows }
        }
        None => {
            let mut rows = Vec::new();
            rows_where(&transaction, path, None, |row| {
                rows.push(row);
                Ok(())
            })?;
            FileRead::Replaced { checkpoint, rows }
        }
    };
    transaction.commit().map_err(failed)?;
    Ok(read)
}

/// Reads every row of a view file, sorted by account: for comparing two files.
pub fn read_all_rows(
    path: &Path,
    view: ViewName,
) -> Result<(Checkpoint, Vec<StoredRow>), ProjectorError> {
    match read_view_file(path, view, None)? {
        FileRead::Replaced {
            checkpoint,
            mut rows,
        } => {
            rows.sort_by(|a, b| a.account_id.cmp(&b.account_id));
            Ok((checkpoint, rows))
        }
        _ => Err(ProjectorError::NotAViewFile {
            path: path.to_owned(),
            view,
            reason: "it does not exist".into(),
        }),
    }
}
