//! The query side: in-memory views the admission check reads in microseconds, kept current by
//! the projector (or by following its files), never by reading the event streams.
//!
//! A [`ViewHandle`] is cheap to clone (one `Arc`). Rows are shared as `Arc`s: the projector
//! publishes a batch by swapping in new `Arc`s for the rows it changed, under a write lock
//! held only for those inserts, and only then advances the position. So a reader that saw
//! position `P` (or waited for it) sees every row as of at least `P`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ledger_domain::state::{Balance, Core, PlanState, Trials};
use ledger_domain::usage::Usage;
use ledger_store::GlobalPosition;
use tokio::sync::watch;

use crate::error::WaitTimeout;
use crate::metrics::{now_us, HeadPosition, ViewMetrics, ViewStats};
use crate::projection::ViewName;

/// A row with the place in its stream it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<R> {
    /// The stream version of the last event folded into the row.
    pub version: u64,
    /// The global position of that event.
    pub changed_at_position: GlobalPosition,
    pub row: R,
}

/// Rows by account id. Account ids are chosen by callers, so the hasher is seeded at random.
pub(crate) type RowMap<R> = HashMap<Arc<str>, Arc<Versioned<R>>, foldhash::quality::RandomState>;

/// A row as published: its account id and the shared row.
pub(crate) type SharedRow<R> = (Arc<str>, Arc<Versioned<R>>);

pub(crate) fn new_row_map<R>() -> RowMap<R> {
    RowMap::with_hasher(foldhash::quality::RandomState::default())
}

struct Shared<R> {
    view: ViewName,
    rows: RwLock<RowMap<R>>,
    position: watch::Sender<Option<GlobalPosition>>,
    stats: ViewStats,
    head: Arc<HeadPosition>,
}

/// One view, in memory.
pub struct ViewHandle<R> {
    shared: Arc<Shared<R>>,
}

impl<R> Clone for ViewHandle<R> {
    fn clone(&self) -> Self {
        ViewHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: Clone> fmt::Debug for ViewHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewHandle")
            .field("view", &self.shared.view)
            .field("position", &self.position())
            .field("rows", &self.len())
            .finish()
    }
}

impl<R: Clone> ViewHandle<R> {
    pub(crate) fn new(view: ViewName, head: Arc<HeadPosition>) -> Self {
        let (position, _) = watch::channel(None);
        ViewHandle {
            shared: Arc::new(Shared {
                view,
                rows: RwLock::new(new_row_map()),
                position,
                stats: ViewStats::default(),
                head,
            }),
        }
    }

