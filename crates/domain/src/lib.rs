//! The credit rulebook of the Knouds ledger: catalog, events, account state, decisions and
//! the admission check, as pure deterministic functions. No IO, no async, no clock reads:
//! time is an argument, so the same inputs always give the same outputs.

pub mod admission;
pub mod alerts;
pub mod buckets;
pub mod catalog;
pub mod command;
pub mod credits;
pub mod decide;
pub mod envelope;
pub mod events;
pub mod explain;
pub mod insight;
pub mod records;
pub mod rejection;
pub mod state;
pub mod time;
pub mod upcast;
pub mod usage;

pub use admission::{admit, Admission, AdmissionNode, Blocked, NodeType};
pub use catalog::{Catalog, CatalogError, Tier};
pub use command::Command;
pub use credits::Credits;
pub use decide::{decide, Decision, Reply};
pub use events::Event;
pub use rejection::Rejection;
pub use state::Account;
pub use time::{DurationS, Instant};
