//! The seeds' stories over HTTP: free trials by count and by window, running out of credits,
//! tier gating of Seedance, renewals that reset, business verification, enterprise,
//! holds, refunds and expiring top-ups. Time-based stories use a test catalog with
//! durations of seconds.

use serde_json::{json, Value};

use crate::support::*;

fn trial<'a>(summary: &'a Value, model: &str) -> &'a Value {
    summary["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .find(|trial| trial["model"] == model)
        .unwrap_or_else(|| panic!("no trial of {model} in {summary}"))
}

fn flux_pro(charge_id: &str) -> Value {
    charge_body(charge_id, "flux-pro", Some(("images", 1)))
}

#[tokio::test]
async fn free_accounts_get_three_flux_pro_runs_then_trial_exhausted_that_top_ups_do_not_lift() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "f1").await;
    let unused = trial(&opened, "flux-pro");
    assert_eq!(
        (
            unused["kind"].as_str(),
            unused["limit"].as_u64(),
            unused["status"].as_str()
        ),
        (Some("runs"), Some(3), Some("unused"))
    );

    for n in 1..=3 {
        let receipt = charge(api, "f1", flux_pro(&format!("t{n}")))
            .await
            .expect(201);
        assert_eq!(receipt["paid_by"], "trial");
        assert_eq!(receipt["cost"], 0);
        assert_eq!(receipt["drawn_from"], json!([]));
        assert_eq!(receipt["balance"], 500, "a trial run moves no credits");
    }
    let details = charge(api, "f1", flux_pro("t4"))
        .await
        .expect_error(403, "TRIAL_EXHAUSTED");
    assert_eq!(
        (details["model"].as_str(), details["limit"].as_u64()),
        (Some("flux-pro"), Some(3))
    );

    let topped = top_up(api, "f1", "p1", 10_000).await;
    charge(api, "f1", flux_pro("t5"))
        .await
        .expect_error(403, "TRIAL_EXHAUSTED");
    let details = api
        .post(
            Role::Executor,
            &format!("/v1/accounts/f1/admission?min_position={}", position(&topped)),
            json!({"nodes": [{"node_id": "img", "type": "image_generator", "model": "flux-pro", "images": 1}]}),
        )
        .await
        .expect_error(403, "TRIAL_EXHAUSTED");
    assert_eq!(details["node_id"], "img");

    let summary = summary(api, "f1", position(&topped)).await;
    let exhausted = trial(&summary, "flux-pro");
    assert_eq!(
        (exhausted["used"].as_u64(), exhausted["status"].as_str()),
        (Some(3), Some("exhausted"))
    );
    assert_eq!(summary["balance"]["total"], 10_500);

    // The grant is recorded before its first use; each run is counted.
    let events = all_events(api, "f1").await;
    let granted = of_type(&events, "trial_granted");
    let consumed = of_type(&events, "trial_run_consumed");
    assert_eq!((granted.len(), consumed.len()), (1, 3));
    assert!(granted[0]["version"].as_u64() < consumed[0]["version"].as_u64());

    // Only an upgrade unblocks the model; after a downgrade the trial stays exhausted.
    subscribe(api, "f1", "pro").await;
    let paid = charge(api, "f1", flux_pro("t6")).await.expect(201);
    assert_eq!(
        (paid["paid_by"].as_str(), paid["cost"].as_u64()),
        (Some("credits"), Some(8))
    );
    subscribe(api, "f1", "free").await;
    charge(api, "f1", flux_pro("t7"))
        .await
        .expect_error(403, "TRIAL_EXHAUSTED");
}

