//! What can stop a projector, and how a caller should treat each case.

use std::path::PathBuf;

use ledger_domain::events::DecodeError;
use ledger_store::{GlobalPosition, StoreError};

use crate::projection::ViewName;

/// Why a projector (or a view file, or a follower) failed.
///
/// Transient store failures (`StoreError::Unavailable`) never reach callers of the runtime:
/// the reader retries them with a backoff. Everything here is therefore either a problem of
/// the data (the projector must not guess: fix or rebuild), of the files (disk, permissions,
/// another projector), or a stop.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// The event store refused a request for a reason a retry will not fix.
    #[error("event store: {0}")]
    Store(#[from] StoreError),

    /// SQLite failed on a view file (I/O, disk full, corruption). The file's last committed
    /// batch is intact; restarting resumes from it.
    #[error("view file {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The file system failed around a view file (creating the directory, renaming).
    #[error("view file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A view file written by a newer build. Nothing in it was changed.
    #[error(
        "{} holds {what} {found}, newer than this build's {supported}; upgrade the ledger, \
         or delete the file to rebuild the view from the events (the file was left unchanged)",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        what: &'static str,
        found: i64,
        supported: i64,
    },

    /// A file at a view's path that is not that view's file. Nothing in it was changed.
    #[error("{} is not a ledger {view} view file: {reason} (the file was left unchanged)", path.display())]
    NotAViewFile {
        path: PathBuf,
        view: ViewName,
        reason: String,
    },

    /// Another process (or another projector in this one) is writing the view.
    #[error("another projector is already writing the {view} view ({} is locked)", path.display())]
    Locked { view: ViewName, path: PathBuf },

    /// An event the projector cannot read. It stops rather than skip it, since a skipped
    /// event would make the view silently wrong.
    #[error("cannot decode the event at position {position} of {stream}: {source}")]
    Decode {
        position: GlobalPosition,
        stream: String,
        #[source]
        source: DecodeError,
    },

    /// A stored row that cannot be read back: the file is damaged or was written by
    /// different code under the same row format. Rebuild the view.
    #[error("{view} view: the row of account {account_id} in {} cannot be read: {message}", path.display())]
    Row {
        view: ViewName,
        account_id: String,
        path: PathBuf,
        message: String,
    },

    /// A row that cannot be stored (serialisation failed).
    #[error("{view} view: the row of account {account_id} cannot be stored: {message}")]
    Encode {
        view: ViewName,
        account_id: String,
        message: String,
    },

    /// An account's events arrived with a hole: the view would miss what the hole held.
    #[error(
        "{view} view: account {account_id} is at version {have} but the event at position \
         {position} has version {got}; events are missing"
    )]
    VersionGap {
        view: ViewName,
        account_id: String,
        have: u64,
        got: u64,
        position: GlobalPosition,
    },

    /// An account stream that does not begin with `account_opened`.
    #[error(
        "{view} view: account {account_id} begins with {event_type} (position {position}), \
         not account_opened"
    )]
    NotOpened {
        view: ViewName,
        account_id: String,
        event_type: &'static str,
        position: GlobalPosition,
    },

    /// The view has applied events the store does not have: the view files belong to
    /// another store (or the store was replaced).
    #[error(
        "{view} view is at position {position} but the event store ends at {head}; the views \
         belong to another store: delete {} to rebuild them",
        path.display()
    )]
    AheadOfStore {
        view: ViewName,
        position: GlobalPosition,
        head: String,
        path: PathBuf,
    },

    /// A rebuilt view could not replace the live file; the live file keeps serving.
    #[error("{view} view: cannot switch {} over to the rebuilt file: {reason}", path.display())]
    SwitchOver {
        view: ViewName,
        path: PathBuf,
        reason: String,
    },

    /// The view is not run by this projector (see [`crate::ViewSelection`]).
    #[error("the {0} view is not run by this projector")]
    NotRunning(ViewName),

    /// A rebuild of the view is already in progress.
    #[error("a rebuild of the {0} view is already running")]
    RebuildRunning(ViewName),

    /// The projector stopped (shut down, or one of its parts ended unexpectedly).
    #[error("projector stopped: {0}")]
    Stopped(String),
}

impl ProjectorError {
    /// A view file write that the disk may take later: full, read-only, failing I/O, or the
    /// file locked for too long. The view thread tries such a commit again rather than stop,
    /// so the views go on by themselves once the disk recovers.
    pub(crate) fn is_transient_write(&self) -> bool {
        use rusqlite::ErrorCode;
        matches!(
            self,
            ProjectorError::Sqlite { source, .. } if matches!(
                source.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::ReadOnly
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::CannotOpen
                        | ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                )
            )
        )
    }

    pub(crate) fn sqlite(path: impl Into<PathBuf>, source: rusqlite::Error) -> ProjectorError {
        ProjectorError::Sqlite {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ProjectorError {
        ProjectorError::Io {
            path: path.into(),
            source,
        }
    }
}

/// [`crate::ViewHandle::wait_for`] gave up: the view had not reached the position in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the views had not reached position {wanted} in time (they are at {reached:?})")]
pub struct WaitTimeout {
    pub wanted: GlobalPosition,
    pub reached: Option<GlobalPosition>,
}
