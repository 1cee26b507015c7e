//! Idempotency over HTTP (SPEC section 7): the same id with the same body answers 200 with
//! the first answer and writes nothing; the same id with another body is 409
//! IDEMPOTENCY_CONFLICT; rejections are not remembered.

use serde_json::{json, Value};

use crate::support::*;

/// A body without its `position`, which a replay may report differently.
fn without_position(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("position");
    }
    body
}

#[tokio::test]
async fn a_repeated_charge_answers_200_with_the_first_body_and_charges_once() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "i1").await;
    let body = charge_body("c1", "flux-schnell", Some(("images", 5)));
    let first = charge(api, "i1", body.clone()).await.expect(201);
    let again = charge(api, "i1", body.clone()).await.expect(200);
    assert_eq!(without_position(&again), without_position(&first));
    // `via` left out and `via: "app"` are the same request.
    let mut explicit = body.clone();
    explicit["via"] = json!("app");
    let same = charge(api, "i1", explicit).await.expect(200);
    assert_eq!(without_position(&same), without_position(&first));

    // However late the retry comes, it answers the first result.
    let other = charge(
        api,
        "i1",
        charge_body("c2", "flux-schnell", Some(("images", 50))),
    )
    .await
    .expect(201);
    let late = charge(api, "i1", body.clone()).await.expect(200);
    assert_eq!(without_position(&late), without_position(&first));
    assert_eq!(
        late["balance"], 490,
        "the balance the first answer reported"
    );

    for (field, value) in [
        ("images", json!(6)),
        ("run_id", json!("another-run")),
        ("node_id", json!("node-2")),
        ("model", json!("flux-pro")),
    ] {
        let mut changed = body.clone();
        changed[field] = value;
        let details = charge(api, "i1", changed)
            .await
            .expect_error(409, "IDEMPOTENCY_CONFLICT");
        assert_eq!(details["id"], "c1", "changing {field}");
    }
    let read = summary(api, "i1", position(&other)).await;
    assert_eq!(read["balance"]["total"], 390);
    let events = all_events(api, "i1").await;
    assert_eq!(of_type(&events, "credits_charged").len(), 2);
}

