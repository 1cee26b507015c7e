//! Input checks every handler shares: ids, free text, amounts and periods.

use crate::credits::Credits;
use crate::rejection::Rejection;
use crate::time::Instant;

/// Caller-chosen ids and references are at most this long.
pub const ID_LEN_MAX: usize = 128;
/// Free text (reasons, company names) is at most this long.
pub const TEXT_LEN_MAX: usize = 500;

/// Whether `account_id` is 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_account_id(account_id: &str) -> bool {
    (1..=64).contains(&account_id.len())
        && account_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > ID_LEN_MAX || value.chars().any(char::is_control) {
        return Err(Rejection::invalid(format!(
            "{field} must be 1 to {ID_LEN_MAX} characters without control characters"
        )));
    }
    Ok(())
}

pub(super) fn check_text(field: &str, value: &str) -> Result<(), Rejection> {
    if value.trim().is_empty() || value.len() > TEXT_LEN_MAX {
        return Err(Rejection::invalid(format!(
            "{field} must be 1 to {TEXT_LEN_MAX} characters"
        )));
    }
    Ok(())
}

pub(super) fn check_amount(field: &str, amount: u64) -> Result<Credits, Rejection> {
    if amount == 0 || amount > Credits::MAX_COMMAND.get() {
        return Err(Rejection::invalid(format!(
            "{field} must be between 1 and {}",
            Credits::MAX_COMMAND
        )));
    }
    Ok(Credits::new(amount))
}

pub(super) fn check_period(start: Instant, end: Instant) -> Result<(), Rejection> {
    if end <= start {
        return Err(Rejection::invalid("period_end must be after period_start"));
    }
    Ok(())
}
