//! The projector loop: one subscription from the checkpoint, events folded into each
//! account's watch in memory, and a commit whenever the subscription has nothing more ready
//! and the events derived something (or a batch is full), so a live notification is in the
//! outbox one commit after it is read. Events that derived nothing only move the position
//! waiters see; their checkpoint is written within [`CHECKPOINT_DELAY_MAX`].
//!
//! Only accounts that configured alerts are watched. Most accounts never do, and folding
//! them cost a tenth of a charge's CPU for notifications nobody receives. An account's watch
//! starts at its `alerts_configured` event, from a fold of its stream before that event:
//! before it, the fold notifies nothing, so starting late derives the same notifications.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use ledger_domain::alerts::{notification_id, AlertWatch};
use ledger_domain::envelope::{account_of_stream, SlimEnvelope};
use ledger_domain::Instant;
use ledger_service::ledger::CommandError;
use ledger_service::pages::read_stream_events;
use ledger_store::{ready_now, EventStore, RecordedEvent, StoreError};
use serde_json::json;
use tracing::warn;

use crate::outbox::{Batch, Row, SqliteOutbox, Watches};
use crate::AlertsError;

/// The stored type of the event that starts an account's watch.
const ALERTS_CONFIGURED: &str = "alerts_configured";
/// Most events folded into one transaction.
const BATCH_EVENTS_MAX: usize = 1_024;
/// Pause before resubscribing to an unavailable store.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// Longest the stored checkpoint stays behind while the events folded derive nothing.
const CHECKPOINT_DELAY_MAX: Duration = Duration::from_millis(250);

/// Follows `store` into `outbox` until `shutdown` resolves.
pub async fn run(
    store: Arc<dyn EventStore>,
    outbox: Arc<SqliteOutbox>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AlertsError> {
    let mut watches = load(&outbox).await?;
    tokio::pin!(shutdown);
    loop {
        let mut subscription = tokio::select! {
            () = &mut shutdown => return Ok(()),
            subscribed = store.subscribe_all(outbox.checkpoint()) => subscribed?,
        };
        let mut batch = Batch::default();
        let mut dirty = HashSet::new();
        let mut written_at = Clock::now();
        let failure = loop {
            let mut next = subscription.next();
            let record = match ready_now(&mut next).await {
                Some(record) => record,
                None => loop {
                    pause(&outbox, &watches, &mut dirty, &mut batch, &mut written_at).await?;
                    // What only moved the position is written once quiet has lasted, so
                    // that a restart after a burst does not fold it all again.
                    let unwritten = batch.position.is_some();
                    let quiet = CHECKPOINT_DELAY_MAX.saturating_sub(written_at.elapsed());
                    tokio::select! {
                        () = &mut shutdown => {
                            return commit(&outbox, &watches, &mut dirty, &mut batch).await;
                        }
                        record = &mut next => break record,
                        () = tokio::time::sleep(quiet), if unwritten => {
                            commit(&outbox, &watches, &mut dirty, &mut batch).await?;
                            written_at = Clock::now();
                        }
                    }
                },
            };
            match record {
                Ok(record) => {
                    match start_watch(store.as_ref(), &mut watches, &record).await {
                        Err(AlertsError::Store(StoreError::Unavailable(message))) => break message,
                        started => started?,
                    }
                    if let Some(account_id) = fold(&mut watches, &mut batch, &record)? {
                        dirty.insert(account_id);
                    }
                    if batch.events >= BATCH_EVENTS_MAX {
                        commit(&outbox, &watches, &mut dirty, &mut batch).await?;
                        written_at = Clock::now();
                    }
                }
                Err(StoreError::Unavailable(message)) => break message,
                Err(error) => return Err(error.into()),
            }
        };
        // What was folded but not committed is folded again after the checkpoint.
        watches = load(&outbox).await?;
        warn!(error = %failure, "alerts projector: the store is unavailable; resubscribing");
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
        }
    }
}

/// The watches of the accounts that configured alerts. Outboxes written before only
/// configured accounts were watched also hold the others; they are left out, and would start
/// again from their stream if they configured alerts later.
async fn load(outbox: &Arc<SqliteOutbox>) -> Result<Watches, AlertsError> {
    let outbox = outbox.clone();
    let mut watches = tokio::task::spawn_blocking(move || outbox.load_watches())
        .await
        .map_err(|error| AlertsError::Join(error.to_string()))??;
    watches.retain(|_, (_, watch)| watch.config.is_some());
    Ok(watches)
}

