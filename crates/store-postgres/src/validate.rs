//! Request validation, done on the caller's task so that malformed requests never reach the
//! writer task, where one bad value would fail a whole group commit: the store contract's
//! rules (`ledger_store::validate`), plus what PostgreSQL cannot store (a NUL in `text`).

use ledger_store::{validate, ExpectedVersion, NewEvent, StoreError};

/// Versions are stored as `bigint` (i64); nothing beyond that can be stored or matched.
const MAX_VERSION: u64 = i64::MAX as u64;

/// Checks a stream name given to `read_stream`.
pub(crate) fn stream_to_read(name: &str) -> Result<(), StoreError> {
    validate::stream_name(name)
}

/// Checks an append request.
pub(crate) fn append(
    name: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    validate::append(name, expected, events, MAX_VERSION)?;
    if let Some(event) = events.iter().find(|event| event.event_type.contains('\0')) {
        return Err(StoreError::Invalid(format!(
            "event {} has a nul character in its type, which postgresql text cannot hold",
            event.event_id
        )));
    }
    Ok(())
}
