//! Self-test of the conformance suite: a minimal in-memory reference store passes it (so its
//! rules are consistent and satisfiable), and deliberately broken variants fail it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use super::*;
use crate::*;

/// Which rule a deliberately broken store gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Retries are refused with `WrongExpectedVersion` instead of returning the stored outcome.
    NoRetryDetection,
    /// Reads skip the last event of every page boundary.
    LosesEventsWhenPaging,
}

#[derive(Debug, Default)]
struct State {
    events: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
    ids: HashSet<Uuid>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    head: watch::Sender<Option<GlobalPosition>>,
    bug: Bug,
}

#[derive(Debug)]
struct MemoryStore {
    shared: Arc<Shared>,
}

fn invalid_stream(stream: &str) -> bool {
    stream.is_empty() || stream.starts_with('$') || stream.chars().any(char::is_control)
}

fn validate(stream: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    if invalid_stream(stream) {
        return Err(StoreError::Invalid(format!("bad stream name {stream:?}")));
    }
    if events.is_empty() {
        return Err(StoreError::Invalid("empty batch".into()));
    }
    let mut ids = HashSet::new();
    for event in events {
        if event.event_type.is_empty() {
            return Err(StoreError::Invalid("empty event type".into()));
        }
        if !ids.insert(event.event_id) {
            return Err(StoreError::Invalid("duplicate event id".into()));
        }
    }
    Ok(())
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate(stream, &events)?;
        let mut state = self.shared.state.lock().unwrap();
        let indexes = state.streams.get(stream).cloned().unwrap_or_default();
        let actual = indexes.len() as u64;
        let base = expected.last_version();
        if base != actual {
            let wrong = StoreError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual,
            };
            if self.shared.bug == Bug::NoRetryDetection {
                return Err(wrong);
            }
            let mut all_match = true;
            let mut last_position = 0;
            for (offset, new) in events.iter().enumerate() {
                let slot = indexes
                    .get(base as usize + offset)
                    .map(|&i| &state.events[i]);
                match slot {
                    Some(stored) if stored.event_id == new.event_id => {
                        if stored.event_type != new.event_type || stored.payload != new.payload {
                            return Err(StoreError::EventIdConflict {
                                event_id: new.event_id,
                            });
                        }
                        last_position = stored.position;
                    }
                    _ => all_match = false,
                }
            }
            if all_match {
                return Ok(AppendOutcome {
                    first_version: base + 1,
                    last_version: base + events.len() as u64,
                    position: last_position,
                    first_position: None,
                });
            }
            return Err(wrong);
        }
        if let Some(reused) = events.iter().find(|e| state.ids.contains(&e.event_id)) {
            return Err(StoreError::EventIdConflict {
                event_id: reused.event_id,
            });
        }
        let count = events.len() as u64;
        let mut position = 0;
        for (offset, new) in events.into_iter().enumerate() {
            let index = state.events.len();
            // Positions with gaps, as EventStoreDB has them.
            position = (index as u64 + 1) * 7;
            state.ids.insert(new.event_id);
            state.events.push(RecordedEvent {
                stream: stream.to_owned(),
                version: base + 1 + offset as u64,
                position,
                event_id: new.event_id,
                event_type: new.event_type,
                payload: new.payload,
                attachment: None,
            });
            state
                .streams
                .entry(stream.to_owned())
                .or_default()
                .push(index);
        }
        self.shared.head.send_replace(Some(position));
        Ok(AppendOutcome {
            first_version: base + 1,
            last_version: base + count,
            position,
            first_position: None,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if stream.is_empty() {
            return Err(StoreError::Invalid("empty stream name".into()));
        }
        let state = self.shared.state.lock().unwrap();
        let skip = from_version.saturating_sub(1) as usize;
        Ok(state
            .streams
            .get(stream)
            .map(|indexes| {
                indexes
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(|&i| state.events[i].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.shared.state.lock().unwrap();
        let mut page: Vec<RecordedEvent> = state
            .events
            .iter()
            .filter(|e| after.is_none_or(|after| e.position > after))
            .take(limit)
            .cloned()
            .collect();
        if self.shared.bug == Bug::LosesEventsWhenPaging && page.len() > 1 && page.len() == limit {
            page.remove(page.len() - 2);
        }
        Ok(page)
    }

    async fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        Ok(Box::new(MemorySubscription {
            shared: Arc::clone(&self.shared),
            head: self.shared.head.subscribe(),
            after,
        }))
    }

    async fn head_position(&self) -> Result<Option<GlobalPosition>, StoreError> {
        Ok(self
            .shared
            .state
            .lock()
            .unwrap()
            .events
            .last()
            .map(|e| e.position))
    }
}

#[derive(Debug)]
struct MemorySubscription {
    shared: Arc<Shared>,
    head: watch::Receiver<Option<GlobalPosition>>,
    after: Option<GlobalPosition>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            self.head.borrow_and_update();
            let found = {
                let state = self.shared.state.lock().unwrap();
                let after = self.after;
                state
                    .events
                    .iter()
                    .find(|e| after.is_none_or(|after| e.position > after))
                    .cloned()
            };
            if let Some(event) = found {
                self.after = Some(event.position);
                return Ok(event);
            }
            if self.head.changed().await.is_err() {
                return Err(StoreError::Unavailable("store closed".into()));
            }
        }
    }
}

#[derive(Debug)]
struct MemoryHarness {
    shared: Arc<Shared>,
}

impl MemoryHarness {
    fn new(bug: Bug) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                head: watch::Sender::new(None),
                bug,
            }),
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    type Store = MemoryStore;

    async fn open(&self) -> MemoryStore {
        MemoryStore {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn reopen(&self, store: MemoryStore) -> MemoryStore {
        drop(store);
        self.open().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_store_passes_the_suite() {
    run_all(&MemoryHarness::new(Bug::None)).await;
}

/// Checks running at the same time on one store see each other's events as foreign events,
/// as they do on a shared EventStoreDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_tolerate_each_others_events() {
    let harness = MemoryHarness::new(Bug::None);
    tokio::join!(
        run_all(&harness),
        subscription_catch_up_and_live(&harness),
        global_order_matches_commit_order(&harness),
        read_all_paging(&harness),
        concurrent_appends_with_retries(&harness),
    );
}

#[tokio::test]
#[should_panic(expected = "conformance check `idempotent_retry` failed")]
async fn missing_retry_detection_is_caught() {
    idempotent_retry(&MemoryHarness::new(Bug::NoRetryDetection)).await;
}

#[tokio::test]
#[should_panic(expected = "conformance check `read_all_paging` failed")]
async fn events_lost_between_pages_are_caught() {
    read_all_paging(&MemoryHarness::new(Bug::LosesEventsWhenPaging)).await;
}
