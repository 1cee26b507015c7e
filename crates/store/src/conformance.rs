//! The conformance suite every [`crate::EventStore`] adapter must pass.
//!
//! An adapter's tests implement [`Harness`] and either call [`run_all`] or call each check
//! (every `pub async fn` below) from its own `#[tokio::test]`. A check panics with a message
//! naming itself on the first deviation, and wraps every store call in a timeout so that a
//! broken adapter fails instead of hanging.
//!
//! # The contract these checks pin down
//!
//! The trait docs leave a few rules open; every adapter follows these:
//!
//! - **Versions.** A stream's events have versions 1, 2, 3, ... with no gaps. An append's
//!   events get the versions after the expected one, in the order given.
//! - **Expected version.** An append whose expectation does not match the stream fails with
//!   [`StoreError::WrongExpectedVersion`] carrying the stream's actual last version (0 when it
//!   does not exist) and writes nothing, unless it is an idempotent retry (next rule).
//! - **Idempotent retry.** Let the *slots* of an append be the versions `expected + 1 ..=
//!   expected + n`. When the stream already holds events in those slots:
//!   - if every new event matches the stored event in its slot (same id, type and payload),
//!     the append is a retry: it returns the stored outcome (`first_version`, `last_version`
//!     of those slots, `position` of the last one) and writes nothing, even if the stream has
//!     moved on since;
//!   - else, if some new event has the same id as the event stored in its slot but a
//!     different type or payload, it fails with [`StoreError::EventIdConflict`] for that id;
//!   - else it fails with [`StoreError::WrongExpectedVersion`].
//!
//!   Ids are only compared with the events stored in the append's slots. The suite does not
//!   require refusing an append at the right version that reuses an id stored elsewhere (in
//!   another stream, or at another version): event ids derive from (stream, command, index),
//!   EventStoreDB only deduplicates within a stream, and SQLite keeps no index of ids.
//! - **Validation.** [`StoreError::Invalid`] for an empty batch, an empty stream name, a stream
//!   name starting with `$` (reserved for EventStoreDB system streams) or containing control
//!   characters, an empty event type, or the same event id twice in one batch. Reading an
//!   empty stream name is also `Invalid`. Invalid requests write nothing.
//! - **Reads.** A missing stream reads as empty; `limit == 0` reads nothing; `from_version` 0
//!   reads from the first event. `read_all` and subscriptions return events in strictly
//!   increasing position, and positions follow commit order: an append acknowledged before
//!   another starts has the smaller position.
//! - **Subscriptions.** `subscribe_all(after)` yields every event with position > `after`
//!   exactly once, in order, then waits for new ones; subscribing again after the last
//!   position seen (even across a restart) continues without gaps or duplicates.
//!
//! # Shared stores
//!
//! [`Harness::open`] may return a store that already holds other tests' events, and other
//! tests may append while a check runs (EventStoreDB is shared). So every check uses fresh
//! streams named `account-conf-{uuid}` and only looks at its own streams, or at positions after
//! the head it saw when it started; foreign events are only checked for ordering.

use std::collections::{HashMap, HashSet};
use std::fmt::{Debug, Display};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio::time::timeout;
use uuid::Uuid;

use crate::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};

#[cfg(test)]
mod tests;

/// How an adapter's tests give the suite stores to check.
#[async_trait]
pub trait Harness: Send + Sync {
    type Store: crate::EventStore;
    /// A store to test against. It may already hold events of other tests (EventStoreDB is shared), so every test uses fresh unique stream names (`account-conf-{uuid}`) and only looks at its own streams / positions after the head it saw at the start.
    async fn open(&self) -> Self::Store;
    /// Close `store` and open the same underlying data again (a restart).
    async fn reopen(&self, store: Self::Store) -> Self::Store;
}

/// Runs every conformance check, panicking with a clear message on the first failure.
pub async fn run_all<H: Harness>(harness: &H) {
    contiguous_versions(harness).await;
    no_stream_on_existing_stream(harness).await;
    exact_version_conflicts(harness).await;
    concurrent_appends_one_winner_per_version(harness).await;
    concurrent_appends_with_retries(harness).await;
    idempotent_retry(harness).await;
    event_id_conflicts(harness).await;
    global_order_matches_commit_order(harness).await;
    read_all_paging(harness).await;
    missing_and_empty_reads(harness).await;
    head_position_tracks_appends(harness).await;
    invalid_requests(harness).await;
    subscription_catch_up_and_live(harness).await;
    subscription_resumes_after_restart(harness).await;
}

/// The longest any single store call may take before the check fails as hung. Generous
/// because a shared EventStoreDB under a parallel test run can be slow, but finite.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a subscription is watched to make sure nothing unexpected arrives.
const QUIET_PERIOD: Duration = Duration::from_millis(300);

const EVENT_TYPE: &str = "conformance_checked";

/// A fresh stream name no other test uses.
fn stream_name() -> String {
    format!("account-conf-{}", Uuid::new_v4())
}

