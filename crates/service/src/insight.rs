//! The insight reads of SPEC section 13 that are not a view lookup: the balance over time,
//! folded in one pass over the account's stream as it is read page by page.

use ledger_domain::envelope::stream_name;
use ledger_domain::explain::{HistoryFold, HistoryRange, Point};
use ledger_store::EventStore;

use crate::ledger::CommandError;
use crate::pages::read_stream_events;

/// The balance of `account_id` at every instant of `range`, each point what explain answers
/// for that instant; `None` when the account has no stream. Reading stops at the first event
/// after the last point.
pub async fn account_history(
    store: &dyn EventStore,
    account_id: &str,
    range: &HistoryRange,
) -> Result<Option<Vec<Point>>, CommandError> {
    let mut fold = HistoryFold::new(range);
    let mut events = 0u64;
    read_stream_events(store, &stream_name(account_id), |occurred_at, event| {
        events += 1;
        fold.push(occurred_at, &event)
    })
    .await?;
    Ok((events > 0).then(|| fold.finish()))
}
