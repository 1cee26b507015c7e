//! The alerts projector (SPEC section 14): follows the event store like the views do, folds
//! each account that configured alerts with the domain's
//! [`ledger_domain::alerts::AlertWatch`], and writes the
//! notifications it derives into a durable SQLite outbox in the same transaction as its
//! checkpoint. The service's deliverer drains the outbox through
//! [`ledger_service::alerts::Outbox`], which [`SqliteOutbox`] implements.
//!
//! Architecture invariant: nothing here decides what is notified (the domain's fold does) or
//! how it is sent (the service's deliverer does); this crate is storage and ordering.

mod outbox;
mod projector;

pub use outbox::{Batch, Row, SqliteOutbox, Watches};
pub use projector::run;

/// The outbox's file name under the data directory.
pub const FILE_NAME: &str = "alerts.sqlite";

/// Why the alerts projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("alerts outbox: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("alerts outbox row: {0}")]
    Json(#[from] serde_json::Error),
    #[error("alerts outbox: {0}")]
    Format(String),
    #[error("alerts projector: event at position {position} unreadable: {message}")]
    Decode { position: u64, message: String },
    #[error("alerts projector: {0}")]
    Store(#[from] ledger_store::StoreError),
    #[error("alerts projector: {0}")]
    Join(String),
}