/// A new event with a fresh id whose payload records where it came from, so that a mix-up
/// between events shows in the failure message.
fn new_event(tag: &str, n: usize) -> NewEvent {
    let event_id = Uuid::new_v4();
    NewEvent {
        event_id,
        event_type: EVENT_TYPE.to_owned(),
        payload: format!(r#"{{"tag":"{tag}","n":{n},"event_id":"{event_id}"}}"#).into_bytes(),
    }
}

fn new_events(tag: &str, count: usize) -> Vec<NewEvent> {
    (0..count).map(|n| new_event(tag, n)).collect()
}

/// One running check: its name (for failure messages) and the store under test.
struct Check<'a, S> {
    name: &'static str,
    store: &'a S,
}

impl<'a, S: EventStore> Check<'a, S> {
    fn new(name: &'static str, store: &'a S) -> Self {
        Self { name, store }
    }

    fn fail(&self, message: impl Display) -> ! {
        panic!("conformance check `{}` failed: {message}", self.name)
    }

    fn ensure(&self, condition: bool, message: impl FnOnce() -> String) {
        if !condition {
            self.fail(message())
        }
    }

    fn ensure_eq<T: PartialEq + Debug>(&self, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.fail(format_args!(
                "{what}: expected {expected:?}, got {actual:?}"
            ))
        }
    }

    async fn timed<T>(&self, what: &str, future: impl Future<Output = T>) -> T {
        match timeout(CALL_TIMEOUT, future).await {
            Ok(value) => value,
            Err(_) => self.fail(format_args!(
                "{what} did not finish within {CALL_TIMEOUT:?}"
            )),
        }
    }

    async fn try_append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let what = format!("append to {stream} at {expected}");
        self.timed(&what, self.store.append(stream, expected, events))
            .await
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> AppendOutcome {
        let count = events.len() as u64;
        match self.try_append(stream, expected, events).await {
            Ok(outcome) => {
                let first = expected.last_version() + 1;
                self.ensure_eq(
                    &format!("versions of the append to {stream} at {expected}"),
                    (outcome.first_version, outcome.last_version),
                    (first, first + count - 1),
                );
                outcome
            }
            Err(error) => self.fail(format_args!(
                "append to {stream} at {expected} failed: {error}"
            )),
        }
    }

    /// Appends and expects `WrongExpectedVersion` with `actual`.
    async fn append_wrong_version(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        actual: StreamVersion,
    ) {
        match self.try_append(stream, expected, events).await {
            Err(StoreError::WrongExpectedVersion {
                stream: reported_stream,
                expected: reported_expected,
                actual: reported_actual,
            }) => {
                self.ensure_eq("stream named by WrongExpectedVersion", reported_stream.as_str(), stream);
                self.ensure_eq(
                    "expected version reported by WrongExpectedVersion",
                    reported_expected,
                    expected,
                );
                self.ensure_eq(
                    &format!("actual version reported for {stream} at {expected}"),
                    reported_actual,
                    actual,
                );
            }
            other => self.fail(format_args!(
                "append to {stream} at {expected}: expected WrongExpectedVersion (actual {actual}), got {other:?}"
            )),
        }
    }

    async fn append_invalid(&self, what: &str, stream: &str, events: Vec<NewEvent>) {
        match self
            .try_append(stream, ExpectedVersion::NoStream, events)
            .await
        {
            Err(StoreError::Invalid(_)) => {}
            other => self.fail(format_args!("{what}: expected Invalid, got {other:?}")),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Vec<RecordedEvent> {
        let what = format!("read_stream({stream}, {from_version}, {limit})");
        match self
            .timed(&what, self.store.read_stream(stream, from_version, limit))
            .await
        {
            Ok(events) => {
                self.ensure(events.len() <= limit, || {
                    format!("{what} returned {} events", events.len())
                });
                for (expected_version, event) in (from_version.max(1)..).zip(&events) {
                    self.ensure(
                        event.stream == stream && event.version == expected_version,
                        || {
                            format!(
                                "{what} returned {}@{} where {stream}@{expected_version} was due",
                                event.stream, event.version
                            )
                        },
                    );
                }
                self.ensure_increasing(&what, None, &events);
                events
            }
            Err(error) => self.fail(format_args!("{what} failed: {error}")),
        }
    }

    async fn read_all(&self, after: Option<GlobalPosition>, limit: usize) -> Vec<RecordedEvent> {
        let what = format!("read_all({after:?}, {limit})");
        match self.timed(&what, self.store.read_all(after, limit)).await {
            Ok(events) => {
                self.ensure(events.len() <= limit, || {
                    format!("{what} returned {} events", events.len())
                });
                self.ensure_increasing(&what, after, &events);
                events
            }
            Err(error) => self.fail(format_args!("{what} failed: {error}")),
        }
    }

    async fn head(&self) -> Option<GlobalPosition> {
        match self
            .timed("head_position", self.store.head_position())
            .await
        {
            Ok(head) => head,
            Err(error) => self.fail(format_args!("head_position failed: {error}")),
        }
    }

    async fn subscribe(&self, after: Option<GlobalPosition>) -> Box<dyn Subscription> {
        let what = format!("subscribe_all({after:?})");
        match self.timed(&what, self.store.subscribe_all(after)).await {
            Ok(subscription) => subscription,
            Err(error) => self.fail(format_args!("{what} failed: {error}")),
        }
    }

    /// Checks that positions strictly increase, starting after `after`.
    fn ensure_increasing(
        &self,
        what: &str,
        after: Option<GlobalPosition>,
        events: &[RecordedEvent],
    ) {
        let mut last = after;
        for event in events {
            if let Some(last) = last {
                self.ensure(event.position > last, || {
                    format!(
                        "{what}: position {} of {}@{} does not follow {last}",
                        event.position, event.stream, event.version
                    )
                });
            }
            last = Some(event.position);
        }
    }

    /// Checks that `stored` holds exactly `expected` as versions `first_version..` of `stream`.
    fn ensure_stored(
        &self,
        what: &str,
        stored: &[RecordedEvent],
        stream: &str,
        first_version: StreamVersion,
        expected: &[NewEvent],
    ) {
        self.ensure_eq(
            &format!("{what}: number of events"),
            stored.len(),
            expected.len(),
        );
        for (offset, (event, new)) in stored.iter().zip(expected).enumerate() {
            let version = first_version + offset as u64;
            self.ensure(
                event.stream == stream
                    && event.version == version
                    && event.event_id == new.event_id
                    && event.event_type == new.event_type
                    && event.payload == new.payload,
                || {
                    format!(
                        "{what}: {stream}@{version} should be {} {} {:?}, found {}@{} {} {} {:?}",
                        new.event_id,
                        new.event_type,
                        String::from_utf8_lossy(&new.payload),
                        event.stream,
                        event.version,
                        event.event_id,
                        event.event_type,
                        String::from_utf8_lossy(&event.payload)
                    )
                },
            );
        }
    }

    /// Pages through `read_all` from `after`, `page` events at a time, until `want` events of
    /// `streams` have been seen or a page comes back empty. Returns those events.
    async fn collect_all(
        &self,
        after: Option<GlobalPosition>,
        page: usize,
        streams: &HashSet<String>,
        want: usize,
    ) -> Vec<RecordedEvent> {
        let mut cursor = after;
        let mut own = Vec::new();
        while own.len() < want {
            let events = self.read_all(cursor, page).await;
            let Some(last) = events.last() else { break };
            cursor = Some(last.position);
            own.extend(events.into_iter().filter(|e| streams.contains(&e.stream)));
        }
        own
    }

    /// The next event of `subscription`, checking it follows `last` (the last position seen).
    async fn next_event(
        &self,
        subscription: &mut Box<dyn Subscription>,
        last: &mut Option<GlobalPosition>,
    ) -> RecordedEvent {
        let event = match timeout(CALL_TIMEOUT, subscription.next()).await {
            Ok(Ok(event)) => event,
            Ok(Err(error)) => self.fail(format_args!("subscription failed: {error}")),
            Err(_) => self.fail(format_args!(
                "subscription delivered nothing within {CALL_TIMEOUT:?} after position {last:?}"
            )),
        };
        if let Some(previous) = *last {
            self.ensure(event.position > previous, || {
                format!(
                    "subscription delivered position {} ({}@{}) after {previous}",
                    event.position, event.stream, event.version
                )
            });
        }
        *last = Some(event.position);
        event
    }

    /// Receives until `want` events of `streams` arrived; returns them.
    async fn receive_own(
        &self,
        subscription: &mut Box<dyn Subscription>,
        last: &mut Option<GlobalPosition>,
        streams: &HashSet<String>,
        want: usize,
    ) -> Vec<RecordedEvent> {
        let mut own = Vec::with_capacity(want);
        while own.len() < want {
            let event = self.next_event(subscription, last).await;
            if streams.contains(&event.stream) {
                own.push(event);
            }
        }
        own
    }

    /// Watches `subscription` for a while and fails if any event of `streams` arrives.
    async fn ensure_quiet(
        &self,
        subscription: &mut Box<dyn Subscription>,
        last: &mut Option<GlobalPosition>,
        streams: &HashSet<String>,
    ) {
        let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
        loop {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Err(_) => return,
                Ok(Err(error)) => self.fail(format_args!("subscription failed: {error}")),
                Ok(Ok(event)) => {
                    if let Some(previous) = *last {
                        self.ensure(event.position > previous, || {
                            format!(
                                "subscription delivered position {} after {previous}",
                                event.position
                            )
                        });
                    }
                    *last = Some(event.position);
                    self.ensure(!streams.contains(&event.stream), || {
                        format!(
                            "subscription delivered {}@{} (position {}) again or unasked",
                            event.stream, event.version, event.position
                        )
                    });
                }
            }
        }
    }
}

