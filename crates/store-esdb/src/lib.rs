//! EventStoreDB / KurrentDB event store adapter: [`EsdbStore`] implements
//! [`ledger_store::EventStore`] on the vendor's `kurrentdb` gRPC client (1.x).
//!
//! How the ledger's model maps onto the server's:
//!
//! - A ledger stream is an EventStoreDB stream; only streams named `account-...`
//!   ([`LEDGER_STREAM_PREFIX`]) are ledger streams. `read_all`, `subscribe_all` and
//!   `head_position` read `$all` filtered server-side on that prefix, which also leaves out
//!   system streams (`$...`); appends to any other name are refused so that nothing is
//!   written that the global order would not show.
//! - Versions are 1-based, server revisions 0-based: `version = revision + 1`, and an append
//!   expecting `Exact(v)` is sent with the exact revision `v - 1` (see [`mapping`]).
//! - [`GlobalPosition`] is the commit position in the transaction log.
//! - Appends always carry an exact expected revision and the caller's deterministic event
//!   ids (`NewEvent::event_id` becomes the server's event id), so the server recognises a
//!   retried batch and stores it once. Payloads travel as the event data, byte for byte,
//!   flagged `application/json` when they are exactly one JSON value.
//! - The server recognises a retry by event ids alone and acknowledges it without saying so.
//!   To return the stored outcome and to refuse a reused id with other content
//!   ([`StoreError::EventIdConflict`]), every acknowledged append reads its slots back from
//!   the leader: one extra read per append, which also yields the exact `$all` position of
//!   its last event.
//!
//! Server requirements: EventStoreDB 22.10 or later, or KurrentDB (earlier servers do not
//! report `$all` positions on stream reads). With authentication on, the connection string
//! needs a user allowed to read `$all` (`esdb://admin:changeit@host:2113`).

use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, Position, ReadAllOptions,
    ReadStreamOptions, RetryOptions, StreamPosition, SubscribeToAllOptions, SubscriptionFilter,
    WriteResult,
};
use ledger_store::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};
use serde_json::value::RawValue;
use tracing::{debug, warn};

mod connection;
pub mod mapping;
mod subscription;

pub use connection::{normalise_connection_string, redact, DEFAULT_PORT};
pub use subscription::EsdbSubscription;

use mapping::{
    actual_version, expected_stream_state, known_position, recorded_event, revision_of_version,
    store_error, version_of_revision,
};
use subscription::is_ledger_stream;

/// Every ledger stream's name starts with this; the global order shows only these streams.
pub const LEDGER_STREAM_PREFIX: &str = "account-";

/// How often a subscription re-subscribes by itself after its stream broke, and the pause
/// between attempts, before `next` reports the store unavailable (the caller then
/// resubscribes from its checkpoint).
const SUBSCRIPTION_RETRIES: usize = 5;
const SUBSCRIPTION_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// An [`EventStore`] on an EventStoreDB / KurrentDB node or cluster. Cheap to clone: clones
/// share one client (one HTTP/2 connection to the selected node).
#[derive(Clone)]
pub struct EsdbStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for EsdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbStore")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// State shared by a store's clones and its subscriptions.
pub(crate) struct Shared {
    settings: ClientSettings,
    runtime: tokio::runtime::Handle,
    /// The normalised connection string, password redacted: for messages and `Debug`.
    target: String,
    slot: RwLock<ClientSlot>,
}

/// The current client and a counter of how many times it was replaced, so that a burst of
/// failures on one dead client replaces it once.
struct ClientSlot {
    generation: u64,
    client: Client,
}

impl Shared {
    fn client(&self) -> (u64, Client) {
        // A poisoned lock only means a panic elsewhere while swapping clients; the slot
        // itself is always whole, so keep using it.
        let slot = self
            .slot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (slot.generation, slot.client.clone())
    }

    /// Maps `err` and, when it shows the client's connection task has stopped (kurrentdb
    /// 1.2 stops it for good when a connection attempt fails), replaces the client so the
    /// caller's retry connects afresh instead of failing forever.
    pub(crate) fn fail(
        &self,
        generation: u64,
        op: &str,
        subject: &str,
        err: &kurrentdb::Error,
    ) -> StoreError {
        if mapping::connection_lost(err) {
            self.replace_client(generation, err);
        }
        store_error(op, subject, err)
    }

