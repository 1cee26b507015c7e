//! Unit tests of the adapter's checks and mappings that need no server.

use super::*;
use uuid::Uuid;

fn new_event(payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "credits_charged".into(),
        payload: payload.to_vec(),
        attachment: None,
    }
}

#[test]
fn only_account_streams_can_be_appended_to() {
    assert!(check_ledger_stream("account-42").is_ok());
    assert!(check_ledger_stream("account-conf-1b4e28ba").is_ok());
    for bad in [
        "",
        "account-",
        "$all",
        "$ce-account",
        "accounts-1",
        "holds-1",
    ] {
        assert!(
            matches!(check_ledger_stream(bad), Err(StoreError::Invalid(_))),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn batches_need_events_types_and_distinct_ids() {
    let event = new_event(b"{}");
    assert!(check_batch("account-1", std::slice::from_ref(&event)).is_ok());
    assert!(matches!(
        check_batch("account-1", &[]),
        Err(StoreError::Invalid(_))
    ));
    let mut untyped = new_event(b"{}");
    untyped.event_type.clear();
    assert!(matches!(
        check_batch("account-1", &[untyped]),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        check_batch("account-1", &[event.clone(), new_event(b"{}"), event]),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn event_data_is_built_from_exact_json_and_from_anything_else() {
    // EventData's fields are private; its Debug output is the only window on them.
    let json = format!("{:?}", event_data(&new_event(br#"{"amount":5}"#)));
    assert!(json.contains("application/json"), "{json}");
    let padded = format!("{:?}", event_data(&new_event(b"{\"amount\":5}\n")));
    assert!(padded.contains("application/octet-stream"), "{padded}");
    let binary = format!("{:?}", event_data(&new_event(&[0xff, 0x00])));
    assert!(binary.contains("application/octet-stream"), "{binary}");
}

#[test]
fn a_json_payload_is_sent_byte_for_byte() {
    let payload = br#"{"b":1,"a":[1.50,"x\u00e9"],"c":{}}"#;
    let raw = match serde_json::from_slice::<&RawValue>(payload) {
        Ok(raw) => raw,
        Err(e) => panic!("valid JSON: {e}"),
    };
    let serialised = match serde_json::to_vec(&raw) {
        Ok(bytes) => bytes,
        Err(e) => panic!("serialisable: {e}"),
    };
    assert_eq!(serialised, payload.to_vec());
}

#[test]
fn connect_needs_a_runtime() {
    assert!(matches!(
        EsdbStore::connect("esdb://localhost:2113?tls=false"),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn connect_rejects_bad_strings() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => panic!("runtime: {e}"),
    };
    let _guard = runtime.enter();
    assert!(matches!(
        EsdbStore::connect("postgres://localhost"),
        Err(StoreError::Invalid(_))
    ));
    match EsdbStore::connect("esdb://admin:pw@a:2113,b?tls=false") {
        Ok(store) => assert_eq!(store.target(), "esdb://admin:***@a:2113,b:2113?tls=false"),
        Err(e) => panic!("should connect lazily: {e}"),
    }
}