fn stream_set(streams: &[&String]) -> HashSet<String> {
    streams.iter().map(|s| (*s).clone()).collect()
}

/// Appends get versions 1..n with no gaps, in the order given, and read back byte for byte.
pub async fn contiguous_versions<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("contiguous_versions", &store);
    let stream = stream_name();

    let first = new_events("first", 1);
    let batch = new_events("batch", 3);
    let last = new_events("last", 1);
    let o1 = c
        .append(&stream, ExpectedVersion::NoStream, first.clone())
        .await;
    let o2 = c
        .append(&stream, ExpectedVersion::Exact(1), batch.clone())
        .await;
    let o3 = c
        .append(&stream, ExpectedVersion::Exact(4), last.clone())
        .await;
    c.ensure(
        o1.position < o2.position && o2.position < o3.position,
        || format!("outcome positions do not increase: {o1:?} {o2:?} {o3:?}"),
    );

    let all: Vec<NewEvent> = first.iter().chain(&batch).chain(&last).cloned().collect();
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("read_stream from 1", &stored, &stream, 1, &all);
    c.ensure_eq("position of version 1", stored[0].position, o1.position);
    c.ensure_eq("position of version 4", stored[3].position, o2.position);
    c.ensure_eq("position of version 5", stored[4].position, o3.position);

    let middle = c.read_stream(&stream, 3, 2).await;
    c.ensure_stored(
        "read_stream from 3 limit 2",
        &middle,
        &stream,
        3,
        &all[2..4],
    );
    let from_zero = c.read_stream(&stream, 0, 100).await;
    c.ensure_stored("read_stream from 0", &from_zero, &stream, 1, &all);
    let tail = c.read_stream(&stream, 5, 100).await;
    c.ensure_stored("read_stream from 5", &tail, &stream, 5, &all[4..]);
}

