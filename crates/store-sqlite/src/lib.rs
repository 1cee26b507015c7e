//! Embedded SQLite event store: the zero set-up default, durable on acknowledge.
//!
//! One file holds every stream. The design, and why:
//!
//! - **One writer thread** owns the only write connection and is fed by a bounded channel. It
//!   drains everything queued (up to [`MAX_BATCH`] appends) and commits it in one transaction
//!   (group commit), so one `fsync` covers hundreds of appends; it waits briefly for the
//!   writers it has just answered, so that they join the next group instead of missing it,
//!   but a lone append is committed at once. Each append still succeeds or fails on its own:
//!   versions are checked against the writer's cache of stream ids and last versions before
//!   inserting, and an append of several statements (a batch, or a new stream's first
//!   events) runs inside a SAVEPOINT so a refusal undoes only that append. Callers are
//!   answered through a oneshot only after the COMMIT returned: an acknowledged append is in
//!   the WAL and synced (`synchronous=FULL`), so it survives `kill -9`. Checkpoints (copying
//!   the WAL into the file) run on a thread of their own.
//! - **Layout**: events are keyed by position; stream names are stored once, in a table of
//!   streams. A group commit writes the events' pages one after the other, and at most a
//!   slice of the stream index: where each stream's versions are is indexed behind the log.
//!   The writer keeps the entries of the latest events in memory and moves them into
//!   `stream_index` once [`INDEX_BATCH`] have gathered (see `index.rs` and `schema.rs` for
//!   why, and the measurements).
//! - **Readers** use a small pool of read-only connections on blocking threads. In WAL mode
//!   they read the last committed snapshot and never wait for the writer.
//! - **Subscriptions** page through `read_all`, then wait for the writer's head notification
//!   or a short poll timer, whichever comes first; the timer is what lets another process
//!   following the same file see new events live.
//! - **Positions** are the table's rowid. A single write lock serialises transactions and
//!   rowids grow within each one, so positions increase in commit order and a reader never
//!   sees a smaller position appear after a larger one. Nothing is ever deleted, so a
//!   committed position is never given to another event.
//! - **Format**: `PRAGMA application_id` marks the file as a ledger store and
//!   `PRAGMA user_version` holds [`FORMAT_VERSION`]. A file from a newer format (or from
//!   format 1, which was never deployed) is refused with [`StoreError::Incompatible`] before
//!   anything in it is written.
//!
//! # Event ids
//!
//! Idempotency and conflict rules are exactly those of [`ledger_store::conformance`]: a
//! retry is recognised by the events stored in the slots (versions) it aims for. Same id,
//! type and payload in every slot: the stored outcome. The same id as the event in its slot
//! with another type or payload: [`StoreError::EventIdConflict`]. Anything else at a version
//! that is not the stream's: [`StoreError::WrongExpectedVersion`].
//!
//! Event ids are not unique in the file, and the store keeps no index of them: an id is only
//! ever compared with the event in the slot an append aims for, so the same id in another
//! stream, or at another version of its own stream, is stored like any other event. The
//! ledger derives every event id from (stream, command, index), so ids of different streams
//! do not collide, and a command already in its stream is found by the command handler,
//! which decides on the stream's events before appending at its last version. An index of
//! ids would cost every append a write to a random page, for a check nothing relies on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use ledger_store::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};
use tokio::sync::{mpsc, oneshot, watch};

mod checkpoint;
mod index;
mod reader;
mod recent;
mod schema;
mod subscription;
mod validate;
mod writer;

pub use index::{INDEX_BATCH, INDEX_SLICE};
pub use schema::{APPLICATION_ID, FORMAT_VERSION};
pub use writer::{MAX_BATCH, QUEUE_CAPACITY};

use index::SharedTail;
use reader::ReaderPool;
use recent::Recent;
use subscription::SqliteSubscription;

/// The SQLite event store. Appends go through one writer thread; reads use pooled read-only
/// connections. Dropping the store stops the writer once its queue is drained; use
/// [`SqliteStore::close`] to wait for that.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    readers: Arc<ReaderPool>,
    /// `None` for a store opened with [`SqliteStore::open_read_only`].
    writer: Option<WriterHandle>,
    /// The writer's memory of the events after the stream index's mark; `None` when
    /// read-only (reads then scan the log after the mark).
    tail: Option<Arc<SharedTail>>,
}

