//! `schemas/openapi.json` held to the server: the document parses as OpenAPI 3.1, lists
//! exactly the routes of `ledger_service::api::ROUTES`, and every request body the tests send
//! and every response they get is checked against it (see `support::Api`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::Validator;
use serde_json::{json, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json")
}

/// The document, parsed once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
    })
}

/// The route template a concrete path belongs to (query string ignored).
pub fn template_of(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    ledger_service::api::ROUTES
        .iter()
        .map(|(_, template)| *template)
        .find(|template| {
            let pattern: Vec<&str> = template.split('/').collect();
            pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(&segments)
                    .all(|(want, got)| (want.starts_with('{') && !got.is_empty()) || want == got)
        })
}

/// Follows a local `$ref` (`#/components/...`) if `value` is one.
fn resolve(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = pointer
                .strip_prefix('#')
                .and_then(|pointer| document().pointer(pointer))
                .unwrap_or_else(|| panic!("openapi.json: dangling $ref {pointer}"));
            resolve(target)
        }
        None => value,
    }
}

fn validators() -> &'static Mutex<HashMap<String, Arc<Validator>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Validator>>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// A validator for a schema found in the document at `key` (cache key), with every
/// `#/components/...` reference resolvable.
fn validator(key: &str, schema: &Value) -> Arc<Validator> {
    if let Some(found) = validators().lock().expect("validator cache").get(key) {
        return found.clone();
    }
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document()["components"],
        "allOf": [schema],
    });
    let compiled = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|err| panic!("openapi.json: schema at {key} does not compile: {err}"));
    let compiled = Arc::new(compiled);
    validators()
        .lock()
        .expect("validator cache")
        .insert(key.to_string(), compiled.clone());
    compiled
}

#[track_caller]
fn validate(key: &str, schema: &Value, instance: &Value, what: &str) {
    let validator = validator(key, schema);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match openapi.json ({key}):\n  {}\n{instance:#}",
        errors.join("\n  ")
    );
}

fn operation(method: &str, template: &str) -> &'static Value {
    let op = &document()["paths"][template][method.to_ascii_lowercase()];
    assert!(op.is_object(), "openapi.json has no {method} {template}");
    op
}

/// Checks a JSON request body against the documented request schema.
#[track_caller]
pub fn check_request(method: &str, path: &str, body: &Value) {
    let Some(template) = template_of(path) else {
        return;
    };
    let op = operation(method, template);
    let request = resolve(&op["requestBody"]);
    let schema = &request["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "openapi.json documents no JSON body for {method} {template}, yet the test sends one"
    );
    validate(
        &format!("{method} {template} request"),
        schema,
        body,
        &format!("request body of {method} {path}"),
    );
}

/// Checks a response against the documented response of its status.
#[track_caller]
pub fn check_response(
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
    body: &str,
    what: &str,
) {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let (key, response) = match template_of(path) {
        Some(template)
            if document()["paths"][template][method.to_ascii_lowercase()].is_object() =>
        {
            let op = operation(method, template);
            let response = op["responses"]
                .get(status.to_string())
                .unwrap_or_else(|| {
                    panic!("{what} answered {status}, which openapi.json does not document for {method} {template}: {body}")
                });
            (format!("{method} {template} {status}"), resolve(response))
        }
        // Unknown paths and methods answer the error envelope.
        _ => {
            assert!(
                status >= 400,
                "{what} answered {status} on an undocumented route"
            );
            let not_found = document()
                .pointer("/components/responses/NotFound")
                .expect("openapi.json: components.responses.NotFound");
            ("error".to_string(), resolve(not_found))
        }
    };
    let content = &response["content"];
    if body.is_empty() && content.is_null() {
        return;
    }
    let documented = &content[&media];
    assert!(
        documented.is_object(),
        "{what} answered {status} with content type {content_type:?}, not documented (documented: {})",
        content
            .as_object()
            .map(|map| map.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    match media.as_str() {
        "application/json" => {
            let instance: Value = serde_json::from_str(body)
                .unwrap_or_else(|err| panic!("{what}: body is not JSON ({err}): {body}"));
            validate(&key, &documented["schema"], &instance, what);
        }
        "application/x-ndjson" => {
            let item = &documented["x-item-schema"];
            for line in body.lines().filter(|line| !line.is_empty()) {
                let instance: Value = serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("{what}: line is not JSON ({err}): {line}"));
                validate(&format!("{key} item"), item, &instance, what);
            }
        }
        _ => {}
    }
}

/// Every (METHOD, template) the document lists.
fn documented_routes() -> BTreeSet<(String, String)> {
    let paths = document()["paths"].as_object().expect("paths is an object");
    let mut routes = BTreeSet::new();
    for (template, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_ascii_uppercase(), template.clone()));
            }
        }
    }
    routes
}

#[test]
fn openapi_document_is_openapi_3_1_with_bearer_security() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "openapi must be 3.1.x"
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    let bearer = schemes
        .values()
        .find(|scheme| scheme["type"] == "http" && scheme["scheme"] == "bearer")
        .expect("a bearer security scheme");
    assert!(bearer.is_object());
    assert!(doc["security"].as_array().is_some_and(|s| !s.is_empty()));
}

/// The OpenAPI Initiative's JSON Schema of OpenAPI 3.1 documents
/// (`https://spec.openapis.org/oas/3.1/schema/2022-10-07`, Apache-2.0), vendored so that the
/// tests run without network.
const OAS_3_1_SCHEMA: &str = include_str!("oas-3.1-schema.json");