/// `NoStream` on an existing stream fails with the actual version and writes nothing.
pub async fn no_stream_on_existing_stream<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("no_stream_on_existing_stream", &store);
    let stream = stream_name();
    let existing = new_events("existing", 2);
    c.append(&stream, ExpectedVersion::NoStream, existing.clone())
        .await;
    c.append_wrong_version(
        &stream,
        ExpectedVersion::NoStream,
        new_events("second", 1),
        2,
    )
    .await;
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored(
        "stream after the refused append",
        &stored,
        &stream,
        1,
        &existing,
    );
}

/// An exact expected version that is behind, ahead, or names a missing stream fails with the
/// actual version and writes nothing.
pub async fn exact_version_conflicts<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("exact_version_conflicts", &store);
    let stream = stream_name();
    let existing = new_events("existing", 3);
    c.append(&stream, ExpectedVersion::NoStream, existing.clone())
        .await;

    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(2),
        new_events("behind", 1),
        3,
    )
    .await;
    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(5),
        new_events("ahead", 1),
        3,
    )
    .await;
    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(4),
        new_events("ahead", 2),
        3,
    )
    .await;
    let missing = stream_name();
    c.append_wrong_version(
        &missing,
        ExpectedVersion::Exact(1),
        new_events("missing", 1),
        0,
    )
    .await;

    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored(
        "stream after refused appends",
        &stored,
        &stream,
        1,
        &existing,
    );
    let stored = c.read_stream(&missing, 1, 100).await;
    c.ensure_eq("events in the missing stream", stored.len(), 0);
    // The stream still accepts the right version afterwards.
    c.append(&stream, ExpectedVersion::Exact(3), new_events("right", 1))
        .await;
}

/// 16 tasks race for each version of one stream: exactly one wins each round, every loser
/// gets `WrongExpectedVersion` with the winner's version, and the stream holds the winners.
pub async fn concurrent_appends_one_winner_per_version<H: Harness>(harness: &H) {
    const RACERS: usize = 16;
    const ROUNDS: u64 = 6;
    let store = Arc::new(harness.open().await);
    let c = Check::new("concurrent_appends_one_winner_per_version", &*store);
    let stream = stream_name();
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = ExpectedVersion::from_last_version(round);
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = JoinSet::new();
        for racer in 0..RACERS {
            let store = Arc::clone(&store);
            let stream = stream.clone();
            let barrier = Arc::clone(&barrier);
            let event = new_event(&format!("round-{round}"), racer);
            tasks.spawn(async move {
                barrier.wait().await;
                let result = store.append(&stream, expected, vec![event.clone()]).await;
                (event, result)
            });
        }
        let mut round_winners = Vec::new();
        for _ in 0..RACERS {
            let (event, result) = match c.timed("a racing append", tasks.join_next()).await {
                Some(Ok(done)) => done,
                Some(Err(error)) => c.fail(format_args!("a racing task failed: {error}")),
                None => c.fail("a racing task went missing"),
            };
            match result {
                Ok(outcome) => {
                    c.ensure_eq(
                        "winning outcome versions",
                        (outcome.first_version, outcome.last_version),
                        (round + 1, round + 1),
                    );
                    round_winners.push(event);
                }
                Err(StoreError::WrongExpectedVersion {
                    stream: reported,
                    expected: reported_expected,
                    actual,
                }) => {
                    c.ensure_eq("stream of a lost race", reported.as_str(), stream.as_str());
                    c.ensure_eq("expected version of a lost race", reported_expected, expected);
                    c.ensure_eq("actual version reported to a loser", actual, round + 1);
                }
                Err(error) => c.fail(format_args!(
                    "a racing append at {expected} failed with {error:?} instead of WrongExpectedVersion"
                )),
            }
        }
        c.ensure_eq(
            &format!("number of winners for version {}", round + 1),
            round_winners.len(),
            1,
        );
        winners.append(&mut round_winners);
    }
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("stream after the races", &stored, &stream, 1, &winners);
}

