//! The writer task: commits a node's queued appends in groups, one transaction per group.
//!
//! Each loop takes everything queued (up to [`MAX_BATCH`] appends) and runs:
//!
//! 1. one round trip: `BEGIN`, lock the position counter (`SELECT ... FOR UPDATE`), and read
//!    the last version of every stream the group touches. The head read is a statement of
//!    its own after the lock, so its snapshot includes every append committed before the lock
//!    was granted; and no other writer can insert until this transaction ends. So the heads
//!    are exact for the whole transaction.
//! 2. in memory, the appends in queue order: an append whose expected version is the head
//!    takes the next versions and positions and moves the head; any other is a mismatch.
//!    Nothing is inserted yet, so a refused append never disturbs its neighbours (no
//!    savepoints, no failed statements).
//! 3. only if there are mismatches, one round trip reading the stored events in their slots,
//!    to tell an idempotent retry from a conflict (slots this same group fills are checked
//!    in memory).
//! 4. one round trip: a single `INSERT ... SELECT FROM unnest(...)` of every accepted event,
//!    the counter update, `pg_notify`, and `COMMIT`.
//!
//! Statements are pipelined: tokio-postgres sends each request when its future is first
//! polled, and `join!(biased; ...)` polls them in order, so a group costs two round trips
//! plus the commit's WAL flush, whatever its size. Callers are answered only after COMMIT
//! returned. A failure before COMMIT fails the whole group with nothing written; a failure of
//! the connection while COMMIT was in flight fails it with an outcome nobody knows, which a
//! retry with the same event ids settles (the idempotency rules).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use ledger_store::{AppendOutcome, ExpectedVersion, NewEvent, StoreError, StreamVersion};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::error::{describe, pool_unavailable};
use crate::hooks::Hooks;
use crate::reader::{sql_int, unsigned};
use crate::schema::Sql;

/// Most appends committed in one transaction. Bounds the statement's size, the memory a
/// group holds, and the wait of the appends at the back of a long queue.
pub const MAX_BATCH: usize = 512;

/// Appends waiting for the writer. Callers beyond this wait to enqueue (backpressure).
pub const QUEUE_CAPACITY: usize = 8192;

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
    let task = tokio::spawn(run(queue, pool, sql, hooks));
    (requests, task)
}

async fn run(mut queue: mpsc::Receiver<Request>, pool: Pool, sql: Arc<Sql>, hooks: Arc<Hooks>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Appends that queue while a group commits form the next group: no timer is needed for
    // groups to grow with the load.
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let answers = group_commit(&pool, &sql, &hooks, &batch).await;
        for (request, answer) in batch.drain(..).zip(answers) {
            // A caller that stopped waiting cannot be told; its append stands.
            let _ = request.reply.send(answer);
        }
    }
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

