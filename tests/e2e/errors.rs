//! Every error code reachable over HTTP, with its status and the error envelope: malformed
//! and unknown input, authentication, not-found, conflicts, body limits and view timeouts.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_400_invalid_request() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;

    let unknown = api
        .post_raw(
            Role::Billing,
            "/v1/accounts",
            r#"{"account_id": "a2", "colour": "red"}"#,
        )
        .await;
    unknown.expect_error(400, "INVALID_REQUEST");
    assert!(
        unknown.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{}",
        unknown.text
    );

    for body in [
        r#"{"account_id": "#,
        "[1, 2]",
        r#"{"account_id": 5}"#,
        "not json",
        "",
        r#"{"account_id": "a3"} trailing"#,
    ] {
        api.post_raw(Role::Billing, "/v1/accounts", body)
            .await
            .expect_error(400, "INVALID_REQUEST");
    }

    // Unknown fields are refused on every body, nested ones included.
    let charge = api
        .post_raw(
            Role::Executor,
            "/v1/accounts/a1/charges",
            r#"{"charge_id": "c1", "run_id": "r", "node_id": "n", "model": "flux-schnell", "images": 1, "priority": "high"}"#,
        )
        .await;
    charge.expect_error(400, "INVALID_REQUEST");
    api.post_raw(
        Role::Executor,
        "/v1/accounts/a1/admission",
        r#"{"nodes": [{"node_id": "n", "type": "list", "colour": 1}]}"#,
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    api.post_raw(
        Role::Admin,
        "/v1/accounts/a1/business-verification/approve",
        r#"{"note": "ok"}"#,
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    // A required field missing.
    api.post_raw(
        Role::Executor,
        "/v1/accounts/a1/charges",
        r#"{"charge_id": "c1", "node_id": "n", "model": "flux-schnell", "images": 1}"#,
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    // Nothing was charged by any of it.
    let events = all_events(api, "a1").await;
    assert!(of_type(&events, "credits_charged").is_empty());
}

#[tokio::test]
async fn bad_account_ids_and_query_strings_are_400_invalid_request() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;
    let long = "x".repeat(65);
    for id in ["bad id", "bad.id", "bad/../id", long.as_str(), "ümlaut"] {
        api.post_raw(
            Role::Billing,
            "/v1/accounts",
            &json!({ "account_id": id }).to_string(),
        )
        .await
        .expect_error(400, "INVALID_REQUEST");
    }
    for path in [
        "/v1/accounts/bad.id".to_string(),
        format!("/v1/accounts/{long}"),
        "/v1/accounts/bad%20id".to_string(),
        "/v1/accounts/a1?min_position=abc".to_string(),
        "/v1/accounts/a1?min_position=-1".to_string(),
        "/v1/accounts/a1?colour=red".to_string(),
        "/v1/accounts/a1/events?limit=abc".to_string(),
        "/v1/accounts/a1/explain?at=yesterday".to_string(),
        "/v1/audit/events?since=2020-13-45".to_string(),
    ] {
        api.get(Role::Admin, &path)
            .await
            .expect_error(400, "INVALID_REQUEST");
    }
    api.post(
        Role::Executor,
        "/v1/accounts/bad.id/charges",
        charge_body("c1", "flux-schnell", Some(("images", 1))),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    // The 64-character maximum is accepted.
    open(api, &"y".repeat(64)).await;
}

#[tokio::test]
async fn wrong_or_missing_quantities_and_out_of_range_values_are_400() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "p1").await;
    subscribe(api, "p1", "pro").await;
    let cases = [
        // flux-pro is priced per image: no quantity, the wrong one, out of range.
        charge_body("c1", "flux-pro", None),
        charge_body("c2", "flux-pro", Some(("seconds", 3))),
        charge_body("c3", "flux-pro", Some(("images", 101))),
        charge_body("c4", "flux-pro", Some(("images", 0))),
        charge_body("c5", "kling-2", Some(("images", 1))),
        charge_body("c6", "kling-2", Some(("seconds", 3601))),
        charge_body("c7", "assistant-chat", Some(("images", 1))),
    ];
    for body in cases {
        api.post_raw(Role::Executor, "/v1/accounts/p1/charges", &body.to_string())
            .await
            .expect_error(400, "INVALID_REQUEST");
    }
    // The limits themselves are accepted.
    top_up(api, "p1", "big", 1_000_000).await;
    charge(
        api,
        "p1",
        charge_body("ok1", "flux-pro", Some(("images", 100))),
    )
    .await
    .expect(201);
    let last = charge(
        api,
        "p1",
        charge_body("ok2", "kling-2", Some(("seconds", 3600))),
    )
    .await
    .expect(201);
    let views_at = position(&last);

    let bad_bodies = [
        (
            "/v1/accounts/p1/top-ups",
            json!({"purchase_id": "t0", "credits": 0}),
        ),
        (
            "/v1/accounts/p1/top-ups",
            json!({"purchase_id": "t1", "credits": -5}),
        ),
        (
            "/v1/accounts/p1/top-ups",
            json!({"purchase_id": "t2", "credits": 10, "expires_at": from_now(-60)}),
        ),
        (
            "/v1/accounts/p1/top-ups",
            json!({"purchase_id": "", "credits": 10}),
        ),
        (
            "/v1/accounts/p1/subscription",
            json!({"tier": "pro", "billing": "monthly", "period_start": from_now(0), "period_end": from_now(-10), "reference": "s1"}),
        ),
        (
            "/v1/accounts/p1/subscription",
            json!({"tier": "pro", "billing": null, "period_start": from_now(0), "period_end": from_now(86_400), "reference": "s2"}),
        ),
        (
            "/v1/accounts/p1/subscription",
            json!({"tier": "free", "billing": "monthly", "period_start": from_now(0), "period_end": from_now(86_400), "reference": "s3"}),
        ),
        (
            "/v1/accounts/p1/subscription",
            json!({"tier": "pro", "billing": "monthly", "period_start": from_now(0), "period_end": from_now(86_400), "reference": "s4", "allowance": 10}),
        ),
        (
            "/v1/accounts/p1/subscription",
            json!({"tier": "gold", "billing": "monthly", "period_start": from_now(0), "period_end": from_now(86_400), "reference": "s5"}),
        ),
        (
            "/v1/accounts/p1/holds",
            json!({"hold_id": "h1", "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 5, "ttl": "25h"}),
        ),
        (
            "/v1/accounts/p1/holds",
            json!({"hold_id": "h2", "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 5, "ttl": "soon"}),
        ),
        (
            "/v1/accounts/p1/grants",
            json!({"grant_id": "g1", "credits": 5, "reason": "   "}),
        ),
        (
            "/v1/accounts/p1/admission?min_position=MIN",
            json!({"nodes": []}),
        ),
        (
            "/v1/accounts/p1/admission?min_position=MIN",
            json!({"nodes": [{"node_id": "n", "type": "image_generator"}]}),
        ),
        (
            "/v1/accounts/p1/admission?min_position=MIN",
            json!({"nodes": [{"node_id": "n", "type": "list", "model": "flux-pro"}]}),
        ),
        (
            "/v1/accounts/p1/admission?min_position=MIN",
            json!({"nodes": [{"node_id": "n", "type": "video_generator", "model": "flux-pro", "images": 1}]}),
        ),
        (
            "/v1/accounts/p1/admission?min_position=MIN",
            json!({"nodes": [{"node_id": "n", "type": "teleporter"}]}),
        ),
    ];
    let role_for = |path: &str| {
        if path.ends_with("/grants") {
            Role::Support
        } else if path.contains("/admission") || path.ends_with("/holds") {
            Role::Executor
        } else {
            Role::Billing
        }
    };
    for (path, body) in bad_bodies {
        let path = path.replace("MIN", &views_at.to_string());
        let reply = api
            .post_raw(role_for(&path), &path, &body.to_string())
            .await;
        reply.expect_error(400, "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn unknown_models_are_400_unknown_model() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "a1").await;
    let details = charge(
        api,
        "a1",
        charge_body("c1", "dall-e-9", Some(("images", 1))),
    )
    .await
    .expect_error(400, "UNKNOWN_MODEL");
    assert_eq!(details["model"], "dall-e-9");
    let details = api
        .post(
            Role::Executor,
            &format!(
                "/v1/accounts/a1/admission?min_position={}",
                position(&opened)
            ),
            json!({"nodes": [
                {"node_id": "in", "type": "request_input"},
                {"node_id": "img", "type": "image_generator", "model": "dall-e-9", "images": 1},
            ]}),
        )
        .await
        .expect_error(400, "UNKNOWN_MODEL");
    assert_eq!(details["node_id"], "img");
    api.post(
        Role::Executor,
        "/v1/accounts/a1/holds",
        json!({"hold_id": "h1", "run_id": "r", "node_id": "n", "model": "dall-e-9", "images": 1}),
    )
    .await
    .expect_error(400, "UNKNOWN_MODEL");
}

#[tokio::test]
async fn missing_unknown_or_malformed_tokens_are_401_unauthenticated() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;
    for token in [None, Some("nobody-knows-this-token-123"), Some("")] {
        let reply = api
            .send_with_token(token, "GET", "/v1/accounts/a1", Body::None)
            .await;
        reply.expect_error(401, "UNAUTHENTICATED");
        assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    // A known token in the wrong scheme is not a bearer token.
    let http = reqwest::Client::new();
    let reply = http
        .get(server.api.url("/v1/accounts/a1"))
        .header("authorization", format!("Basic {}", Role::Admin.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401);
    // Commands without a token write nothing.
    api.send(
        None,
        "POST",
        "/v1/accounts",
        Body::Json(json!({"account_id": "a2"})),
    )
    .await
    .expect_error(401, "UNAUTHENTICATED");
    api.get(Role::Support, "/v1/accounts/a2")
        .await
        .expect_error(404, "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    // RFC 9110 section 11.1: the authentication scheme is case-insensitive.
    let server = Server::start().await;
    let opened = open(&server.api, "a1").await;
    let http = reqwest::Client::new();
    // The summary reads the views: wait for them, or a busy machine answers 404 first.
    let reply = http
        .get(server.api.url(&format!(
            "/v1/accounts/a1?min_position={}",
            position(&opened)
        )))
        .header("authorization", format!("bearer {}", Role::Support.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
}

#[tokio::test]
async fn a_role_outside_the_route_is_403_forbidden_naming_the_role() {
    let server = Server::start().await;
    let api = &server.api;
    let details = api
        .post(Role::Executor, "/v1/accounts", json!({"account_id": "a1"}))
        .await
        .expect_error(403, "FORBIDDEN");
    assert_eq!(details["role"], "executor");
    api.get(Role::Support, "/v1/accounts/a1")
        .await
        .expect_error(404, "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn missing_things_are_404_with_their_code() {
    let server = Server::start().await;
    let api = &server.api;
    let paths_404 = [
        ("GET", Role::Support, "/v1/accounts/ghost", None),
        ("GET", Role::Support, "/v1/accounts/ghost/events", None),
        ("GET", Role::Support, "/v1/accounts/ghost/explain", None),
        (
            "POST",
            Role::Executor,
            "/v1/accounts/ghost/charges",
            Some(charge_body("c1", "flux-schnell", Some(("images", 1)))),
        ),
        (
            "POST",
            Role::Executor,
            "/v1/accounts/ghost/admission",
            Some(json!({"nodes": [{"node_id": "n", "type": "list"}]})),
        ),
        (
            "POST",
            Role::Billing,
            "/v1/accounts/ghost/top-ups",
            Some(json!({"purchase_id": "t", "credits": 5})),
        ),
        (
            "POST",
            Role::Support,
            "/v1/accounts/ghost/grants",
            Some(json!({"grant_id": "g", "credits": 5, "reason": "sorry"})),
        ),
        (
            "POST",
            Role::Billing,
            "/v1/accounts/ghost/subscription",
            Some(subscription("pro", Some("monthly"), "s1")),
        ),
    ];
    for (method, role, path, body) in paths_404 {
        let body = body.map_or(Body::None, Body::Json);
        let details = api
            .send(Some(role), method, path, body)
            .await
            .expect_error(404, "ACCOUNT_NOT_FOUND");
        assert_eq!(details["account_id"], "ghost", "{method} {path}");
    }

    open(api, "a1").await;
    let details = api
        .post(
            Role::Executor,
            "/v1/accounts/a1/charges/nope/refund",
            json!({"reason": "failed"}),
        )
        .await
        .expect_error(404, "NOT_FOUND");
    assert_eq!(details["id"], "nope");
    api.post(
        Role::Executor,
        "/v1/accounts/a1/holds/nope/capture",
        json!({}),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    api.post_empty(Role::Executor, "/v1/accounts/a1/holds/nope/release")
        .await
        .expect_error(404, "NOT_FOUND");
    api.post_empty(Role::Admin, "/v1/accounts/a1/business-verification/approve")
        .await
        .expect_error(404, "NOT_FOUND");
    api.post(
        Role::Admin,
        "/v1/accounts/a1/business-verification/reject",
        json!({"reason": "no"}),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    // An unknown route answers the envelope too.
    api.get(Role::Admin, "/v1/nothing-here")
        .await
        .expect_error(404, "NOT_FOUND");
    api.send(None, "GET", "/", Body::None)
        .await
        .expect_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn wrong_method_answers_405_with_the_error_envelope() {
    let server = Server::start().await;
    let reply = server
        .api
        .send(Some(Role::Admin), "DELETE", "/v1/accounts", Body::None)
        .await;
    assert_eq!(reply.status, 405, "{}", reply.text);
    assert_envelope(&reply.json, &reply.request);
    let reply = server
        .api
        .send(Some(Role::Admin), "GET", "/v1/accounts", Body::None)
        .await;
    assert_eq!(reply.status, 405, "{}", reply.text);
}

#[tokio::test]
async fn conflicts_are_409_account_exists_stale_renewal_and_hold_closed() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;
    let details = api
        .post(Role::Billing, "/v1/accounts", json!({"account_id": "a1"}))
        .await
        .expect_error(409, "ACCOUNT_EXISTS");
    assert_eq!(details["account_id"], "a1");

    subscribe(api, "a1", "pro").await;
    let renewal = json!({"invoice_id": "inv-1", "period_start": from_now(60), "period_end": from_now(31 * 86_400)});
    api.post(Role::Billing, "/v1/accounts/a1/renewals", renewal.clone())
        .await
        .expect(200);
    let stale = json!({"invoice_id": "inv-0", "period_start": from_now(0), "period_end": from_now(30 * 86_400)});
    let details = api
        .post(Role::Billing, "/v1/accounts/a1/renewals", stale)
        .await
        .expect_error(409, "STALE_RENEWAL");
    assert!(details["period_start"].is_string() && details["current_period_start"].is_string());

    let hold = json!({"hold_id": "h1", "run_id": "r1", "node_id": "n1", "model": "kling-2", "seconds": 10});
    api.post(Role::Executor, "/v1/accounts/a1/holds", hold)
        .await
        .expect(201);
    api.post_empty(Role::Executor, "/v1/accounts/a1/holds/h1/release")
        .await
        .expect(200);
    let details = api
        .post(
            Role::Executor,
            "/v1/accounts/a1/holds/h1/capture",
            json!({"seconds": 5}),
        )
        .await
        .expect_error(409, "HOLD_CLOSED");
    assert_eq!(details["hold_id"], "h1");
    assert_eq!(details["status"], "released");
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_and_64_kib_is_accepted() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;
    let body = charge_body("c1", "flux-schnell", Some(("images", 1))).to_string();
    // Exactly 64 KiB: valid JSON padded with whitespace.
    let exact = format!("{body}{}", " ".repeat(64 * 1024 - body.len()));
    assert_eq!(exact.len(), 65_536);
    api.post_raw(Role::Executor, "/v1/accounts/a1/charges", &exact)
        .await
        .expect(201);
    let over = format!("{exact} ");
    let details = api
        .post_raw(Role::Executor, "/v1/accounts/a1/charges", &over)
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(details["limit_bytes"], 65_536);
    let huge = format!("{{\"account_id\": \"{}\"}}", "z".repeat(256 * 1024));
    api.post_raw(Role::Billing, "/v1/accounts", &huge)
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn min_position_beyond_the_store_is_503_unavailable_with_retry_after() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;
    let started = Instant::now();
    let reply = api
        .get(Role::Support, "/v1/accounts/a1?min_position=1000000000")
        .await;
    reply.expect_error(503, "UNAVAILABLE");
    let retry_after = reply.header("retry-after").expect("Retry-After");
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After {retry_after:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(5),
        "waited {waited:?}, SPEC says at most 2 s"
    );
    let reply = api
        .post(
            Role::Executor,
            "/v1/accounts/a1/admission?min_position=1000000000",
            json!({"nodes": [{"node_id": "n", "type": "list"}]}),
        )
        .await;
    reply.expect_error(503, "UNAVAILABLE");
    assert!(reply.header("retry-after").is_some());
}

#[tokio::test]
async fn min_position_on_events_and_explain_waits_for_the_views_else_503_with_retry_after() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "mp").await;
    let reachable = position(&opened);
    for endpoint in ["events", "explain"] {
        let started = Instant::now();
        let reply = api
            .get(
                Role::Finance,
                &format!("/v1/accounts/mp/{endpoint}?min_position=1000000000"),
            )
            .await;
        reply.expect_error(503, "UNAVAILABLE");
        let retry_after = reply.header("retry-after").expect("Retry-After");
        assert!(
            retry_after.parse::<u64>().is_ok(),
            "{endpoint}: Retry-After {retry_after:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(5),
            "{endpoint}: waited {waited:?}, SPEC says at most 2 s"
        );
        api.get(
            Role::Support,
            &format!("/v1/accounts/mp/{endpoint}?min_position={reachable}"),
        )
        .await
        .expect(200);
    }
}
