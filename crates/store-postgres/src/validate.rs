//! Request validation, done on the caller's task so that malformed requests never reach the
//! writer task, where one bad value would fail a whole group commit. The rules are the
//! conformance suite's, plus what PostgreSQL cannot store (a NUL in `text`).

use std::collections::HashSet;

use ledger_store::{ExpectedVersion, NewEvent, StoreError};

/// Versions are stored as `bigint` (i64); nothing beyond that can be stored or matched.
const MAX_VERSION: u64 = i64::MAX as u64;

/// Checks a stream name an append or read names.
fn stream(stream: &str) -> Result<(), StoreError> {
    if stream.is_empty() {
        return Err(StoreError::Invalid("the stream name is empty".into()));
    }
    if stream.starts_with('$') {
        return Err(StoreError::Invalid(format!(
            "stream name {stream:?} starts with `$`, which is reserved for system streams"
        )));
    }
    if stream.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "stream name {stream:?} contains a control character"
        )));
    }
    Ok(())
}

/// Checks a stream name given to `read_stream`.
pub(crate) fn stream_to_read(name: &str) -> Result<(), StoreError> {
    stream(name)
}

/// Checks an append request.
pub(crate) fn append(
    name: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    stream(name)?;
    if events.is_empty() {
        return Err(StoreError::Invalid(format!(
            "append to {name} has no events"
        )));
    }
    let count = events.len() as u64;
    if expected.last_version() > MAX_VERSION - count {
        return Err(StoreError::Invalid(format!(
            "append to {name} at {expected} would pass the largest version"
        )));
    }
    for event in events {
        if event.event_type.is_empty() {
            return Err(StoreError::Invalid(format!(
                "event {} has an empty event type",
                event.event_id
            )));
        }
        if event.event_type.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "event {} has a nul character in its type, which postgresql text cannot hold",
                event.event_id
            )));
        }
    }
    // Most appends carry one event; only batches need the duplicate check.
    if events.len() > 1 {
        let mut seen = HashSet::with_capacity(events.len());
        for event in events {
            if !seen.insert(event.event_id) {
                return Err(StoreError::Invalid(format!(
                    "event id {} appears twice in one append",
                    event.event_id
                )));
            }
        }
    }
    Ok(())
}