/// Commits `batch` as one transaction; one answer per request, in order.
async fn group_commit(pool: &Pool, sql: &Sql, hooks: &Hooks, batch: &[Request]) -> Vec<Answer> {
    let client = match pool.get().await {
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
    match try_group_commit(&client, sql, hooks, batch).await {
        Ok(answers) => answers,
        Err(failure) => {
            // The connection may be inside a transaction or broken: never hand it out again.
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

async fn try_group_commit(
    client: &Object,
    sql: &Sql,
    hooks: &Hooks,
    batch: &[Request],
) -> Result<Vec<Answer>, Failure> {
    let lock = client.prepare_cached(&sql.lock_position).await?;
    let heads = client.prepare_cached(&sql.stream_heads).await?;
    let mut seen = HashSet::with_capacity(batch.len());
    let names: Vec<&str> = batch
        .iter()
        .map(|request| request.stream.as_str())
        .filter(|name| seen.insert(*name))
        .collect();
    let head_params: [&(dyn ToSql + Sync); 1] = [&names];
    let (begun, locked, head_rows) = tokio::join!(
        biased;
        client.batch_execute("BEGIN"),
        client.query_one(&lock, &[]),
        client.query(&heads, &head_params),
    );
    begun?;
    let last_position = unsigned(locked?.try_get(0)?);
    let mut stream_heads = HashMap::with_capacity(names.len());
    for row in head_rows? {
        let name: String = row.try_get(0)?;
        let version: Option<i64> = row.try_get(1)?;
        stream_heads.insert(name, version.map_or(0, unsigned));
    }

    let mut plan = Plan::new(last_position, stream_heads, batch.len());
    for (index, request) in batch.iter().enumerate() {
        plan.apply(index, request);
    }
    if !plan.mismatches.is_empty() {
        let stored = read_slots(client, sql, batch, &plan).await?;
        plan.settle_mismatches(batch, &stored);
    }

    if plan.rows.positions.is_empty() {
        // Refusals and retries only: nothing to write.
        client.batch_execute("ROLLBACK").await?;
        return Ok(plan.into_answers());
    }
    let insert = client.prepare_cached(&sql.insert).await?;
    let set_position = client.prepare_cached(&sql.set_position).await?;
    let notify = client.prepare_cached(&sql.notify).await?;
    let rows = &plan.rows;
    let new_last = sql_int(plan.last_position);
    let set_params: [&(dyn ToSql + Sync); 1] = [&new_last];
    let notify_params: [&(dyn ToSql + Sync); 1] = [&sql.schema];
    let insert_params: [&(dyn ToSql + Sync); 6] = [
        &rows.positions,
        &rows.streams,
        &rows.versions,
        &rows.ids,
        &rows.types,
        &rows.payloads,
    ];
    if hooks.armed() {
        // Test-only path: everything but the COMMIT, then wait for the test's signal.
        let (inserted, moved, notified) = tokio::join!(
            biased;
            client.execute(&insert, &insert_params),
            client.execute(&set_position, &set_params),
            client.execute(&notify, &notify_params),
        );
        inserted?;
        moved?;
        notified?;
        hooks.hold(plan.last_position).await;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(Failure::in_commit)?;
        return Ok(plan.into_answers());
    }
    let (inserted, moved, notified, committed) = tokio::join!(
        biased;
        client.execute(&insert, &insert_params),
        client.execute(&set_position, &set_params),
        client.execute(&notify, &notify_params),
        client.batch_execute("COMMIT"),
    );
    // After a failed statement the transaction is aborted and COMMIT answers ROLLBACK
    // without an error: the statements decide, before the COMMIT's own result.
    inserted.map_err(Failure::in_commit)?;
    moved.map_err(Failure::in_commit)?;
    notified.map_err(Failure::in_commit)?;
    committed.map_err(Failure::in_commit)?;
    Ok(plan.into_answers())
}

/// An event in a slot, stored or about to be.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    position: u64,
    event_id: Uuid,
    event_type: &'a str,
    payload: &'a [u8],
}

/// The accepted events as the parallel arrays the insert takes.
#[derive(Debug, Default)]
struct Rows<'b> {
    positions: Vec<i64>,
    streams: Vec<&'b str>,
    versions: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'b str>,
    payloads: Vec<&'b [u8]>,
}

/// A group commit worked out in memory before anything is written.
struct Plan<'b> {
    /// The last position handed out so far.
    last_position: u64,
    /// Every touched stream's last version, moved by the appends accepted so far.
    heads: HashMap<String, StreamVersion>,
    rows: Rows<'b>,
    /// Slots filled by this group, so a retry within the group is recognised.
    filled: HashMap<(&'b str, StreamVersion), Slot<'b>>,
    answers: Vec<Option<Answer>>,
    /// Appends whose expected version did not match: (index in the batch, the stream's
    /// last version at their turn).
    mismatches: Vec<(usize, StreamVersion)>,
}

impl<'b> Plan<'b> {
    fn new(last_position: u64, heads: HashMap<String, StreamVersion>, size: usize) -> Self {
        Self {
            last_position,
            heads,
            rows: Rows::default(),
            filled: HashMap::new(),
            answers: (0..size).map(|_| None).collect(),
            mismatches: Vec::new(),
        }
    }

    fn apply(&mut self, index: usize, request: &'b Request) {
        let head = self.heads.get(&request.stream).copied().unwrap_or(0);
        let base = request.expected.last_version();
        if base != head {
            self.mismatches.push((index, head));
            return;
        }
        let stream = request.stream.as_str();
        for (offset, event) in request.events.iter().enumerate() {
            let version = base + 1 + offset as u64;
            self.last_position += 1;
            self.rows.positions.push(sql_int(self.last_position));
            self.rows.streams.push(stream);
            self.rows.versions.push(sql_int(version));
            self.rows.ids.push(event.event_id);
            self.rows.types.push(&event.event_type);
            self.rows.payloads.push(&event.payload);
            self.filled.insert(
                (stream, version),
                Slot {
                    position: self.last_position,
                    event_id: event.event_id,
                    event_type: &event.event_type,
                    payload: &event.payload,
                },
            );
        }
        let last_version = base + request.events.len() as u64;
        self.heads.insert(request.stream.clone(), last_version);
        self.answers[index] = Some(Ok(AppendOutcome {
            first_version: base + 1,
            last_version,
            position: self.last_position,
        }));
    }

    /// The stored slots the mismatched appends aim at (those this group fills excluded),
    /// as (stream, version) arrays.
    fn stored_slots_wanted(&self, batch: &'b [Request]) -> (Vec<&'b str>, Vec<i64>) {
        let mut streams = Vec::new();
        let mut versions = Vec::new();
        for &(index, actual) in &self.mismatches {
            let request = &batch[index];
            let base = request.expected.last_version();
            let last_slot = (base + request.events.len() as u64).min(actual);
            for version in base + 1..=last_slot {
                if !self
                    .filled
                    .contains_key(&(request.stream.as_str(), version))
                {
                    streams.push(request.stream.as_str());
                    versions.push(sql_int(version));
                }
            }
        }
        (streams, versions)
    }

    fn settle_mismatches(&mut self, batch: &'b [Request], stored: &StoredSlots) {
        for &(index, actual) in &self.mismatches {
            let answer = settle(&batch[index], actual, |version| {
                let key = (batch[index].stream.as_str(), version);
                self.filled.get(&key).copied().or_else(|| {
                    stored
                        .get(&(batch[index].stream.clone(), version))
                        .map(StoredSlot::as_slot)
                })
            });
            self.answers[index] = Some(answer);
        }
    }

    fn into_answers(self) -> Vec<Answer> {
        self.answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(stopped())))
            .collect()
    }
}

