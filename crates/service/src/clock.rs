//! Where the service gets the time. The domain never reads a clock; the service reads this
//! one once per command and passes the instant in.

use std::fmt::Debug;

use ledger_domain::Instant;

/// A source of the current time.
pub trait Clock: Send + Sync + Debug + 'static {
    fn now(&self) -> Instant;
}

/// The system's UTC clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        chrono::Utc::now()
    }
}
