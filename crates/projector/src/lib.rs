//! Projectors: the read side of the ledger. They subscribe to the event store, fold every
//! event into the balance, trial-usage, tier and usage views (`projections/*`), keep each view in a
//! SQLite file next to them, and serve it from memory to the admission check.
//!
//! Code map:
//! - [`projection`]: the [`Projection`] trait and the four views; [`ViewSelection`].
//! - [`runtime`]: [`Projectors`] (start, metrics, side-by-side [`Projectors::rebuild`],
//!   stop), [`run`] for `ledger project` and [`spawn_embedded`] for `ledger serve`.
//! - `feeder` and `worker`: the reader task and the per-view threads that batch, commit and
//!   publish (the exactly-once argument is at the top of `worker`).
//! - [`storage`]: the view files, their checkpoint and format.
//! - [`handle`]: [`ViewHandle`] and [`Views`], the in-memory query side.
//! - [`follow`]: [`Views::follow_files`], views kept current from another process's files.
//! - [`metrics`]: the metrics snapshot, [`ViewMetrics`].
//!
//! Architecture invariants:
//! - No rule of the ledger lives here: rows change only through the views' folds, which are
//!   the domain's own.
//! - Queries never read the event store; only the projector does.
//! - A view file always holds exactly the events up to its checkpoint: rows and checkpoint
//!   commit together.

pub mod decode;
pub mod error;
mod feeder;
pub mod follow;
pub mod handle;
pub mod metrics;
pub mod projection;
pub mod runtime;
pub mod storage;
mod worker;

pub use error::{ProjectorError, WaitTimeout};
pub use follow::{FollowOptions, Follower};
pub use handle::{Versioned, ViewHandle, Views};
pub use metrics::{RebuildProgress, ViewMetrics};
pub use projection::{
    BalanceView, Projection, TierView, TrialUsageView, UnknownView, UsageView, ViewName,
    ViewSelection,
};
pub use runtime::{run, spawn_embedded, ProjectorConfig, Projectors, ViewHandles};
pub use worker::RebuildReport;
