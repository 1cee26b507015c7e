//! The envelope every stored event travels in (SPEC section 10), its deterministic id, and
//! the per-account hash chain finance verifies offline.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::events::{DecodeError, Event};
use crate::time::Instant;
use crate::upcast::decode_event;

/// The hash that precedes the first event of a stream.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Namespace for deterministic event ids (UUID v5).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b6e_6f75_6473_2d6c_6564_6765_722d_6576);

/// The stream that holds one account's events.
pub fn stream_name(account_id: &str) -> String {
    format!("account-{account_id}")
}

/// The account id of a stream name, if it is an account stream.
pub fn account_of_stream(stream: &str) -> Option<&str> {
    stream.strip_prefix("account-")
}

/// The id of the `index`-th event a command wrote to a stream. The same command retried
/// yields the same ids, so the store can recognise the retry.
pub fn event_id(stream: &str, command_id: &str, index: usize) -> Uuid {
    // Concatenated, not formatted: every event of every command is named here.
    let mut index_text = itoa::Buffer::new();
    let index_text = index_text.format(index);
    let mut name = Vec::with_capacity(stream.len() + command_id.len() + index_text.len() + 2);
    for (part, separator) in [(stream, "\n"), (command_id, "\n"), (index_text, "")] {
        name.extend_from_slice(part.as_bytes());
        name.extend_from_slice(separator.as_bytes());
    }
    Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
}

/// Who issued the command that caused an event, plus the command's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub command_id: String,
    pub actor: String,
}

/// An event with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_id: Uuid,
    pub stream: String,
    pub version: u64,
    /// Global position; known only once the store has committed the event.
    pub position: Option<u64>,
    /// The version `event` was stored at; `event` itself is upcast to the current one. What
    /// was stored is what the hash covers, and the usage view tells charges apart by it.
    pub schema_version: u32,
    pub occurred_at: Instant,
    pub recorded_at: Instant,
    pub command_id: String,
    pub actor: String,
    pub prev_hash: String,
    pub hash: String,
    pub event: Event,
}

/// The chain hash: SHA-256 over the previous hash and every field but the position (which
/// the store assigns later) and the hash itself, with `data` exactly as stored. Each field is
/// followed by a newline, the last one too (none of them can contain one unescaped).
/// ARCHITECTURE.md spells this out for auditors, with a worked example a test recomputes.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    event_id: &Uuid,
    stream: &str,
    version: u64,
    type_name: &str,
    schema_version: u32,
    occurred_at: &str,
    recorded_at: &str,
    command_id: &str,
    actor: &str,
    data: &str,
) -> String {
    // ring's SHA-256 is OpenSSL's assembly: 1.5 times the speed of the sha2 crate's portable
    // code on CPUs without the SHA extensions (this one), where hashing was 6% of a charge.
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    // Formatted on the stack: a charge's seal allocated three short strings here.
    let mut id_text = Uuid::encode_buffer();
    let mut version_text = itoa::Buffer::new();
    let mut schema_text = itoa::Buffer::new();
    for field in [
        prev_hash,
        event_id.hyphenated().encode_lower(&mut id_text),
        stream,
        version_text.format(version),
        type_name,
        schema_text.format(schema_version),
        occurred_at,
        recorded_at,
        command_id,
        actor,
        data,
    ] {
        hasher.update(field.as_bytes());
        hasher.update(b"\n");
    }
    let mut text = [0u8; 64];
    // `hex::encode` pushes one char at a time: 1% of a charge's CPU (issue 18's profile).
    hex::encode_to_slice(hasher.finish(), &mut text).expect("a SHA-256 digest is 32 bytes");
    std::str::from_utf8(&text)
        .expect("hex digits are ASCII")
        .to_owned()
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    event_id: &'a Uuid,
    stream: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    #[serde(rename = "type")]
    type_name: &'a str,
    schema_version: u32,
    occurred_at: &'a str,
    recorded_at: &'a str,
    command_id: &'a str,
    actor: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
    data: &'a RawValue,
}

/// A stored envelope read without decoding its data: what audit and the events endpoint
/// hand out, byte-faithful so that the hash chain can be checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvelope {
    pub event_id: Uuid,
    pub stream: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(rename = "type")]
    pub type_name: String,
    pub schema_version: u32,
    pub occurred_at: String,
    pub recorded_at: String,
    pub command_id: String,
    pub actor: String,
    pub prev_hash: String,
    pub hash: String,
    pub data: Box<RawValue>,
}

impl RawEnvelope {
    /// Parses a stored payload.
    pub fn parse(payload: &[u8]) -> Result<RawEnvelope, DecodeError> {
        serde_json::from_slice(payload).map_err(|err| DecodeError::Envelope(err.to_string()))
    }

