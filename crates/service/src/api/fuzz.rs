//! Fuzzing the request DTOs (issue 15), proptest standing in for a coverage-guided fuzzer:
//! arbitrary bytes and structure-aware mutations of valid bodies (fields removed, types
//! changed, huge numbers, deep nesting, bytes flipped) through `parse_json` for every body
//! type, and through the router into the command handler. Parsing never panics and refuses
//! with a message; the router never answers 5xx and writes nothing for a refused body.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

// The mutations the domain's envelope fuzzing uses, shared rather than copied.
#[path = "../../../domain/tests/fuzzing/mod.rs"]
mod fuzzing;
use fuzzing::Mutation;

use super::dto;
use super::extract::parse_json;
use super::tests::{token, Harness};
use crate::tokens::Role;

/// A valid body for every route that takes one, as (path, body).
fn valid_bodies() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/accounts", json!({"account_id": "fz-1"})),
        (
            "/v1/accounts/a1/subscription",
            json!({"tier": "pro", "billing": "monthly", "period_start": "2026-01-01T00:00:00Z",
                   "period_end": "2026-02-01T00:00:00Z", "reference": "sub-1", "allowance": 10}),
        ),
        (
            "/v1/accounts/a1/renewals",
            json!({"invoice_id": "in-1", "period_start": "2026-02-01T00:00:00Z",
                   "period_end": "2026-03-01T00:00:00Z"}),
        ),
        (
            "/v1/accounts/a1/top-ups",
            json!({"purchase_id": "p-1", "credits": 100, "expires_at": "2030-01-01T00:00:00Z"}),
        ),
        (
            "/v1/accounts/a1/business-verification",
            json!({"company_name": "Acme", "country": "DE", "registration_number": "HRB 1"}),
        ),
        (
            "/v1/accounts/a1/business-verification/reject",
            json!({"reason": "no"}),
        ),
        (
            "/v1/accounts/a1/grants",
            json!({"grant_id": "g-1", "credits": 5, "reason": "sorry",
                   "expires_at": "2030-01-01T00:00:00Z"}),
        ),
        (
            "/v1/accounts/a1/admission",
            json!({"via": "app", "nodes": [{"node_id": "n1", "type": "image_generator",
                   "model": "flux-schnell", "images": 1, "seconds": null}]}),
        ),
        (
            "/v1/accounts/a1/charges",
            json!({"charge_id": "c-1", "run_id": "r-1", "node_id": "n1",
                   "model": "flux-schnell", "images": 1, "via": "app"}),
        ),
        (
            "/v1/accounts/a1/charges/c-1/refund",
            json!({"reason": "failed run"}),
        ),
        (
            "/v1/accounts/a1/holds",
            json!({"hold_id": "h-1", "run_id": "r-1", "node_id": "n1", "model": "flux-schnell",
                   "images": 1, "ttl": "60s", "via": "app"}),
        ),
        ("/v1/accounts/a1/holds/h-1/capture", json!({"images": 1})),
        (
            "/v1/accounts/a1/alerts",
            json!({"low_balance": [10, 100], "url": null}),
        ),
    ]
}

/// Parses `bytes` as every body type; a refusal must carry a message naming what is wrong.
fn parse_as_every_type(bytes: &[u8]) {
    fn one<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
        match parse_json::<T>(bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                assert_eq!(error.rejection.code(), "INVALID_REQUEST");
                assert!(!error.rejection.message().is_empty());
                None
            }
        }
    }
    fn command<T: dto::IntoCommand>(bytes: &[u8]) {
        if let Some(body) = one::<T>(bytes) {
            let _ = body.into_command();
        }
    }
    let _ = one::<dto::OpenAccount>(bytes);
    command::<dto::Subscription>(bytes);
    command::<dto::Renewal>(bytes);
    command::<dto::TopUp>(bytes);
    command::<dto::Verification>(bytes);
    let _ = one::<dto::Empty>(bytes);
    let _ = one::<dto::Reason>(bytes);
    command::<dto::Grant>(bytes);
    if let Some(admission) = one::<dto::Admission>(bytes) {
        let _: Vec<_> = admission
            .nodes
            .into_iter()
            .map(dto::Node::into_node)
            .collect();
    }
    command::<dto::Charge>(bytes);
    command::<dto::Hold>(bytes);
    let _ = one::<dto::Capture>(bytes);
    command::<dto::Alerts>(bytes);
}