/// Writers that retry on conflict (re-reading the actual version from the error) all get
/// their events in exactly once, and the stream stays contiguous.
pub async fn concurrent_appends_with_retries<H: Harness>(harness: &H) {
    const WRITERS: usize = 8;
    const EACH: usize = 8;
    let store = Arc::new(harness.open().await);
    let c = Check::new("concurrent_appends_with_retries", &*store);
    let stream = stream_name();
    let mut tasks = JoinSet::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut known: StreamVersion = 0;
            let mut mine = Vec::new();
            for n in 0..EACH {
                let event = new_event(&format!("writer-{writer}"), n);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    if attempts > 10_000 {
                        return Err(format!("writer {writer} never got event {n} in"));
                    }
                    let expected = ExpectedVersion::from_last_version(known);
                    match store.append(&stream, expected, vec![event.clone()]).await {
                        Ok(outcome) => {
                            known = outcome.last_version;
                            mine.push((outcome.last_version, event));
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => known = actual,
                        Err(error) => return Err(format!("writer {writer}: {error}")),
                    }
                }
            }
            Ok(mine)
        });
    }
    let mut by_version = HashMap::new();
    for _ in 0..WRITERS {
        match c.timed("a retrying writer", tasks.join_next()).await {
            Some(Ok(Ok(mine))) => {
                let mut previous = 0;
                for (version, event) in mine {
                    c.ensure(version > previous, || {
                        format!("a writer's own appends got versions out of order: {version} after {previous}")
                    });
                    previous = version;
                    if by_version.insert(version, event).is_some() {
                        c.fail(format_args!("version {version} was acknowledged twice"));
                    }
                }
            }
            Some(Ok(Err(message))) => c.fail(message),
            Some(Err(error)) => c.fail(format_args!("a writer task failed: {error}")),
            None => c.fail("a writer task went missing"),
        }
    }
    let total = WRITERS * EACH;
    let expected: Vec<NewEvent> = (1..=total as u64)
        .map(|version| match by_version.remove(&version) {
            Some(event) => event,
            None => c.fail(format_args!(
                "no append was acknowledged at version {version}"
            )),
        })
        .collect();
    let stored = c.read_stream(&stream, 1, total + 10).await;
    c.ensure_stored(
        "stream after retrying writers",
        &stored,
        &stream,
        1,
        &expected,
    );
}

/// A retry of an already stored batch (same ids and content at the same expected version)
/// returns the stored outcome and writes nothing, even after the stream has moved on.
pub async fn idempotent_retry<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("idempotent_retry", &store);
    let head = c.head().await;
    let stream = stream_name();
    let pair = new_events("pair", 2);
    let single = new_events("single", 1);

    let o1 = c
        .append(&stream, ExpectedVersion::NoStream, pair.clone())
        .await;
    let retried = c
        .append(&stream, ExpectedVersion::NoStream, pair.clone())
        .await;
    c.ensure_eq("outcome of an immediate retry", retried, o1);

    let o2 = c
        .append(&stream, ExpectedVersion::Exact(2), single.clone())
        .await;
    let retried = c
        .append(&stream, ExpectedVersion::NoStream, pair.clone())
        .await;
    c.ensure_eq("outcome of a retry after the stream moved on", retried, o1);
    let retried = c
        .append(&stream, ExpectedVersion::Exact(2), single.clone())
        .await;
    c.ensure_eq("outcome of retrying the last append", retried, o2);

    let all: Vec<NewEvent> = pair.iter().chain(&single).cloned().collect();
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("stream after retries", &stored, &stream, 1, &all);
    let seen = c.collect_all(head, 500, &stream_set(&[&stream]), 4).await;
    c.ensure_eq(
        "events of the stream in read_all after retries",
        seen.len(),
        3,
    );
}

/// Reusing an event id with different content fails with `EventIdConflict` at the same slot,
/// and with `WrongExpectedVersion` at a version that does not match the stream.
pub async fn event_id_conflicts<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("event_id_conflicts", &store);
    let stream = stream_name();
    let stored_events = new_events("original", 2);
    c.append(&stream, ExpectedVersion::NoStream, stored_events.clone())
        .await;
    let id = stored_events[0].event_id;

    let mut other_payload = stored_events.clone();
    other_payload[0].payload = br#"{"tag":"changed"}"#.to_vec();
    match c
        .try_append(&stream, ExpectedVersion::NoStream, other_payload)
        .await
    {
        Err(StoreError::EventIdConflict { event_id }) => {
            c.ensure_eq("conflicting id", event_id, id)
        }
        other => c.fail(format_args!(
            "same id and slot with a different payload: expected EventIdConflict, got {other:?}"
        )),
    }

    let mut other_type = stored_events.clone();
    other_type[1].event_type = "conformance_changed".to_owned();
    match c
        .try_append(&stream, ExpectedVersion::NoStream, other_type)
        .await
    {
        Err(StoreError::EventIdConflict { event_id }) => {
            c.ensure_eq("conflicting id", event_id, stored_events[1].event_id)
        }
        other => c.fail(format_args!(
            "same id and slot with a different type: expected EventIdConflict, got {other:?}"
        )),
    }

    // The first event again, but at version 2 where the second one is stored.
    c.append_wrong_version(
        &stream,
        ExpectedVersion::Exact(1),
        vec![stored_events[0].clone()],
        2,
    )
    .await;
    // The first event stored, the second one new: not a retry of what is stored.
    let mixed = vec![stored_events[0].clone(), new_event("mixed", 1)];
    c.append_wrong_version(&stream, ExpectedVersion::NoStream, mixed, 2)
        .await;

    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored(
        "stream after conflicts",
        &stored,
        &stream,
        1,
        &stored_events,
    );
}

