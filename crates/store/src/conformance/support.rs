//! What the checks share: timeouts, fresh streams and events, and [`Check`], which runs
//! store calls under a timeout and names the check in every failure.

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::Duration;

use tokio::time::timeout;
use uuid::Uuid;

use crate::{
    AppendOutcome, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StoreError, StreamVersion, Subscription,
};

/// The longest any single store call may take before the check fails as hung. Generous
/// because a shared EventStoreDB under a parallel test run can be slow, but finite.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a subscription is watched to make sure nothing unexpected arrives.
pub(super) const QUIET_PERIOD: Duration = Duration::from_millis(300);

pub(super) const EVENT_TYPE: &str = "conformance_checked";

/// A fresh stream name no other test uses.
pub(super) fn stream_name() -> String {
    format!("account-conf-{}", Uuid::new_v4())
}

/// A new event with a fresh id whose payload records where it came from, so that a mix-up
/// between events shows in the failure message.
pub(super) fn new_event(tag: &str, n: usize) -> NewEvent {
    let event_id = Uuid::new_v4();
    NewEvent {
        event_id,
        event_type: EVENT_TYPE.to_owned(),
        payload: format!(r#"{{"tag":"{tag}","n":{n},"event_id":"{event_id}"}}"#).into_bytes(),
        attachment: None,
    }
}

pub(super) fn new_events(tag: &str, count: usize) -> Vec<NewEvent> {
    (0..count).map(|n| new_event(tag, n)).collect()
}

/// One running check: its name (for failure messages) and the store under test.
pub(super) struct Check<'a, S> {
    pub(super) name: &'static str,
    pub(super) store: &'a S,
}

impl<'a, S: EventStore> Check<'a, S> {
    pub(super) fn new(name: &'static str, store: &'a S) -> Self {
        Self { name, store }
    }

    pub(super) fn fail(&self, message: impl Display) -> ! {
        panic!("conformance check `{}` failed: {message}", self.name)
    }

    pub(super) fn ensure(&self, condition: bool, message: impl FnOnce() -> String) {
        if !condition {
            self.fail(message())
        }
    }

    pub(super) fn ensure_eq<T: PartialEq + Debug>(&self, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.fail(format_args!(
                "{what}: expected {expected:?}, got {actual:?}"
            ))
        }
    }

    pub(super) async fn timed<T>(&self, what: &str, future: impl Future<Output = T>) -> T {
        match timeout(CALL_TIMEOUT, future).await {
            Ok(value) => value,
            Err(_) => self.fail(format_args!(
                "{what} did not finish within {CALL_TIMEOUT:?}"
            )),
        }
    }

    pub(super) async fn try_append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let what = format!("append to {stream} at {expected}");
        self.timed(&what, self.store.append(stream, expected, events))
            .await
    }

    pub(super) async fn append(
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
                if let Some(claimed) = outcome.consecutive_positions() {
                    // A store that says its positions are consecutive is taken at its word
                    // by the command handler, which then reads nothing back.
                    let stored = self.read_stream(stream, first, count as usize).await;
                    self.ensure_eq(
                        &format!("positions of the append to {stream} at {expected}"),
                        stored
                            .iter()
                            .map(|event| event.position)
                            .collect::<Vec<_>>(),
                        claimed.collect(),
                    );
                }
                outcome
            }
            Err(error) => self.fail(format_args!(
                "append to {stream} at {expected} failed: {error}"
            )),
        }
    }

    /// Appends and expects `WrongExpectedVersion` with `actual`.
    pub(super) async fn append_wrong_version(
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

    pub(super) async fn append_invalid(&self, what: &str, stream: &str, events: Vec<NewEvent>) {
        match self
            .try_append(stream, ExpectedVersion::NoStream, events)
            .await
        {
            Err(StoreError::Invalid(_)) => {}
            other => self.fail(format_args!("{what}: expected Invalid, got {other:?}")),
        }
    }

    pub(super) async fn read_stream(
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

    pub(super) async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Vec<RecordedEvent> {
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

    pub(super) async fn head(&self) -> Option<GlobalPosition> {
        match self
            .timed("head_position", self.store.head_position())
            .await
        {
            Ok(head) => head,
            Err(error) => self.fail(format_args!("head_position failed: {error}")),
        }
    }

    pub(super) async fn subscribe(&self, after: Option<GlobalPosition>) -> Box<dyn Subscription> {
        let what = format!("subscribe_all({after:?})");
        match self.timed(&what, self.store.subscribe_all(after)).await {
            Ok(subscription) => subscription,
            Err(error) => self.fail(format_args!("{what} failed: {error}")),
        }
    }

    /// Checks that positions strictly increase, starting after `after`.
    pub(super) fn ensure_increasing(
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
    pub(super) fn ensure_stored(
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
    pub(super) async fn collect_all(
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
    pub(super) async fn next_event(
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
    pub(super) async fn receive_own(
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
    pub(super) async fn ensure_quiet(
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

pub(super) fn stream_set(streams: &[&String]) -> HashSet<String> {
    streams.iter().map(|s| (*s).clone()).collect()
}
