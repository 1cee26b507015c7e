//! Turning a stored event into what the views fold: decoded once, shared by every view.

use std::sync::Arc;

use ledger_domain::envelope::{account_of_stream, Envelope, SlimEnvelope};
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

/// Decodes a stored event, upcasting old schema versions. An event that comes with the
/// envelope its appender sealed (from the writer of this process) is taken from that
/// instead of being parsed again.
pub fn decode(record: &RecordedEvent) -> Result<Decoded, ProjectorError> {
    let Some(account_id) = account_of_stream(&record.stream) else {
        return Ok(Decoded {
            position: record.position,
            recorded_at_us: None,
            account: None,
        });
    };
    let sealed = record
        .attachment
        .as_ref()
        .and_then(|attachment| attachment.0.downcast_ref::<Envelope>())
        .filter(|envelope| envelope.version == record.version && envelope.stream == record.stream);
    if let Some(envelope) = sealed {
        return Ok(Decoded {
            position: record.position,
            recorded_at_us: Some(envelope.recorded_at.timestamp_micros()),
            account: Some(AccountEvent {
                account_id: Arc::from(account_id),
                version: envelope.version,
                schema_version: envelope.schema_version,
                occurred_at: envelope.occurred_at,
                event: envelope.event.clone(),
            }),
        });
    }
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

#[cfg(test)]
mod tests {
    use ledger_domain::envelope::{seal, Cause, GENESIS_HASH};
    use ledger_store::Attachment;

    use super::*;

    /// What the feed takes from a sealed envelope equals what it parses from the payload.
    #[test]
    fn an_attached_envelope_decodes_as_its_payload_does() {
        let opened_at: Instant = "2026-11-27T10:00:00.123456Z".parse().unwrap();
        let recorded_at: Instant = "2026-11-27T10:00:00.5Z".parse().unwrap();
        let catalog = ledger_domain::Catalog::shipped();
        let opened = ledger_domain::decide::decide(
            &ledger_domain::Account::new("a1"),
            &catalog,
            &ledger_domain::Command::OpenAccount,
            opened_at,
        )
        .unwrap();
        let cause = Cause {
            command_id: "open".into(),
            actor: "billing".into(),
        };
        let sealed = seal(
            "account-a1",
            0,
            GENESIS_HASH,
            &cause,
            opened_at,
            recorded_at,
            opened.events,
        );
        assert!(!sealed.is_empty());
        for (index, (envelope, payload)) in sealed.into_iter().enumerate() {
            let mut record = RecordedEvent {
                stream: "account-a1".into(),
                version: envelope.version,
                position: 40 + index as u64,
                event_id: envelope.event_id,
                event_type: envelope.event.type_name().into(),
                payload,
                attachment: None,
            };
            let parsed = decode(&record).unwrap();
            record.attachment = Some(Attachment(Arc::new(envelope.clone())));
            assert_eq!(decode(&record).unwrap(), parsed);
            // An attachment for another place in the stream is not trusted: the payload is.
            let mut elsewhere = envelope.clone();
            elsewhere.version += 1;
            elsewhere.occurred_at = recorded_at;
            record.attachment = Some(Attachment(Arc::new(elsewhere)));
            assert_eq!(decode(&record).unwrap(), parsed);
        }
    }
}
