//! The reader: one subscription to the store, each event decoded once and handed to every
//! view thread it feeds. Transient store failures are retried from the last event handed on;
//! anything else stops it with an error.
//!
//! Events travel in shared chunks (`Arc<Vec<Decoded>>`, one per batch of reading, the same
//! chunk for every view): handing them over one by one cost a channel operation, and often a
//! thread wake-up, per event and view. A chunk is sent when it is full or as soon as the
//! subscription has nothing more ready, so chunking never delays an event.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use ledger_store::{
    ready_now, EventStore, GlobalPosition, RecordedEvent, StoreError, Subscription,
};
use tokio::sync::{watch, Semaphore};

use crate::decode::{decode, Decoded};
use crate::error::ProjectorError;
use crate::metrics::HeadPosition;
use crate::worker::Input;

/// Most events in one chunk.
pub(crate) const CHUNK_EVENTS_MAX: usize = 256;

/// First pause before retrying an unavailable store; doubles up to the configured maximum.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(50);

/// One view thread the reader feeds. Its channel holds at most as many chunks as its
/// semaphore has permits; the view thread gives a permit back for each chunk it takes.
pub(crate) struct FeedTarget {
    sender: Sender<Input>,
    capacity: Arc<Semaphore>,
}

impl FeedTarget {
    pub(crate) fn new(sender: Sender<Input>, capacity: Arc<Semaphore>) -> Self {
        FeedTarget { sender, capacity }
    }

    /// Hands `chunk` on; `false` once the view thread is gone.
    async fn send(&self, chunk: &Arc<Vec<Decoded>>) -> bool {
        match self.capacity.acquire().await {
            Ok(permit) => permit.forget(),
            // Closed: the view thread ended.
            Err(_) => return false,
        }
        self.sender.send(Input::Events(Arc::clone(chunk))).is_ok()
    }
}

/// The reader's settings and state.
pub(crate) struct Feed {
    pub store: Arc<dyn EventStore>,
    /// Read events after this position.
    pub after: Option<GlobalPosition>,
    pub targets: Vec<FeedTarget>,
    pub head: Arc<HeadPosition>,
    pub stop: watch::Receiver<bool>,
    pub retry_delay_max: Duration,
}

/// Reads until told to stop (or a view thread is gone), retrying while the store is
/// unavailable.
pub(crate) async fn feed(mut feed: Feed) -> Result<(), ProjectorError> {
    let mut delay = RETRY_DELAY_MIN;
    loop {
        let subscribed = tokio::select! {
            biased;
            _ = feed.stop.wait_for(|stop| *stop) => return Ok(()),
            subscribed = feed.store.subscribe_all(feed.after) => subscribed,
        };
        let failure = match subscribed {
            Ok(subscription) => match pump(&mut feed, subscription).await? {
                Pumped::Stopped => return Ok(()),
                Pumped::Unavailable(message) => message,
            },
            Err(StoreError::Unavailable(message)) => message,
            Err(error) => return Err(error.into()),
        };
        tracing::warn!(
            after = ?feed.after,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %failure,
            "the event store is unavailable; the projector will resubscribe"
        );
        tokio::select! {
            biased;
            _ = feed.stop.wait_for(|stop| *stop) => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(feed.retry_delay_max);
    }
}

enum Pumped {
    Stopped,
    Unavailable(String),
}

/// Sends `chunk` to every target; `false` once one of them is gone.
async fn flush(feed: &mut Feed, chunk: &mut Vec<Decoded>) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let last = chunk.last().map(|decoded| decoded.position);
    let shared = Arc::new(std::mem::replace(
        chunk,
        Vec::with_capacity(CHUNK_EVENTS_MAX),
    ));
    for target in &feed.targets {
        if !target.send(&shared).await {
            return false;
        }
    }
    // Resubscribing after a failure starts after what was handed on.
    if last.is_some() {
        feed.after = last;
    }
    true
}

async fn pump(
    feed: &mut Feed,
    mut subscription: Box<dyn Subscription>,
) -> Result<Pumped, ProjectorError> {
    let mut chunk: Vec<Decoded> = Vec::with_capacity(CHUNK_EVENTS_MAX);
    loop {
        if *feed.stop.borrow() {
            return Ok(Pumped::Stopped);
        }
        let next: Result<RecordedEvent, StoreError> = {
            let mut next = subscription.next();
            match ready_now(&mut next).await {
                Some(record) => record,
                None => {
                    // Nothing more ready: hand on what was read, then wait on the same
                    // `next` (a new one would start its read over).
                    if !flush(feed, &mut chunk).await {
                        return Ok(Pumped::Stopped);
                    }
                    tokio::select! {
                        biased;
                        _ = feed.stop.wait_for(|stop| *stop) => return Ok(Pumped::Stopped),
                        record = &mut next => record,
                    }
                }
            }
        };
        let record = match next {
            Ok(record) => record,
            Err(StoreError::Unavailable(message)) => {
                // What was read is good: hand it on before resubscribing after it.
                if !flush(feed, &mut chunk).await {
                    return Ok(Pumped::Stopped);
                }
                return Ok(Pumped::Unavailable(message));
            }
            Err(error) => return Err(error.into()),
        };
        feed.head.observe(record.position);
        chunk.push(decode(&record)?);
        if chunk.len() >= CHUNK_EVENTS_MAX && !flush(feed, &mut chunk).await {
            return Ok(Pumped::Stopped);
        }
    }
}
