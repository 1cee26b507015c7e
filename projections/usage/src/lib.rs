//! The usage view: one row per account with its runs and credits per UTC day and model,
//! charges net of refunds and trial runs at 0 credits (SPEC section 13). A row is exactly
//! [`ledger_domain::usage::Usage`]; this crate only says which events create and change it
//! and how a row is stored. The usage endpoint reads it, so a report never scans a stream.
//!
//! Architecture invariant: no ledger rule lives here. [`update`] is the domain's own fold
//! (`Usage::apply`). Unlike the other views it needs more of each envelope than the stream
//! version ([`Stored`]): usage is counted on the day a run happened (`occurred_at`), which
//! the charge events do not repeat, and a charge's stored schema version says whether its
//! refund will name it.

use ledger_domain::events::Event;
use ledger_domain::usage::{Stored, Usage};

/// The view's name: its file is `views/usage.sqlite` and its metrics carry this label.
pub const NAME: &str = "usage";

/// The shape of a stored row. Bump it whenever `Usage` serialises differently: a projector
/// that finds rows of an older shape rebuilds the view rather than misread them.
/// Format 2: charges are no longer remembered by id, only their days by stream version.
pub const ROW_FORMAT: u32 = 2;

/// One account's row.
pub type Row = Usage;

/// The row `event` starts: `account_opened` starts an empty one. Any other event starts
/// nothing, since only `account_opened` can begin an account stream.
pub fn create(event: &Event) -> Option<Usage> {
    match event {
        Event::AccountOpened(_) => Some(Usage::default()),
        _ => None,
    }
}

/// Folds `event`, stored as `stored` says, into an existing row.
pub fn update(row: &mut Usage, event: &Event, stored: Stored) {
    row.apply(event, stored);
}

/// The view as a pure fold over one account's stream.
pub fn apply(view: &mut Option<Usage>, event: &Event, stored: Stored) {
    match view {
        Some(row) => update(row, event, stored),
        None => *view = create(event),
    }
}

/// Appends the stored form of `row` to `out`: compact JSON, deterministic since `Usage`
/// holds only B-tree maps, so a rebuilt view stores the same bytes as the live one.
pub fn encode(row: &Usage, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, row)
}

/// Reads a stored row back.
pub fn decode(stored: &[u8]) -> Result<Usage, serde_json::Error> {
    serde_json::from_slice(stored)
}
