//! Fuzzing the envelope decoders and the upcaster (issue 15), proptest standing in for a
//! coverage-guided fuzzer: arbitrary bytes, and structure-aware mutations of the stored
//! fixtures of every schema version (fields removed, types changed, huge numbers, deep
//! nesting, versions and types swapped, bytes flipped). Decoding never panics, refuses with a
//! message, the full and the slim decoder agree, and whatever decodes re-encodes to itself.

use std::path::Path;

use ledger_domain::envelope::{self, Cause, RawEnvelope, SlimEnvelope, GENESIS_HASH};
use ledger_domain::events::{Event, EVENT_TYPES};
use ledger_domain::upcast::decode_event;
use proptest::prelude::*;
use serde_json::{json, Value};

mod fuzzing;
use fuzzing::Mutation;

/// Every stored fixture (old schema versions), and the same events sealed at the current
/// versions, as payload bytes; read once for all cases.
fn payloads() -> &'static [Vec<u8>] {
    static PAYLOADS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    PAYLOADS.get_or_init(read_payloads)
}

fn read_payloads() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut old = Vec::new();
    for name in ["events_v1.jsonl", "events_v2_top_ups.jsonl"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("a fixture file");
        old.extend(text.lines().map(|line| line.as_bytes().to_vec()));
    }
    let mut current = Vec::new();
    for payload in &old {
        let decoded = RawEnvelope::parse(payload)
            .and_then(|raw| raw.decode())
            .expect("every fixture decodes");
        let cause = Cause {
            command_id: decoded.command_id.clone(),
            actor: decoded.actor.clone(),
        };
        let sealed = envelope::seal(
            &decoded.stream,
            decoded.version - 1,
            &decoded.prev_hash,
            &cause,
            decoded.occurred_at,
            decoded.recorded_at,
            vec![decoded.event],
        );
        current.extend(sealed.into_iter().map(|(_, payload)| payload));
    }
    old.extend(current);
    old
}

/// Decodes `payload` every way the ledger does. Nothing may panic; a refusal names its cause;
/// what decodes is consistent between decoders and re-encodes to the same event.
fn decode_every_way(payload: &[u8]) {
    let slim = SlimEnvelope::parse(payload);
    let slim_event = slim.as_ref().ok().map(SlimEnvelope::event);
    let fast = envelope::decode_payload_event(payload);
    let full = RawEnvelope::parse(payload).and_then(|raw| {
        // A parsed envelope serialises back to an envelope that parses to the same fields.
        let again = serde_json::to_vec(&raw).expect("a raw envelope serialises");
        let reparsed = RawEnvelope::parse(&again).expect("a serialised envelope parses");
        assert_eq!(reparsed.computed_hash(), raw.computed_hash());
        assert_eq!(reparsed.data.get(), raw.data.get());
        raw.decode()
    });
    for error in [
        slim.as_ref().err(),
        fast.as_ref().err(),
        full.as_ref().err(),
        slim_event.as_ref().and_then(|event| event.as_ref().err()),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!error.to_string().is_empty());
    }
    if let (Ok(full), Ok((version, event))) = (&full, &fast) {
        assert_eq!(full.version, *version);
        assert_eq!(&full.event, event, "the slim and the full decoder agree");
    }
    if let Ok((_, event)) = &fast {
        reencodes(event);
    }
}

/// An event's data written at the current version reads back as the same event.
fn reencodes(event: &Event) {
    let raw = event.raw_data();
    let back = Event::from_current(event.type_name(), raw.get()).unwrap_or_else(|err| {
        panic!(
            "{} does not read back: {err}: {}",
            event.type_name(),
            raw.get()
        )
    });
    assert_eq!(&back, event);
    let again = decode_event(event.type_name(), event.schema_version(), raw.get())
        .expect("the current version decodes");
    assert_eq!(&again, event);
}

/// The odd values of `fuzzing`, and those an envelope's fields are sensitive to.
fn odd_value() -> BoxedStrategy<Value> {
    fuzzing::odd_value(prop_oneof![
        Just(json!("2026-13-01T00:00:00Z")),
        prop::sample::select(EVENT_TYPES).prop_map(|name| json!(name)),
        Just(json!([{"bucket": "allowance", "id": "x", "amount": u64::MAX}])),
        Just(json!([{"bucket": "nope", "id": 1, "amount": -1}])),
    ])
}

/// A mutation of the envelope (false) or of its `data` (true).
fn mutation() -> impl Strategy<Value = (bool, Mutation)> {
    (
        any::<bool>(),
        fuzzing::mutation(odd_value(), "[a-z_]{1,20}", 20_000),
    )
}

fn mutate(payload: &[u8], mutations: &[(bool, Mutation)]) -> Vec<u8> {
    let mut envelope: Value = serde_json::from_slice(payload).expect("a fixture is JSON");
    let mut nest = None;
    for (inner, mutation) in mutations {
        let target = if *inner {
            envelope.get_mut("data")
        } else {
            Some(&mut envelope)
        };
        if let Some(object) = target.and_then(Value::as_object_mut) {
            nest = fuzzing::apply(object, mutation).or(nest);
        }
    }
    fuzzing::render(&envelope, nest).into_bytes()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

#[test]
fn every_fixture_and_its_current_version_decode_and_reencode() {
    let payloads = payloads();
    assert!(payloads.len() >= 40, "{} payloads", payloads.len());
    for payload in payloads {
        let (_, event) = envelope::decode_payload_event(payload)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(payload)));
        reencodes(&event);
        decode_every_way(payload);
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        decode_every_way(&bytes);
    }

    #[test]
    fn mutated_stored_envelopes_never_panic_and_decode_consistently(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 0..4),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let payload = seed.get::<Vec<u8>>(payloads());
        let mutated = mutate(payload, &mutations);
        decode_every_way(&mutated);
        decode_every_way(&fuzzing::damage(mutated, &edits, cut));
    }

    #[test]
    fn the_upcaster_never_panics_on_any_type_version_and_data(
        seed in any::<prop::sample::Index>(),
        type_name in prop_oneof![prop::sample::select(EVENT_TYPES).prop_map(str::to_string), "[a-z_]{0,24}"],
        version in 0u32..6,
        mutations in proptest::collection::vec(mutation(), 0..3),
    ) {
        let mutated = mutate(seed.get::<Vec<u8>>(payloads()), &mutations);
        let Ok(envelope) = serde_json::from_slice::<Value>(&mutated) else {
            return Ok(());
        };
        let data = envelope.get("data").map_or_else(|| "{}".to_string(), Value::to_string);
        match decode_event(&type_name, version, &data) {
            Ok(event) => {
                prop_assert_eq!(event.type_name(), type_name.as_str());
                reencodes(&event);
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }
}

/// The genesis hash is what every stream starts from: a fixture sealed anew from it
/// verifies, the fuzzed ones above are only as good as this baseline.
#[test]
fn a_resealed_first_event_starts_from_the_genesis_hash() {
    let first = RawEnvelope::parse(&payloads()[0]).expect("a fixture");
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(first.computed_hash(), first.hash);
}