    /// Replaces the client of generation `generation`, unless another caller already did.
    /// Built under the lock (it reads the system's root certificates, a few milliseconds,
    /// and only after a lost connection) so that racing callers build one client: a client
    /// never used would keep its idle connection task for good.
    fn replace_client(&self, generation: u64, cause: &kurrentdb::Error) {
        let mut slot = self
            .slot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.generation != generation {
            return;
        }
        match Client::with_runtime_handle(self.runtime.clone(), self.settings.clone()) {
            Ok(client) => {
                slot.client = client;
                slot.generation = generation.wrapping_add(1);
                warn!(target = %self.target, error = %cause, "EventStoreDB connection lost; client recreated");
            }
            Err(e) => {
                warn!(target = %self.target, error = %e, "cannot recreate the EventStoreDB client");
            }
        }
    }
}

impl EsdbStore {
    /// Connects to the node or cluster named by `conn` (see [`normalise_connection_string`]
    /// for the accepted forms), e.g. `esdb://localhost:2113?tls=false`,
    /// `esdb://a:2113,b:2113,c:2113`, `kurrentdb+discover://cluster.internal:2113`.
    ///
    /// Must be called within a Tokio runtime: the client runs its connection task there.
    /// The connection itself is made on first use; [`EsdbStore::check_connection`] forces it.
    /// A malformed string is [`StoreError::Invalid`].
    pub fn connect(conn: &str) -> Result<Self, StoreError> {
        let (normalised, settings) = connection::parse_settings(conn)?;
        let target = redact(&normalised);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Invalid(
                "EsdbStore::connect must be called within a Tokio runtime \
                 (the client runs its connection task on it)"
                    .into(),
            )
        })?;
        let client =
            Client::with_runtime_handle(runtime.clone(), settings.clone()).map_err(|e| {
                StoreError::Invalid(format!(
                    "cannot set up the KurrentDB client for {target}: {e}"
                ))
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                runtime,
                target,
                slot: RwLock::new(ClientSlot {
                    generation: 0,
                    client,
                }),
            }),
        })
    }

    /// The connection string in use, normalised, password redacted.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// Selects a node (through gossip for a cluster) and asks it for its version: fails with
    /// [`StoreError::Unavailable`] when no node answers.
    pub async fn check_connection(&self) -> Result<(), StoreError> {
        let (generation, client) = self.shared.client();
        client.server_info().await.map(|_| ()).map_err(|e| {
            self.shared
                .fail(generation, "connect to", &self.shared.target, &e)
        })
    }

    /// Up to `limit` events of `stream` from version `from_version` on. `requires_leader`
    /// makes a follower refuse the read, for checks that must see the latest writes.
    async fn read_range(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
        requires_leader: bool,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Version 0 names no event; reading "from 0" reads from the first one.
        let revision = revision_of_version(from_version).unwrap_or(0);
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(revision))
            .max_count(limit)
            .requires_leader(requires_leader);
        let (generation, client) = self.shared.client();
        let fail = |e: &kurrentdb::Error| self.shared.fail(generation, "read", stream, e);
        let mut reader = client
            .read_stream(stream.to_owned(), &options)
            .await
            .map_err(|e| fail(&e))?;
        let mut events = Vec::new();
        while events.len() < limit {
            match reader.next().await {
                Ok(Some(resolved)) => events.push(recorded_event(resolved)?),
                Ok(None) => break,
                // The server answers a read of a missing stream with "not found", first.
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(fail(&e)),
            }
        }
        Ok(events)
    }

    /// The outcome of an append of `events` right after version `base`, if exactly those
    /// events are stored there already (a retry of a batch that was written). `None` when
    /// other events (or none) hold those versions; [`StoreError::EventIdConflict`] when the
    /// ids match but an event's type or payload differs.
    async fn stored_outcome(
        &self,
        stream: &str,
        base: StreamVersion,
        events: &[NewEvent],
    ) -> Result<Option<AppendOutcome>, StoreError> {
        // From the leader: the server has just told us these events exist, and a follower
        // may not have them yet.
        let stored = self
            .read_range(stream, base + 1, events.len(), true)
            .await?;
        if stored.len() < events.len()
            || stored
                .iter()
                .zip(events)
                .any(|(old, new)| old.event_id != new.event_id)
        {
            return Ok(None);
        }
        if let Some((_, new)) = stored
            .iter()
            .zip(events)
            .find(|(old, new)| old.event_type != new.event_type || old.payload != new.payload)
        {
            return Err(StoreError::EventIdConflict {
                event_id: new.event_id,
            });
        }
        let Some(last) = stored.last() else {
            return Ok(None);
        };
        Ok(Some(AppendOutcome {
            first_version: base + 1,
            last_version: last.version,
            position: last.position,
            // Log positions have gaps.
            first_position: None,
        }))
    }

    /// The outcome of an append the server acknowledged. The server deduplicates by event
    /// id alone (an append whose ids are already in its slots succeeds without writing, and
    /// reports no position or the old one), so the slots are read back from the leader:
    /// our events there are the outcome, with their exact positions; the same ids with other
    /// content are an [`StoreError::EventIdConflict`].
    async fn acknowledged_outcome(
        &self,
        stream: &str,
        base: StreamVersion,
        events: &[NewEvent],
        written: &WriteResult,
    ) -> Result<AppendOutcome, StoreError> {
        let count = events.len() as u64;
        // `next_expected_version` is the revision of the last event of the batch.
        let last_version = version_of_revision(written.next_expected_version);
        if last_version != base + count {
            return Err(StoreError::Incompatible(format!(
                "append to {stream}: {count} events after version {base} acknowledged at \
                 version {last_version}"
            )));
        }
        let Some(outcome) = self.stored_outcome(stream, base, events).await? else {
            return Err(StoreError::Incompatible(format!(
                "append to {stream}: acknowledged at versions {}..={last_version}, \
                 but other events are stored there",
                base + 1
            )));
        };
        match known_position(written.position.commit) {
            Some(position) if position != outcome.position => debug!(
                stream,
                base,
                acknowledged = position,
                stored = outcome.position,
                "append deduplicated by the server"
            ),
            None => debug!(stream, base, "append deduplicated by the server"),
            Some(_) => {}
        }
        Ok(outcome)
    }
}

