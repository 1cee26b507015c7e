//! Reading the store page by page: the one loop every reader of a stream or of the global
//! order uses, so paging, decoding and "the stream is corrupt" are written once.

use ledger_domain::envelope::{decode_payload_event, Envelope, RawEnvelope, SlimEnvelope};
use ledger_domain::events::Event;
use ledger_domain::Instant;
use ledger_store::{EventStore, GlobalPosition, RecordedEvent};

use crate::ledger::CommandError;

/// Events read per page when loading a stream.
const STREAM_PAGE: usize = 4_096;
/// Events read per page in global order.
pub const ALL_PAGE: usize = 1_000;

/// Reads `stream` from `from_version` page by page, decoding each event once (old versions
/// upcast), and hands each to `visit` until it answers false or the stream ends. An `Err`
/// from `visit` reports the stream as corrupt.
pub async fn read_stream_pages(
    store: &dyn EventStore,
    stream: &str,
    from_version: u64,
    mut visit: impl FnMut(&RecordedEvent, RawEnvelope, Envelope) -> Result<bool, String>,
) -> Result<(), CommandError> {
    read_stream_decoded(
        store,
        stream,
        from_version,
        |recorded| {
            let mut raw = RawEnvelope::parse(&recorded.payload).map_err(|err| err.to_string())?;
            // The store assigns positions; payloads do not carry them.
            raw.position = Some(recorded.position);
            let envelope = raw.decode().map_err(|err| err.to_string())?;
            Ok((raw, envelope))
        },
        |recorded, (raw, envelope)| visit(recorded, raw, envelope),
    )
    .await
}

/// Reads `stream` as [`read_stream_pages`] does, but decodes only what a fold needs: each
/// event's `occurred_at` and the event (old versions upcast), never the whole envelope.
pub async fn read_stream_events(
    store: &dyn EventStore,
    stream: &str,
    mut visit: impl FnMut(Instant, Event) -> bool,
) -> Result<(), CommandError> {
    read_stream_decoded(
        store,
        stream,
        1,
        |recorded| {
            let slim = SlimEnvelope::parse(&recorded.payload).map_err(|err| err.to_string())?;
            let occurred_at: Instant = slim
                .occurred_at
                .parse()
                .map_err(|err| format!("bad occurred_at: {err}"))?;
            Ok((occurred_at, slim.event().map_err(|err| err.to_string())?))
        },
        |_, (occurred_at, event)| Ok(visit(occurred_at, event)),
    )
    .await
}

/// The one paging loop over a stream: `decode` each stored event, then `visit` it.
async fn read_stream_decoded<T>(
    store: &dyn EventStore,
    stream: &str,
    from_version: u64,
    decode: impl Fn(&RecordedEvent) -> Result<T, String>,
    mut visit: impl FnMut(&RecordedEvent, T) -> Result<bool, String>,
) -> Result<(), CommandError> {
    let corrupt = |message: String| CommandError::Corrupt {
        stream: stream.to_string(),
        message,
    };
    let mut from = from_version;
    loop {
        let page = store.read_stream(stream, from, STREAM_PAGE).await?;
        let done = page.len() < STREAM_PAGE;
        for recorded in &page {
            let decoded = decode(recorded)
                .map_err(|err| corrupt(format!("version {}: {err}", recorded.version)))?;
            if !visit(recorded, decoded).map_err(corrupt)? {
                return Ok(());
            }
            from = recorded.version + 1;
        }
        if done {
            return Ok(());
        }
    }
}

/// Reads the `version`-th event of `stream` as stored: a stream without it is corrupt.
pub async fn read_stream_at(
    store: &dyn EventStore,
    stream: &str,
    version: u64,
) -> Result<RecordedEvent, CommandError> {
    store
        .read_stream(stream, version, 1)
        .await?
        .into_iter()
        .next()
        .filter(|recorded| recorded.version == version)
        .ok_or_else(|| CommandError::Corrupt {
            stream: stream.to_string(),
            message: format!("version {version} is not in the stream"),
        })
}

/// Reads the events at `versions` of `stream`, each with its version (old versions
/// upcast): what a spilled record is restored from.
pub async fn read_stream_versions(
    store: &dyn EventStore,
    stream: &str,
    versions: impl IntoIterator<Item = u64>,
) -> Result<Vec<(u64, Event)>, CommandError> {
    let mut events = Vec::new();
    for version in versions {
        let recorded = read_stream_at(store, stream, version).await?;
        let corrupt = |message: String| CommandError::Corrupt {
            stream: stream.to_string(),
            message,
        };
        let (stored_version, event) = decode_payload_event(&recorded.payload)
            .map_err(|err| corrupt(format!("version {version}: {err}")))?;
        if stored_version != version {
            return Err(corrupt(format!(
                "version {version} holds an envelope of version {stored_version}"
            )));
        }
        events.push((version, event));
    }
    Ok(events)
}

/// Reads every stream in global order after `after`, page by page, handing each stored event
/// to `visit` until it answers false or the store ends.
pub async fn read_all_pages(
    store: &dyn EventStore,
    mut after: Option<GlobalPosition>,
    mut visit: impl FnMut(&RecordedEvent) -> Result<bool, CommandError>,
) -> Result<(), CommandError> {
    loop {
        let page = store.read_all(after, ALL_PAGE).await?;
        for event in &page {
            if !visit(event)? {
                return Ok(());
            }
            after = Some(event.position);
        }
        if page.len() < ALL_PAGE {
            return Ok(());
        }
    }
}
