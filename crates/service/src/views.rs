//! What the service needs from the read side: the three views of an account, answered from
//! memory, and how far they have got. The projector crate provides the implementation; the
//! service depends only on this seam so the admission path stays a memory lookup.

use std::time::Duration;

use async_trait::async_trait;
use ledger_domain::decide::next_due_at;
use ledger_domain::state::Core;
use ledger_domain::Instant;

/// How far one view has got.
#[derive(Debug, Clone)]
pub struct ViewStatus {
    pub name: &'static str,
    pub position: Option<u64>,
    pub lag_events: u64,
    pub lag_ms: u64,
    pub events_applied: u64,
}

/// The read side, as the service queries it.
#[async_trait]
pub trait ReadModel: Send + Sync + std::fmt::Debug + 'static {
    /// The account's rows in the three views, if it exists there yet.
    fn account(&self, account_id: &str) -> Option<Core>;
    /// The position every view has reached.
    fn position(&self) -> Option<u64>;
    /// Waits until every view has reached `position`; false on timeout.
    async fn wait_for(&self, position: u64, timeout: Duration) -> bool;
    /// Accounts with something due at or before `now` (expiries, refreshes, hold timeouts).
    fn due_accounts(&self, now: Instant) -> Vec<String>;
    /// Each view's progress, for `/metrics`.
    fn status(&self) -> Vec<ViewStatus>;
}

/// The projector's in-memory views are the read model.
#[async_trait]
impl ReadModel for ledger_projector::Views {
    fn account(&self, account_id: &str) -> Option<Core> {
        ledger_projector::Views::account(self, account_id)
    }

    fn position(&self) -> Option<u64> {
        ledger_projector::Views::position(self)
    }

    async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        ledger_projector::Views::wait_for(self, position, timeout)
            .await
            .is_ok()
    }

    fn due_accounts(&self, now: Instant) -> Vec<String> {
        // Runs every second over every account: read the shared rows in place rather than
        // copying three rows per account.
        self.tier
            .snapshot()
            .into_iter()
            .filter_map(|(account_id, plan)| {
                let balance = self.balance.get(&account_id)?;
                let trials = self.trial_usage.get(&account_id)?;
                next_due_at(&plan.row, &balance.row, &trials.row, now)
                    .filter(|due_at| *due_at <= now)
                    .map(|_| account_id)
            })
            .collect()
    }

    fn status(&self) -> Vec<ViewStatus> {
        self.metrics()
            .into_iter()
            .map(|metrics| ViewStatus {
                name: metrics.view.as_str(),
                position: metrics.position,
                lag_events: metrics.lag_events,
                lag_ms: metrics.lag_ms,
                events_applied: metrics.events_applied,
            })
            .collect()
    }
}
