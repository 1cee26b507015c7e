//! The mapping of SPEC section 12's table, row by row, on Stripe's full payloads
//! (`tests/fixtures/stripe/`), with the edits that turn one row into another.

use serde_json::json;

use super::*;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/stripe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn map(event: &Value) -> Result<Delivery, PayloadError> {
    map_delivery(event.to_string().as_bytes())
}

fn command(event: &Value) -> (String, Command, &'static str) {
    match map(event).expect("maps").mapped {
        Mapped::Command {
            account_id,
            command,
            writes,
        } => (account_id, command, writes),
        Mapped::Ignored(reason) => panic!("ignored: {reason}"),
    }
}

/// The command a fixture maps to, for the fixtures' account, writing `writes`.
fn fixture_command(name: &str, writes: &'static str) -> Command {
    let (account_id, command, wrote) = command(&fixture(name));
    assert_eq!((account_id.as_str(), wrote), ("acme-studio", writes));
    command
}

fn ignored(event: &Value) -> &'static str {
    match map(event).expect("maps").mapped {
        Mapped::Ignored(reason) => reason,
        other => panic!("not ignored: {other:?}"),
    }
}

fn at(seconds: i64) -> Instant {
    Instant::from_timestamp(seconds, 0).expect("instant")
}

fn set(event: &mut Value, pointer: &str, value: Value) {
    *event
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
}

fn insert(event: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    event
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{pointer}"))
        .insert(key.to_string(), value);
}

fn remove(event: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    event
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|object| object.remove(key))
        .unwrap_or_else(|| panic!("{pointer}"));
}

#[test]
fn a_created_subscription_syncs_tier_billing_and_period_from_the_subscription() {
    let command = fixture_command("customer.subscription.created", "tier_changed");
    let Command::SyncSubscription(change) = command else {
        panic!("{command:?}")
    };
    assert_eq!(change.tier, Tier::Pro);
    assert_eq!(change.billing, Some(Billing::Annual));
    assert_eq!(change.period_start, at(1_767_866_400));
    assert_eq!(change.period_end, at(1_799_402_400));
    assert_eq!(change.reference, "evt_1PqSubCreatedPro0001");
}

#[test]
fn an_updated_subscription_of_the_basil_api_takes_the_items_period_and_the_lookup_key() {
    let (_, command, _) = command(&fixture("customer.subscription.updated"));
    let Command::SyncSubscription(change) = command else {
        panic!("{command:?}")
    };
    assert_eq!(change.tier, Tier::Business);
    assert_eq!(change.billing, Some(Billing::Monthly));
    assert_eq!(change.period_start, at(1_770_544_800));
    assert_eq!(change.period_end, at(1_773_136_800));
}

#[test]
fn a_subscription_neither_active_nor_trialing_is_ignored() {
    let mut event = fixture("customer.subscription.updated");
    set(&mut event, "/data/object/status", json!("past_due"));
    assert_eq!(
        ignored(&event),
        "the subscription is not active or trialing"
    );
    set(&mut event, "/data/object/status", json!("trialing"));
    command(&event);
}

#[test]
fn a_subscription_whose_price_names_no_tier_is_a_bad_payload() {
    let mut event = fixture("customer.subscription.updated");
    set(
        &mut event,
        "/data/object/items/data/0/price/lookup_key",
        Value::Null,
    );
    assert!(map(&event)
        .unwrap_err()
        .to_string()
        .contains("names no tier"));
    set(
        &mut event,
        "/data/object/items/data/0/price/lookup_key",
        json!("gold_monthly"),
    );
    assert!(map(&event).unwrap_err().to_string().contains("\"gold\""));
}

#[test]
fn a_subscription_without_an_account_is_a_bad_payload() {
    let mut event = fixture("customer.subscription.created");
    remove(&mut event, "/data/object/metadata/account_id");
    assert!(map(&event)
        .unwrap_err()
        .to_string()
        .contains("/metadata/account_id"));
}

#[test]
fn a_weekly_or_quarterly_price_is_a_bad_payload() {
    let mut event = fixture("customer.subscription.updated");
    set(
        &mut event,
        "/data/object/items/data/0/price/recurring/interval",
        json!("week"),
    );
    assert!(map(&event).is_err());
    let mut event = fixture("customer.subscription.updated");
    set(
        &mut event,
        "/data/object/items/data/0/price/recurring/interval_count",
        json!(3),
    );
    assert!(map(&event).is_err());
}

#[test]
fn a_deleted_subscription_moves_to_free_from_when_it_ended() {
    let (account_id, command, _) = command(&fixture("customer.subscription.deleted"));
    assert_eq!(account_id, "acme-studio");
    let Command::SyncSubscription(change) = command else {
        panic!("{command:?}")
    };
    assert_eq!((change.tier, change.billing), (Tier::Free, None));
    assert_eq!(change.period_start, at(1_772_964_000));
    assert_eq!(change.period_end, add_months(at(1_772_964_000), 1));
}