/// The server-side filter for everything read from `$all`.
fn ledger_filter() -> SubscriptionFilter {
    SubscriptionFilter::on_stream_name().add_prefix(LEDGER_STREAM_PREFIX)
}

/// A `$all` position from our commit-only position. Events appended through gRPC have equal
/// commit and prepare positions, so this is the event's exact position in the log.
fn log_position(position: GlobalPosition) -> Position {
    Position {
        commit: position,
        prepare: position,
    }
}

/// Appends go to ledger streams only: `account-` and an id, no control characters (the
/// prefix also rules out `$` system streams).
fn check_ledger_stream(stream: &str) -> Result<(), StoreError> {
    if !is_ledger_stream(stream) || stream.len() == LEDGER_STREAM_PREFIX.len() {
        return Err(StoreError::Invalid(format!(
            "stream name {stream:?} must be '{LEDGER_STREAM_PREFIX}' followed by an id: \
             only those streams appear in the global order"
        )));
    }
    if stream.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "stream name {stream:?} contains a control character"
        )));
    }
    Ok(())
}

/// A batch holds at least one event, each with a type, and no event id twice (the server
/// would store both copies, and a retry could then never match the stored batch).
fn check_batch(stream: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    ledger_store::validate::batch(stream, events)
}

/// The event as sent to the server: our deterministic id, our type, the payload bytes as
/// data. A payload that is exactly one JSON value is flagged `application/json` (the
/// server's projections and UI read it as JSON); anything else (surrounding whitespace
/// included) goes as opaque bytes, so the stored data is always the payload byte for byte.
fn event_data(event: &NewEvent) -> EventData {
    let json = serde_json::from_slice::<&RawValue>(&event.payload)
        .ok()
        .filter(|raw| raw.get().len() == event.payload.len())
        .and_then(|raw| EventData::json(&event.event_type, &raw).ok());
    json.unwrap_or_else(|| {
        EventData::binary(&event.event_type, Bytes::copy_from_slice(&event.payload))
    })
    .id(event.event_id)
}

