//! The tier view: one row per account holding its plan — tier, billing (monthly, annual or
//! none), scope, the unlimited flag, the allowance each refresh gives, the subscription period
//! and its anchor, and business verification. A row is exactly
//! [`ledger_domain::state::PlanState`]; this crate only says which events create and change it
//! and how a row is stored.
//!
//! Architecture invariant: no plan rule lives here. [`update`] is the domain's own fold
//! (`PlanState::apply`), so the view cannot drift from the decisions. The runtime that feeds
//! it (ordering, checkpoints, version checks) is `ledger-projector`.

use ledger_domain::events::Event;
use ledger_domain::state::PlanState;

/// The view's name: its file is `views/tier.sqlite` and its metrics carry this label.
pub const NAME: &str = "tier";

/// The shape of a stored row. Bump it whenever `PlanState` serialises differently: a
/// projector that finds rows of an older shape rebuilds the view rather than misread them,
/// and one that finds a newer shape refuses the file.
pub const ROW_FORMAT: u32 = 1;

/// One account's row.
pub type Row = PlanState;

/// The row `event` starts: `account_opened` puts the account on the free plan. Any other
/// event starts nothing, since only `account_opened` can begin an account stream.
pub fn create(event: &Event) -> Option<PlanState> {
    match event {
        Event::AccountOpened(data) => Some(PlanState::opened(data)),
        _ => None,
    }
}

/// Folds `event` into an existing row. The plan does not depend on the stream version; the
/// parameter keeps the three views' folds alike.
pub fn update(row: &mut PlanState, event: &Event, _version: u64) {
    row.apply(event);
}

/// Whether `event` can change a row; the runtime leaves rows alone for the others, so a
/// row keeps the version of the last event that changed it.
pub fn changes(event: &Event) -> bool {
    PlanState::changed_by(event)
}

/// The view as a pure fold over one account's stream: `account_opened` creates the row, every
/// later event updates it.
pub fn apply(view: &mut Option<PlanState>, event: &Event, version: u64) {
    match view {
        Some(row) => update(row, event, version),
        None => *view = create(event),
    }
}

/// Appends the stored form of `row` to `out`: compact JSON, deterministic (structs and enums
/// only), so the same history always stores the same bytes.
pub fn encode(row: &PlanState, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, row)
}

/// Reads a stored row back.
pub fn decode(stored: &[u8]) -> Result<PlanState, serde_json::Error> {
    serde_json::from_slice(stored)
}