/// `read_all` returns events in acknowledgement order for sequential appends, with the
/// positions the appends reported; concurrent appends also read back at their positions.
pub async fn global_order_matches_commit_order<H: Harness>(harness: &H) {
    let store = Arc::new(harness.open().await);
    let c = Check::new("global_order_matches_commit_order", &*store);
    let head = c.head().await;
    let streams = [stream_name(), stream_name(), stream_name()];
    let mut versions = [0u64; 3];
    let mut acknowledged = Vec::new();
    let mut previous_position = None;
    for n in 0..12 {
        let s = n % 3;
        let count = if n == 7 { 2 } else { 1 };
        let outcome = c
            .append(
                &streams[s],
                ExpectedVersion::from_last_version(versions[s]),
                new_events("sequential", count),
            )
            .await;
        versions[s] = outcome.last_version;
        for version in outcome.first_version..=outcome.last_version {
            acknowledged.push((streams[s].clone(), version));
        }
        if let Some(head) = head {
            c.ensure(outcome.position > head, || {
                format!(
                    "append acknowledged at {} is not after the head {head} seen before",
                    outcome.position
                )
            });
        }
        if let Some(previous) = previous_position {
            c.ensure(outcome.position > previous, || {
                format!(
                    "sequential append acknowledged at {} after one at {previous}",
                    outcome.position
                )
            });
        }
        previous_position = Some(outcome.position);
    }
    let own = stream_set(&[&streams[0], &streams[1], &streams[2]]);
    let read = c.collect_all(head, 1000, &own, acknowledged.len()).await;
    let read_order: Vec<(String, StreamVersion)> =
        read.iter().map(|e| (e.stream.clone(), e.version)).collect();
    c.ensure_eq(
        "order of read_all against acknowledgement order",
        read_order,
        acknowledged,
    );

    // Concurrent appends to separate streams: each event reads back at its outcome position.
    let mut tasks = JoinSet::new();
    let concurrent: Vec<String> = (0..8).map(|_| stream_name()).collect();
    for stream in &concurrent {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for version in 0..4 {
                let result = store
                    .append(
                        &stream,
                        ExpectedVersion::from_last_version(version),
                        new_events("concurrent", 1),
                    )
                    .await;
                outcomes.push((stream.clone(), version + 1, result));
            }
            outcomes
        });
    }
    let mut positions = HashMap::new();
    for _ in 0..concurrent.len() {
        let outcomes = match c.timed("a concurrent writer", tasks.join_next()).await {
            Some(Ok(outcomes)) => outcomes,
            Some(Err(error)) => c.fail(format_args!("a writer task failed: {error}")),
            None => c.fail("a writer task went missing"),
        };
        let mut previous = None;
        for (stream, version, result) in outcomes {
            match result {
                Ok(outcome) => {
                    if let Some(previous) = previous {
                        c.ensure(outcome.position > previous, || {
                            format!(
                                "{stream}@{version} acknowledged at {} after {previous}",
                                outcome.position
                            )
                        });
                    }
                    previous = Some(outcome.position);
                    positions.insert((stream, version), outcome.position);
                }
                Err(error) => c.fail(format_args!(
                    "concurrent append to {stream} failed: {error}"
                )),
            }
        }
    }
    let own: HashSet<String> = concurrent.iter().cloned().collect();
    let read = c.collect_all(head, 1000, &own, positions.len()).await;
    c.ensure_eq("concurrent events in read_all", read.len(), positions.len());
    for event in read {
        let acknowledged = positions.get(&(event.stream.clone(), event.version));
        c.ensure_eq(
            &format!("position of {}@{}", event.stream, event.version),
            Some(&event.position),
            acknowledged,
        );
    }
}

