//! Catch-up subscription to `$all`, filtered server-side on the ledger's stream prefix.
//!
//! The position is the caller's checkpoint: it resubscribes from the last position it has
//! applied. Within one subscription the client reconnects on its own a few times (resuming
//! after the last event it delivered); we additionally drop anything at or before the last
//! position handed out, so a resumed or an inclusive start never delivers an event twice.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use kurrentdb::SubscriptionEvent;
use ledger_store::{GlobalPosition, RecordedEvent, StoreError, Subscription};

use crate::mapping::recorded_event;
use crate::{Shared, LEDGER_STREAM_PREFIX};

/// A live feed of the ledger's events from EventStoreDB; see [`crate::EsdbStore`].
pub struct EsdbSubscription {
    shared: Arc<Shared>,
    generation: u64,
    inner: kurrentdb::Subscription,
    /// An event read while waiting for the subscription to be confirmed, not yet delivered.
    pending: Option<RecordedEvent>,
    /// Position of the last event delivered (or the starting point): nothing at or before
    /// it is delivered again.
    after: Option<GlobalPosition>,
}

impl fmt::Debug for EsdbSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbSubscription")
            .field("after", &self.after)
            .field(
                "pending",
                &self.pending.as_ref().map(|event| event.position),
            )
            .finish_non_exhaustive()
    }
}

impl EsdbSubscription {
    /// Waits until the server has accepted the subscription, so that an unreachable server
    /// or a refused filter fails `subscribe_all` itself rather than the first `next`.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        generation: u64,
        inner: kurrentdb::Subscription,
        after: Option<GlobalPosition>,
    ) -> Result<Self, StoreError> {
        let mut subscription = Self {
            shared,
            generation,
            inner,
            pending: None,
            after,
        };
        // The first message is the confirmation; anything else also proves the subscription
        // is live, and an event is kept for the first `next`.
        subscription.pending = subscription.next_event_or_signal().await?;
        Ok(subscription)
    }

    /// The next message of the subscription: `Some(event)` for a ledger event not yet
    /// delivered, `None` for any other message (confirmation, checkpoint, caught-up...).
    async fn next_event_or_signal(&mut self) -> Result<Option<RecordedEvent>, StoreError> {
        let message = self.inner.next_subscription_event().await.map_err(|e| {
            self.shared
                .fail(self.generation, "subscribe to", "$all", &e)
        })?;
        let SubscriptionEvent::EventAppeared(resolved) = message else {
            return Ok(None);
        };
        let event = recorded_event(resolved)?;
        if !is_ledger_stream(&event.stream) {
            return Ok(None);
        }
        if self.after.is_some_and(|after| event.position <= after) {
            return Ok(None);
        }
        Ok(Some(event))
    }
}

#[async_trait]
impl Subscription for EsdbSubscription {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        let event = match self.pending.take() {
            Some(event) => event,
            None => loop {
                if let Some(event) = self.next_event_or_signal().await? {
                    break event;
                }
            },
        };
        self.after = Some(event.position);
        Ok(event)
    }
}

/// The server filters on the prefix already; checking again costs nothing and keeps system
/// streams (`$...`) and foreign streams out even if a server ignored the filter.
pub(crate) fn is_ledger_stream(stream: &str) -> bool {
    stream.starts_with(LEDGER_STREAM_PREFIX)
}