#[test]
fn openapi_document_is_valid_against_the_oas_3_1_schema() {
    let meta: Value = serde_json::from_str(OAS_3_1_SCHEMA).expect("the OAS 3.1 schema is JSON");
    let validator = jsonschema::draft202012::new(&meta).expect("the OAS 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(document())
        .map(|err| format!("{err} at {}", err.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "openapi.json is not a valid OpenAPI 3.1 document:\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn openapi_lists_exactly_the_routes_the_server_answers() {
    let served: BTreeSet<(String, String)> = ledger_service::api::ROUTES
        .iter()
        .map(|(method, template)| (method.to_string(), template.to_string()))
        .collect();
    let documented = documented_routes();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json documents routes the server does not have: {extra:?}"
    );
}

#[test]
fn openapi_operations_declare_their_path_parameters_and_error_envelope() {
    for (method, template) in documented_routes() {
        let op = operation(&method, &template);
        assert!(
            op["operationId"].is_string(),
            "{method} {template}: operationId"
        );
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(resolve)
            .filter(|param| param["in"] == "path")
            .map(|param| {
                assert_eq!(
                    param["required"], true,
                    "{method} {template}: path params are required"
                );
                param["name"]
                    .as_str()
                    .expect("a parameter name")
                    .to_string()
            })
            .collect();
        let in_template: BTreeSet<String> = template
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        assert_eq!(
            declared, in_template,
            "{method} {template}: path parameters"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{method} {template}: a success response"
        );
        // Public exactly when the route table says so, so a route made public there must be
        // documented without security, and every other one with its 401.
        let public = ledger_service::api::allowed_roles(&method, &template)
            == Some(ledger_service::api::Access::Public);
        if public {
            assert_eq!(
                op["security"],
                json!([]),
                "{method} {template} needs no token"
            );
        } else {
            assert!(
                responses.contains_key("401"),
                "{method} {template}: documents 401"
            );
            assert!(
                op.get("security").is_none(),
                "{method} {template} inherits bearer security"
            );
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &resolve(response)["content"]["application/json"]["schema"];
                assert_eq!(
                    resolve(schema),
                    resolve(&json!({"$ref": "#/components/schemas/Error"})),
                    "{method} {template} {status} answers the error envelope"
                );
            }
        }
    }
}

/// Walks a schema (following local `$ref`s) and asserts every object schema forbids
/// unknown properties.
fn assert_closed(schema: &Value, at: &str, seen: &mut BTreeSet<String>) {
    if let Some(pointer) = schema.get("$ref").and_then(Value::as_str) {
        if seen.insert(pointer.to_string()) {
            assert_closed(resolve(schema), pointer, seen);
        }
        return;
    }
    let is_object = schema["type"] == "object" || schema.get("properties").is_some();
    if is_object {
        assert_eq!(
            schema["additionalProperties"],
            json!(false),
            "{at}: request objects must set additionalProperties: false"
        );
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            assert_closed(property, &format!("{at}.{name}"), seen);
        }
    }
    for key in ["items"] {
        if let Some(inner) = schema.get(key) {
            assert_closed(inner, &format!("{at}[]"), seen);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for inner in schema[key].as_array().into_iter().flatten() {
            assert_closed(inner, at, seen);
        }
    }
}

#[test]
fn openapi_request_bodies_refuse_unknown_fields_and_every_schema_compiles() {
    for (method, template) in documented_routes() {
        let op = operation(&method, &template);
        // Stripe's events are Stripe's: the ledger reads a few fields and must ignore the
        // rest, which grows with every Stripe API version.
        let open_by_design = template == "/v1/billing/stripe";
        if op.get("requestBody").is_some() && !open_by_design {
            let request = resolve(&op["requestBody"]);
            let schema = &request["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{method} {template}: JSON request schema"
            );
            assert_closed(
                schema,
                &format!("{method} {template}"),
                &mut BTreeSet::new(),
            );
        }
        assert_eq!(
            method == "GET",
            op.get("requestBody").is_none(),
            "{method} {template}: GETs take no body, POSTs document theirs"
        );
    }
    let schemas = document()["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    for name in schemas.keys() {
        validator(
            &format!("#/components/schemas/{name}"),
            &json!({"$ref": format!("#/components/schemas/{name}")}),
        );
    }
}

#[test]
fn openapi_error_codes_are_exactly_the_rejection_codes() {
    let documented: BTreeSet<String> = resolve(&document()["components"]["schemas"]["ErrorCode"])
        ["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .map(|code| code.as_str().expect("a code").to_string())
        .collect();
    let spec: BTreeSet<String> = [
        "INVALID_REQUEST",
        "UNKNOWN_MODEL",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "MODEL_TIER_REQUIRED",
        "TRIAL_EXHAUSTED",
        "TRIAL_EXPIRED",
        "SCOPE_REQUIRED",
        "BUSINESS_VERIFICATION_REQUIRED",
        "INSUFFICIENT_CREDITS",
        "ACCOUNT_NOT_FOUND",
        "NOT_FOUND",
        "ACCOUNT_EXISTS",
        "IDEMPOTENCY_CONFLICT",
        "STALE_RENEWAL",
        "HOLD_CLOSED",
        "PAYLOAD_TOO_LARGE",
        "UNAVAILABLE",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(documented, spec);
}