    /// Recomputes the chain hash from the stored fields.
    pub fn computed_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            &self.event_id,
            &self.stream,
            self.version,
            &self.type_name,
            self.schema_version,
            &self.occurred_at,
            &self.recorded_at,
            &self.command_id,
            &self.actor,
            self.data.get(),
        )
    }

    /// Decodes the envelope fully, upcasting old data versions.
    pub fn decode(&self) -> Result<Envelope, DecodeError> {
        let parse_instant = |text: &str| -> Result<Instant, DecodeError> {
            text.parse()
                .map_err(|err| DecodeError::Envelope(format!("bad instant {text:?}: {err}")))
        };
        Ok(Envelope {
            event_id: self.event_id,
            stream: self.stream.clone(),
            version: self.version,
            position: self.position,
            schema_version: self.schema_version,
            occurred_at: parse_instant(&self.occurred_at)?,
            recorded_at: parse_instant(&self.recorded_at)?,
            command_id: self.command_id.clone(),
            actor: self.actor.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            event: decode_event(&self.type_name, self.schema_version, self.data.get())?,
        })
    }
}

/// The envelope fields a fold needs, borrowed from a stored payload: the fast path of replay
/// and of the projector, which never copy the data. The one slim decoder; the full one is
/// [`RawEnvelope`].
#[derive(Debug, Deserialize)]
pub struct SlimEnvelope<'a> {
    pub version: u64,
    #[serde(rename = "type", borrow)]
    pub type_name: Cow<'a, str>,
    pub schema_version: u32,
    /// As stored; the usage view counts runs on the day they occurred.
    #[serde(borrow)]
    pub occurred_at: Cow<'a, str>,
    /// As stored; the projector reads it for its lag metric.
    #[serde(borrow)]
    pub recorded_at: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

impl<'a> SlimEnvelope<'a> {
    /// Parses a stored payload, leaving `data` undecoded.
    pub fn parse(payload: &'a [u8]) -> Result<SlimEnvelope<'a>, DecodeError> {
        serde_json::from_slice(payload).map_err(|err| DecodeError::Envelope(err.to_string()))
    }

    /// Decodes the event, upcasting old versions.
    pub fn event(&self) -> Result<Event, DecodeError> {
        decode_event(&self.type_name, self.schema_version, self.data.get())
    }
}

/// Decodes a stored payload straight to its stream version and event, upcasting old
/// versions.
pub fn decode_payload_event(payload: &[u8]) -> Result<(u64, Event), DecodeError> {
    let slim = SlimEnvelope::parse(payload)?;
    Ok((slim.version, slim.event()?))
}

/// Seals `events` into envelopes that continue the chain after `prev_hash` and `version`.
/// Returns the envelopes and their stored payloads.
pub fn seal(
    stream: &str,
    mut version: u64,
    prev_hash: &str,
    cause: &Cause,
    occurred_at: Instant,
    recorded_at: Instant,
    events: Vec<Event>,
) -> Vec<(Envelope, Vec<u8>)> {
    let occurred_text = crate::time::rfc3339(&occurred_at);
    // The command handler records an event at the instant it occurred: one formatting.
    let recorded_text = if recorded_at == occurred_at {
        occurred_text.clone()
    } else {
        crate::time::rfc3339(&recorded_at)
    };
    let mut prev = prev_hash.to_string();
    let mut sealed = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        version += 1;
        let event_id = event_id(stream, &cause.command_id, index);
        let raw = event.raw_data();
        let hash = chain_hash(
            &prev,
            &event_id,
            stream,
            version,
            event.type_name(),
            event.schema_version(),
            &occurred_text,
            &recorded_text,
            &cause.command_id,
            &cause.actor,
            raw.get(),
        );
        // Sized for the envelope's fields around the data, so it is written without growing.
        let mut payload = Vec::with_capacity(raw.get().len() + 512);
        serde_json::to_writer(
            &mut payload,
            &EnvelopeOut {
                event_id: &event_id,
                stream,
                version,
                position: None,
                type_name: event.type_name(),
                schema_version: event.schema_version(),
                occurred_at: &occurred_text,
                recorded_at: &recorded_text,
                command_id: &cause.command_id,
                actor: &cause.actor,
                prev_hash: &prev,
                hash: &hash,
                data: &raw,
            },
        )
        .expect("envelope serialises");
        let envelope = Envelope {
            event_id,
            stream: stream.to_string(),
            version,
            position: None,
            schema_version: event.schema_version(),
            occurred_at,
            recorded_at,
            command_id: cause.command_id.clone(),
            actor: cause.actor.clone(),
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            event,
        };
        sealed.push((envelope, payload));
    }
    sealed
}
