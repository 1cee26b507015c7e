//! Structure-aware mutations of JSON documents for the proptest fuzz targets: shared by the
//! domain's envelope fuzzing and (through `#[path]`) the service's request-body fuzzing.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// One structural change to a JSON object.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Remove the n-th field (modulo the field count).
    Remove(usize),
    /// Replace the n-th field's value.
    Replace(usize, Value),
    /// Add (or overwrite) a named field.
    Add(String, Value),
    /// Replace the n-th field by arrays nested this deep.
    Nest(usize, usize),
}

/// Values of every JSON type and the edges of numbers and times, which both fuzz targets
/// put in place of fields; each target adds the values its own documents are sensitive to.
pub fn odd_value(own: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e308)),
        Just(json!(2.5)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("9999-12-31T23:59:59.999999999Z")),
        Just(json!([])),
        Just(json!({})),
        own,
    ]
    .boxed()
}

/// One mutation: a field removed, replaced by `values`, added under a name matching
/// `names`, or replaced by arrays nested up to `depth_max` deep.
pub fn mutation(
    values: BoxedStrategy<Value>,
    names: &'static str,
    depth_max: usize,
) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), values.clone()).prop_map(|(at, value)| Mutation::Replace(at, value)),
        (names, values).prop_map(|(name, value)| Mutation::Add(name, value)),
        (any::<usize>(), 1usize..depth_max).prop_map(|(at, depth)| Mutation::Nest(at, depth)),
    ]
}

/// Where a `Nest` mutation leaves its marker, replaced by the nesting in the text: building a
/// `Value` that deep would itself recurse that deep.
const NEST_MARKER: &str = "\"@@NEST@@\"";

/// Applies `mutation` to `object`; returns the nesting depth a `Nest` asked for.
pub fn apply(object: &mut Map<String, Value>, mutation: &Mutation) -> Option<usize> {
    let keys: Vec<String> = object.keys().cloned().collect();
    let pick = |at: usize| keys.get(at % keys.len().max(1)).cloned();
    match mutation {
        Mutation::Remove(at) => {
            if let Some(key) = pick(*at) {
                object.remove(&key);
            }
        }
        Mutation::Replace(at, value) => {
            if let Some(key) = pick(*at) {
                object.insert(key, value.clone());
            }
        }
        Mutation::Add(name, value) => {
            object.insert(name.clone(), value.clone());
        }
        Mutation::Nest(at, depth) => {
            if let Some(key) = pick(*at) {
                object.insert(key, json!("@@NEST@@"));
                return Some(*depth);
            }
        }
    }
    None
}

/// `value` as JSON text, with the first nesting marker replaced by `depth` nested arrays.
pub fn render(value: &Value, nest: Option<usize>) -> String {
    let text = value.to_string();
    match nest {
        Some(depth) => text.replacen(
            NEST_MARKER,
            &format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
            1,
        ),
        None => text,
    }
}

/// Byte-level damage: each edit inserts its byte (one in three) or flips bits at its place;
/// then the bytes are cut short if `cut` says so.
pub fn damage(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for (at, byte) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        if byte % 3 == 0 {
            bytes.insert(at, *byte);
        } else {
            bytes[at] ^= byte;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}