#[test]
fn a_cycle_invoice_renews_for_its_subscription_lines_period() {
    let command = fixture_command("invoice.paid", "allowance_renewed");
    assert_eq!(
        command,
        Command::RenewAllowance(RenewAllowance {
            invoice_id: "in_1PqCycleInvoice04".into(),
            period_start: at(1_799_402_400),
            period_end: at(1_830_938_400),
        })
    );
}

#[test]
fn a_basil_invoice_names_its_account_under_parent_and_its_line_by_parent_type() {
    let mut event = fixture("invoice.paid");
    let details = event["data"]["object"]["subscription_details"].take();
    remove(&mut event, "/data/object/subscription_details");
    insert(
        &mut event,
        "/data/object/parent",
        json!({ "type": "subscription_details", "subscription_details": details }),
    );
    remove(&mut event, "/data/object/lines/data/0/type");
    insert(
        &mut event,
        "/data/object/lines/data/0/parent",
        json!({ "type": "subscription_item_details" }),
    );
    let (account_id, command, _) = command(&event);
    assert_eq!(account_id, "acme-studio");
    assert!(matches!(command, Command::RenewAllowance(_)));
}

#[test]
fn invoices_for_other_billing_reasons_are_ignored() {
    for reason in ["subscription_create", "subscription_update", "manual"] {
        let mut event = fixture("invoice.paid");
        set(&mut event, "/data/object/billing_reason", json!(reason));
        assert_eq!(
            ignored(&event),
            "an invoice that is not a subscription cycle"
        );
    }
}

#[test]
fn a_paid_checkout_buys_a_top_up_recording_its_payment_intent() {
    let command = fixture_command("checkout.session.completed", "top_up_purchased");
    assert_eq!(
        command,
        Command::PurchasePaidTopUp(PaidTopUp {
            top_up: PurchaseTopUp {
                purchase_id: "cs_test_a1PqTopUpPack5000".into(),
                credits: 5_000,
                expires_at: Some(at(1_768_471_200) + chrono::TimeDelta::days(90)),
            },
            payment_ref: "pi_3PqTopUpPack0005".into(),
        })
    );
}

#[test]
fn a_checkout_names_its_account_by_client_reference_when_metadata_does_not() {
    let mut event = fixture("checkout.session.completed");
    remove(&mut event, "/data/object/metadata/account_id");
    set(
        &mut event,
        "/data/object/client_reference_id",
        json!("other-account"),
    );
    assert_eq!(command(&event).0, "other-account");
}

#[test]
fn a_checkout_without_expires_in_days_takes_the_catalogs_expiry() {
    let mut event = fixture("checkout.session.completed");
    remove(&mut event, "/data/object/metadata/expires_in_days");
    let Command::PurchasePaidTopUp(paid) = command(&event).1 else {
        panic!("not a paid top-up")
    };
    assert_eq!(paid.top_up.expires_at, None);
}

#[test]
fn unpaid_and_subscription_checkouts_are_ignored() {
    let mut event = fixture("checkout.session.completed");
    set(&mut event, "/data/object/payment_status", json!("unpaid"));
    assert_eq!(ignored(&event), "a checkout not paid yet");
    let mut event = fixture("checkout.session.completed");
    set(&mut event, "/data/object/mode", json!("subscription"));
    assert!(ignored(&event).starts_with("a checkout that is not a one-off payment"));
}

#[test]
fn a_delayed_payment_succeeding_buys_the_top_up_as_a_completed_checkout_does() {
    let mut event = fixture("checkout.session.completed");
    set(
        &mut event,
        "/type",
        json!("checkout.session.async_payment_succeeded"),
    );
    assert!(matches!(command(&event).1, Command::PurchasePaidTopUp(_)));
}

#[test]
fn a_checkout_with_credits_that_are_not_a_number_is_a_bad_payload() {
    for (field, value) in [("credits", "5k"), ("expires_in_days", "0")] {
        let mut event = fixture("checkout.session.completed");
        set(
            &mut event,
            &format!("/data/object/metadata/{field}"),
            json!(value),
        );
        assert!(map(&event).is_err(), "{field}={value}");
    }
}

#[test]
fn a_refunded_charge_revokes_the_lot_its_payment_intent_bought() {
    let command = fixture_command("charge.refunded", "top_up_revoked");
    assert_eq!(
        command,
        Command::RevokeTopUp(RevokeTopUp {
            payment_ref: "pi_3PqTopUpPack0005".into(),
            reference: "ch_3PqTopUpCharge0005".into(),
        })
    );
}

#[test]
fn a_refunded_charge_naming_no_account_is_ignored() {
    let mut event = fixture("charge.refunded");
    set(&mut event, "/data/object/metadata", json!({}));
    assert_eq!(ignored(&event), "a refunded charge that names no account");
}

#[test]
fn other_event_types_are_ignored() {
    assert_eq!(
        ignored(&fixture("customer.updated")),
        "an event type the ledger does not use"
    );
}

#[test]
fn a_body_that_is_not_a_stripe_event_is_a_bad_payload() {
    assert!(map_delivery(b"not json").is_err());
    assert!(map(&json!({ "id": "evt_1", "type": "invoice.paid" })).is_err());
}
