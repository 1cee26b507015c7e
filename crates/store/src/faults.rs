//! A fault-injecting wrapper of any [`EventStore`], for tests only (cargo feature `faults`):
//! the test arms a fault at runtime and the wrapped store fails the next matching calls the
//! way a broken disk, server or network would, so the layers above can be held to their
//! promises (503 and nothing half-written, reads from the views, recovery without a restart,
//! garbage reported rather than skipped).
//!
//! ```text
//! let faults = Faults::new();
//! let store = FaultyStore::new(inner, faults.clone());
//! faults.arm(Op::Append, Fault::AfterDurable, Times::Once);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};

/// The store call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Append,
    ReadStream,
    ReadAll,
    /// Opening a subscription (`subscribe_all`).
    Subscribe,
    /// A subscription's `next`.
    SubscriptionNext,
    HeadPosition,
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call fails before it reaches the store: nothing is written or read.
    Fail,
    /// A commit or fsync that fails: the transaction is rolled back, nothing is written.
    CommitFailed,
    /// The disk is full: nothing is written.
    DiskFull,
    /// Appends only: the events are written and durable, then the answer is lost and the
    /// caller sees `Unavailable` (a connection dropped after COMMIT).
    AfterDurable,
    /// Reads only: the call succeeds but the first event's payload is garbage.
    Corrupt,
}

impl Fault {
    fn error(&self, op: Op) -> StoreError {
        StoreError::Unavailable(match self {
            Fault::Fail => format!("injected fault: {op:?} failed"),
            Fault::CommitFailed => "injected fault: fsync failed (EIO); rolled back".into(),
            Fault::DiskFull => "injected fault: database or disk is full (ENOSPC)".into(),
            Fault::AfterDurable => "injected fault: the connection dropped after the commit".into(),
            Fault::Corrupt => "injected fault: corrupt".into(),
        })
    }
}

/// How many matching calls a fault hits before it clears itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    Once,
    N(u64),
    /// Until [`Faults::clear`].
    UntilCleared,
}

/// The garbage a corrupt read returns in place of a payload.
pub const GARBAGE: &[u8] = b"\x00\xffnot an envelope{";

#[derive(Debug)]
struct Armed {
    op: Op,
    fault: Fault,
    /// Calls left; `None` until cleared.
    left: Option<u64>,
    /// Only calls on this stream (appends and stream reads), or any call.
    stream: Option<String>,
}

/// The faults armed on one or more wrapped stores; cheap to clone and shared with the test.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<Vec<Armed>>>,
    injected: Arc<AtomicU64>,
    /// Events the wrapped stores' `read_stream` calls returned, faults or not.
    stream_events_read: Arc<AtomicU64>,
}

impl Faults {
    pub fn new() -> Faults {
        Faults::default()
    }

    /// Fails the next matching `op` calls with `fault`, `times` times.
    pub fn arm(&self, op: Op, fault: Fault, times: Times) {
        self.push(op, fault, times, None);
    }

    /// Like [`Faults::arm`], for calls on `stream` only (appends and stream reads; a
    /// subscription or a read of all streams is hit when its first event is of `stream`).
    pub fn arm_on(&self, stream: &str, op: Op, fault: Fault, times: Times) {
        self.push(op, fault, times, Some(stream.to_owned()));
    }

    fn push(&self, op: Op, fault: Fault, times: Times, stream: Option<String>) {
        let left = match times {
            Times::Once => Some(1),
            Times::N(count) => Some(count),
            Times::UntilCleared => None,
        };
        self.lock().push(Armed {
            op,
            fault,
            left,
            stream,
        });
    }

    /// Disarms every fault: the store works again.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many calls a fault has hit so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// How many events `read_stream` calls have returned so far: what a test reads to tell
    /// a catch-up of a few events from a reload of a whole stream.
    pub fn stream_events_read(&self) -> u64 {
        self.stream_events_read.load(Ordering::SeqCst)
    }