#[async_trait]
impl EventStore for EsdbStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        check_ledger_stream(stream)?;
        check_batch(stream, &events)?;
        let options =
            AppendToStreamOptions::default().stream_state(expected_stream_state(expected)?);
        let data: Vec<EventData> = events.iter().map(event_data).collect();
        // The slots of this append: versions base + 1 ..= base + events.len().
        let base = expected.last_version();

        let (generation, client) = self.shared.client();
        match client
            .append_to_stream(stream.to_owned(), &options, data)
            .await
        {
            Ok(written) => {
                self.acknowledged_outcome(stream, base, &events, &written)
                    .await
            }
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                let actual = actual_version(current);
                // A retry of a batch that did land finds the stream past its slots. The
                // server recognises most retries by their ids; when it answers "wrong
                // version" instead (part of the batch differs, say), the stored events
                // decide: the same batch is the stored outcome, the same ids with other
                // content a conflict, anything else the wrong version.
                if actual >= base.saturating_add(events.len() as u64) {
                    if let Some(outcome) = self.stored_outcome(stream, base, &events).await? {
                        debug!(stream, base, "retried append found already stored");
                        return Ok(outcome);
                    }
                }
                Err(StoreError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual,
                })
            }
            Err(e) => Err(self.shared.fail(generation, "append to", stream, &e)),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if stream.is_empty() {
            return Err(StoreError::Invalid("read: empty stream name".into()));
        }
        self.read_range(stream, from_version, limit, false).await
    }

    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Reading `$all` from a position includes the event at that position: ask for one
        // more and drop it below.
        let (start, count) = match after {
            None => (StreamPosition::Start, limit),
            Some(after) => (
                StreamPosition::Position(log_position(after)),
                limit.saturating_add(1),
            ),
        };
        let options = ReadAllOptions::default()
            .position(start)
            .forwards()
            .filter(ledger_filter())
            .max_count(count);
        let (generation, client) = self.shared.client();
        let fail = |e: &kurrentdb::Error| self.shared.fail(generation, "read", "$all", e);
        let mut reader = client.read_all(&options).await.map_err(|e| fail(&e))?;
        let mut events = Vec::new();
        while events.len() < limit {
            let Some(resolved) = reader.next().await.map_err(|e| fail(&e))? else {
                break;
            };
            let event = recorded_event(resolved)?;
            if !is_ledger_stream(&event.stream)
                || after.is_some_and(|after| event.position <= after)
            {
                continue;
            }
            events.push(event);
        }
        Ok(events)
    }

    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let start = match after {
            None => StreamPosition::Start,
            Some(after) => StreamPosition::Position(log_position(after)),
        };
        let options = SubscribeToAllOptions::default()
            .position(start)
            .filter(ledger_filter())
            .retry_options(
                RetryOptions::default()
                    .retry_limit(SUBSCRIPTION_RETRIES)
                    .retry_delay(SUBSCRIPTION_RETRY_DELAY),
            );
        let (generation, client) = self.shared.client();
        let inner = client.subscribe_to_all(&options).await;
        let subscription =
            EsdbSubscription::start(Arc::clone(&self.shared), generation, inner, after).await?;
        Ok(Box::new(subscription))
    }

    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError> {
        let options = ReadAllOptions::default()
            .position(StreamPosition::End)
            .backwards()
            .filter(ledger_filter())
            .max_count(1);
        let (generation, client) = self.shared.client();
        let fail = |e: &kurrentdb::Error| self.shared.fail(generation, "read", "$all", e);
        let mut reader = client.read_all(&options).await.map_err(|e| fail(&e))?;
        while let Some(resolved) = reader.next().await.map_err(|e| fail(&e))? {
            let event = recorded_event(resolved)?;
            if is_ledger_stream(&event.stream) {
                return Ok(Some(event.position));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
