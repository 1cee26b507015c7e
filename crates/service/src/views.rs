//! What the service needs from the read side: the three views of an account and its usage,
//! answered from memory, and how far they have got. The service depends only on this seam: the binary
//! wires in the projector's views (crates/cli/src/views.rs), so the admission path stays a
//! memory lookup and the service knows no concrete read side.

use std::time::Duration;

use async_trait::async_trait;
use ledger_domain::state::Core;
use ledger_domain::usage::{UsageBy, UsageRange, UsageReport};
use ledger_domain::{Catalog, Instant};

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
    /// The account's usage in `range` from the usage view, if it exists there yet. Reported
    /// in place: a busy account's row is large, and a report needs only a few days of it.
    fn usage(
        &self,
        account_id: &str,
        range: &UsageRange,
        by: UsageBy,
        catalog: &Catalog,
    ) -> Option<UsageReport>;
    /// The position every view has reached.
    fn position(&self) -> Option<u64>;
    /// Waits until every view has reached `position`; false on timeout.
    async fn wait_for(&self, position: u64, timeout: Duration) -> bool;
    /// Accounts with something due at or before `now` (expiries, refreshes, hold timeouts).
    fn due_accounts(&self, now: Instant) -> Vec<String>;
    /// Each view's progress, for `/metrics`.
    fn status(&self) -> Vec<ViewStatus>;
}