#[tokio::test]
async fn a_window_trial_is_free_inside_its_window_then_trial_expired() {
    let catalog = catalog_with(|catalog| {
        set_model_field(catalog, "kling-2", "free_trial", json!({"window": "2s"}))
    });
    let server = Server::start_with(Options::catalog(catalog)).await;
    let api = &server.api;
    open(api, "w1").await;
    let kling = |id: &str| charge_body(id, "kling-2", Some(("seconds", 5)));
    let first = charge(api, "w1", kling("k1")).await.expect(201);
    assert_eq!(
        (first["paid_by"].as_str(), first["cost"].as_u64()),
        (Some("trial"), Some(0))
    );
    let second = charge(api, "w1", kling("k2")).await.expect(201);
    assert_eq!(second["paid_by"], "trial");

    let summary_open = summary(api, "w1", position(&second)).await;
    let window = trial(&summary_open, "kling-2");
    assert_eq!(
        (window["kind"].as_str(), window["status"].as_str()),
        (Some("window"), Some("active"))
    );
    assert!(window["limit"].is_null());
    let opened_at = instant(&window["opened_at"]);
    let closes_at = instant(&window["closes_at"]);
    assert_eq!((closes_at - opened_at).num_milliseconds(), 2_000);

    sleep_past(closes_at).await;
    let details = charge(api, "w1", kling("k3"))
        .await
        .expect_error(403, "TRIAL_EXPIRED");
    assert_eq!(details["model"], "kling-2");
    assert_eq!(instant(&details["closed_at"]), closes_at);
    let topped = top_up(api, "w1", "p1", 100_000).await;
    charge(api, "w1", kling("k4"))
        .await
        .expect_error(403, "TRIAL_EXPIRED");
    let details = api
        .post(
            Role::Executor,
            &format!(
                "/v1/accounts/w1/admission?min_position={}",
                position(&topped)
            ),
            json!({"nodes": [
                {"node_id": "prompt", "type": "request_input"},
                {"node_id": "clip", "type": "video_generator", "model": "kling-2", "seconds": 5},
            ]}),
        )
        .await
        .expect_error(403, "TRIAL_EXPIRED");
    assert_eq!(details["node_id"], "clip");
    let after = summary(api, "w1", position(&topped)).await;
    assert_eq!(trial(&after, "kling-2")["status"], "expired");

    // The ledger records the window's close by itself.
    eventually(
        std::time::Duration::from_secs(10),
        "trial_window_closed",
        || async {
            let events = all_events(api, "w1").await;
            (!of_type(&events, "trial_window_closed").is_empty()).then_some(())
        },
    )
    .await;
    let events = all_events(api, "w1").await;
    assert_eq!(of_type(&events, "trial_window_opened").len(), 1);
}

#[tokio::test]
async fn charges_beyond_the_balance_are_402_and_move_nothing() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "c1").await;
    let hundred = |id: &str| charge_body(id, "flux-schnell", Some(("images", 100)));
    let first = charge(api, "c1", hundred("x1")).await.expect(201);
    assert_eq!(
        (first["cost"].as_u64(), first["balance"].as_u64()),
        (Some(200), Some(300))
    );
    assert_eq!(first["drawn_from"][0]["bucket"], "allowance");
    charge(api, "c1", hundred("x2")).await.expect(201);
    let details = charge(api, "c1", hundred("x3"))
        .await
        .expect_error(402, "INSUFFICIENT_CREDITS");
    assert_eq!(
        (details["required"].as_u64(), details["available"].as_u64()),
        (Some(200), Some(100))
    );
    let last = charge(
        api,
        "c1",
        charge_body("x4", "flux-schnell", Some(("images", 50))),
    )
    .await
    .expect(201);
    assert_eq!(last["balance"], 0);
    let details = charge(api, "c1", charge_body("x5", "assistant-chat", None))
        .await
        .expect_error(402, "INSUFFICIENT_CREDITS");
    assert_eq!(
        (details["required"].as_u64(), details["available"].as_u64()),
        (Some(1), Some(0))
    );
    let summary = summary(api, "c1", position(&last)).await;
    assert_eq!(summary["balance"]["total"], 0);
    let events = all_events(api, "c1").await;
    assert_eq!(of_type(&events, "credits_charged").len(), 3);

    // A rejection is not remembered: after a top-up the same charge succeeds.
    top_up(api, "c1", "p1", 1_000).await;
    let retried = charge(api, "c1", hundred("x3")).await.expect(201);
    assert_eq!(retried["balance"], 800);
}

