//! The writer thread: owns the write connection and commits queued appends in groups.
//!
//! Each loop takes everything queued (up to [`MAX_BATCH`] appends), applies the appends one
//! by one inside a single transaction and commits once, so one WAL sync covers the whole
//! group. While the transaction is open it also takes in appends still arriving, and waits
//! briefly for the writers the previous group answered: without that, those writers would
//! always miss the commit that has just started and wait for the next one, halving the
//! group size (measured: 24,900 against 37,800 appends/s with 16 writers). It only waits
//! while the group is smaller than the previous one (half of it, when that was large: see
//! [`WAIT_FOR_HALF_FROM`]): a lone writer's append is committed as soon as it is applied.
//!
//! An append that conflicts is answered with its error and leaves no trace, without
//! affecting its neighbours; only a failure of the transaction itself (I/O, disk full) fails
//! the whole group, and then nothing of it was written. Answers are sent after the COMMIT,
//! all at once.
//!
//! The hot path is a few prepared statements kept for the writer's lifetime (no statement
//! cache lookups) and the stream cache: an append to a known stream is one `INSERT`, with
//! no allocation besides SQLite's copy of the bound values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ledger_store::{
    AppendOutcome, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent, StoreError,
    StreamVersion,
};
use rusqlite::{params, Connection, ErrorCode, Statement};
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{self, Checkpointer};
use crate::index::{self, Entry, SharedTail, WriterIndex};
use crate::recent::Recent;

/// Most appends committed in one transaction. Bounds the latency of the appends at the back
/// of a long queue and the memory a transaction holds.
pub const MAX_BATCH: usize = 1024;

/// Appends waiting for the writer. Callers beyond this wait to enqueue (backpressure).
pub const QUEUE_CAPACITY: usize = 8192;

/// Streams whose id and last version the writer remembers. Past this the cache starts over:
/// a miss costs two lookups, and the cache must not grow with the number of accounts.
const STREAM_CACHE_LIMIT: usize = 200_000;

/// One queued append and where to send its answer.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) stream: String,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The answer to an append whose writer is gone.
pub(crate) fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped; nothing was written".into())
}

/// Starts the writer thread on `connection`. Returns the queue to send appends to, the
/// head position it publishes after each commit, and the thread (which ends once every
/// sender is dropped and the queue is drained).
#[allow(clippy::type_complexity)]
pub(crate) fn spawn(
    connection: Connection,
    path: &Path,
    head: Option<GlobalPosition>,
    recent: Arc<Recent>,
    tail: Arc<SharedTail>,
    index_batch: usize,
) -> Result<
    (
        mpsc::Sender<Request>,
        watch::Receiver<Option<GlobalPosition>>,
        JoinHandle<()>,
    ),
    StoreError,
