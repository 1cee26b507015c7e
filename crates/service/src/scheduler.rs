//! The ledger's own scheduler: anniversary refreshes of free and annual accounts, top-up and
//! grant expiries, hold timeouts and trial-window closes. It asks the views which accounts
//! have something due and sends each a `Tick`, which the domain turns into the due events.

use std::sync::Arc;
use std::time::Duration;

use ledger_domain::Command;
use tracing::{debug, warn};

use crate::ledger::Ledger;
use crate::views::ReadModel;

/// How often the scheduler looks for due work.
pub const SCHEDULER_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many accounts are ticked per round; the rest wait for the next round.
const TICKS_PER_ROUND_MAX: usize = 10_000;

/// Ticks every account with something due now. Returns how many events were written.
pub async fn run_once(ledger: &Ledger, views: &dyn ReadModel) -> usize {
    let now = ledger.now();
    let mut written = 0;
    for account_id in views
        .due_accounts(now)
        .into_iter()
        .take(TICKS_PER_ROUND_MAX)
    {
        match ledger
            .execute(&account_id, &Command::Tick, "scheduler")
            .await
        {
            Ok(outcome) => {
                if !outcome.written.is_empty() {
                    debug!(
                        account_id,
                        events = outcome.written.len(),
                        "scheduled events written"
                    );
                }
                written += outcome.written.len();
            }
            Err(err) => warn!(account_id, error = %err, "scheduled tick failed"),
        }
    }
    written
}

/// Runs until `shutdown` resolves.
pub async fn run(
    ledger: Ledger,
    views: Arc<dyn ReadModel>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(SCHEDULER_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = interval.tick() => {
                run_once(&ledger, views.as_ref()).await;
            }
        }
    }
}
