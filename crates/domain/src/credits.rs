//! Credits: whole, non-negative amounts with checked arithmetic. No floats anywhere.

use std::fmt;
use std::iter::Sum;

use serde::{Deserialize, Serialize};

/// An amount of credits. Never negative; every operation that could overflow or go below
/// zero is checked and returns `None` instead.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Credits(u64);

impl Credits {
    pub const ZERO: Credits = Credits(0);
    /// The largest amount a single command may carry: well inside the 2^53 that JSON clients
    /// written in JavaScript can represent exactly.
    pub const MAX_COMMAND: Credits = Credits(1_000_000_000_000);

    pub const fn new(amount: u64) -> Self {
        Credits(amount)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    /// `self + other`, capped at `u64::MAX`. For reporting amounts (a balance after a
    /// return); the ledger's own totals assert instead, see `buckets`.
    pub fn saturating_add(self, other: Credits) -> Credits {
        Credits(self.0.saturating_add(other.0))
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    pub fn checked_mul(self, factor: u64) -> Option<Credits> {
        self.0.checked_mul(factor).map(Credits)
    }

    /// `self * percent / 100`, rounded down, checked.
    pub fn checked_percent(self, percent: u64) -> Option<Credits> {
        self.0
            .checked_mul(percent)
            .map(|scaled| Credits(scaled / 100))
    }

    pub fn min(self, other: Credits) -> Credits {
        Credits(self.0.min(other.0))
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Sums amounts that are known to fit: the ledger never holds more than `u64::MAX` credits
/// because every amount entering it is capped at [`Credits::MAX_COMMAND`] and added with
/// checks. A saturating sum keeps reporting code total even if that belief were wrong.
impl Sum for Credits {
    fn sum<I: Iterator<Item = Credits>>(iter: I) -> Self {
        Credits(iter.fold(0u64, |acc, c| acc.saturating_add(c.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Credits::new(5).checked_sub(Credits::new(6)), None);
        assert_eq!(Credits::new(u64::MAX).checked_add(Credits::new(1)), None);
        assert_eq!(Credits::new(u64::MAX).checked_mul(2), None);
        assert_eq!(
            Credits::new(5000).checked_percent(120),
            Some(Credits::new(6000))
        );
        assert_eq!(
            Credits::new(7).checked_sub(Credits::new(2)),
            Some(Credits::new(5))
        );
    }
}