/// The odd values of `fuzzing`, and the edges the DTOs' numbers, times and strings hold.
fn odd_value() -> BoxedStrategy<Value> {
    fuzzing::odd_value(prop_oneof![
        Just(json!(u32::MAX as u64 + 1)),
        Just(json!("0000-01-01T00:00:00Z")),
        Just(json!("2026-02-30T00:00:00Z")),
        Just(json!([[[[[[[[[[[[1]]]]]]]]]]]])),
        Just(json!("x".repeat(10_000))),
    ])
}

fn mutation() -> impl Strategy<Value = Mutation> {
    fuzzing::mutation(odd_value(), "[a-z_]{1,12}", 5_000)
}

/// The body's JSON text after `mutations`.
fn mutate(mut body: Value, mutations: &[Mutation]) -> String {
    let mut nest = None;
    for mutation in mutations {
        if let Some(object) = body.as_object_mut() {
            nest = fuzzing::apply(object, mutation).or(nest);
        }
    }
    fuzzing::render(&body, nest)
}

fn damage(text: &str, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    fuzzing::damage(text.as_bytes().to_vec(), edits, cut)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // A failure is kept as a regression test under `proptest-regressions/`.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn arbitrary_bytes_never_panic_any_body_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_as_every_type(&bytes);
    }

    #[test]
    fn mutated_valid_bodies_never_panic_any_body_parser(
        which in 0usize..13,
        mutations in proptest::collection::vec(mutation(), 0..4),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let (_, body) = valid_bodies().swap_remove(which);
        let text = mutate(body, &mutations);
        parse_as_every_type(text.as_bytes());
        parse_as_every_type(&damage(&text, &edits, cut));
    }
}

fn parses<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
    parse_json::<T>(bytes).is_ok()
}

#[test]
fn every_valid_fixture_parses_as_its_own_type() {
    // In the order of `valid_bodies`.
    let parsers: [fn(&[u8]) -> bool; 13] = [
        parses::<dto::OpenAccount>,
        parses::<dto::Subscription>,
        parses::<dto::Renewal>,
        parses::<dto::TopUp>,
        parses::<dto::Verification>,
        parses::<dto::Reason>,
        parses::<dto::Grant>,
        parses::<dto::Admission>,
        parses::<dto::Charge>,
        parses::<dto::Reason>,
        parses::<dto::Hold>,
        parses::<dto::Capture>,
        parses::<dto::Alerts>,
    ];
    for ((path, body), parses) in valid_bodies().into_iter().zip(parsers) {
        assert!(parses(body.to_string().as_bytes()), "{path}: {body}");
    }
}

