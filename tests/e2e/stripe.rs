//! Stripe's webhooks over real HTTP (SPEC section 12): Stripe's own payload shapes from
//! `tests/fixtures/stripe/`, signed as Stripe signs them, through the whole billing story,
//! every row of the mapping table, every signature case, and the duplicate and out-of-order
//! deliveries Stripe makes. After each step the summary and the event history are checked.

use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::*;

const SECRET: &str = "whsec_e2e_current_0123456789";
/// The secret being rotated out: Stripe signs with both while it rolls.
const OLD_SECRET: &str = "whsec_e2e_previous_0123456789";
const DAY_S: i64 = 86_400;

async fn stripe_server() -> Server {
    Server::start_with(Options {
        stripe_secrets: Some(format!("{OLD_SECRET}, {SECRET}")),
        ..Options::default()
    })
    .await
}

/// A server with Stripe's secrets and `account` opened.
async fn stripe_account(account: &str) -> Server {
    let server = stripe_server().await;
    open(&server.api, account).await;
    server
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/stripe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    serde_json::from_str(&text).expect("a fixture is JSON")
}

fn set(event: &mut Value, pointer: &str, value: Value) {
    *event
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = value;
}

fn now_s() -> i64 {
    Utc::now().timestamp()
}

/// The `v1` HMAC-SHA256 of `"{t}.{body}"`.
fn v1(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Posts `body` as Stripe would, with `signature` as the `Stripe-Signature` header.
async fn post(api: &Api, body: &str, signature: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = signature
        .map(|value| ("stripe-signature", value))
        .into_iter()
        .collect();
    api.send_with_headers(
        None,
        "POST",
        "/v1/billing/stripe",
        Body::Raw(body.to_string()),
        &headers,
    )
    .await
}

/// Delivers `event` signed now with the current secret.
async fn deliver(api: &Api, event: &Value) -> Reply {
    let body = event.to_string();
    let t = now_s();
    post(
        api,
        &body,
        Some(&format!("t={t},v1={}", v1(SECRET, t, &body))),
    )
    .await
}

/// Delivers `event` and expects 200 with `applied`; returns the answer.
async fn delivered(api: &Api, event: &Value, applied: &str) -> Value {
    let answer = deliver(api, event).await.expect(200);
    assert_eq!(answer["received"], true, "{answer}");
    assert_eq!(answer["applied"], applied, "{} {answer}", event["type"]);
    answer
}

/// The summary's tier and billing.
fn plan_of(read: &Value) -> (Option<&str>, Option<&str>) {
    (read["tier"].as_str(), read["billing"].as_str())
}

async fn count(api: &Api, account: &str) -> usize {
    all_events(api, account).await.len()
}

async fn last_event(api: &Api, account: &str) -> Value {
    all_events(api, account)
        .await
        .pop()
        .expect("the account has events")
}

// --- the payloads of the story, edited from the fixtures ---------------------------------------

fn subscription_created(account: &str, id: &str, start: i64, end: i64) -> Value {
    let mut event = fixture("customer.subscription.created");
    set(&mut event, "/id", json!(id));
    set(&mut event, "/created", json!(start));
    set(
        &mut event,
        "/data/object/metadata/account_id",
        json!(account),
    );
    set(
        &mut event,
        "/data/object/current_period_start",
        json!(start),
    );
    set(&mut event, "/data/object/current_period_end", json!(end));
    event
}

/// A `customer.subscription.updated` (API 2025-03-31: the period on the item) to `lookup_key`.
fn subscription_updated(account: &str, id: &str, lookup_key: &str, start: i64, end: i64) -> Value {
    let mut event = fixture("customer.subscription.updated");
    set(&mut event, "/id", json!(id));
    set(
        &mut event,
        "/data/object/metadata/account_id",
        json!(account),
    );
    set(
        &mut event,
        "/data/object/items/data/0/price/lookup_key",
        json!(lookup_key),
    );
    set(
        &mut event,
        "/data/object/items/data/0/current_period_start",
        json!(start),
    );
    set(
        &mut event,
        "/data/object/items/data/0/current_period_end",
        json!(end),
    );
    event
}

fn subscription_deleted(account: &str, id: &str, ended_at: i64) -> Value {
    let mut event = fixture("customer.subscription.deleted");
    set(&mut event, "/id", json!(id));
    set(
        &mut event,
        "/data/object/metadata/account_id",
        json!(account),
    );
    set(&mut event, "/data/object/ended_at", json!(ended_at));
    set(&mut event, "/data/object/canceled_at", json!(ended_at));
    event
}

fn invoice_paid(account: &str, invoice: &str, start: i64, end: i64) -> Value {
    let mut event = fixture("invoice.paid");
    set(&mut event, "/id", json!(format!("evt_{invoice}")));
    set(&mut event, "/data/object/id", json!(invoice));
    set(
        &mut event,
        "/data/object/subscription_details/metadata/account_id",
        json!(account),
    );
    set(
        &mut event,
        "/data/object/lines/data/0/period/start",
        json!(start),
    );
    set(
        &mut event,
        "/data/object/lines/data/0/period/end",
        json!(end),
    );
    event
}

fn checkout(account: &str, session: &str, payment_intent: &str, credits: u64, days: u32) -> Value {
    let mut event = fixture("checkout.session.completed");
    set(&mut event, "/id", json!(format!("evt_{session}")));
    set(&mut event, "/created", json!(now_s()));
    set(&mut event, "/data/object/id", json!(session));
    set(
        &mut event,
        "/data/object/payment_intent",
        json!(payment_intent),
    );
    set(
        &mut event,
        "/data/object/metadata",
        json!({ "account_id": account, "credits": credits.to_string(), "expires_in_days": days.to_string() }),
    );
    event
}

fn charge_refunded(account: &str, charge: &str, payment_intent: &str) -> Value {
    let mut event = fixture("charge.refunded");
    set(&mut event, "/id", json!(format!("evt_{charge}")));
    set(&mut event, "/data/object/id", json!(charge));
    set(
        &mut event,
        "/data/object/payment_intent",
        json!(payment_intent),
    );
    set(
        &mut event,
        "/data/object/metadata/account_id",
        json!(account),
    );
    event
}

// --- the whole story ----------------------------------------------------------------------------

#[tokio::test]
async fn the_billing_story_runs_from_stripe_alone() {
    let server = stripe_account("acme").await;
    let api = &server.api;

    // Checkout of Pro annual: its first year ends in a moment, so the cycle invoice that
    // follows renews a period that has started, as Stripe's do.
    let year_end = now_s() + 2;
    let created = subscription_created("acme", "evt_sub_created", year_end - 365 * DAY_S, year_end);
    let answer = delivered(api, &created, "tier_changed").await;
    let read = summary(api, "acme", position(&answer)).await;
    assert_eq!(plan_of(&read), (Some("pro"), Some("annual")));
    assert_eq!(read["balance"]["total"], 6_000, "pro annual with its bonus");
    let changed = last_event(api, "acme").await;
    assert_eq!(changed["type"], "tier_changed");
    assert_eq!(changed["data"]["reference"], "evt_sub_created");
    assert_eq!(changed["actor"], "billing");

    // The first cycle invoice paid: a renewal.
    sleep_past(chrono::DateTime::from_timestamp(year_end, 0).expect("instant")).await;
    let cycle = invoice_paid("acme", "in_cycle_1", year_end, year_end + 365 * DAY_S);
    let renewed = delivered(api, &cycle, "allowance_renewed").await;
    let events = all_events(api, "acme").await;
    let renewal = events.last().expect("events");
    assert_eq!(renewal["type"], "allowance_renewed");
    assert_eq!(renewal["data"]["invoice_id"], "in_cycle_1");
    let read = summary(api, "acme", position(&renewed)).await;
    assert_eq!(read["balance"]["allowance"], 6_000);
    let after_renewal = events.len();

    // The same event twice more: the first answer again, nothing written.
    for _ in 0..2 {
        let again = delivered(api, &cycle, "none").await;
        assert_eq!(
            again["position"], renewed["position"],
            "a replay answers as the first"
        );
    }
    assert_eq!(count(api, "acme").await, after_renewal);

    // Out of order: last year's invoice and the subscription as it was before the renewal
    // arrive late; both are older than the state they would change.
    let old_invoice = invoice_paid("acme", "in_cycle_0", year_end - 365 * DAY_S, year_end);
    delivered(api, &old_invoice, "none").await;
    let old_update = subscription_updated(
        "acme",
        "evt_sub_updated_late",
        "business_annual",
        year_end - 365 * DAY_S,
        year_end,
    );
    delivered(api, &old_update, "none").await;
    assert_eq!(count(api, "acme").await, after_renewal);
    let read = summary(api, "acme", position(&renewed)).await;
    assert_eq!(read["tier"], "pro");

    // A pack of 5,000 credits bought through checkout; it expires before the allowance
    // window ends, so charges draw on it first.
    let pack = checkout("acme", "cs_pack_1", "pi_pack_1", 5_000, 7);
    let bought = delivered(api, &pack, "top_up_purchased").await;
    let read = summary(api, "acme", position(&bought)).await;
    assert_eq!(read["balance"]["top_ups"][0]["lot_id"], "cs_pack_1");
    assert_eq!(read["balance"]["top_ups"][0]["remaining"], 5_000);
    assert_eq!(read["balance"]["total"], 11_000);
    let purchase = last_event(api, "acme").await;
    assert_eq!(purchase["data"]["payment_ref"], "pi_pack_1");
    delivered(api, &pack, "none").await;

    // Part of it spent: two runs of 100 images at 8 credits.
    for id in ["run-a", "run-b"] {
        let charged = charge(
            api,
            "acme",
            charge_body(id, "flux-pro", Some(("images", 100))),
        )
        .await
        .expect(201);
        assert_eq!(charged["drawn_from"][0]["bucket"], "top_up", "{charged}");
    }

    // Refunded: the unspent 3,400 are revoked, the 1,600 spent stay spent.
    let refund = charge_refunded("acme", "ch_pack_1", "pi_pack_1");
    let revoked = delivered(api, &refund, "top_up_revoked").await;
    let event = last_event(api, "acme").await;
    assert_eq!(event["type"], "top_up_revoked");
    assert_eq!(
        (
            &event["data"]["revoked"],
            &event["data"]["spent"],
            &event["data"]["held"]
        ),
        (&json!(3_400), &json!(1_600), &json!(0))
    );
    let read = summary(api, "acme", position(&revoked)).await;
    assert_eq!(read["balance"]["top_ups"], json!([]));
    assert_eq!(
        read["balance"]["total"], 6_000,
        "the allowance is untouched"
    );
    let after_refund = count(api, "acme").await;
    delivered(api, &refund, "none").await;
    assert_eq!(count(api, "acme").await, after_refund);

    // Cancellation: back to free.
    let deleted = subscription_deleted("acme", "evt_sub_deleted", now_s());
    let cancelled = delivered(api, &deleted, "tier_changed").await;
    let read = summary(api, "acme", position(&cancelled)).await;
    assert_eq!(plan_of(&read), (Some("free"), None));
    assert_eq!(read["balance"]["total"], 500);
    let event = last_event(api, "acme").await;
    assert_eq!(
        (event["data"]["from"].as_str(), event["data"]["to"].as_str()),
        (Some("pro"), Some("free"))
    );
    delivered(api, &deleted, "none").await;
}

#[tokio::test]
async fn a_business_subscription_before_verification_is_refused_once_logged_and_not_retried() {
    let server = stripe_account("bizco").await;
    let api = &server.api;
    let start = now_s();
    let update = subscription_updated(
        "bizco",
        "evt_biz_1",
        "business_monthly",
        start,
        start + 30 * DAY_S,
    );
    let before = count(api, "bizco").await;
    // 200, so Stripe stops retrying; the refusal is in the answer and the log.
    let answer = delivered(api, &update, "none").await;
    assert_eq!(
        answer["refused"]["code"], "BUSINESS_VERIFICATION_REQUIRED",
        "{answer}"
    );
    assert_eq!(count(api, "bizco").await, before, "nothing written");
    let logged = eventually(
        std::time::Duration::from_secs(5),
        "the refusal is logged",
        || async {
            server
                .stderr()
                .lines()
                .any(|line| {
                    line.contains("refused by the ledger's rules") && line.contains("evt_biz_1")
                })
                .then_some(())
        },
    );
    logged.await;
    let opened = position(&last_event(api, "bizco").await);
    assert_eq!(summary(api, "bizco", opened).await["tier"], "free");

    // Once verified, billing resends the event from Stripe's dashboard and it applies.
    api.post(
        Role::Billing,
        "/v1/accounts/bizco/business-verification",
        json!({"company_name": "Biz Co", "country": "DE", "registration_number": "HRB 1"}),
    )
    .await
    .expect(202);
    api.post_empty(
        Role::Admin,
        "/v1/accounts/bizco/business-verification/approve",
    )
    .await
    .expect(200);
    let applied = delivered(api, &update, "tier_changed").await;
    let read = summary(api, "bizco", position(&applied)).await;
    assert_eq!(plan_of(&read), (Some("business"), Some("monthly")));
}

// --- every row of the table ---------------------------------------------------------------------

#[tokio::test]
async fn row_subscription_created_or_updated_when_active_or_trialing_changes_the_plan_once() {
    let server = stripe_account("rows").await;
    let api = &server.api;
    let start = now_s();
    let update = |id: &str, lookup_key: &str, status: &str| {
        let mut event = subscription_updated("rows", id, lookup_key, start, start + 14 * DAY_S);
        set(&mut event, "/data/object/status", json!(status));
        event
    };
    let trial = update("evt_trial", "pro_monthly", "trialing");
    let changed = delivered(api, &trial, "tier_changed").await;
    // The same tier and billing restated (Stripe sends .updated for many reasons).
    let restated = update("evt_restated", "pro_monthly", "active");
    delivered(api, &restated, "none").await;
    // A subscription that is not active or trialing changes nothing.
    let past_due = update("evt_past_due", "pro_annual", "past_due");
    let before = count(api, "rows").await;
    delivered(api, &past_due, "none").await;
    assert_eq!(count(api, "rows").await, before);
    let read = summary(api, "rows", position(&changed)).await;
    assert_eq!(plan_of(&read), (Some("pro"), Some("monthly")));
}

#[tokio::test]
async fn row_subscription_deleted_moves_to_free() {
    let server = stripe_account("gone").await;
    let api = &server.api;
    let start = now_s();
    delivered(
        api,
        &subscription_created("gone", "evt_c", start, start + 30 * DAY_S),
        "tier_changed",
    )
    .await;
    let answer = delivered(
        api,
        &subscription_deleted("gone", "evt_d", now_s() + 1),
        "tier_changed",
    )
    .await;
    assert_eq!(
        summary(api, "gone", position(&answer)).await["tier"],
        "free"
    );
}

#[tokio::test]
async fn row_invoice_paid_renews_only_for_a_subscription_cycle() {
    let server = stripe_account("inv").await;
    let api = &server.api;
    let start = now_s();
    delivered(
        api,
        &subscription_created("inv", "evt_c", start - 30 * DAY_S, start + 2),
        "tier_changed",
    )
    .await;
    let before = count(api, "inv").await;
    for reason in ["subscription_create", "subscription_update", "manual"] {
        let mut invoice = invoice_paid(
            "inv",
            &format!("in_{reason}"),
            start + 2,
            start + 40 * DAY_S,
        );
        set(&mut invoice, "/data/object/billing_reason", json!(reason));
        delivered(api, &invoice, "none").await;
    }
    assert_eq!(count(api, "inv").await, before);
    sleep_past(chrono::DateTime::from_timestamp(start + 2, 0).expect("instant")).await;
    let cycle = invoice_paid("inv", "in_cycle", start + 2, start + 2 + 365 * DAY_S);
    delivered(api, &cycle, "allowance_renewed").await;
    assert_eq!(count(api, "inv").await, before + 1);
}

#[tokio::test]
async fn row_checkout_completed_buys_a_top_up_only_when_paid_in_payment_mode() {
    let server = stripe_account("shop").await;
    let api = &server.api;
    let mut unpaid = checkout("shop", "cs_unpaid", "pi_unpaid", 1_000, 90);
    set(&mut unpaid, "/data/object/payment_status", json!("unpaid"));
    delivered(api, &unpaid, "none").await;
    let mut subscription_mode = checkout("shop", "cs_sub", "pi_sub", 1_000, 90);
    set(
        &mut subscription_mode,
        "/data/object/mode",
        json!("subscription"),
    );
    delivered(api, &subscription_mode, "none").await;
    assert_eq!(count(api, "shop").await, 1);
    let bought = delivered(
        api,
        &checkout("shop", "cs_paid", "pi_paid", 1_000, 90),
        "top_up_purchased",
    )
    .await;
    let read = summary(api, "shop", position(&bought)).await;
    assert_eq!(read["balance"]["total"], 1_500);
}

#[tokio::test]
async fn row_charge_refunded_revokes_only_a_lot_its_payment_bought() {
    let server = stripe_account("refunds").await;
    let api = &server.api;
    // A refund that overtakes its purchase: 404, so Stripe retries until the lot exists.
    deliver(api, &charge_refunded("refunds", "ch_early", "pi_early"))
        .await
        .expect_error(404, "NOT_FOUND");
    delivered(
        api,
        &checkout("refunds", "cs_early", "pi_early", 700, 90),
        "top_up_purchased",
    )
    .await;
    let revoked = delivered(
        api,
        &charge_refunded("refunds", "ch_early", "pi_early"),
        "top_up_revoked",
    )
    .await;
    assert_eq!(
        summary(api, "refunds", position(&revoked)).await["balance"]["total"],
        500
    );
    // The refund of a subscription invoice's charge names no account: acknowledged.
    let mut invoice_charge = charge_refunded("refunds", "ch_invoice", "pi_invoice");
    set(&mut invoice_charge, "/data/object/metadata", json!({}));
    let before = count(api, "refunds").await;
    delivered(api, &invoice_charge, "none").await;
    assert_eq!(count(api, "refunds").await, before);
}

#[tokio::test]
async fn row_anything_else_is_acknowledged_with_nothing_written() {
    let server = stripe_account("acme-studio").await;
    let api = &server.api;
    let answer = delivered(api, &fixture("customer.updated"), "none").await;
    assert_eq!(answer["position"], Value::Null);
    assert_eq!(count(api, "acme-studio").await, 1);
}

#[tokio::test]
async fn an_event_for_an_account_that_does_not_exist_is_404_until_it_does() {
    let server = stripe_server().await;
    let api = &server.api;
    let pack = checkout("later", "cs_later", "pi_later", 1_000, 90);
    deliver(api, &pack)
        .await
        .expect_error(404, "ACCOUNT_NOT_FOUND");
    open(api, "later").await;
    delivered(api, &pack, "top_up_purchased").await;
}

// --- signatures ----------------------------------------------------------------------------------

#[tokio::test]
async fn signatures_are_checked_over_the_raw_body_and_a_bad_one_writes_nothing() {
    let server = stripe_account("sig").await;
    let api = &server.api;
    let body = checkout("sig", "cs_sig", "pi_sig", 1_000, 90).to_string();
    let t = now_s();
    let good = v1(SECRET, t, &body);
    let refused: [(&str, Option<String>, String); 5] = [
        ("a missing header", None, body.clone()),
        (
            "another secret",
            Some(format!("t={t},v1={}", v1("whsec_someone_else", t, &body))),
            body.clone(),
        ),
        (
            "a tampered body",
            Some(format!("t={t},v1={good}")),
            body.replace("1000", "9000"),
        ),
        (
            "a stale t",
            Some(format!("t={},v1={}", t - 301, v1(SECRET, t - 301, &body))),
            body.clone(),
        ),
        (
            "a malformed header",
            Some(format!("v1={good}")),
            body.clone(),
        ),
    ];
    for (what, header, sent) in refused {
        let reply = post(api, &sent, header.as_deref()).await;
        let details = reply.expect_error(400, "INVALID_REQUEST");
        assert!(details.is_object(), "{what}");
        assert_eq!(count(api, "sig").await, 1, "{what} writes nothing");
    }
    // Rotation: two v1, only one of them valid, and the old secret still accepted.
    let rotated = format!("t={t},v1={},v1={good}", v1("whsec_retired", t, &body));
    let answer = post(api, &body, Some(&rotated)).await.expect(200);
    assert_eq!(answer["applied"], "top_up_purchased");
    let old = format!("t={t},v1={}", v1(OLD_SECRET, t, &body));
    assert_eq!(
        post(api, &body, Some(&old)).await.expect(200)["applied"],
        "none"
    );
    assert_eq!(count(api, "sig").await, 2);
}

#[tokio::test]
async fn without_secrets_the_route_is_off() {
    let server = Server::start().await;
    let api = &server.api;
    let body = fixture("customer.updated").to_string();
    let t = now_s();
    post(
        api,
        &body,
        Some(&format!("t={t},v1={}", v1(SECRET, t, &body))),
    )
    .await
    .expect_error(404, "NOT_FOUND");
}
