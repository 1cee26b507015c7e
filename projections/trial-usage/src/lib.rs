//! The trial-usage view: one row per account holding its free trials by model — kind (runs
//! or window), limit, runs used, when the window opened and closes, and whether its close was
//! recorded. Status (`unused`, `active`, `exhausted`, `expired`) depends on the time asked,
//! so it is computed on read with [`ledger_domain::state::Trial::status`], never stored. A
//! row is exactly [`ledger_domain::state::Trials`]; this crate only says which events create
//! and change it and how a row is stored.
//!
//! Architecture invariant: no trial rule lives here. [`update`] is the domain's own fold
//! (`Trials::apply`), so the view cannot drift from the decisions. The runtime that feeds it
//! (ordering, checkpoints, version checks) is `ledger-projector`.

use ledger_domain::events::Event;
use ledger_domain::state::Trials;

/// The view's name: its file is `views/trial-usage.sqlite` and its metrics carry this label.
pub const NAME: &str = "trial-usage";

/// The shape of a stored row. Bump it whenever `Trials` serialises differently: a projector
/// that finds rows of an older shape rebuilds the view rather than misread them, and one that
/// finds a newer shape refuses the file.
pub const ROW_FORMAT: u32 = 1;

/// One account's row.
pub type Row = Trials;

/// The row `event` starts: `account_opened` starts an account with no trials yet (they are
/// granted on first use). Any other event starts nothing, since only `account_opened` can
/// begin an account stream.
pub fn create(event: &Event) -> Option<Trials> {
    match event {
        Event::AccountOpened(_) => Some(Trials::default()),
        _ => None,
    }
}

/// Folds `event` into an existing row. Trials do not depend on the stream version; the
/// parameter keeps the three views' folds alike.
pub fn update(row: &mut Trials, event: &Event, _version: u64) {
    row.apply(event);
}

/// Whether `event` can change a row; the runtime leaves rows alone for the others, so a
/// row keeps the version of the last event that changed it.
pub fn changes(event: &Event) -> bool {
    Trials::changed_by(event)
}

/// The view as a pure fold over one account's stream: `account_opened` creates the row, every
/// later event updates it.
pub fn apply(view: &mut Option<Trials>, event: &Event, version: u64) {
    match view {
        Some(row) => update(row, event, version),
        None => *view = create(event),
    }
}

/// Appends the stored form of `row` to `out`: compact JSON, deterministic (the trials sit in
/// a B-tree map by model), so the same history always stores the same bytes.
pub fn encode(row: &Trials, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, row)
}

/// Reads a stored row back.
pub fn decode(stored: &[u8]) -> Result<Trials, serde_json::Error> {
    serde_json::from_slice(stored)
}