/// `read_all` pages with `after` / `limit` without skipping or repeating events, and reading
/// from the start is stable.
pub async fn read_all_paging<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("read_all_paging", &store);
    let head = c.head().await;
    let streams = [stream_name(), stream_name()];
    let mut expected = Vec::new();
    let mut versions = [0u64; 2];
    for (n, count) in [1usize, 3, 1, 2, 1, 1, 1].into_iter().enumerate() {
        let s = n % 2;
        let events = new_events("paging", count);
        let outcome = c
            .append(
                &streams[s],
                ExpectedVersion::from_last_version(versions[s]),
                events.clone(),
            )
            .await;
        versions[s] = outcome.last_version;
        for (offset, event) in events.into_iter().enumerate() {
            expected.push((
                streams[s].clone(),
                outcome.first_version + offset as u64,
                event,
            ));
        }
    }
    let own = stream_set(&[&streams[0], &streams[1]]);

    let all_at_once = c.collect_all(head, 10_000, &own, expected.len()).await;
    for page in [1usize, 3, 4] {
        let paged = c.collect_all(head, page, &own, expected.len()).await;
        c.ensure_eq(
            &format!("events read in pages of {page} against one read"),
            &paged,
            &all_at_once,
        );
    }
    c.ensure_eq("number of events read", all_at_once.len(), expected.len());
    for (event, (stream, version, new)) in all_at_once.iter().zip(&expected) {
        c.ensure_stored(
            "paged event",
            std::slice::from_ref(event),
            stream,
            *version,
            std::slice::from_ref(new),
        );
    }

    c.ensure_eq("read_all with limit 0", c.read_all(head, 0).await.len(), 0);
    // Reading after the last own event returns none of them.
    let last = all_at_once.last().map(|e| e.position);
    let after_last = c.read_all(last, 1000).await;
    c.ensure(after_last.iter().all(|e| !own.contains(&e.stream)), || {
        "read_all after the last event returned it or an earlier one again".to_owned()
    });
    // From the start: stable, and the same as a subscription from the start.
    let first_three = c.read_all(None, 3).await;
    c.ensure(!first_three.is_empty(), || {
        "read_all(None) returned nothing from a store holding events".to_owned()
    });
    let first_one = c.read_all(None, 1).await;
    c.ensure_eq(
        "first event of read_all(None)",
        &first_one[..],
        &first_three[..1],
    );
    let mut subscription = c.subscribe(None).await;
    let mut last_seen = None;
    for expected in &first_three {
        let event = c.next_event(&mut subscription, &mut last_seen).await;
        c.ensure_eq(
            "event of subscribe_all(None) against read_all(None)",
            &event,
            expected,
        );
    }
}

/// Missing streams, reads past the end and `limit == 0` all read as empty.
pub async fn missing_and_empty_reads<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("missing_and_empty_reads", &store);
    let missing = stream_name();
    c.ensure_eq(
        "events of a missing stream",
        c.read_stream(&missing, 1, 10).await.len(),
        0,
    );
    c.ensure_eq(
        "events of a missing stream from 0",
        c.read_stream(&missing, 0, 10).await.len(),
        0,
    );
    let stream = stream_name();
    c.append(&stream, ExpectedVersion::NoStream, new_events("short", 2))
        .await;
    c.ensure_eq(
        "events past the end",
        c.read_stream(&stream, 3, 10).await.len(),
        0,
    );
    c.ensure_eq(
        "events far past the end",
        c.read_stream(&stream, 1_000_000, 10).await.len(),
        0,
    );
    c.ensure_eq(
        "events with limit 0",
        c.read_stream(&stream, 1, 0).await.len(),
        0,
    );
    c.ensure_eq(
        "events with limit 1",
        c.read_stream(&stream, 1, 1).await.len(),
        1,
    );
}

/// `head_position` is at or after every acknowledged append and moves forward with appends.
pub async fn head_position_tracks_appends<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("head_position_tracks_appends", &store);
    let before = c.head().await;
    let stream = stream_name();
    let o1 = c
        .append(&stream, ExpectedVersion::NoStream, new_events("head", 1))
        .await;
    if let Some(before) = before {
        c.ensure(o1.position > before, || {
            format!(
                "append at {} is not after the earlier head {before}",
                o1.position
            )
        });
    }
    let h1 = c.head().await;
    c.ensure(h1.is_some_and(|h| h >= o1.position), || {
        format!(
            "head {h1:?} is before the acknowledged append at {}",
            o1.position
        )
    });
    let o2 = c
        .append(&stream, ExpectedVersion::Exact(1), new_events("head", 2))
        .await;
    let h2 = c.head().await;
    c.ensure(h2.is_some_and(|h| h >= o2.position) && h2 >= h1, || {
        format!(
            "head {h2:?} (earlier {h1:?}) is before the acknowledged append at {}",
            o2.position
        )
    });
}

/// Malformed requests fail with `Invalid` and write nothing.
pub async fn invalid_requests<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let c = Check::new("invalid_requests", &store);
    let stream = stream_name();
    c.append_invalid("an empty batch", &stream, Vec::new())
        .await;
    c.append_invalid("an empty stream name", "", new_events("invalid", 1))
        .await;
    c.append_invalid(
        "a `$` stream name",
        "$account-conf",
        new_events("invalid", 1),
    )
    .await;
    c.append_invalid(
        "a stream name with a control character",
        &format!("{stream}\n"),
        new_events("invalid", 1),
    )
    .await;
    let mut untyped = new_events("invalid", 1);
    untyped[0].event_type = String::new();
    c.append_invalid("an empty event type", &stream, untyped)
        .await;
    let event = new_event("invalid", 1);
    c.append_invalid(
        "the same id twice in a batch",
        &stream,
        vec![event.clone(), event],
    )
    .await;
    c.ensure_eq(
        "events written by invalid appends",
        c.read_stream(&stream, 1, 10).await.len(),
        0,
    );
    match c
        .timed("read_stream(\"\")", store.read_stream("", 1, 10))
        .await
    {
        Err(StoreError::Invalid(_)) => {}
        other => c.fail(format_args!(
            "reading an empty stream name: expected Invalid, got {other:?}"
        )),
    }
    // The stream is still usable from scratch.
    c.append(&stream, ExpectedVersion::NoStream, new_events("valid", 1))
        .await;
}