#[tokio::test]
async fn seedance_is_model_tier_required_below_business_whatever_the_balance() {
    let server = Server::start().await;
    let api = &server.api;
    for (account, tier) in [("s-free", "free"), ("s-pro", "pro")] {
        open(api, account).await;
        if tier != "free" {
            subscribe(api, account, tier).await;
        }
        let topped = top_up(api, account, "huge", 1_000_000_000_000).await;
        for model in ["seedance-2.0-i2v", "seedance-2.0-t2v"] {
            let details = charge(
                api,
                account,
                charge_body(&format!("{model}-1"), model, Some(("seconds", 1))),
            )
            .await
            .expect_error(403, "MODEL_TIER_REQUIRED");
            assert_eq!(details["model"], model);
            assert_eq!(details["required_tier"], "business");
            assert_eq!(details["tier"], tier);
            api.post(
                Role::Executor,
                &format!("/v1/accounts/{account}/holds"),
                json!({"hold_id": "h1", "run_id": "r", "node_id": "n", "model": model, "seconds": 1}),
            )
            .await
            .expect_error(403, "MODEL_TIER_REQUIRED");
        }
        let details = api
            .post(
                Role::Executor,
                &format!("/v1/accounts/{account}/admission?min_position={}", position(&topped)),
                json!({"nodes": [
                    {"node_id": "a", "type": "image_generator", "model": "flux-schnell", "images": 1},
                    {"node_id": "b", "type": "video_generator", "model": "seedance-2.0-i2v", "seconds": 1},
                ]}),
            )
            .await
            .expect_error(403, "MODEL_TIER_REQUIRED");
        assert_eq!(details["node_id"], "b");
    }
}

#[tokio::test]
async fn api_runs_on_a_free_account_are_scope_required() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "a1").await;
    let mut body = charge_body("c1", "flux-schnell", Some(("images", 1)));
    body["via"] = json!("api");
    let details = charge(api, "a1", body.clone())
        .await
        .expect_error(403, "SCOPE_REQUIRED");
    assert_eq!(details["scope"], "free");
    let admission = api
        .post(
            Role::Executor,
            &format!(
                "/v1/accounts/a1/admission?min_position={}",
                position(&opened)
            ),
            json!({"via": "api", "nodes": [{"node_id": "n", "type": "list"}]}),
        )
        .await;
    admission.expect_error(403, "SCOPE_REQUIRED");
    // The app needs no scope, and pro's deployment scope allows API runs.
    let mut app = body.clone();
    app["via"] = json!("app");
    charge(api, "a1", app).await.expect(201);
    let pro = subscribe(api, "a1", "pro").await;
    assert_eq!(pro["scope"], "deployment");
    body["charge_id"] = json!("c2");
    charge(api, "a1", body.clone()).await.expect(201);
    // Scope follows the tier: back on free, API runs are refused again.
    let free = subscribe(api, "a1", "free").await;
    assert_eq!(free["scope"], "free");
    body["charge_id"] = json!("c3");
    charge(api, "a1", body)
        .await
        .expect_error(403, "SCOPE_REQUIRED");
}

#[tokio::test]
async fn annual_pro_carries_the_annual_bonus_in_its_monthly_allowance() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "y1").await;
    let mut annual = subscription("pro", Some("annual"), "pro-annual");
    annual["period_end"] = json!(from_now(365 * 86_400));
    let summary = api
        .post(Role::Billing, "/v1/accounts/y1/subscription", annual)
        .await
        .expect(200);
    assert_eq!(summary["billing"], "annual");
    assert_eq!(summary["balance"]["allowance"], 6_000, "5,000 + 20 %");
    // The annual plan's allowance lasts one month, not the paid year.
    let period_end = instant(&summary["balance"]["period_end"]);
    let month = period_end - chrono::Utc::now();
    assert!((27..=32).contains(&month.num_days()), "{month}");
}

