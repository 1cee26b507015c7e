//! The trait a view implements for the runtime, the four views, and how a projector names
//! the ones it runs.
//!
//! The views' folds live in their own crates (`projections/*`), which depend on nothing but
//! the domain. The runtime depends on them, so the [`Projection`] impls sit here, each a
//! plain delegation: were the trait implemented in the view crates, they would depend on this
//! crate and this crate could not offer [`crate::Views`] or [`ViewSelection`] over them.

use std::fmt;
use std::str::FromStr;

use ledger_domain::events::Event;
use ledger_domain::state::{Balance, PlanState, Trials};
use ledger_domain::usage::{Stored, Usage};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::decode::AccountEvent;

/// One of the four views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViewName {
    Balance,
    TrialUsage,
    Tier,
    Usage,
}

impl ViewName {
    pub const ALL: [ViewName; 4] = [
        ViewName::Balance,
        ViewName::TrialUsage,
        ViewName::Tier,
        ViewName::Usage,
    ];

    /// The name on the command line, in file names and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewName::Balance => ledger_projection_balance::NAME,
            ViewName::TrialUsage => ledger_projection_trial_usage::NAME,
            ViewName::Tier => ledger_projection_tier::NAME,
            ViewName::Usage => ledger_projection_usage::NAME,
        }
    }
}

impl fmt::Display for ViewName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A view name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown view {0:?}: expected balance, trial-usage, tier, usage or all")]
pub struct UnknownView(pub String);

impl FromStr for ViewName {
    type Err = UnknownView;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ViewName::ALL
            .into_iter()
            .find(|view| view.as_str() == text)
            .ok_or_else(|| UnknownView(text.to_owned()))
    }
}

/// Which views a projector runs: `--view balance|trial-usage|tier|usage|all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewSelection {
    #[default]
    All,
    One(ViewName),
}

impl ViewSelection {
    pub fn contains(self, view: ViewName) -> bool {
        match self {
            ViewSelection::All => true,
            ViewSelection::One(one) => one == view,
        }
    }

    /// The selected views, in a fixed order.
    pub fn views(self) -> Vec<ViewName> {
        ViewName::ALL
            .into_iter()
            .filter(|view| self.contains(*view))
            .collect()
    }
}

impl FromStr for ViewSelection {
    type Err = UnknownView;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(ViewSelection::All),
            one => one.parse().map(ViewSelection::One),
        }
    }
}

impl fmt::Display for ViewSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewSelection::All => f.write_str("all"),
            ViewSelection::One(view) => view.fmt(f),
        }
    }
}

/// A view as the runtime sees it: a row per account, created by `account_opened` and folded
/// by every later event of the account's stream, stored as deterministic JSON.
///
/// Implementations are pure: the same events always give the same row and the same bytes.
/// Ordering, idempotence (the version check) and storage are the runtime's job.
pub trait Projection: Send + Sync + 'static {
    /// One account's row.
    type Row: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;

    const VIEW: ViewName;

    /// The shape of stored rows; see the view crates' `ROW_FORMAT`.
    const ROW_FORMAT: u32;

    /// The row `event` (an account's first) creates, or `None` if it creates none.
    fn create(event: &Event) -> Option<Self::Row>;

    /// Folds an account's next event into its row.
    fn update(row: &mut Self::Row, event: &AccountEvent);

    /// True for a view whose rows only some events change (a plan, trials): the runtime then
    /// leaves a row alone for any event [`Projection::changes`] rules out, without copying,
    /// encoding or storing it again, and the row keeps the version of the last event that
    /// changed it. The tier view rewrote every account's row on every charge (issue 18).
    const SPARSE: bool = false;

    /// Whether `event` can change a row. Only a [`Projection::SPARSE`] view says no.
    fn changes(_event: &Event) -> bool {
        true
    }

    /// Appends the stored form of `row` to `out`.
    fn encode(row: &Self::Row, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;

    /// Reads a stored row back.
    fn decode(stored: &[u8]) -> Result<Self::Row, serde_json::Error>;
}

/// The balance view (`projections/balance`).
#[derive(Debug, Clone, Copy)]
pub struct BalanceView;

/// The trial-usage view (`projections/trial-usage`).
#[derive(Debug, Clone, Copy)]
pub struct TrialUsageView;

/// The tier view (`projections/tier`).
#[derive(Debug, Clone, Copy)]
pub struct TierView;

/// The usage view (`projections/usage`).
#[derive(Debug, Clone, Copy)]
pub struct UsageView;

macro_rules! delegate {
    ($marker:ty, $view:ident, $row:ty, $krate:ident, |$row_arg:ident, $event:ident| $update:expr) => {
        delegate!($marker, $view, $row, $krate, |$row_arg, $event| $update, {});
    };
    ($marker:ty, $view:ident, $row:ty, $krate:ident, |$row_arg:ident, $event:ident| $update:expr, sparse) => {
        delegate!($marker, $view, $row, $krate, |$row_arg, $event| $update, {
            const SPARSE: bool = true;

            fn changes(event: &Event) -> bool {
                $krate::changes(event)
            }
        });
    };
    ($marker:ty, $view:ident, $row:ty, $krate:ident, |$row_arg:ident, $event:ident| $update:expr, { $($extra:tt)* }) => {
        impl Projection for $marker {
            type Row = $row;
            const VIEW: ViewName = ViewName::$view;
            const ROW_FORMAT: u32 = $krate::ROW_FORMAT;
            $($extra)*

            fn create(event: &Event) -> Option<$row> {
                $krate::create(event)
            }

            fn update($row_arg: &mut $row, $event: &AccountEvent) {
                $update
            }

            fn encode(row: &$row, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
                $krate::encode(row, out)
            }

            fn decode(stored: &[u8]) -> Result<$row, serde_json::Error> {
                $krate::decode(stored)
            }
        }
    };
}

// The views that keep state fold by stream version; usage also reads the day a run occurred
// and the schema version a charge was stored at.
delegate!(
    BalanceView,
    Balance,
    Balance,
    ledger_projection_balance,
    |row, event| ledger_projection_balance::update(row, &event.event, event.version)
);
delegate!(
    TrialUsageView,
    TrialUsage,
    Trials,
    ledger_projection_trial_usage,
    |row, event| ledger_projection_trial_usage::update(row, &event.event, event.version),
    sparse
);
delegate!(
    TierView,
    Tier,
    PlanState,
    ledger_projection_tier,
    |row, event| ledger_projection_tier::update(row, &event.event, event.version),
    sparse
);
delegate!(
    UsageView,
    Usage,
    Usage,
    ledger_projection_usage,
    |row, event| ledger_projection_usage::update(
        row,
        &event.event,
        Stored {
            version: event.version,
            schema_version: event.schema_version,
            occurred_at: event.occurred_at,
        }
    )
);
