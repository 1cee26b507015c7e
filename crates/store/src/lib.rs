//! The event store contract: append-only streams with optimistic concurrency, a global order,
//! and catch-up subscriptions. Adapters (SQLite, EventStoreDB) implement [`EventStore`]; the
//! [`conformance`] module is the one test suite every adapter must pass.
//!
//! The store knows nothing about the ledger's event types: it moves opaque JSON payloads and
//! the few fields it must index (stream, version, event id, type). Hash chains, schemas and
//! envelopes are the domain's business.

use std::fmt;

use async_trait::async_trait;
use uuid::Uuid;

pub mod conformance;
#[cfg(feature = "faults")]
pub mod faults;
pub mod validate;

/// Version of the last event in a stream. The first event of a stream has version 1.
pub type StreamVersion = u64;

/// A place in the global order of all events. Strictly increasing in commit order, not
/// necessarily contiguous (EventStoreDB commit positions have gaps).
pub type GlobalPosition = u64;

/// What the writer believes the stream looks like before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// The expectation matching a stream whose last version is `version` (0 = no stream).
    pub fn from_last_version(version: StreamVersion) -> Self {
        if version == 0 {
            Self::NoStream
        } else {
            Self::Exact(version)
        }
    }

    /// The last version this expectation stands for (0 for no stream).
    pub fn last_version(self) -> StreamVersion {
        match self {
            Self::NoStream => 0,
            Self::Exact(version) => version,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// An event to append. `event_id` must be derived deterministically from the command that
/// produced it, so that a retried append is recognised as the same event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    /// The serialised envelope (JSON), stored and returned byte for byte.
    pub payload: Vec<u8>,
    /// What the appender already holds decoded, for subscribers in this process.
    pub attachment: Option<Attachment>,
}

/// The appender's own decoded form of an event, handed unchanged to the subscribers of the
/// same process with the committed event, so that they need not parse the payload it was
/// serialised to (the projector's feed parsed every event the command handler had just
/// sealed: 9% of a charge's CPU, callgrind, issue 18). Never stored: an event read back from
/// a store has none, and a store that hands its subscribers what it read back drops it.
/// It is a cache of the payload, so it takes no part in equality.
#[derive(Clone)]
pub struct Attachment(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Attachment")
    }
}

impl PartialEq for Attachment {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for Attachment {}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: String,
    pub version: StreamVersion,
    pub position: GlobalPosition,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Vec<u8>,
    /// The appender's decoded form, when the event reached a subscriber of the process that
    /// appended it straight from the writer; `None` when read from the store.
    pub attachment: Option<Attachment>,
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Version of the first event appended (or already stored, for an idempotent retry).
    pub first_version: StreamVersion,
    /// Version of the last event appended.
    pub last_version: StreamVersion,
    /// Global position of the last event appended.
    pub position: GlobalPosition,
    /// Global position of the first event appended, set only when the store gave the
    /// append's events consecutive positions (`first_position..=position`, one per event),
    /// as the SQLite and PostgreSQL stores do for a fresh append. `None` where positions have
    /// gaps (EventStoreDB's log positions): callers that need every event's position then
    /// read the events back. A retry of stored events says what the first append said.
    pub first_position: Option<GlobalPosition>,
}

impl AppendOutcome {
    /// The outcome of a retry whose events were all found stored, the first at
    /// `first_position` and the last at `position`: the same as the first answer's when the
    /// events were stored consecutively, as one append stores them.
    pub fn retried(
        first_version: StreamVersion,
        last_version: StreamVersion,
        first_position: Option<GlobalPosition>,
        position: GlobalPosition,
    ) -> AppendOutcome {
        let count = last_version.saturating_sub(first_version);
        AppendOutcome {
            first_version,
            last_version,
            position,
            first_position: first_position
                .filter(|first| position.checked_sub(*first) == Some(count)),
        }
    }

    /// The position of every event appended, in version order, when they are consecutive.
    pub fn consecutive_positions(&self) -> Option<std::ops::RangeInclusive<GlobalPosition>> {
        let first = self.first_position?;
        let count = self.last_version.checked_sub(self.first_version)?;
        (self.position.checked_sub(first)? == count).then_some(first..=self.position)
    }
}

/// Why a store operation failed. Callers retry `WrongExpectedVersion` after re-reading the
/// stream, and `Unavailable` after a pause; the others are not retryable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended first. `actual` is the stream's last version (0 = no stream).
    #[error("wrong expected version on {stream}: expected {expected}, stream is at {actual}")]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        actual: StreamVersion,
    },
    /// An event id already stored with different content: a caller bug, never retried.
    #[error("event id {event_id} is already stored with different content")]
    EventIdConflict { event_id: Uuid },
    /// The request itself is malformed (empty batch, bad stream name).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The data was written by an incompatible version of the ledger.
    #[error("incompatible store: {0}")]
    Incompatible(String),
    /// The store cannot be reached or failed; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A live feed of events in global order: first everything after the starting position,
/// then every new event as it commits.
#[async_trait]
pub trait Subscription: Send {
    /// The next event. Waits for one if the subscription has caught up.
    async fn next(&mut self) -> Result<RecordedEvent, StoreError>;
}

/// Polls a subscription's `next` once: its output if an event is ready now, `None` if it would
/// wait. Readers that batch (the projector, the alerts projector) commit when nothing more is
/// ready and then go on awaiting the same future, since a new `next` would start its read over.
pub async fn ready_now<F: std::future::Future + Unpin>(next: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|context| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *next).poll(context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// An append-only store of streams.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` (at least one) to `stream` if its last version matches `expected`.
    /// All events of one call commit atomically. A retry whose events are already stored
    /// with the same ids and content returns the stored outcome and writes nothing.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Up to `limit` events of `stream` with version >= `from_version`, in version order.
    /// A missing stream reads as empty.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of all streams with position > `after` (None = from the start),
    /// in global order.
    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Subscribes to all streams after `after` (None = from the start).
    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError>;

    /// Position of the newest event (None when the store is empty).
    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError>;

    /// Whether an event appended here may reach a subscriber of this process with its
    /// [`Attachment`]: appenders build one only then. False unless a store hands its own
    /// subscribers what it commits (the SQLite store, once something subscribed).
    fn wants_attachments(&self) -> bool {
        false
    }
}
