//! Catch-up subscriptions on a connection of their own: page through the global order, then
//! wait for a notification (`LISTEN`) or a poll timer, whichever comes first.
//!
//! The poll is the fallback that keeps a subscription correct if a notification is lost (it
//! is never relied on for order: every wake-up just reads `position > last returned`). A
//! broken connection is replaced with backoff and reading resumes after the last event
//! returned, so nothing is skipped or repeated across reconnects.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledger_store::{GlobalPosition, RecordedEvent, StoreError, Subscription};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

use crate::error::{describe, is_transient, unavailable};
use crate::reader;
use crate::schema::{Sql, NOTIFY_CHANNEL};

/// Events fetched per read while catching up.
const PAGE: usize = 512;

/// How often a caught-up subscription reads anyway, in case a notification went missing.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A read that takes longer is taken for a dead connection (a server that vanished without
/// closing the socket would otherwise hang the subscription until TCP gives up).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// After failing this long without a single successful read, `next` reports `Unavailable`
/// (the caller resubscribes from its checkpoint, or reports the outage).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A connection listening for the store's notifications.
struct Live {
    client: Client,
    read_all: Statement,
    /// Bumped by the connection task on each notification for this schema; closed when the
    /// connection ends.
    wake: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a connection, starts listening, prepares the read.
async fn listen(config: &Config, sql: &Sql) -> Result<Live, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (wake_sender, wake) = watch::channel(0u64);
    let schema = sql.schema.clone();
    // The connection is driven here rather than by a plain `connection.await`, which would
    // drop notifications.
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if notification.payload() == schema {
                        wake_sender.send_modify(|count| *count = count.wrapping_add(1));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(error = %describe(&error), "subscription connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    let read_all = client.prepare(&sql.read_all).await?;
    Ok(Live {
        client,
        read_all,
        wake,
        task,
    })
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

/// A subscription to all streams of one schema.
#[derive(Debug)]
pub(crate) struct PostgresSubscription {
    config: Config,
    sql: Arc<Sql>,
    /// The connection, while it works.
    live: Option<Live>,
    /// Position of the last event returned: where reading resumes, also after a reconnect.
    after: Option<GlobalPosition>,
    /// Events read but not yet returned. `after` only moves when one is returned, so a
    /// cancelled `next` loses nothing.
    buffered: VecDeque<RecordedEvent>,
    backoff: Duration,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
}

impl PostgresSubscription {
    /// Subscribes after `after`, connecting at once so that a server that cannot be reached
    /// is reported now rather than on the first `next`.
    pub(crate) async fn start(
        config: Config,
        sql: Arc<Sql>,
        after: Option<GlobalPosition>,
    ) -> Result<Self, StoreError> {
        let live = listen(&config, &sql)
            .await
            .map_err(|error| unavailable("opening the subscription's connection", &error))?;
        Ok(Self {
            config,
            sql,
            live: Some(live),
            after,
            buffered: VecDeque::new(),
            backoff: FIRST_BACKOFF,
            failing_since: None,
        })
    }

    /// Reads the next page into `buffered`, or waits for a commit when there is none.
    /// `Err` only for a failure that retrying on a new connection would not cure.
    async fn fill(&mut self) -> Result<(), StoreError> {
        let live = match &mut self.live {
            Some(live) => live,
            None => match listen(&self.config, &self.sql).await {
                Ok(live) => {
                    tracing::info!(after = ?self.after, "subscription reconnected");
                    self.live.insert(live)
                }
                Err(error) => return self.failed(Failure::Postgres(error)).await,
            },
        };
        // Marked as seen before reading, so a commit that lands during the read still wakes
        // the wait below instead of being slept through.
        live.wake.borrow_and_update();
        let read = tokio::time::timeout(
            READ_TIMEOUT,
            reader::read_all(&live.client, &live.read_all, self.after, PAGE),
        )
        .await;
        let page = match read {
            Ok(Ok(page)) => page,
            Ok(Err(error)) => return self.failed(Failure::Postgres(error)).await,
            Err(_) => return self.failed(Failure::TimedOut).await,
        };
        self.backoff = FIRST_BACKOFF;
        self.failing_since = None;
        if !page.is_empty() {
            self.buffered.extend(page);
            return Ok(());
        }
        let connection_ended = tokio::select! {
            changed = live.wake.changed() => changed.is_err(),
            () = tokio::time::sleep(POLL_INTERVAL) => false,
        };
        if connection_ended {
            // Reconnect on the next turn; the read there finds whatever committed meanwhile.
            self.live = None;
        }
        Ok(())
    }

    /// Drops the connection and waits before the next attempt, or gives up on a failure
    /// that is not about the connection or that has lasted too long.
    async fn failed(&mut self, failure: Failure) -> Result<(), StoreError> {
        self.live = None;
        let message = match &failure {
            Failure::Postgres(error) => describe(error),
            Failure::TimedOut => format!("a read took longer than {READ_TIMEOUT:?}"),
        };
        if let Failure::Postgres(error) = &failure {
            if !is_transient(error) {
                return Err(StoreError::Unavailable(format!(
                    "subscription after {:?}: {message}",
                    self.after
                )));
            }
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= GIVE_UP_AFTER {
            self.failing_since = None;
            return Err(StoreError::Unavailable(format!(
                "subscription could not read from postgresql for {GIVE_UP_AFTER:?}: {message}"
            )));
        }
        tracing::warn!(%message, retry_in = ?self.backoff, "subscription connection failed");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

/// Why a read did not come back.
enum Failure {
    Postgres(tokio_postgres::Error),
    TimedOut,
}

#[async_trait]
impl Subscription for PostgresSubscription {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.after = Some(event.position);
                return Ok(event);
            }
            self.fill().await?;
        }
    }
}
