//! The writer task: commits a node's queued appends in groups, one transaction per group.
//!
//! Each loop takes everything queued (up to [`MAX_BATCH`] appends) and works out the group in
//! memory before anything is written: appends in queue order, each accepted when its
//! expected version is the stream's head (and then moving that head), else set aside as a
//! mismatch. Nothing refused is ever inserted, so a refused append cannot fail its
//! neighbours and no savepoints are needed. Two ways to commit a group:
//!
//! - **Fast path**, one round trip: `BEGIN`, the `append` statement, `COMMIT`, pipelined. The
//!   heads come from the writer's cache of heads it has committed or read (fetched without a
//!   lock for streams it does not know; a stream's first append at `NoStream` is assumed new).
//!   Any head once committed is a lower bound of the real one, since versions only grow: if
//!   another node has moved the stream on, the version the group inserts already exists and
//!   `UNIQUE (stream, version)` refuses it. The `append` statement takes the position lock
//!   itself, so the lock is held only for the insert and the commit, never across a round
//!   trip to this process.
//! - **Exact path**, when the group has a mismatch or the fast path hit the unique
//!   constraint: `BEGIN`, lock the position counter, read the heads (now exact: every writer
//!   takes the lock before inserting), then, for mismatches, one read of the stored events
//!   in their slots to tell an idempotent retry from a conflict; then the `append` statement
//!   and `COMMIT`.
//!
//! Statements are pipelined: tokio-postgres sends a request when its future is first polled,
//! and `join!(biased; ...)` polls them in order. Callers are answered only after COMMIT
//! returned. A failure before COMMIT fails the whole group with nothing written; a failure
//! of the connection while COMMIT was in flight fails it with an outcome nobody knows, which
//! a retry with the same event ids settles (the idempotency rules).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use ledger_store::{AppendOutcome, ExpectedVersion, NewEvent, StoreError, StreamVersion};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::error::{describe, pool_unavailable};
use crate::hooks::Hooks;
use crate::plan::{read_slots, Plan};
use crate::reader::{sql_int, unsigned};
use crate::schema::Sql;

/// Most appends committed in one transaction. Bounds the statement's size, the memory a
/// group holds, and the wait of the appends at the back of a long queue.
pub const MAX_BATCH: usize = 512;

/// Appends waiting for the writer. Callers beyond this wait to enqueue (backpressure).
pub const QUEUE_CAPACITY: usize = 8192;

/// Streams whose head the writer remembers. Past this the cache starts over: a miss costs
/// one read, and the cache must not grow with the number of accounts.
const HEAD_CACHE_LIMIT: usize = 100_000;

/// Bounds of how long a group waits for the appenders the previous one answered before
/// committing without them: half the previous group's duration, so that waiting can never
/// cost more than it saves. A lone appender's group (expected size 1) never waits.
const MIN_GATHER_WINDOW: Duration = Duration::from_micros(100);
const MAX_GATHER_WINDOW: Duration = Duration::from_millis(2);

/// Takes more queued appends into `batch` until it holds `expected` of them or `window` has
/// passed.
async fn gather(
    queue: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
    expected: usize,
    window: Duration,
) {
    let deadline = tokio::time::Instant::now() + window;
    while batch.len() < expected {
        let room = MAX_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, queue.recv_many(batch, room)).await {
            Ok(taken) if taken > 0 => {}
            // Closed (the store is closing) or out of time: commit what is here.
            _ => return,
        }
    }
}

/// One queued append and where to send its answer.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) stream: String,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// The answer to one append.
pub(crate) type Answer = Result<AppendOutcome, StoreError>;

/// The answer to an append whose writer is gone.
pub(crate) fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped; nothing was written".into())
}

/// Starts the writer task. It ends once every sender is dropped and the queue is drained.
pub(crate) fn spawn(
    pool: Pool,
    sql: Arc<Sql>,
    hooks: Arc<Hooks>,
) -> (mpsc::Sender<Request>, JoinHandle<()>) {
    let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
    let writer = Writer {
        pool,
        sql,
        hooks,
        heads: HashMap::new(),
    };
    (requests, tokio::spawn(writer.run(queue)))
}

/// How a group commit failed as a whole.
enum Failure {
    /// Nothing of the group was committed.
    NotWritten(tokio_postgres::Error),
    /// The connection failed while COMMIT was in flight: it may or may not have committed.
    Unknown(tokio_postgres::Error),
}