#[derive(Debug)]
struct WriterHandle {
    requests: mpsc::Sender<writer::Request>,
    head: watch::Receiver<Option<GlobalPosition>>,
    thread: JoinHandle<()>,
    /// What the writer committed last, for this process's subscriptions.
    recent: Arc<Recent>,
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file if needed. Refuses a file that is not a
    /// ledger store or was written by a newer, incompatible format, without changing it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with_index_batch(path, INDEX_BATCH)
    }

    /// [`SqliteStore::open`], moving the log's tail into the stream index once
    /// `index_batch` events have gathered instead of [`INDEX_BATCH`]: for tests that need
    /// to cross that step often. The file is the same either way.
    pub fn open_with_index_batch(
        path: &Path,
        index_batch: usize,
    ) -> Result<SqliteStore, StoreError> {
        let connection = schema::open_writer(path)?;
        let readers = Arc::new(ReaderPool::new(path.to_owned()));
        let head = readers.with_connection(reader::head_position)?;
        let recent = Arc::new(Recent::new(recent::RECENT_EVENTS_MAX));
        let tail = Arc::new(SharedTail::default());
        let (requests, head, thread) = writer::spawn(
            connection,
            path,
            head,
            Arc::clone(&recent),
            Arc::clone(&tail),
            index_batch,
        )?;
        Ok(SqliteStore {
            path: path.to_owned(),
            readers,
            writer: Some(WriterHandle {
                requests,
                head,
                thread,
                recent,
            }),
            tail: Some(tail),
        })
    }

    /// Opens an existing store for reading only (for example a projector in another process
    /// following the file). Appends fail with [`StoreError::Invalid`]; subscriptions see new
    /// events by polling the file.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Unavailable(format!(
                "no event store at {}",
                path.display()
            )));
        }
        schema::check_compatible(path)?;
        let readers = Arc::new(ReaderPool::new(path.to_owned()));
        // Fail now, not on the first read, if the file cannot be read.
        readers.with_connection(reader::head_position)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            readers,
            writer: None,
            tail: None,
        })
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting appends, waits until every queued append is committed and answered,
    /// and closes the file's write connection.
    pub async fn close(self) -> Result<(), StoreError> {
        let SqliteStore {
            writer, readers, ..
        } = self;
        drop(readers);
        let Some(WriterHandle {
            requests, thread, ..
        }) = writer
        else {
            return Ok(());
        };
        // The writer thread exits when its channel is closed and drained.
        drop(requests);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|error| StoreError::Unavailable(format!("closing the store: {error}")))?
            .map_err(|_| StoreError::Unavailable("the writer thread panicked".into()))
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate::append(stream, expected, &events)?;
        let Some(writer) = &self.writer else {
            return Err(StoreError::Invalid(format!(
                "{} is opened read-only",
                self.path.display()
            )));
        };
        let (reply, answer) = oneshot::channel();
        let request = writer::Request {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        writer
            .requests
            .send(request)
            .await
            .map_err(|_| writer::stopped())?;
        answer.await.map_err(|_| writer::stopped())?
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate::stream_to_read(stream)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stream = stream.to_owned();
        let tail = self.tail.clone();
        self.readers
            .run(move |connection| {
                reader::read_stream(connection, tail.as_deref(), &stream, from_version, limit)
            })
            .await
    }

    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.readers
            .run(move |connection| reader::read_all(connection, after, limit))
            .await
    }

    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let head = self.writer.as_ref().map(|writer| writer.head.clone());
        let recent = self.writer.as_ref().map(|writer| {
            writer.recent.note_subscriber();
            Arc::clone(&writer.recent)
        });
        Ok(Box::new(SqliteSubscription::new(
            Arc::clone(&self.readers),
            head,
            recent,
            after,
        )))
    }

    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError> {
        // Asked of the file rather than the writer, so that appends of other processes count.
        self.readers.run(reader::head_position).await
    }

    fn wants_attachments(&self) -> bool {
        // Only the writer's window hands attachments on, and only to what subscribed here.
        self.writer
            .as_ref()
            .is_some_and(|writer| writer.recent.has_subscribers())
    }
}
