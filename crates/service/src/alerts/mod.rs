//! Alerts out (SPEC section 14), as the service sees them: the seam to the durable outbox the
//! alerts projector fills ([`Outbox`]), the guard every receiver URL passes ([`guard`]), the
//! `Ledger-Signature` header ([`signature`]) and the deliverer that drains the outbox with
//! retries ([`deliver`]).
//!
//! The service names no outbox implementation: the binary wires in the SQLite one
//! (`ledger-alerts`), as it does the projector's views.

pub mod deliver;
pub mod guard;
pub mod signature;

use std::time::Duration;

use async_trait::async_trait;
use ledger_domain::events::AlertsConfigured;
use serde::Serialize;

/// A notification waiting at the head of its account's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its place in the outbox: the account's notifications go out in this order.
    pub seq: i64,
    pub id: String,
    pub account_id: String,
    pub url: String,
    /// The JSON body, fixed when the notification was derived: every attempt sends the same
    /// bytes, `id` included.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the outbox received it, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// A notification the deliverer gave up on after retrying for the whole retry window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parked {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub position: u64,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: String,
}

/// What `GET .../alerts` shows from the outbox side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountAlerts {
    /// The settings in force, as the alerts projector has folded them.
    pub config: Option<AlertsConfigured>,
    pub pending: u64,
    pub delivered: u64,
    /// The most recent parked notifications, newest first.
    pub failed: Vec<Parked>,
}

/// How many notifications are in each state, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// The outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("alerts outbox: {0}")]
pub struct OutboxError(pub String);

/// How an attempt ended, as the outbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        at_ms: i64,
    },
    /// Failed; try again at `next_at_ms`.
    Retry {
        error: String,
        next_at_ms: i64,
    },
    /// Failed for the last time: parked as failed.
    Park {
        error: String,
        at_ms: i64,
    },
}

/// The durable outbox. Its methods block on local storage; async callers run them on the
/// blocking pool.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug + 'static {
    /// Up to `limit` notifications at the head of their account's queue and due by `now_ms`,
    /// skipping the accounts in `busy` (one attempt per account at a time keeps the order).
    fn due(&self, now_ms: i64, limit: usize, busy: &[String]) -> Result<Vec<Pending>, OutboxError>;
    /// Records how an attempt at `seq` ended.
    fn record(&self, seq: i64, attempt: &Attempt) -> Result<(), OutboxError>;
    /// The account's settings and notifications.
    fn account(&self, account_id: &str) -> Result<AccountAlerts, OutboxError>;
    fn counts(&self) -> Result<OutboxCounts, OutboxError>;
    /// Waits until the alerts projector has reached `position`; false on timeout.
    async fn wait_for(&self, position: u64, timeout: Duration) -> bool;
}