#[tokio::test]
async fn renewal_resets_the_allowance_and_leaves_top_ups_alone() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "r1").await;
    let pro = subscribe(api, "r1", "pro").await;
    assert_eq!(
        (
            pro["tier"].as_str(),
            pro["billing"].as_str(),
            pro["balance"]["allowance"].as_u64()
        ),
        (Some("pro"), Some("monthly"), Some(5_000))
    );
    let spent = charge(
        api,
        "r1",
        charge_body("c1", "flux-schnell", Some(("images", 100))),
    )
    .await
    .expect(201);
    assert_eq!(spent["drawn_from"][0]["bucket"], "allowance");
    let topped = top_up(api, "r1", "lot-1", 300).await;
    assert_eq!(topped["balance"]["allowance"], 4_800);
    assert_eq!(topped["balance"]["total"], 5_100);

    let renewal = json!({"invoice_id": "inv-1", "period_start": from_now(60), "period_end": from_now(31 * 86_400)});
    let renewed = api
        .post(Role::Billing, "/v1/accounts/r1/renewals", renewal.clone())
        .await
        .expect(200);
    assert_eq!(
        renewed["balance"]["allowance"], 5_000,
        "reset, not 4,800 + 5,000"
    );
    assert_eq!(renewed["balance"]["top_ups"][0]["lot_id"], "lot-1");
    assert_eq!(renewed["balance"]["top_ups"][0]["remaining"], 300);
    assert_eq!(renewed["balance"]["total"], 5_300);
    let read = summary(api, "r1", position(&renewed)).await;
    assert_eq!(read["balance"], renewed["balance"]);

    let events = all_events(api, "r1").await;
    let renewals = of_type(&events, "allowance_renewed");
    assert_eq!(renewals.len(), 1);
    assert_eq!(renewals[0]["data"]["forfeited"], 4_800);

    // The same invoice again writes nothing; another body under it conflicts.
    let again = api
        .post(Role::Billing, "/v1/accounts/r1/renewals", renewal)
        .await
        .expect(200);
    assert_eq!(again["balance"]["allowance"], 5_000);
    assert_eq!(all_events(api, "r1").await.len(), events.len());
    api.post(
        Role::Billing,
        "/v1/accounts/r1/renewals",
        json!({"invoice_id": "inv-1", "period_start": from_now(120), "period_end": from_now(32 * 86_400)}),
    )
    .await
    .expect_error(409, "IDEMPOTENCY_CONFLICT");
    api.post(
        Role::Billing,
        "/v1/accounts/r1/renewals",
        json!({"invoice_id": "inv-0", "period_start": from_now(0), "period_end": from_now(30 * 86_400)}),
    )
    .await
    .expect_error(409, "STALE_RENEWAL");
}