#[tokio::test]
async fn billing_and_support_commands_are_idempotent_by_their_ids() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "i2").await;
    let count = |events: &[Value]| events.len();

    // Top-ups: 201 first, 200 for the same body, 409 for another.
    let top = json!({"purchase_id": "pi_1", "credits": 700});
    api.post(Role::Billing, "/v1/accounts/i2/top-ups", top.clone())
        .await
        .expect(201);
    let before = count(&all_events(api, "i2").await);
    let replay = api
        .post(Role::Billing, "/v1/accounts/i2/top-ups", top)
        .await
        .expect(200);
    assert_eq!(replay["balance"]["top_ups"][0]["remaining"], 700);
    api.post(
        Role::Billing,
        "/v1/accounts/i2/top-ups",
        json!({"purchase_id": "pi_1", "credits": 701}),
    )
    .await
    .expect_error(409, "IDEMPOTENCY_CONFLICT");

    // Grants.
    let grant = json!({"grant_id": "g1", "credits": 50, "reason": "outage credit"});
    api.post(Role::Support, "/v1/accounts/i2/grants", grant.clone())
        .await
        .expect(201);
    api.post(Role::Support, "/v1/accounts/i2/grants", grant)
        .await
        .expect(200);
    api.post(
        Role::Support,
        "/v1/accounts/i2/grants",
        json!({"grant_id": "g1", "credits": 50, "reason": "other"}),
    )
    .await
    .expect_error(409, "IDEMPOTENCY_CONFLICT");

    // Subscriptions, by reference.
    let sub = subscription("pro", Some("monthly"), "sub_1");
    api.post(Role::Billing, "/v1/accounts/i2/subscription", sub.clone())
        .await
        .expect(200);
    let after_sub = count(&all_events(api, "i2").await);
    api.post(Role::Billing, "/v1/accounts/i2/subscription", sub.clone())
        .await
        .expect(200);
    let mut annual = sub.clone();
    annual["billing"] = json!("annual");
    api.post(Role::Billing, "/v1/accounts/i2/subscription", annual)
        .await
        .expect_error(409, "IDEMPOTENCY_CONFLICT");

    // Holds.
    let hold =
        json!({"hold_id": "h1", "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 3});
    let placed = api
        .post(Role::Executor, "/v1/accounts/i2/holds", hold.clone())
        .await
        .expect(201);
    let again = api
        .post(Role::Executor, "/v1/accounts/i2/holds", hold.clone())
        .await
        .expect(200);
    assert_eq!(without_position(&again), without_position(&placed));
    let mut longer = hold;
    longer["seconds"] = json!(4);
    api.post(Role::Executor, "/v1/accounts/i2/holds", longer)
        .await
        .expect_error(409, "IDEMPOTENCY_CONFLICT");

    // Verification submissions.
    let verification =
        json!({"company_name": "Acme", "country": "FR", "registration_number": "RCS 1"});
    api.post(
        Role::Billing,
        "/v1/accounts/i2/business-verification",
        verification.clone(),
    )
    .await
    .expect(202);
    api.post(
        Role::Billing,
        "/v1/accounts/i2/business-verification",
        verification,
    )
    .await
    .expect(200);
    api.post(
        Role::Billing,
        "/v1/accounts/i2/business-verification",
        json!({"company_name": "Other", "country": "FR", "registration_number": "RCS 1"}),
    )
    .await
    .expect_error(409, "IDEMPOTENCY_CONFLICT");

    // Replays and conflicts wrote nothing: one top-up, one grant, one tier change, one hold,
    // one submission.
    let events = all_events(api, "i2").await;
    assert!(before < after_sub);
    for (type_name, expected) in [
        ("top_up_purchased", 1),
        ("grant_added", 1),
        ("tier_changed", 1),
        ("hold_placed", 1),
        ("business_verification_submitted", 1),
    ] {
        assert_eq!(of_type(&events, type_name).len(), expected, "{type_name}");
    }
}

#[tokio::test]
async fn a_replay_answers_the_first_body_as_it_was_given_not_a_fresh_read() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "i3").await;
    let top = json!({"purchase_id": "pi_1", "credits": 700});
    let first_top = api
        .post(Role::Billing, "/v1/accounts/i3/top-ups", top.clone())
        .await
        .expect(201);
    let sub = subscription("pro", Some("monthly"), "sub_1");
    let first_sub = api
        .post(Role::Billing, "/v1/accounts/i3/subscription", sub.clone())
        .await
        .expect(200);
    // Things change after the first answers: a charge and a grant.
    charge(
        api,
        "i3",
        charge_body("c1", "flux-schnell", Some(("images", 5))),
    )
    .await
    .expect(201);
    api.post(
        Role::Support,
        "/v1/accounts/i3/grants",
        json!({"grant_id": "g1", "credits": 50, "reason": "outage credit"}),
    )
    .await
    .expect(201);
    // The replays answer exactly the first bodies, position included.
    let replayed_top = api
        .post(Role::Billing, "/v1/accounts/i3/top-ups", top)
        .await
        .expect(200);
    assert_eq!(replayed_top, first_top);
    let replayed_sub = api
        .post(Role::Billing, "/v1/accounts/i3/subscription", sub)
        .await
        .expect(200);
    assert_eq!(replayed_sub, first_sub);
    // And so after a restart, when the answer is rebuilt from the stream.
    let stopped = server.stop().await;
    let server = Server::start_in(stopped.dir, Options::default()).await;
    let api = &server.api;
    let rebuilt = api
        .post(
            Role::Billing,
            "/v1/accounts/i3/top-ups",
            json!({"purchase_id": "pi_1", "credits": 700}),
        )
        .await
        .expect(200);
    assert_eq!(rebuilt, first_top);
}

#[tokio::test]
async fn a_top_up_retried_without_the_expiry_it_was_sent_with_is_a_conflict() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "i4").await;
    let expires_at = from_now(3_600);
    let with_expiry = json!({"purchase_id": "pi_1", "credits": 70, "expires_at": expires_at});
    api.post(
        Role::Billing,
        "/v1/accounts/i4/top-ups",
        with_expiry.clone(),
    )
    .await
    .expect(201);
    api.post(Role::Billing, "/v1/accounts/i4/top-ups", with_expiry)
        .await
        .expect(200);
    api.post(
        Role::Billing,
        "/v1/accounts/i4/top-ups",
        json!({"purchase_id": "pi_1", "credits": 70}),
    )
    .await
    .expect_error(409, "IDEMPOTENCY_CONFLICT");
    let events = all_events(api, "i4").await;
    assert_eq!(of_type(&events, "top_up_purchased").len(), 1);
}