/// A stored event read back to settle a mismatch.
#[derive(Debug)]
struct StoredSlot {
    position: u64,
    event_id: Uuid,
    event_type: String,
    payload: Vec<u8>,
}

impl StoredSlot {
    fn as_slot(&self) -> Slot<'_> {
        Slot {
            position: self.position,
            event_id: self.event_id,
            event_type: &self.event_type,
            payload: &self.payload,
        }
    }
}

type StoredSlots = HashMap<(String, StreamVersion), StoredSlot>;

async fn read_slots(
    client: &Object,
    sql: &Sql,
    batch: &[Request],
    plan: &Plan<'_>,
) -> Result<StoredSlots, tokio_postgres::Error> {
    let (streams, versions) = plan.stored_slots_wanted(batch);
    let mut stored = HashMap::with_capacity(streams.len());
    if streams.is_empty() {
        return Ok(stored);
    }
    let statement = client.prepare_cached(&sql.slots).await?;
    for row in client.query(&statement, &[&streams, &versions]).await? {
        let event = crate::reader::recorded(&row)?;
        stored.insert(
            (event.stream, event.version),
            StoredSlot {
                position: event.position,
                event_id: event.event_id,
                event_type: event.event_type,
                payload: event.payload,
            },
        );
    }
    Ok(stored)
}

/// Answers an append whose expected version is not the stream's last (`actual`), given the
/// events in its slots: the stored outcome if it is a retry, else the conflict (see the
/// conformance rules).
fn settle<'s>(
    request: &Request,
    actual: StreamVersion,
    slot: impl Fn(StreamVersion) -> Option<Slot<'s>>,
) -> Answer {
    let wrong_version = || {
        Err(StoreError::WrongExpectedVersion {
            stream: request.stream.clone(),
            expected: request.expected,
            actual,
        })
    };
    let base = request.expected.last_version();
    if base >= actual {
        return wrong_version();
    }
    let mut all_match = true;
    let mut position = 0;
    for (offset, new) in request.events.iter().enumerate() {
        let version = base + 1 + offset as u64;
        let Some(stored) = (version <= actual).then(|| slot(version)).flatten() else {
            all_match = false;
            break;
        };
        if stored.event_id != new.event_id {
            all_match = false;
            continue;
        }
        if stored.event_type != new.event_type || stored.payload != new.payload.as_slice() {
            return Err(StoreError::EventIdConflict {
                event_id: new.event_id,
            });
        }
        position = stored.position;
    }
    if !all_match {
        return wrong_version();
    }
    Ok(AppendOutcome {
        first_version: base + 1,
        last_version: base + request.events.len() as u64,
        position,
    })
}