#[tokio::test]
async fn business_is_refused_until_the_verification_is_approved() {
    let server = Server::start().await;
    let api = &server.api;
    let business = |reference: &str| subscription("business", Some("monthly"), reference);
    let verification =
        json!({"company_name": "Acme GmbH", "country": "DE", "registration_number": "HRB 12345"});
    open(api, "b1").await;
    let details = api
        .post(
            Role::Billing,
            "/v1/accounts/b1/subscription",
            business("s1"),
        )
        .await
        .expect_error(403, "BUSINESS_VERIFICATION_REQUIRED");
    assert_eq!(details["status"], "none");

    let submitted = api
        .post(
            Role::Billing,
            "/v1/accounts/b1/business-verification",
            verification.clone(),
        )
        .await
        .expect(202);
    assert_eq!(submitted["business_verification"], "pending");
    api.post(
        Role::Billing,
        "/v1/accounts/b1/business-verification",
        verification.clone(),
    )
    .await
    .expect(200);
    let details = api
        .post(
            Role::Billing,
            "/v1/accounts/b1/subscription",
            business("s2"),
        )
        .await
        .expect_error(403, "BUSINESS_VERIFICATION_REQUIRED");
    assert_eq!(details["status"], "pending");

    let approved = api
        .post_empty(Role::Admin, "/v1/accounts/b1/business-verification/approve")
        .await
        .expect(200);
    assert_eq!(approved["business_verification"], "approved");
    let summary = api
        .post(
            Role::Billing,
            "/v1/accounts/b1/subscription",
            business("s3"),
        )
        .await
        .expect(200);
    assert_eq!(
        (summary["tier"].as_str(), summary["scope"].as_str()),
        (Some("business"), Some("admin"))
    );
    assert_eq!(summary["balance"]["allowance"], 15_000);
    assert_eq!(summary["business_verification"], "approved");
    let seedance = charge(
        api,
        "b1",
        charge_body("v1", "seedance-2.0-i2v", Some(("seconds", 2))),
    )
    .await
    .expect(201);
    assert_eq!(
        (seedance["cost"].as_u64(), seedance["balance"].as_u64()),
        (Some(80), Some(14_920))
    );

    // A rejected verification keeps business closed until a new submission is approved.
    open(api, "b2").await;
    api.post(
        Role::Billing,
        "/v1/accounts/b2/business-verification",
        verification.clone(),
    )
    .await
    .expect(202);
    let rejected = api
        .post(
            Role::Admin,
            "/v1/accounts/b2/business-verification/reject",
            json!({"reason": "registry mismatch"}),
        )
        .await
        .expect(200);
    assert_eq!(rejected["business_verification"], "rejected");
    let details = api
        .post(
            Role::Billing,
            "/v1/accounts/b2/subscription",
            business("s4"),
        )
        .await
        .expect_error(403, "BUSINESS_VERIFICATION_REQUIRED");
    assert_eq!(details["status"], "rejected");
    api.post_empty(Role::Admin, "/v1/accounts/b2/business-verification/approve")
        .await
        .expect_error(409, "IDEMPOTENCY_CONFLICT");
    let resubmitted = api
        .post(
            Role::Billing,
            "/v1/accounts/b2/business-verification",
            verification,
        )
        .await
        .expect(202);
    assert_eq!(resubmitted["business_verification"], "pending");
}

#[tokio::test]
async fn enterprise_is_unlimited_without_an_allowance_and_capped_with_one() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "e1").await;
    let unlimited = api
        .post(
            Role::Billing,
            "/v1/accounts/e1/subscription",
            subscription("enterprise", Some("annual"), "ent-1"),
        )
        .await
        .expect(200);
    assert_eq!(unlimited["unlimited"], true);
    assert!(unlimited["balance"]["total"].is_null());
    let receipt = charge(
        api,
        "e1",
        charge_body("big", "seedance-2.0-t2v", Some(("seconds", 3600))),
    )
    .await
    .expect(201);
    assert_eq!(receipt["paid_by"], "unlimited");
    assert_eq!(receipt["cost"], 144_000);
    assert!(receipt["balance"].is_null());
    assert_eq!(
        receipt["drawn_from"],
        json!([{"bucket": "unlimited", "id": "unlimited", "amount": 144_000}])
    );
    let events = all_events(api, "e1").await;
    assert_eq!(
        of_type(&events, "credits_charged")[0]["data"]["cost"],
        144_000
    );

    let mut capped = subscription("enterprise", Some("monthly"), "ent-2");
    capped["allowance"] = json!(1_000);
    let summary = api
        .post(Role::Billing, "/v1/accounts/e1/subscription", capped)
        .await
        .expect(200);
    assert_eq!(summary["unlimited"], false);
    assert_eq!(
        (
            summary["balance"]["allowance"].as_u64(),
            summary["balance"]["total"].as_u64()
        ),
        (Some(1_000), Some(1_000))
    );
    charge(
        api,
        "e1",
        charge_body("too-big", "seedance-2.0-t2v", Some(("seconds", 26))),
    )
    .await
    .expect_error(402, "INSUFFICIENT_CREDITS");
}

