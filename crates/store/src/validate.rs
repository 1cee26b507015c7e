//! The request rules of the store contract (the conformance module's "Validation"), in one
//! place every adapter calls before it does any work, so that a malformed request is refused
//! the same way everywhere and never reaches a writer.

use std::collections::HashSet;

use crate::{ExpectedVersion, NewEvent, StoreError};

/// A stream name an append or a read may use: not empty, not a `$` system stream, no
/// control characters.
pub fn stream_name(stream: &str) -> Result<(), StoreError> {
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

/// A batch of events: at least one, each with a type, no event id twice (a retry could
/// then never match the stored batch).
pub fn batch(stream: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::Invalid(format!(
            "append to {stream} has no events"
        )));
    }
    if let Some(untyped) = events.iter().find(|event| event.event_type.is_empty()) {
        return Err(StoreError::Invalid(format!(
            "event {} has an empty event type",
            untyped.event_id
        )));
    }
    // Most appends carry one event; only batches need the duplicate check.
    if events.len() > 1 {
        let mut seen = HashSet::with_capacity(events.len());
        if let Some(duplicate) = events.iter().find(|event| !seen.insert(event.event_id)) {
            return Err(StoreError::Invalid(format!(
                "event id {} appears twice in one append",
                duplicate.event_id
            )));
        }
    }
    Ok(())
}

/// An append: its stream, its batch, and versions that stay at or below `max_version`, the
/// largest the adapter can store.
pub fn append(
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    max_version: u64,
) -> Result<(), StoreError> {
    stream_name(stream)?;
    batch(stream, events)?;
    let count = events.len() as u64;
    if expected.last_version() > max_version.saturating_sub(count) {
        return Err(StoreError::Invalid(format!(
            "append to {stream} at {expected} would pass the largest version"
        )));
    }
    Ok(())
}