    /// Whether any fault is still armed.
    pub fn armed(&self) -> bool {
        !self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Armed>> {
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one hit of the first fault armed for `op` on `stream` (None = any stream).
    fn take(&self, op: Op, stream: Option<&str>) -> Option<Fault> {
        let mut armed = self.lock();
        let index = armed.iter().position(|armed| {
            armed.op == op
                && match (&armed.stream, stream) {
                    (Some(wanted), Some(stream)) => wanted == stream,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        })?;
        let fault = armed[index].fault.clone();
        if let Some(left) = armed[index].left.as_mut() {
            *left -= 1;
            if *left == 0 {
                armed.remove(index);
            }
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Some(fault)
    }

    /// A read's fault: failures before reading; a corruption is applied by the caller to
    /// what was read, and only when the first event read is of the armed stream.
    fn take_read(&self, op: Op, first: Option<&RecordedEvent>) -> Option<Fault> {
        self.take(op, first.map(|event| event.stream.as_str()))
    }
}

/// Makes the first event's payload garbage, as a damaged file would return it: without the
/// appender's attachment, which only an event straight from this process's writer has.
fn corrupt(events: &mut [RecordedEvent]) {
    if let Some(first) = events.first_mut() {
        first.payload = GARBAGE.to_vec();
        first.attachment = None;
    }
}

/// An [`EventStore`] that passes every call to `inner` unless a fault is armed for it.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn EventStore>,
    faults: Faults,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn EventStore>, faults: Faults) -> FaultyStore {
        FaultyStore { inner, faults }
    }

    /// The wrapped store, to look behind the faults.
    pub fn inner(&self) -> &Arc<dyn EventStore> {
        &self.inner
    }

    /// Fails a read before it is made; corrupts what it read after.
    async fn read<F>(&self, op: Op, stream: Option<&str>, read: F) -> ReadResult
    where
        F: std::future::Future<Output = ReadResult>,
    {
        // A stream read knows its stream before reading; a read of all streams only after.
        if let Some(stream) = stream {
            return match self.faults.take(op, Some(stream)) {
                Some(Fault::Corrupt) => self.after_read(op, Fault::Corrupt, read.await),
                Some(fault) => Err(fault.error(op)),
                None => read.await,
            };
        }
        let events = read.await?;
        match self.faults.take_read(op, events.first()) {
            Some(fault) => self.after_read(op, fault, Ok(events)),
            None => Ok(events),
        }
    }

    fn after_read(&self, op: Op, fault: Fault, read: ReadResult) -> ReadResult {
        match fault {
            Fault::Corrupt => {
                let mut events = read?;
                corrupt(&mut events);
                Ok(events)
            }
            other => Err(other.error(op)),
        }
    }
}

type ReadResult = Result<Vec<RecordedEvent>, StoreError>;

#[async_trait]
impl EventStore for FaultyStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        match self.faults.take(Op::Append, Some(stream)) {
            None | Some(Fault::Corrupt) => self.inner.append(stream, expected, events).await,
            Some(Fault::AfterDurable) => {
                // Written for real; only the answer is lost.
                self.inner.append(stream, expected, events).await?;
                Err(Fault::AfterDurable.error(Op::Append))
            }
            Some(fault) => Err(fault.error(Op::Append)),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let read = self.inner.read_stream(stream, from_version, limit);
        let events = self.read(Op::ReadStream, Some(stream), read).await?;
        self.faults
            .stream_events_read
            .fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(events)
    }

    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let read = self.inner.read_all(after, limit);
        self.read(Op::ReadAll, None, read).await
    }

    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        if let Some(fault) = self.faults.take(Op::Subscribe, None) {
            return Err(fault.error(Op::Subscribe));
        }
        let inner = self.inner.subscribe_all(after).await?;
        Ok(Box::new(FaultySubscription {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError> {
        if let Some(fault) = self.faults.take(Op::HeadPosition, None) {
            return Err(fault.error(Op::HeadPosition));
        }
        self.inner.head_position().await
    }

    fn wants_attachments(&self) -> bool {
        self.inner.wants_attachments()
    }
}

/// A subscription whose `next` fails or returns garbage when a fault is armed for it.
struct FaultySubscription {
    inner: Box<dyn Subscription>,
    faults: Faults,
}

#[async_trait]
impl Subscription for FaultySubscription {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        let mut event = self.inner.next().await?;
        match self.faults.take_read(Op::SubscriptionNext, Some(&event)) {
            None => Ok(event),
            Some(Fault::Corrupt) => {
                corrupt(std::slice::from_mut(&mut event));
                Ok(event)
            }
            // The event is lost to this subscription: its reader must resubscribe after the
            // last event it got, as after a dropped connection.
            Some(fault) => Err(fault.error(Op::SubscriptionNext)),
        }
    }
}