#[tokio::test]
async fn holds_earmark_then_capture_the_actual_quantity_release_or_expire() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "h1").await;
    subscribe(api, "h1", "pro").await;
    let placed = api
        .post(Role::Executor, "/v1/accounts/h1/holds", json!({"hold_id": "long", "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 10}))
        .await
        .expect(201);
    assert_eq!(
        (placed["cost"].as_u64(), placed["balance"].as_u64()),
        (Some(200), Some(4_800))
    );
    assert_eq!(placed["earmarked"][0]["bucket"], "allowance");
    let ttl = instant(&placed["expires_at"]) - chrono::Utc::now();
    assert!(
        (14..=15).contains(&ttl.num_minutes()),
        "default ttl 15 minutes, got {ttl}"
    );
    let read = summary(api, "h1", position(&placed)).await;
    assert_eq!(
        (
            read["balance"]["held"].as_u64(),
            read["balance"]["total"].as_u64()
        ),
        (Some(200), Some(4_800))
    );
    // Held credits are not available to other charges.
    let details = charge(
        api,
        "h1",
        charge_body("c1", "kling-2", Some(("seconds", 241))),
    )
    .await
    .expect_error(402, "INSUFFICIENT_CREDITS");
    assert_eq!(details["available"], 4_800);

    let captured = api
        .post(
            Role::Executor,
            "/v1/accounts/h1/holds/long/capture",
            json!({"seconds": 4}),
        )
        .await
        .expect(200);
    assert_eq!(captured["status"], "captured");
    assert_eq!(
        (captured["cost"].as_u64(), captured["balance"].as_u64()),
        (Some(80), Some(4_920))
    );
    assert_eq!(captured["returned"][0]["amount"], 120);
    api.post(
        Role::Executor,
        "/v1/accounts/h1/holds/long/capture",
        json!({"seconds": 4}),
    )
    .await
    .expect(200);
    api.post(
        Role::Executor,
        "/v1/accounts/h1/holds/long/capture",
        json!({"seconds": 5}),
    )
    .await
    .expect_error(409, "HOLD_CLOSED");
    api.post(
        Role::Executor,
        "/v1/accounts/h1/holds/long/capture",
        json!({"seconds": 11}),
    )
    .await
    .expect_error(409, "HOLD_CLOSED");

    api.post(Role::Executor, "/v1/accounts/h1/holds", json!({"hold_id": "short", "run_id": "r", "node_id": "n", "model": "flux-pro", "images": 2}))
        .await
        .expect(201);
    let released = api
        .post_empty(Role::Executor, "/v1/accounts/h1/holds/short/release")
        .await
        .expect(200);
    assert_eq!(
        (released["status"].as_str(), released["cost"].as_u64()),
        (Some("released"), Some(0))
    );
    assert_eq!(released["returned"][0]["amount"], 16);
    assert_eq!(released["balance"], 4_920);
    api.post_empty(Role::Executor, "/v1/accounts/h1/holds/short/release")
        .await
        .expect(200);

    let brief = api
        .post(Role::Executor, "/v1/accounts/h1/holds", json!({"hold_id": "brief", "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 5, "ttl": "1s"}))
        .await
        .expect(201);
    sleep_past(instant(&brief["expires_at"])).await;
    let details = api
        .post(
            Role::Executor,
            "/v1/accounts/h1/holds/brief/capture",
            json!({}),
        )
        .await
        .expect_error(409, "HOLD_CLOSED");
    assert_eq!(details["status"], "expired");
    let after = charge(api, "h1", charge_body("c2", "assistant-chat", None))
        .await
        .expect(201);
    assert_eq!(
        after["balance"], 4_919,
        "the expired hold returned its 100 credits"
    );
    api.post(Role::Executor, "/v1/accounts/h1/holds", json!({"hold_id": "huge", "run_id": "r", "node_id": "n", "model": "kling-2", "seconds": 3600}))
        .await
        .expect_error(402, "INSUFFICIENT_CREDITS");
    let events = all_events(api, "h1").await;
    for type_name in [
        "hold_placed",
        "hold_captured",
        "hold_released",
        "hold_expired",
    ] {
        assert!(
            !of_type(&events, type_name).is_empty(),
            "{type_name} recorded"
        );
    }
}

#[tokio::test]
async fn refunds_return_the_recorded_parts_once() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "rf").await;
    let charged = charge(
        api,
        "rf",
        charge_body("c1", "flux-schnell", Some(("images", 10))),
    )
    .await
    .expect(201);
    assert_eq!(charged["balance"], 480);
    let refunded = api
        .post(
            Role::Executor,
            "/v1/accounts/rf/charges/c1/refund",
            json!({"reason": "generation failed"}),
        )
        .await
        .expect(200);
    assert_eq!(refunded["charge_id"], "c1");
    assert_eq!(refunded["returned"], charged["drawn_from"]);
    assert_eq!(refunded["forfeited"], json!([]));
    assert_eq!(refunded["balance"], 500);
    let again = api
        .post(
            Role::Executor,
            "/v1/accounts/rf/charges/c1/refund",
            json!({"reason": "generation failed"}),
        )
        .await
        .expect(200);
    assert_eq!(again["balance"], 500);
    api.post(
        Role::Executor,
        "/v1/accounts/rf/charges/c1/refund",
        json!({"reason": "another reason"}),
    )
    .await
    .expect_error(409, "IDEMPOTENCY_CONFLICT");
    let events = all_events(api, "rf").await;
    assert_eq!(of_type(&events, "charge_refunded").len(), 1);
}

#[tokio::test]
async fn top_up_lots_pay_first_when_they_expire_first_and_then_expire() {
    let catalog = catalog_with(|catalog| catalog["top_up_expiry"] = json!("3s"));
    let server = Server::start_with(Options::catalog(catalog)).await;
    let api = &server.api;
    open(api, "t1").await;
    let topped = top_up(api, "t1", "lot-1", 100).await;
    let lot = &topped["balance"]["top_ups"][0];
    assert_eq!(lot["lot_id"], "lot-1");
    let expires_at = instant(&lot["expires_at"]);
    let lifetime = expires_at - chrono::Utc::now();
    assert!(
        lifetime <= chrono::TimeDelta::seconds(3) && lifetime > chrono::TimeDelta::zero(),
        "{lifetime}"
    );
    let spent = charge(
        api,
        "t1",
        charge_body("c1", "flux-schnell", Some(("images", 10))),
    )
    .await
    .expect(201);
    assert_eq!(
        spent["drawn_from"],
        json!([{"bucket": "top_up", "id": "lot-1", "amount": 20}])
    );
    assert_eq!(spent["balance"], 580);

    sleep_past(expires_at).await;
    let later = charge(
        api,
        "t1",
        charge_body("c2", "flux-schnell", Some(("images", 10))),
    )
    .await
    .expect(201);
    assert_eq!(later["drawn_from"][0]["bucket"], "allowance");
    assert_eq!(later["balance"], 480);
    let read = summary(api, "t1", position(&later)).await;
    assert_eq!(read["balance"]["top_ups"], json!([]));
    assert_eq!(read["balance"]["total"], 480);
    let events = all_events(api, "t1").await;
    let expired = of_type(&events, "top_up_expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["data"]["forfeited"], 80);
}
