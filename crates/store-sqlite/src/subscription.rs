//! Catch-up subscriptions: page through the global order, then wait for new commits.
//!
//! A subscription wakes on the in-process writer's head notification (instant), and also
//! polls the file on a short timer, because appends of another process on the same file
//! notify nobody here. New events of the in-process writer are taken from its window of
//! recent commits ([`Recent`]) when it holds the very next position; the file otherwise.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledger_store::{GlobalPosition, RecordedEvent, StoreError, Subscription};
use tokio::sync::watch;

use crate::reader::{self, ReaderPool};
use crate::recent::Recent;

/// Events fetched per read while catching up.
const PAGE: usize = 512;

/// How often a caught-up subscription looks at the file for other processes' appends.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A subscription to all streams of one file.
#[derive(Debug)]
pub(crate) struct SqliteSubscription {
    readers: Arc<ReaderPool>,
    /// The writer's head position in this process; `None` when there is no writer here (or
    /// it stopped), in which case only polling finds new events.
    head: Option<watch::Receiver<Option<GlobalPosition>>>,
    /// The in-process writer's recent commits; `None` when there is no writer here.
    recent: Option<Arc<Recent>>,
    /// The file was read up to `after` since the last poll interval began.
    file_read: bool,
    /// Position of the last event returned: the checkpoint to resume after.
    after: Option<GlobalPosition>,
    /// Events read but not yet returned. `after` only moves when one is returned, so a
    /// cancelled `next` loses nothing.
    buffered: VecDeque<RecordedEvent>,
}

impl SqliteSubscription {
    pub(crate) fn new(
        readers: Arc<ReaderPool>,
        head: Option<watch::Receiver<Option<GlobalPosition>>>,
        recent: Option<Arc<Recent>>,
        after: Option<GlobalPosition>,
    ) -> Self {
        Self {
            readers,
            head,
            recent,
            file_read: false,
            after,
            buffered: VecDeque::new(),
        }
    }

    /// Waits until the in-process writer commits or the poll interval passes. True when the
    /// interval passed: the file may hold another process's appends.
    async fn wait_for_commit(&mut self) -> bool {
        let Some(head) = &mut self.head else {
            tokio::time::sleep(POLL_INTERVAL).await;
            return true;
        };
        let (writer_stopped, polled) = tokio::select! {
            changed = head.changed() => (changed.is_err(), false),
            () = tokio::time::sleep(POLL_INTERVAL) => (false, true),
        };
        if writer_stopped {
            self.head = None;
        }
        polled
    }

    /// Waits for a commit; after a poll interval the file is read again.
    async fn wait(&mut self) {
        if self.wait_for_commit().await {
            self.file_read = false;
        }
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.after = Some(event.position);
                return Ok(event);
            }
            // Marked as seen before reading, so a commit that lands during the read still
            // wakes the wait below instead of being slept through.
            if let Some(head) = &mut self.head {
                head.borrow_and_update();
            }
            let after = self.after;
            if let Some(recent) = &self.recent {
                if let Some(page) = recent.after(after, PAGE) {
                    self.buffered.extend(page);
                    continue;
                }
                // Past everything this process's writer committed, and the file had nothing
                // more when last read: only another process's append can be new, and the
                // poll looks for those.
                if self.file_read && recent.newest() <= after {
                    self.wait().await;
                    continue;
                }
            }
            let page = self
                .readers
                .run(move |connection| reader::read_all(connection, after, PAGE))
                .await?;
            if page.is_empty() {
                self.file_read = true;
                self.wait().await;
            } else {
                self.buffered.extend(page);
            }
        }
    }
}
