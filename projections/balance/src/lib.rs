//! The balance view: one row per account saying where its credits sit — the allowance bucket
//! of the current period, top-up lots and grants with their expiries, open holds (held
//! credits) and the running totals. A row is exactly [`ledger_domain::state::Balance`]; this
//! crate only says which events create and change it and how a row is stored.
//!
//! Architecture invariant: no credit rule lives here. [`update`] is the domain's own fold
//! (`Balance::apply`), the code `decide` itself folds with, so the view cannot drift from the
//! decisions. The runtime that feeds it (ordering, checkpoints, version checks) is
//! `ledger-projector`.

use ledger_domain::events::Event;
use ledger_domain::state::Balance;

/// The view's name: its file is `views/balance.sqlite` and its metrics carry this label.
pub const NAME: &str = "balance";

/// The shape of a stored row. Bump it whenever `Balance` serialises differently: a projector
/// that finds rows of an older shape rebuilds the view rather than misread them, and one that
/// finds a newer shape refuses the file.
pub const ROW_FORMAT: u32 = 2;

/// One account's row.
pub type Row = Balance;

/// The row `event` starts: `account_opened` opens the first allowance. Any other event starts
/// nothing, since only `account_opened` can begin an account stream.
pub fn create(event: &Event) -> Option<Balance> {
    match event {
        Event::AccountOpened(data) => Some(Balance::opened(data)),
        _ => None,
    }
}

/// Folds `event`, the stream's `version`-th, into an existing row.
pub fn update(row: &mut Balance, event: &Event, version: u64) {
    row.apply(event, version);
}

/// The view as a pure fold over one account's stream: `account_opened` creates the row, every
/// later event updates it.
pub fn apply(view: &mut Option<Balance>, event: &Event, version: u64) {
    match view {
        Some(row) => update(row, event, version),
        None => *view = create(event),
    }
}

/// Appends the stored form of `row` to `out`: compact JSON. It is deterministic — `Balance`
/// holds only structs, vectors in event order and B-tree maps — so the same history always
/// stores the same bytes, which is what lets a rebuilt view be compared byte for byte with a
/// live one.
pub fn encode(row: &Balance, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, row)
}

/// Reads a stored row back.
pub fn decode(stored: &[u8]) -> Result<Balance, serde_json::Error> {
    serde_json::from_slice(stored)
}