> {
    let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
    let (head_sender, head_receiver) = watch::channel(head);
    let checkpointer = Checkpointer::start(path).map_err(StoreError::Unavailable)?;
    // Statements borrow the connection, so they are prepared on the thread; the store is
    // not opened unless they were.
    let (ready, prepared) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("ledger-sqlite-writer".into())
        .spawn(move || {
            let started = Statements::prepare(&connection).and_then(|mut statements| {
                let data_version = statements.data_version()?;
                let mut index = WriterIndex::new(tail, index_batch);
                index.load(&connection)?;
                Ok(Writer {
                    connection: &connection,
                    statements,
                    checkpointer,
                    streams: HashMap::default(),
                    data_version,
                    head: head_sender,
                    recent,
                    committing: Vec::new(),
                    index,
                })
            });
            match started {
                Ok(writer) => {
                    let _ = ready.send(Ok(()));
                    writer.run(queue);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            }
        })
        .map_err(|error| StoreError::Unavailable(format!("starting the writer thread: {error}")))?;
    match prepared.recv() {
        Ok(Ok(())) => Ok((requests, head_receiver, thread)),
        Ok(Err(error)) => Err(StoreError::Unavailable(format!(
            "preparing the writer: {error}"
        ))),
        Err(_) => Err(StoreError::Unavailable(
            "the writer thread ended while starting".into(),
        )),
    }
}

/// From this many returning writers on, a group commit waits for half of them only. Many
/// writers come back over a long tail (each decides its next command first, and two cores
/// share that work with this thread): waiting for the last ones stalled the sync that the
/// rest could overlap with. Measured in one session on two cores: 256 tasks charging 10,000
/// accounts through the command handler, 95,000-97,000 charges/s against 85,000-86,000 when
/// waiting for all; the store alone at 64 and 256 writers, 103,000 and 139,000 appends/s
/// against 99,000 and 135,000. At 16 writers or fewer, waiting for all stays better (54,900
/// against 52,200 appends/s at 16): they are back within microseconds.
const WAIT_FOR_HALF_FROM: usize = 64;

/// Bounds of how long a group commit waits for the writers the previous one answered before
/// committing without them: half the previous group's duration, so that waiting can never
/// cost more than it saves.
const MIN_GATHER_WINDOW: Duration = Duration::from_micros(50);
const MAX_GATHER_WINDOW: Duration = Duration::from_millis(2);

/// Longest nap while gathering: the appends that arrive meanwhile are taken in together.
const GATHER_NAP: Duration = Duration::from_micros(150);

/// The appends a group commit takes in while its transaction is open.
struct Intake<'a> {
    queue: &'a mut mpsc::Receiver<Request>,
    /// How many appends the commit should carry: it waits for more only while short of this.
    expected: usize,
    /// How long it may wait for them.
    deadline: Instant,
}

impl Intake<'_> {
    /// Adds appends that have arrived to `batch`; when none has and the batch is short of
    /// the expected size, naps (at most [`GATHER_NAP`]) and looks again, until the deadline.
    /// False when nothing was added.
    fn take_more(&mut self, batch: &mut Vec<Request>) -> bool {
        // Polled between naps, never woken: see below.
        let mut context = Context::from_waker(Waker::noop());
        while batch.len() < MAX_BATCH {
            match self
                .queue
                .poll_recv_many(&mut context, batch, MAX_BATCH - batch.len())
            {
                Poll::Ready(taken) => return taken > 0,
                Poll::Pending => {
                    let now = Instant::now();
                    if batch.len() >= self.expected || now >= self.deadline {
                        return false;
                    }
                    // Naps rather than parks: woken by every append that arrived, the
                    // writer took them in one at a time, a context switch for it and a
                    // wake-up call for the appender each (issue 18).
                    std::thread::sleep((self.deadline - now).min(GATHER_NAP));
                }
            }
        }
        false
    }
}

/// The statements every group commit or append runs, prepared once.
struct Statements<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    /// `PRAGMA data_version` changes when another connection (process) commits to the file.
    data_version: Statement<'c>,
    insert: Statement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(connection: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            begin: connection.prepare("BEGIN IMMEDIATE")?,
            commit: connection.prepare("COMMIT")?,
            data_version: connection.prepare("PRAGMA data_version")?,
            insert: connection.prepare(
                "INSERT INTO events (stream_id, version, event_id, event_type, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
        })
    }

    fn data_version(&mut self) -> rusqlite::Result<i64> {
        self.data_version.query_row([], |row| row.get(0))
    }
}

/// Versions and positions as SQLite integers. Validation keeps every stored or compared
/// value below `i64::MAX`; saturating keeps a bug from wrapping into a negative number.
fn sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Why inserting an append's events stopped.
enum InsertError {
    /// A uniqueness rule refused an insert: the file holds what the writer did not expect.
    Constraint(rusqlite::Error),
    /// Anything else: the transaction cannot go on.
    Fatal(rusqlite::Error),
}

impl From<rusqlite::Error> for InsertError {
    fn from(error: rusqlite::Error) -> Self {
        if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
            InsertError::Constraint(error)
        } else {
            InsertError::Fatal(error)
        }
    }
}