    // A panic while holding the lock can only come from a bug between two map operations;
    // the map itself stays valid, so readers carry on rather than fail every query.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, RowMap<R>> {
        self.shared
            .rows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RowMap<R>> {
        self.shared
            .rows
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn view(&self) -> ViewName {
        self.shared.view
    }

    /// An account's row and its version, shared (no copy).
    pub fn get(&self, account_id: &str) -> Option<Arc<Versioned<R>>> {
        self.read().get(account_id).cloned()
    }

    /// A copy of an account's row.
    pub fn row(&self, account_id: &str) -> Option<R> {
        self.read()
            .get(account_id)
            .map(|versioned| versioned.row.clone())
    }

    /// Accounts in the view.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row, sorted by account id: for reconciliation and tests.
    pub fn snapshot(&self) -> Vec<(String, Arc<Versioned<R>>)> {
        let mut rows: Vec<_> = self
            .read()
            .iter()
            .map(|(account_id, row)| (account_id.to_string(), Arc::clone(row)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Position of the last event the view reflects; `None` before the first.
    pub fn position(&self) -> Option<GlobalPosition> {
        *self.shared.position.borrow()
    }

    /// A receiver that sees every change of [`ViewHandle::position`].
    pub fn watch_position(&self) -> watch::Receiver<Option<GlobalPosition>> {
        self.shared.position.subscribe()
    }

    /// Waits until the view reflects `position` (the API's `min_position`), at most `timeout`.
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let mut receiver = self.shared.position.subscribe();
        let reached = tokio::time::timeout(
            timeout,
            receiver.wait_for(|at| at.is_some_and(|at| at >= position)),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            // The sender lives as long as this handle, so only the timeout gets here.
            _ => Err(WaitTimeout {
                wanted: position,
                reached: self.position(),
            }),
        }
    }

    /// The view's projection metrics, now.
    pub fn metrics(&self) -> ViewMetrics {
        self.shared.stats.snapshot(
            self.shared.view,
            self.position(),
            self.shared.head.get(),
            self.len(),
            now_us(),
        )
    }

    pub(crate) fn stats(&self) -> &ViewStats {
        &self.shared.stats
    }

    pub(crate) fn head(&self) -> &Arc<HeadPosition> {
        &self.shared.head
    }

    /// Makes a committed batch visible: the changed rows first, then the position.
    pub(crate) fn publish(
        &self,
        changed: impl IntoIterator<Item = SharedRow<R>>,
        position: Option<GlobalPosition>,
    ) {
        {
            let mut rows = self.write();
            for (account_id, row) in changed {
                rows.insert(account_id, row);
            }
        }
        self.shared.position.send_replace(position);
    }

    /// Replaces every row at once (start-up, a rebuild's switch-over, a follower's reload):
    /// readers see either the old view or the new one, never an empty one.
    pub(crate) fn replace_all(&self, rows: RowMap<R>, position: Option<GlobalPosition>) {
        let old = std::mem::replace(&mut *self.write(), rows);
        self.shared.position.send_replace(position);
        // Dropped outside the lock: freeing a large map takes a while.
        drop(old);
    }
}

/// The views the reads answer from: the three the admission check and the account summary
/// read, and usage.
///
/// The views advance independently, each consistent in itself; [`Views::position`] is the
/// position all four have reached.
#[derive(Debug, Clone)]
pub struct Views {
    pub balance: ViewHandle<Balance>,
    pub trial_usage: ViewHandle<Trials>,
    pub tier: ViewHandle<PlanState>,
    pub usage: ViewHandle<Usage>,
}

impl Views {
    /// Four empty views sharing one head position.
    pub(crate) fn empty(head: Arc<HeadPosition>) -> Views {
        Views {
            balance: ViewHandle::new(ViewName::Balance, Arc::clone(&head)),
            trial_usage: ViewHandle::new(ViewName::TrialUsage, Arc::clone(&head)),
            tier: ViewHandle::new(ViewName::Tier, Arc::clone(&head)),
            usage: ViewHandle::new(ViewName::Usage, head),
        }
    }

    /// An account's rows from all three views, or `None` if any view does not know the
    /// account (yet).
    pub fn account(&self, account_id: &str) -> Option<Core> {
        Some(Core {
            plan: self.tier.row(account_id)?,
            balance: self.balance.row(account_id)?,
            trials: self.trial_usage.row(account_id)?,
        })
    }

    /// The position all four views have reached.
    pub fn position(&self) -> Option<GlobalPosition> {
        [
            self.balance.position(),
            self.trial_usage.position(),
            self.tier.position(),
            self.usage.position(),
        ]
        .into_iter()
        .min()
        .flatten()
    }

    /// Waits until all four views reflect `position`, at most `timeout` in all.
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let timed_out = |_| WaitTimeout {
            wanted: position,
            reached: self.position(),
        };
        self.balance
            .wait_for(position, left())
            .await
            .map_err(timed_out)?;
        self.trial_usage
            .wait_for(position, left())
            .await
            .map_err(timed_out)?;
        self.tier
            .wait_for(position, left())
            .await
            .map_err(timed_out)?;
        self.usage
            .wait_for(position, left())
            .await
            .map_err(timed_out)
    }

    /// Metrics of the four views.
    pub fn metrics(&self) -> Vec<ViewMetrics> {
        vec![
            self.balance.metrics(),
            self.trial_usage.metrics(),
            self.tier.metrics(),
            self.usage.metrics(),
        ]
    }
}
