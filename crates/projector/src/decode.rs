//! Turning a stored event into what the views fold: decoded once, shared by every view.

use std::sync::Arc;

use ledger_domain::envelope::{account_of_stream, SlimEnvelope};
use ledger_domain::events::{DecodeError, Event};
use ledger_domain::Instant;
use ledger_store::{GlobalPosition, RecordedEvent};

use crate::error::ProjectorError;

/// An event at its place in the global order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub position: GlobalPosition,
    /// When the store recorded it, in microseconds since the Unix epoch; `None` for events
    /// of streams the ledger does not own, whose payload it does not read.
    pub recorded_at_us: Option<i64>,
    /// `None` for an event outside the account streams: it only moves the checkpoint.
    pub account: Option<AccountEvent>,
}

/// An event of an account stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEvent {
    pub account_id: Arc<str>,
    /// The stream version: 1 for `account_opened`, then one more per event.
    pub version: u64,
    /// The schema version the event was stored at; `event` is upcast to the current one.
    pub schema_version: u32,
    /// When the event took effect (the envelope's `occurred_at`).
    pub occurred_at: Instant,
    pub event: Event,
}

/// Decodes a stored event, upcasting old schema versions.
pub fn decode(record: &RecordedEvent) -> Result<Decoded, ProjectorError> {
    let Some(account_id) = account_of_stream(&record.stream) else {
        return Ok(Decoded {
            position: record.position,
            recorded_at_us: None,
            account: None,
        });
    };
    let failed = |source: DecodeError| ProjectorError::Decode {
        position: record.position,
        stream: record.stream.clone(),
        source,
    };
    let slim = SlimEnvelope::parse(&record.payload).map_err(failed)?;
    if slim.version != record.version {
        return Err(failed(DecodeError::Envelope(format!(
            "the envelope says version {} but the store has it at version {}",
            slim.version, record.version
        ))));
    }
    let recorded_at = chrono::DateTime::parse_from_rfc3339(&slim.recorded_at).map_err(|error| {
        failed(DecodeError::Envelope(format!(
            "bad recorded_at {:?}: {error}",
            slim.recorded_at
        )))
    })?;
    let occurred_at: Instant = slim.occurred_at.parse().map_err(|error| {
        failed(DecodeError::Envelope(format!(
            "bad occurred_at {:?}: {error}",
            slim.occurred_at
        )))
    })?;
    let event = slim.event().map_err(failed)?;
    Ok(Decoded {
        position: record.position,
        recorded_at_us: Some(recorded_at.timestamp_micros()),
        account: Some(AccountEvent {
            account_id: Arc::from(account_id),
            version: record.version,
            schema_version: slim.schema_version,
            occurred_at,
            event,
        }),
    })
}