/// An error that fails the whole group commit (everything in it is rolled back).
type Fatal = rusqlite::Error;

/// The answer to one append.
type Answer = Result<AppendOutcome, StoreError>;

/// What the writer knows of a stream.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Its row in `streams`; `None` while it does not exist.
    id: Option<i64>,
    /// Its last version (0 when it does not exist).
    version: StreamVersion,
}

struct Writer<'c> {
    connection: &'c Connection,
    statements: Statements<'c>,
    checkpointer: Checkpointer,
    /// Ids and last versions of recently written streams, exact within a transaction: they
    /// are updated as appends apply, dropped when a transaction fails, and dropped when
    /// another connection committed since (`data_version`).
    streams: HashMap<String, Stream, foldhash::quality::RandomState>,
    data_version: i64,
    head: watch::Sender<Option<GlobalPosition>>,
    /// Where committed events go for this process's subscribers.
    recent: Arc<Recent>,
    /// The events the open transaction inserted, in position order: for `recent` once it
    /// commits, and the last one's position is the new head.
    committing: Vec<RecordedEvent>,
    /// Where streams' versions are: the index behind the log and its tail.
    index: WriterIndex,
}

impl Writer<'_> {
    fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut answers = Vec::with_capacity(MAX_BATCH);
        let mut expected = 1;
        let mut window = MIN_GATHER_WINDOW;
        while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            let started = Instant::now();
            let mut intake = Intake {
                queue: &mut queue,
                expected,
                deadline: started + window,
            };
            self.commit(&mut batch, &mut answers, &mut intake);
            // The writers about to be answered usually append again at once, and the appends
            // that queued during this commit are waiting: the next commit should carry them
            // all rather than leave the returning writers for the one after. Counted before
            // answering, so that a writer that is back already is not counted twice.
            let returning = (queue.len() + batch.len()).min(MAX_BATCH);
            expected = if returning >= WAIT_FOR_HALF_FROM {
                returning.div_ceil(2)
            } else {
                returning
            };
            window = (started.elapsed() / 2).clamp(MIN_GATHER_WINDOW, MAX_GATHER_WINDOW);
            for (request, answer) in batch.drain(..).zip(answers.drain(..)) {
                // A caller that stopped waiting cannot be told; its append stands.
                let _ = request.reply.send(answer);
            }
            // Between groups, after answering: the copy delays no append already made.
            if self.checkpointer.restart_due() {
                if let Err(error) = checkpoint::checkpoint(self.connection) {
                    tracing::warn!(%error, "checkpoint by the writer failed");
                }
            }
        }
        // Queue closed and drained: the connection closes when the thread ends.
    }

    /// Commits `batch` (and the appends `intake` adds to it) as one transaction, leaving one
    /// answer per request in `answers`.
    fn commit(
        &mut self,
        batch: &mut Vec<Request>,
        answers: &mut Vec<Answer>,
        intake: &mut Intake<'_>,
    ) {
        if let Err(error) = self.try_commit(batch, answers, intake) {
            // SQLite may already have rolled back (for example on a full disk).
            if !self.connection.is_autocommit() {
                if let Err(rollback) = self.connection.execute_batch("ROLLBACK") {
                    tracing::error!(%rollback, "rolling back a failed group commit");
                }
            }
            // Speculative ids and versions of the failed transaction must go.
            self.streams.clear();
            self.index.rolled_back();
            tracing::error!(%error, appends = batch.len(), "group commit failed, rolled back");
            let message = format!("the append was not written: {error}");
            answers.clear();
            answers.extend(
                batch
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(message.clone()))),
            );
        }
    }

    fn try_commit(
        &mut self,
        batch: &mut Vec<Request>,
        answers: &mut Vec<Answer>,
        intake: &mut Intake<'_>,
    ) -> Result<(), Fatal> {
        self.committing.clear();
        self.statements.begin.execute([])?;
        let version = self.statements.data_version()?;
        if version != self.data_version {
            // Another connection wrote: the cached versions and the tail may be stale.
            self.streams.clear();
            self.index.load(self.connection)?;
            self.data_version = version;
        }
        // Appends are applied as they arrive, so that waiting for the writers still on
        // their way overlaps with applying those already here.
        loop {
            for request in &mut batch[answers.len()..] {
                let answer = self.apply(request)?;
                answers.push(answer);
            }
            if !intake.take_more(batch) {
                break;
            }
        }
        self.index.before_commit(self.connection)?;
        self.statements.commit.execute([])?;
        self.index.committed();
        if let Some(head) = self.committing.last().map(|event| event.position) {
            // Before the head moves: a subscriber woken by it finds the events here.
            self.recent.committed(self.committing.drain(..));
            self.head.send_replace(Some(head));
            self.checkpointer.committed();
        }
        Ok(())
    }

    /// Applies one append inside the open transaction.
    fn apply(&mut self, request: &mut Request) -> Result<Answer, Fatal> {
        let base = request.expected.last_version();
        let stream = self.stream(&request.stream)?;
        if base != stream.version {
            return self.settle_mismatch(request, stream);
        }
        // One statement is atomic by itself. Several (a batch, or a new stream's row and its
        // first event) need a savepoint to undo the first ones if a later one is refused.
        let guarded = request.events.len() > 1 || stream.id.is_none();
        if guarded {
            self.execute("SAVEPOINT append")?;
        }
        match self.insert_all(&request.stream, stream.id, base, &request.events) {
            Ok((id, first, position)) => {
                if guarded {
                    self.execute("RELEASE append")?;
                }
                let last_version = base + request.events.len() as u64;
                // Inserted, the events are needed only as the committed events the
                // subscribers get: their bytes move there instead of being copied.
                let start = self.committing.len() - request.events.len();
                for (recorded, event) in self.committing[start..]
                    .iter_mut()
                    .zip(request.events.drain(..))
                {
                    recorded.event_type = event.event_type;
                    recorded.payload = event.payload;
                    recorded.attachment = event.attachment;
                }
                self.remember(
                    &request.stream,
                    Stream {
                        id: Some(id),
                        version: last_version,
                    },
                );
                Ok(Ok(AppendOutcome {
                    first_version: base + 1,
                    last_version,
                    position,
                    first_position: Some(first),
                }))
            }
            Err(InsertError::Constraint(error)) => {
                if guarded {
                    self.execute("ROLLBACK TO append")?;
                    self.execute("RELEASE append")?;
                }
                self.explain_refusal(request, error)
            }
            Err(InsertError::Fatal(error)) => Err(error),
        }
    }

    /// Inserts `events` as versions `base + 1 ..` of the stream (creating its row when `id`
    /// is `None`); returns the stream's id and the positions of the first and last events.
    fn insert_all(
        &mut self,
        name: &str,
        id: Option<i64>,
        base: StreamVersion,
        events: &[NewEvent],
    ) -> Result<(i64, GlobalPosition, GlobalPosition), InsertError> {
        let id = match id {
            Some(id) => id,
            None => {
                self.connection
                    .prepare_cached("INSERT INTO streams (name) VALUES (?1)")?
                    .execute([name])?;
                self.connection.last_insert_rowid()
            }
        };
        let start = self.committing.len();
        let index_start = self.index.pending_len();
        for (offset, event) in events.iter().enumerate() {
            let version = base + 1 + offset as u64;
            let inserted = self.statements.insert.execute(params![
                id,
                sql(version),
                &event.event_id.as_bytes()[..],
                event.event_type,
                event.payload,
            ]);
            if let Err(error) = inserted {
                // An insert refused half-way is undone, and so must be its events here.
                self.committing.truncate(start);
                self.index.undo_to(index_start);
                return Err(error.into());
            }
            let position = self.connection.last_insert_rowid();
            self.index.inserted(Entry {
                stream_id: id,
                version: sql(version),
                position,
            });
            self.committing.push(RecordedEvent {
                stream: name.to_owned(),
                version,
                position: unsigned(position),
                event_id: event.event_id,
                // Moved in by `apply` once every event of the append is inserted.
                event_type: String::new(),
                payload: Vec::new(),
                attachment: None,
            });
        }
        let appended = &self.committing[start..];
        let position = |event: Option<&RecordedEvent>| event.map_or(0, |event| event.position);
        Ok((id, position(appended.first()), position(appended.last())))
    }

    /// Answers an append whose insert broke a uniqueness rule although the cache said the
    /// stream was as expected: the cache was wrong, so decide on what is stored. Since format
    /// 3 the only such rule is a stream's name (`events` has no unique index: the versions
    /// the writer checks are the rule).
    fn explain_refusal(
        &mut self,
        request: &Request,
        error: rusqlite::Error,
    ) -> Result<Answer, Fatal> {
        self.streams.remove(&request.stream);
        let stream = self.stream(&request.stream)?;
        if stream.version == request.expected.last_version() {
            // Refused although the slots are free: the file is damaged.
            return Err(error);
        }
        self.settle_mismatch(request, stream)
    }

    /// Answers an append whose expected version is not the stream's: the stored outcome if
    /// it is a retry of stored events, else the conflict (see the conformance rules).
    fn settle_mismatch(&mut self, request: &Request, stream: Stream) -> Result<Answer, Fatal> {
        let wrong_version = || {
            Ok(Err(StoreError::WrongExpectedVersion {
                stream: request.stream.clone(),
                expected: request.expected,
                actual: stream.version,
            }))
        };
        let base = request.expected.last_version();
        let Some(id) = stream.id else {
            return wrong_version();
        };
        if base >= stream.version {
            return wrong_version();
        }
        let slots = self
            .index
            .slots(self.connection, id, sql(base), request.events.len())?;
        let mut stored = self.connection.prepare_cached(
            "SELECT event_id, event_type, payload FROM events WHERE position = ?1",
        )?;
        let mut all_match = slots.len() == request.events.len();
        let mut position = 0;
        let mut first = None;
        for (new, &slot) in request.events.iter().zip(&slots) {
            let mut rows = stored.query([slot])?;
            let Some(row) = rows.next()? else {
                all_match = false;
                break;
            };
            if row.get_ref(0)?.as_blob()? != new.event_id.as_bytes() {
                all_match = false;
                continue;
            }
            if row.get_ref(1)?.as_str()? != new.event_type
                || row.get_ref(2)?.as_blob()? != new.payload
            {
                return Ok(Err(StoreError::EventIdConflict {
                    event_id: new.event_id,
                }));
            }
            position = slot;
            first = first.or(Some(position));
        }
        if !all_match {
            return wrong_version();
        }
        Ok(Ok(AppendOutcome::retried(
            base + 1,
            base + request.events.len() as u64,
            first.map(unsigned),
            unsigned(position),
        )))
    }

    /// The stream's id and last version, from the cache or the file.
    fn stream(&mut self, name: &str) -> Result<Stream, Fatal> {
        if let Some(&stream) = self.streams.get(name) {
            return Ok(stream);
        }
        let stream = match index::stream_id(self.connection, name)? {
            Some(id) => Stream {
                id: Some(id),
                version: self
                    .index
                    .stream_version(self.connection, id)?
                    .map_or(0, unsigned),
            },
            None => Stream {
                id: None,
                version: 0,
            },
        };
        self.remember(name, stream);
        Ok(stream)
    }

    fn remember(&mut self, name: &str, stream: Stream) {
        if let Some(known) = self.streams.get_mut(name) {
            *known = stream;
            return;
        }
        if self.streams.len() >= STREAM_CACHE_LIMIT {
            self.streams.clear();
        }
        self.streams.insert(name.to_owned(), stream);
    }

    fn execute(&self, sql: &str) -> rusqlite::Result<()> {
        self.connection.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}
