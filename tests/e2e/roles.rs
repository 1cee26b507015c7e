//! The role matrix of SPEC section 8: for every route and every role, the allowed roles (and
//! admin, always) get their success answer and every other role gets 403 FORBIDDEN and
//! writes nothing; without a token every protected route is 401; a route not in the table is
//! 404 for everyone.

use serde_json::{json, Value};

use crate::support::*;

use Role::{Admin, Billing, Executor, Finance, Support};

/// One row of the matrix: the route, who may call it, and a valid request for a role.
struct Row {
    method: &'static str,
    template: &'static str,
    allowed: &'static [Role],
    success: u16,
    request: fn(Role) -> (String, Option<Value>),
}

fn suffix(role: Role) -> &'static str {
    role.name()
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            method: "POST",
            template: "/v1/accounts",
            allowed: &[Billing, Admin],
            success: 201,
            request: |role| {
                (
                    "/v1/accounts".into(),
                    Some(json!({"account_id": format!("new-{}", suffix(role))})),
                )
            },
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/v1/accounts/m".into(), None),
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/subscription",
            allowed: &[Billing, Admin],
            success: 200,
            request: |role| {
                let body = subscription("pro", Some("monthly"), &format!("sub-{}", suffix(role)));
                ("/v1/accounts/m/subscription".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/renewals",
            allowed: &[Billing, Admin],
            success: 200,
            request: |role| {
                // Each allowed renewal starts later than the one before it.
                let minutes = if role == Admin { 20 } else { 10 };
                let body = json!({
                    "invoice_id": format!("inv-{}", suffix(role)),
                    "period_start": from_now(minutes * 60),
                    "period_end": from_now(40 * 86_400),
                });
                ("/v1/accounts/m/renewals".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/top-ups",
            allowed: &[Billing, Admin],
            success: 201,
            request: |role| {
                let body = json!({"purchase_id": format!("tu-{}", suffix(role)), "credits": 10});
                ("/v1/accounts/m/top-ups".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/business-verification",
            allowed: &[Billing, Admin],
            success: 202,
            request: |role| {
                let body = json!({"company_name": "Acme", "country": "DE", "registration_number": "HRB 1"});
                (
                    format!("/v1/accounts/bv-{}/business-verification", suffix(role)),
                    Some(body),
                )
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/business-verification/approve",
            allowed: &[Admin],
            success: 200,
            request: |_| {
                (
                    "/v1/accounts/v1/business-verification/approve".into(),
                    Some(json!({})),
                )
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/business-verification/reject",
            allowed: &[Admin],
            success: 200,
            request: |_| {
                (
                    "/v1/accounts/v2/business-verification/reject".into(),
                    Some(json!({"reason": "not a company"})),
                )
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/grants",
            allowed: &[Support, Admin],
            success: 201,
            request: |role| {
                let body = json!({"grant_id": format!("g-{}", suffix(role)), "credits": 5, "reason": "goodwill"});
                ("/v1/accounts/m/grants".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/admission",
            allowed: &[Executor, Admin],
            success: 200,
            request: |_| {
                let body = json!({"nodes": [{"node_id": "n1", "type": "image_generator", "model": "flux-schnell", "images": 1}]});
                ("/v1/accounts/m/admission".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/charges",
            allowed: &[Executor, Admin],
            success: 201,
            request: |role| {
                let body = charge_body(
                    &format!("c-{}", suffix(role)),
                    "flux-schnell",
                    Some(("images", 1)),
                );
                ("/v1/accounts/m/charges".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/charges/{charge_id}/refund",
            allowed: &[Executor, Admin],
            success: 200,
            request: |role| {
                (
                    format!("/v1/accounts/m/charges/rc-{}/refund", suffix(role)),
                    Some(json!({"reason": "run failed"})),
                )
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/holds",
            allowed: &[Executor, Admin],
            success: 201,
            request: |role| {
                let body = json!({"hold_id": format!("h-{}", suffix(role)), "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 2});
                ("/v1/accounts/m/holds".into(), Some(body))
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/holds/{hold_id}/capture",
            allowed: &[Executor, Admin],
            success: 200,
            request: |role| {
                (
                    format!("/v1/accounts/m/holds/hc-{}/capture", suffix(role)),
                    Some(json!({"seconds": 1})),
                )
            },
        },
        Row {
            method: "POST",
            template: "/v1/accounts/{id}/holds/{hold_id}/release",
            allowed: &[Executor, Admin],
            success: 200,
            request: |role| {
                (
                    format!("/v1/accounts/m/holds/hr-{}/release", suffix(role)),
                    None,
                )
            },
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}/events",
            allowed: &[Support, Finance, Admin],
            success: 200,
            request: |_| ("/v1/accounts/m/events".into(), None),
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}/explain",
            allowed: &[Support, Finance, Admin],
            success: 200,
            request: |_| ("/v1/accounts/m/explain".into(), None),
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}/models",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/v1/accounts/m/models".into(), None),
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}/history",
            allowed: &[Support, Finance, Admin],
            success: 200,
            request: |_| {
                let path = "/v1/accounts/m/history?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&step=1h";
                (path.into(), None)
            },
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}/usage",
            allowed: &[Support, Finance, Admin],
            success: 200,
            request: |_| ("/v1/accounts/m/usage?by=day".into(), None),
        },
        Row {
            method: "PUT",
            template: "/v1/accounts/{id}/alerts",
            allowed: &[Billing, Admin],
            success: 200,
            request: |_| {
                let body = json!({"low_balance": [100], "url": null});
                ("/v1/accounts/m/alerts".into(), Some(body))
            },
        },
        Row {
            method: "GET",
            template: "/v1/accounts/{id}/alerts",
            allowed: &[Billing, Support, Admin],
            success: 200,
            request: |_| ("/v1/accounts/m/alerts".into(), None),
        },
        Row {
            method: "GET",
            template: "/v1/audit/events",
            allowed: &[Finance, Admin],
            success: 200,
            request: |_| ("/v1/audit/events".into(), None),
        },
        // Public: Stripe's signature authenticates it, and a bearer token changes nothing.
        // This server has no LEDGER_STRIPE_WEBHOOK_SECRETS, so the route is off for everyone
        // alike; signed deliveries are tested in stripe.rs.
        Row {
            method: "POST",
            template: "/v1/billing/stripe",
            allowed: &Role::ALL,
            success: 404,
            request: |_| ("/v1/billing/stripe".into(), Some(json!({"id": "evt_1"}))),
        },
        Row {
            method: "GET",
            template: "/healthz",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/healthz".into(), None),
        },
        Row {
            method: "GET",
            template: "/metrics",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/metrics".into(), None),
        },
        Row {
            method: "GET",
            template: "/console",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/console".into(), None),
        },
        Row {
            method: "GET",
            template: "/console/app.js",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/console/app.js".into(), None),
        },
        Row {
            method: "GET",
            template: "/console/app.css",
            allowed: &Role::ALL,
            success: 200,
            request: |_| ("/console/app.css".into(), None),
        },
    ]
}

/// What the matrix needs to exist: an account on pro with credits, charges and holds for
/// the allowed roles to refund, capture and release, and verifications to decide.
async fn prepare(api: &Api) {
    open(api, "m").await;
    subscribe(api, "m", "pro").await;
    top_up(api, "m", "seed", 100_000).await;
    for role in [Executor, Admin] {
        let name = suffix(role);
        charge(
            api,
            "m",
            charge_body(&format!("rc-{name}"), "flux-schnell", Some(("images", 1))),
        )
        .await
        .expect(201);
        for hold in [format!("hc-{name}"), format!("hr-{name}")] {
            let body = json!({"hold_id": hold, "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 2});
            api.post(Executor, "/v1/accounts/m/holds", body)
                .await
                .expect(201);
        }
    }
    for role in Role::ALL {
        open(api, &format!("bv-{}", suffix(role))).await;
    }
    let verification =
        json!({"company_name": "Acme", "country": "DE", "registration_number": "HRB 1"});
    let mut last = 0;
    for id in ["v1", "v2"] {
        open(api, id).await;
        let submitted = api
            .post(
                Billing,
                &format!("/v1/accounts/{id}/business-verification"),
                verification.clone(),
            )
            .await
            .expect(202);
        last = position(&submitted);
    }
    // Reads and admission answer from the views: let them catch up first.
    summary(api, "m", last).await;
}

#[tokio::test]
async fn every_route_admits_exactly_its_roles_and_admin() {
    let server = Server::start().await;
    let api = &server.api;
    prepare(api).await;
    let rows = rows();
    assert_eq!(
        rows.iter()
            .map(|row| (row.method, row.template))
            .collect::<Vec<_>>(),
        ledger_service::api::ROUTES.to_vec(),
        "the matrix covers every route, in ROUTES order"
    );
    for row in &rows {
        // Forbidden roles first: they must not change what the allowed ones then see.
        let (allowed, forbidden): (Vec<Role>, Vec<Role>) = Role::ALL
            .iter()
            .partition(|role| row.allowed.contains(role));
        assert!(allowed.contains(&Admin), "admin may do everything");
        for role in forbidden {
            let (path, body) = (row.request)(role);
            let reply = api
                .send(
                    Some(role),
                    row.method,
                    &path,
                    body.map_or(Body::None, Body::Json),
                )
                .await;
            let details = reply.expect_error(403, "FORBIDDEN");
            assert_eq!(
                details["role"],
                role.name(),
                "{} {}",
                row.method,
                row.template
            );
        }
        for role in allowed {
            let (path, body) = (row.request)(role);
            let reply = api
                .send(
                    Some(role),
                    row.method,
                    &path,
                    body.map_or(Body::None, Body::Json),
                )
                .await;
            reply.expect(row.success);
        }
    }
    // The forbidden attempts wrote nothing: only the allowed charges, top-ups and grants exist.
    let events = all_events(api, "m").await;
    let ids = |type_name: &str, field: &str| -> Vec<String> {
        let mut ids: Vec<String> = of_type(&events, type_name)
            .iter()
            .map(|event| {
                event["data"][field]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids("credits_charged", "charge_id"),
        ["c-admin", "c-executor", "rc-admin", "rc-executor"]
    );
    assert_eq!(
        ids("top_up_purchased", "purchase_id"),
        ["seed", "tu-admin", "tu-billing"]
    );
    assert_eq!(ids("grant_added", "grant_id"), ["g-admin", "g-support"]);
    assert_eq!(of_type(&events, "hold_placed").len(), 6);
    assert_eq!(of_type(&events, "alerts_configured").len(), 2);
    for role in [Support, Finance, Executor] {
        api.get(role, &format!("/v1/accounts/new-{}", suffix(role)))
            .await
            .expect_error(404, "ACCOUNT_NOT_FOUND");
    }
}

#[tokio::test]
async fn every_protected_route_is_401_without_a_valid_token() {
    let server = Server::start().await;
    let api = &server.api;
    for row in rows() {
        let (path, body) = (row.request)(Admin);
        let public = ledger_service::api::allowed_roles(row.method, row.template)
            == Some(ledger_service::api::Access::Public);
        for token in [None, Some("not-a-token-of-this-ledger")] {
            let reply = api
                .send_with_token(
                    token,
                    row.method,
                    &path,
                    body.clone().map_or(Body::None, Body::Json),
                )
                .await;
            if public {
                // A public route answers the same without a token as with one.
                reply.expect(row.success);
            } else {
                reply.expect_error(401, "UNAUTHENTICATED");
            }
        }
    }
}

#[tokio::test]
async fn unknown_routes_are_404_not_found_for_every_token_and_without_one() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "m").await;
    let mut tokens: Vec<Option<&str>> = Role::ALL.iter().map(|role| Some(role.token())).collect();
    tokens.push(None);
    tokens.push(Some("not-a-token-of-this-ledger"));
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/accounts/m/undeclared"),
        ("GET", "/v1/accounts/m/charges/c/refund/extra"),
        ("DELETE", "/v1/audit"),
        ("GET", "/metrics/extra"),
    ] {
        for token in &tokens {
            let details = api
                .send_with_token(*token, method, path, Body::None)
                .await
                .expect_error(404, "NOT_FOUND");
            assert_eq!(details["kind"], "route", "{method} {path}");
        }
    }
}