/// Starts watching the account of `record` if it is an `alerts_configured` event of an
/// account not watched yet: folds the stream's events before it, which notify nothing.
async fn start_watch(
    store: &dyn EventStore,
    watches: &mut Watches,
    record: &RecordedEvent,
) -> Result<(), AlertsError> {
    if record.event_type != ALERTS_CONFIGURED {
        return Ok(());
    }
    let Some(account_id) = account_of_stream(&record.stream) else {
        return Ok(());
    };
    if watches.contains_key(account_id) {
        return Ok(());
    }
    let mut started: Option<(u64, AlertWatch)> = None;
    let mut version = 0;
    let read = read_stream_events(store, &record.stream, |occurred_at, event| {
        version += 1;
        if version >= record.version {
            return false;
        }
        match &mut started {
            None => started = AlertWatch::create(&event).map(|watch| (version, watch)),
            Some((at, watch)) => {
                watch.apply(&event, version, occurred_at);
                *at = version;
            }
        }
        true
    })
    .await;
    match read {
        Ok(()) => {}
        Err(CommandError::Store(error)) => return Err(error.into()),
        Err(error) => {
            return Err(AlertsError::Decode {
                position: record.position,
                message: error.to_string(),
            })
        }
    }
    if let Some(entry) = started {
        watches.insert(account_id.to_string(), entry);
    }
    Ok(())
}

/// At a pause of the subscription: commits what `batch` derived, if anything. A batch of
/// events that derived nothing (accounts without alerts: nearly every charge) only moves the
/// position waiters see, and the checkpoint is written at most every
/// [`CHECKPOINT_DELAY_MAX`]: a commit is a transaction with a full sync, and one per pause
/// was 4% of an HTTP charge's CPU (callgrind, issue 18).
async fn pause(
    outbox: &Arc<SqliteOutbox>,
    watches: &Watches,
    dirty: &mut HashSet<String>,
    batch: &mut Batch,
    written_at: &mut Clock,
) -> Result<(), AlertsError> {
    let Some(position) = batch.position else {
        return Ok(());
    };
    if batch.rows.is_empty() && dirty.is_empty() && written_at.elapsed() < CHECKPOINT_DELAY_MAX {
        outbox.covered(position);
        return Ok(());
    }
    commit(outbox, watches, dirty, batch).await?;
    *written_at = Clock::now();
    Ok(())
}

/// Commits what `batch` derived with the watches of the accounts it touched.
async fn commit(
    outbox: &Arc<SqliteOutbox>,
    watches: &Watches,
    dirty: &mut HashSet<String>,
    batch: &mut Batch,
) -> Result<(), AlertsError> {
    if batch.position.is_none() {
        return Ok(());
    }
    let mut taken = std::mem::take(batch);
    taken.watches = dirty
        .drain()
        .filter_map(|account_id| {
            let entry = watches.get(&account_id)?.clone();
            Some((account_id, entry))
        })
        .collect();
    let outbox = outbox.clone();
    let now_ms = chrono::Utc::now().timestamp_millis();
    tokio::task::spawn_blocking(move || outbox.commit(&taken, now_ms))
        .await
        .map_err(|error| AlertsError::Join(error.to_string()))?
}

/// Folds one stored event into its account's watch, adding what it notifies to `batch`;
/// returns the account whose watch changed.
fn fold(
    watches: &mut Watches,
    batch: &mut Batch,
    record: &RecordedEvent,
) -> Result<Option<String>, AlertsError> {
    batch.position = Some(record.position);
    batch.events += 1;
    let Some(account_id) = account_of_stream(&record.stream) else {
        return Ok(None);
    };
    // Only accounts that configured alerts are watched: `start_watch` made the watch at
    // their `alerts_configured` event.
    let Some((version, watch)) = watches.get_mut(account_id) else {
        return Ok(None);
    };
    // The version guard: an event already folded (a resubscription overlapping the
    // checkpoint) changes nothing.
    if record.version <= *version {
        return Ok(None);
    }
    let unreadable = |message: String| AlertsError::Decode {
        position: record.position,
        message,
    };
    let slim =
        SlimEnvelope::parse(&record.payload).map_err(|error| unreadable(error.to_string()))?;
    let event = slim
        .event()
        .map_err(|error| unreadable(error.to_string()))?;
    let occurred_at: Instant = slim
        .occurred_at
        .parse()
        .map_err(|error| unreadable(format!("bad occurred_at: {error}")))?;
    *version = record.version;
    let notifications = watch.apply(&event, record.version, occurred_at);
    if let Some(url) = watch.config.as_ref().and_then(|config| config.url.clone()) {
        for notification in notifications {
            let id = notification_id(account_id, record.version, &notification.key);
            let body = json!({
                "id": id.to_string(),
                "type": notification.kind.as_str(),
                "account_id": account_id,
                "occurred_at": slim.occurred_at,
                "position": record.position,
                "data": notification.data,
            });
            batch.rows.push(Row {
                id: id.to_string(),
                account_id: account_id.to_string(),
                position: record.position,
                kind: notification.kind.as_str(),
                url: url.clone(),
                body: body.to_string(),
            });
        }
    }
    Ok(Some(account_id.to_string()))
}