/// Posts `body` to `path` as admin (PUT for alerts); returns the status and the JSON body.
async fn post(harness: &Harness, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let method = if path.ends_with("/alerts") {
        "PUT"
    } else {
        "POST"
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", token(Role::Admin)),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a request");
    let response = harness
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn head(harness: &Harness) -> Option<u64> {
    harness
        .state
        .ledger
        .store()
        .head_position()
        .await
        .expect("the store answers")
}

/// One router and store for all cases: each case's refusal is checked against the head just
/// before it, so accepted cases (a valid mutation) only move the baseline.
#[test]
fn mutated_bodies_through_the_router_never_answer_5xx_and_refusals_write_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let harness = runtime.block_on(Harness::new(None));
    let strategy = (
        0usize..13,
        proptest::collection::vec(mutation(), 1..4),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..2),
    );
    let mut runner = proptest::test_runner::TestRunner::new(config(1_500));
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |(which, mutations, edits)| {
        let (path, body) = valid_bodies().swap_remove(which);
        let text = mutate(body, &mutations);
        let bytes = damage(&text, &edits, None);
        runtime.block_on(async {
            let before = head(&harness).await;
            let (status, answer) = post(&harness, path, bytes.clone()).await;
            prop_assert!(
                !status.is_server_error(),
                "{path} {} -> {status} {answer}",
                String::from_utf8_lossy(&bytes)
            );
            if status.is_client_error() {
                prop_assert!(answer["error"]["code"].is_string(), "{answer}");
                prop_assert_eq!(head(&harness).await, before, "{} wrote on {}", path, status);
            } else {
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // Some mutations leave a body valid (an optional field removed): the run must have
    // exercised both sides, or it checked nothing about refusals.
    let accepted = accepted.get();
    assert!(accepted > 0 && accepted < 1_500, "accepted {accepted}");
}

/// Sends `body` with `content_type` (none when `None`) as admin; returns the status and
/// whether the store moved.
async fn refused_without_a_write(
    harness: &Harness,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, bool) {
    let before = head(harness).await;
    let mut request = Request::builder().method(method).uri(path).header(
        header::AUTHORIZATION,
        format!("Bearer {}", token(Role::Admin)),
    );
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let request = request
        .body(Body::from(body.to_string()))
        .expect("a request");
    let response = harness
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    (response.status(), head(harness).await != before)
}

/// Found by schemathesis (negative mode): `{"low_balance": []}` without `url` was accepted
/// and written as "delivery off", though the document makes `url` required.
#[tokio::test]
async fn regression_alerts_without_url_were_accepted_and_turned_delivery_off() {
    let harness = Harness::new(None).await;
    let json = Some("application/json");
    for body in [
        r#"{"low_balance": []}"#,
        r#"{"low_balance": [10]}"#,
        "{}",
        "",
    ] {
        let answer = refused_without_a_write(&harness, "PUT", "/v1/accounts/a1/alerts", json, body);
        assert_eq!(answer.await, (StatusCode::BAD_REQUEST, false), "{body}");
    }
    let answer = refused_without_a_write(
        &harness,
        "PUT",
        "/v1/accounts/a1/alerts",
        json,
        r#"{"low_balance": [10], "url": null}"#,
    );
    assert_eq!(
        answer.await,
        (StatusCode::OK, true),
        "null is still allowed"
    );
}

/// Found by schemathesis (negative mode): a capture body `[null, null]` was read as
/// `{images, seconds}`; serde reads a struct from an array, so `["acme"]` opened account acme.
#[tokio::test]
async fn regression_an_array_body_was_read_as_an_object_and_written() {
    let harness = Harness::new(None).await;
    let json = Some("application/json");
    for (path, body) in [
        ("/v1/accounts", r#"["acme"]"#),
        ("/v1/accounts/a1/grants", r#"["g1", 5, "sorry", null]"#),
        ("/v1/accounts/a1/alerts", "[[10], null]"),
        ("/v1/accounts/a1/holds/h1/capture", "[null, null]"),
        ("/v1/accounts", r#"  "acme" "#),
    ] {
        let method = if path.ends_with("/alerts") {
            "PUT"
        } else {
            "POST"
        };
        let answer = refused_without_a_write(&harness, method, path, json, body).await;
        assert_eq!(answer, (StatusCode::BAD_REQUEST, false), "{path} {body}");
    }
}

/// Found by schemathesis (negative mode): a JSON body declared `text/plain` (or a form) was
/// read as JSON and written; the document takes `application/json` only.
#[tokio::test]
async fn regression_a_body_declared_as_plain_text_was_read_as_json_and_written() {
    let harness = Harness::new(None).await;
    let body = r#"{"grant_id": "g-ct", "credits": 5, "reason": "sorry"}"#;
    for content_type in [
        "text/plain",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ] {
        let answer = refused_without_a_write(
            &harness,
            "POST",
            "/v1/accounts/a1/grants",
            Some(content_type),
            body,
        );
        assert_eq!(
            answer.await,
            (StatusCode::BAD_REQUEST, false),
            "{content_type}"
        );
    }
    // JSON with parameters is JSON; a body without a declared type is read as the API's JSON.
    for (content_type, id) in [
        (Some("application/json; charset=utf-8"), "g-a"),
        (None, "g-b"),
    ] {
        let body = format!(r#"{{"grant_id": "{id}", "credits": 5, "reason": "sorry"}}"#);
        let answer = refused_without_a_write(
            &harness,
            "POST",
            "/v1/accounts/a1/grants",
            content_type,
            &body,
        );
        assert_eq!(
            answer.await,
            (StatusCode::CREATED, true),
            "{content_type:?}"
        );
    }
}