/// A subscription catches up on earlier events, then delivers live ones (including events
/// appended while it reads) exactly once, in order.
pub async fn subscription_catch_up_and_live<H: Harness>(harness: &H) {
    let store = Arc::new(harness.open().await);
    let c = Check::new("subscription_catch_up_and_live", &*store);
    let head = c.head().await;
    let stream = stream_name();
    let earlier = new_events("earlier", 5);
    c.append(&stream, ExpectedVersion::NoStream, earlier[..2].to_vec())
        .await;
    c.append(&stream, ExpectedVersion::Exact(2), earlier[2..].to_vec())
        .await;
    let own = stream_set(&[&stream]);

    let mut subscription = c.subscribe(head).await;
    let mut last = head;
    let caught_up = c.receive_own(&mut subscription, &mut last, &own, 5).await;
    c.ensure_stored("caught-up events", &caught_up, &stream, 1, &earlier);

    // Live, one at a time: each must arrive while the subscription is waiting.
    let mut version = 5;
    for n in 0..3 {
        let event = new_event("live", n);
        c.append(
            &stream,
            ExpectedVersion::Exact(version),
            vec![event.clone()],
        )
        .await;
        version += 1;
        let got = c.receive_own(&mut subscription, &mut last, &own, 1).await;
        c.ensure_stored("live event", &got, &stream, version, &[event]);
    }

    // A writer appends while the subscription reads.
    let writer_stream = stream_name();
    let writer_events = new_events("racing", 40);
    let writer = {
        let store = Arc::clone(&store);
        let stream = writer_stream.clone();
        let events = writer_events.clone();
        tokio::spawn(async move {
            for (n, event) in events.into_iter().enumerate() {
                let expected = ExpectedVersion::from_last_version(n as u64);
                if let Err(error) = store.append(&stream, expected, vec![event]).await {
                    return Err(error.to_string());
                }
                if n % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok(())
        })
    };
    let writer_own = stream_set(&[&writer_stream]);
    let got = c
        .receive_own(
            &mut subscription,
            &mut last,
            &writer_own,
            writer_events.len(),
        )
        .await;
    c.ensure_stored(
        "events appended while subscribed",
        &got,
        &writer_stream,
        1,
        &writer_events,
    );
    match c.timed("the racing writer", writer).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => c.fail(format_args!("the racing writer failed: {error}")),
        Err(error) => c.fail(format_args!("the racing writer panicked: {error}")),
    }

    // Nothing is delivered twice: after a sentinel, no earlier own event may show up.
    let sentinel = new_event("sentinel", 0);
    c.append(
        &stream,
        ExpectedVersion::Exact(version),
        vec![sentinel.clone()],
    )
    .await;
    let both = stream_set(&[&stream, &writer_stream]);
    let got = c.receive_own(&mut subscription, &mut last, &both, 1).await;
    c.ensure_stored(
        "sentinel (an event arrived twice?)",
        &got,
        &stream,
        version + 1,
        &[sentinel],
    );
    c.ensure_quiet(&mut subscription, &mut last, &both).await;
}

/// After a restart, subscribing after the last position seen continues with the next event:
/// no gap, no duplicate, and acknowledged events survived the restart.
pub async fn subscription_resumes_after_restart<H: Harness>(harness: &H) {
    let store = harness.open().await;
    let stream = stream_name();
    let own = stream_set(&[&stream]);
    let before = new_events("before-restart", 6);
    let (head, checkpoint) = {
        let c = Check::new("subscription_resumes_after_restart", &store);
        let head = c.head().await;
        c.append(&stream, ExpectedVersion::NoStream, before[..4].to_vec())
            .await;
        c.append(&stream, ExpectedVersion::Exact(4), before[4..].to_vec())
            .await;
        let mut subscription = c.subscribe(head).await;
        let mut last = head;
        let got = c.receive_own(&mut subscription, &mut last, &own, 3).await;
        c.ensure_stored("events before the restart", &got, &stream, 1, &before[..3]);
        (head, last)
    };

    let store = harness.reopen(store).await;
    let c = Check::new("subscription_resumes_after_restart", &store);
    let stored = c.read_stream(&stream, 1, 100).await;
    c.ensure_stored("stream after the restart", &stored, &stream, 1, &before);
    let head_after = c.head().await;
    c.ensure(
        head_after >= head && head_after >= Some(stored[5].position),
        || format!("head {head_after:?} after the restart is before the stored events"),
    );
    let after = new_events("after-restart", 4);
    c.append(&stream, ExpectedVersion::Exact(6), after.clone())
        .await;

    let mut subscription = c.subscribe(checkpoint).await;
    let mut last = checkpoint;
    let got = c.receive_own(&mut subscription, &mut last, &own, 7).await;
    let expected: Vec<NewEvent> = before[3..].iter().chain(&after).cloned().collect();
    c.ensure_stored(
        "events resumed after the restart",
        &got,
        &stream,
        4,
        &expected,
    );
    c.ensure_quiet(&mut subscription, &mut last, &own).await;
}
