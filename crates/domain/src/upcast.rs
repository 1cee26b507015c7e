//! Reading events of any schema version: old versions are upgraded, step by step, to the
//! version this code writes. Fixtures of every old version stay in the tests forever.

use serde_json::{json, Value};

use crate::events::{DecodeError, Event};

/// Decodes `data` of `type_name` written with `schema_version`, upcasting old versions.
pub fn decode_event(
    type_name: &str,
    schema_version: u32,
    data: &str,
) -> Result<Event, DecodeError> {
    let current = Event::current_schema_version(type_name)
        .ok_or_else(|| DecodeError::UnknownType(type_name.to_string()))?;
    if schema_version == current {
        return Event::from_current(type_name, data);
    }
    if schema_version == 0 || schema_version > current {
        return Err(DecodeError::UnknownVersion {
            type_name: type_name.to_string(),
            version: schema_version,
            current,
        });
    }
    let mut value: Value =
        serde_json::from_str(data).map_err(|err| DecodeError::Envelope(err.to_string()))?;
    let mut version = schema_version;
    while version < current {
        value = upcast_once(type_name, version, value)?;
        version += 1;
    }
    Event::from_current(type_name, &value.to_string())
}

/// One step: `version` → `version + 1`.
fn upcast_once(type_name: &str, version: u32, value: Value) -> Result<Value, DecodeError> {
    match (type_name, version) {
        ("credits_charged", 1) => credits_charged_v1_to_v2(value),
        // v3 has v2's fields: its version alone says that refunds name the charge.
        ("credits_charged", 2) => Ok(value),
        ("charge_refunded", 1) => {
            // v1 named the charge by its id only: its model, version and cost are unknown.
            let value = add_field(value, "charge_refunded", "model", |_| Value::Null)?;
            let value = add_field(value, "charge_refunded", "charge_version", |_| Value::Null)?;
            add_field(value, "charge_refunded", "cost", |_| Value::Null)
        }
        ("tier_changed", 1) => add_field(value, "tier_changed", "allowance_period_start", |data| {
            // v1 started every allowance window at the subscription's own start.
            data.get("period_start").cloned().unwrap_or(Value::Null)
        }),
        ("top_up_purchased", 1) => {
            // v1 did not record whether `expires_at` was sent: unknown.
            add_field(value, "top_up_purchased", "expires_at_requested", |_| {
                Value::Null
            })
        }
        ("top_up_purchased", 2) => {
            // Purchases before v3 did not record the payment that bought them.
            add_field(value, "top_up_purchased", "payment_ref", |_| Value::Null)
        }
        _ => Err(DecodeError::UnknownVersion {
            type_name: type_name.to_string(),
            version,
            current: Event::current_schema_version(type_name).unwrap_or(0),
        }),
    }
}

/// Adds one field a newer version introduced, computed from the old data. A payload that
/// already carries it is not of the old version: refuse it rather than overwrite it.
fn add_field(
    mut value: Value,
    type_name: &'static str,
    field: &str,
    compute: impl FnOnce(&serde_json::Map<String, Value>) -> Value,
) -> Result<Value, DecodeError> {
    let object = value.as_object_mut().ok_or_else(|| DecodeError::Data {
        type_name,
        message: "old data is not an object".into(),
    })?;
    if object.contains_key(field) {
        return Err(DecodeError::Data {
            type_name,
            message: format!("old data must not carry the newer field {field}"),
        });
    }
    let added = compute(object);
    object.insert(field.into(), added);
    Ok(value)
}

/// v1 predates trials, API runs and the balance in the receipt: every v1 charge was an app
/// run paid from credits, or by an unlimited account when it drew from the unlimited marker.
fn credits_charged_v1_to_v2(mut value: Value) -> Result<Value, DecodeError> {
    let object = value.as_object_mut().ok_or_else(|| DecodeError::Data {
        type_name: "credits_charged",
        message: "v1 data is not an object".into(),
    })?;
    // A v1 payload carrying v2 fields is not v1: refuse it rather than overwrite them.
    for field in ["via", "paid_by", "balance_after"] {
        if object.contains_key(field) {
            return Err(DecodeError::Data {
                type_name: "credits_charged",
                message: format!("v1 data must not carry the v2 field {field}"),
            });
        }
    }
    let unlimited = object
        .get("drawn_from")
        .and_then(Value::as_array)
        .is_some_and(|parts| {
            parts
                .iter()
                .any(|part| part.get("bucket") == Some(&json!("unlimited")))
        });
    object.insert("via".into(), json!("app"));
    object.insert(
        "paid_by".into(),
        json!(if unlimited { "unlimited" } else { "credits" }),
    );
    object.insert("balance_after".into(), Value::Null);
    Ok(value)
}