impl Failure {
    /// For a statement sent together with COMMIT: a refusal by the server aborted the
    /// transaction, but a broken connection leaves the COMMIT's fate open.
    fn in_commit(error: tokio_postgres::Error) -> Self {
        if error.as_db_error().is_some() {
            Failure::NotWritten(error)
        } else {
            Failure::Unknown(error)
        }
    }

    /// The fast path's guess of a head was stale: another writer has the version.
    fn is_stale_head(&self) -> bool {
        matches!(self, Failure::NotWritten(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION))
    }

    fn message(&self) -> String {
        match self {
            Failure::NotWritten(error) => {
                format!("the append was not written: {}", describe(error))
            }
            Failure::Unknown(error) => format!(
                "the connection failed while committing, so the append may or may not be \
                 written; retry it with the same event ids: {}",
                describe(error)
            ),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::NotWritten(error)
    }
}

struct Writer {
    pool: Pool,
    sql: Arc<Sql>,
    hooks: Arc<Hooks>,
    /// Heads this writer has committed or read: lower bounds of the real heads.
    heads: HashMap<String, StreamVersion>,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut expected = 1;
        let mut window = MIN_GATHER_WINDOW;
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            gather(&mut queue, &mut batch, expected, window).await;
            let started = Instant::now();
            let answers = self.group_commit(&batch).await;
            // The appenders about to be answered usually append again at once, and those
            // that queued during this commit are waiting: the next group should carry them
            // all rather than start with the first few back and leave the rest for the one
            // after (which halves the groups). Counted before answering, so that an appender
            // already back is not counted twice.
            expected = (queue.len() + batch.len()).min(MAX_BATCH);
            window = (started.elapsed() / 2).clamp(MIN_GATHER_WINDOW, MAX_GATHER_WINDOW);
            for (request, answer) in batch.drain(..).zip(answers) {
                // A caller that stopped waiting cannot be told; its append stands.
                let _ = request.reply.send(answer);
            }
        }
    }

    /// Commits `batch` as one transaction; one answer per request, in order.
    async fn group_commit(&mut self, batch: &[Request]) -> Vec<Answer> {
        let client = match self.pool.get().await {
            Ok(client) => client,
            Err(error) => {
                let message = match pool_unavailable("the append was not written", error) {
                    StoreError::Unavailable(message) => message,
                    other => other.to_string(),
                };
                return batch
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(message.clone())))
                    .collect();
            }
        };
        let committed = match self.fast_path(&client, batch).await {
            Ok(Some(plan)) => Ok(plan),
            Ok(None) => self.exact_path(&client, batch).await,
            Err(failure) if failure.is_stale_head() => self.exact_path(&client, batch).await,
            Err(failure) => Err(failure),
        };
        match committed {
            Ok(plan) => {
                self.remember(&plan.heads);
                plan.into_answers()
            }
            Err(failure) => {
                // The connection may be inside a transaction or broken: never use it again.
                drop(Object::take(client));
                let message = failure.message();
                tracing::error!(appends = batch.len(), %message, "group commit failed");
                batch
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(message.clone())))
                    .collect()
            }
        }
    }

    /// Commits the group in one round trip if the known heads say every append fits;
    /// `None` (nothing done) if some does not.
    async fn fast_path<'b>(
        &mut self,
        client: &Object,
        batch: &'b [Request],
    ) -> Result<Option<Plan<'b>>, Failure> {
        let mut heads = HashMap::new();
        let mut unknown = HashSet::new();
        for request in batch {
            let stream = request.stream.as_str();
            if heads.contains_key(stream) || unknown.contains(stream) {
                continue;
            }
            match self.heads.get(stream) {
                Some(&head) => {
                    heads.insert(stream.to_owned(), head);
                }
                // A first append at `NoStream` guesses that the stream is new.
                None if request.expected == ExpectedVersion::NoStream => {
                    heads.insert(stream.to_owned(), 0);
                }
                None => {
                    unknown.insert(stream);
                }
            }
        }
        if !unknown.is_empty() {
            let statement = client.prepare_cached(&self.sql.stream_heads).await?;
            let unknown: Vec<&str> = unknown.into_iter().collect();
            let mut read = HashMap::with_capacity(unknown.len());
            read_heads(client.query(&statement, &[&unknown]).await?, &mut read)?;
            self.remember(&read);
            heads.extend(read);
        }
        let mut plan = Plan::new(0, heads, batch.len());
        for (index, request) in batch.iter().enumerate() {
            plan.apply(index, request);
        }
        if !plan.mismatches.is_empty() {
            return Ok(None);
        }
        let last = self.write(client, &plan, true).await?;
        // Positions were counted from 0: the statement says where they really start.
        plan.shift_positions(last - plan.last_position);
        Ok(Some(plan))
    }

    /// Commits the group with heads read under the position lock.
    async fn exact_path<'b>(
        &mut self,
        client: &Object,
        batch: &'b [Request],
    ) -> Result<Plan<'b>, Failure> {
        let lock = client.prepare_cached(&self.sql.lock_position).await?;
        let head_query = client.prepare_cached(&self.sql.stream_heads).await?;
        let mut seen = HashSet::with_capacity(batch.len());
        let names: Vec<&str> = batch
            .iter()
            .map(|request| request.stream.as_str())
            .filter(|name| seen.insert(*name))
            .collect();
        let head_params: [&(dyn ToSql + Sync); 1] = [&names];
        // The head read is a statement of its own after the lock, so its snapshot holds
        // every append committed before the lock was granted.
        let (begun, locked, head_rows) = tokio::join!(
            biased;
            client.batch_execute("BEGIN"),
            client.query_one(&lock, &[]),
            client.query(&head_query, &head_params),
        );
        begun?;
        let last_position = unsigned(locked?.try_get(0)?);
        let mut heads = HashMap::with_capacity(names.len());
        read_heads(head_rows?, &mut heads)?;

        let mut plan = Plan::new(last_position, heads, batch.len());
        for (index, request) in batch.iter().enumerate() {
            plan.apply(index, request);
        }
        if !plan.mismatches.is_empty() {
            let stored = read_slots(client, &self.sql, batch, &plan).await?;
            plan.settle_mismatches(batch, &stored);
        }
        if plan.rows.streams.is_empty() {
            // Refusals and retries only: nothing to write.
            client.batch_execute("ROLLBACK").await?;
            return Ok(plan);
        }
        let last = self.write(client, &plan, false).await?;
        if last != plan.last_position {
            tracing::error!(
                expected = plan.last_position,
                got = last,
                "the position counter moved while locked: something writes without the lock"
            );
        }
        Ok(plan)
    }

    /// Inserts the plan's rows and commits (opening the transaction first if `begin`);
    /// returns the position of the last row.
    async fn write(&self, client: &Object, plan: &Plan<'_>, begin: bool) -> Result<u64, Failure> {
        let append = client.prepare_cached(&self.sql.append).await?;
        let rows = &plan.rows;
        let count = sql_int(rows.streams.len() as u64);
        let params: [&(dyn ToSql + Sync); 7] = [
            &count,
            &rows.streams,
            &rows.versions,
            &rows.ids,
            &rows.types,
            &rows.payloads,
            &self.sql.schema,
        ];
        let open = async {
            if begin {
                client.batch_execute("BEGIN").await
            } else {
                Ok(())
            }
        };
        if self.hooks.armed() {
            // Test-only: everything but the COMMIT, then wait for the test's signal.
            let (opened, appended) = tokio::join!(biased; open, client.query_one(&append, &params));
            opened?;
            let last = unsigned(appended?.try_get(0)?);
            self.hooks.hold(last).await;
            client
                .batch_execute("COMMIT")
                .await
                .map_err(Failure::in_commit)?;
            return Ok(last);
        }
        let (opened, appended, committed) = tokio::join!(
            biased;
            open,
            client.query_one(&append, &params),
            client.batch_execute("COMMIT"),
        );
        // After a failed statement the transaction is aborted and COMMIT answers ROLLBACK
        // without an error: the statements decide, before the COMMIT's own result.
        opened?;
        let last = appended.map_err(Failure::in_commit)?.try_get(0)?;
        committed.map_err(Failure::in_commit)?;
        Ok(unsigned(last))
    }

    /// Records heads that are committed (or were read), keeping the larger of what is known.
    fn remember(&mut self, heads: &HashMap<String, StreamVersion>) {
        if self.heads.len() + heads.len() > HEAD_CACHE_LIMIT {
            self.heads.clear();
        }
        for (stream, &head) in heads {
            let known = self.heads.entry(stream.clone()).or_insert(head);
            *known = (*known).max(head);
        }
    }
}

fn read_heads(
    rows: Vec<tokio_postgres::Row>,
    heads: &mut HashMap<String, StreamVersion>,
) -> Result<(), tokio_postgres::Error> {
    for row in rows {
        let name: String = row.try_get(0)?;
        let version: Option<i64> = row.try_get(1)?;
        heads.insert(name, version.map_or(0, unsigned));
    }
    Ok(())
}
