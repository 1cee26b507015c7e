//! Given/when/then tests of `explain` and of its words: histories are built with `decide` and
//! `evolve` on the shipped catalog and sealed into envelopes, as the service stores them, then
//! explained by the domain and rendered by `explain_text` as the API and the CLI answer.
//! (Moved here from the domain when the summaries' English left it.)

use std::collections::BTreeSet;

use ledger_domain::command::*;
use ledger_domain::decide::decide;
use ledger_domain::envelope::{seal, stream_name, Cause, Envelope, GENESIS_HASH};
use ledger_domain::events::{Billing, BucketKind, Part, Via};
use ledger_domain::explain::{explain, BucketName, Explanation, ModelAccessKind};
use ledger_domain::state::TrialStatus;
use ledger_domain::{Account, Catalog, Credits, Instant, Tier};
use ledger_service::explain_text::render;

const ACCOUNT: &str = "acct-1";
const T0: &str = "2026-01-10T12:00:00Z";

fn at(text: &str) -> Instant {
    text.parse().expect("test instant")
}

fn credits(amount: u64) -> Credits {
    Credits::new(amount)
}

/// An account's stream as the service would have written it, with the clock it ran on.
struct History {
    account: Account,
    catalog: Catalog,
    envelopes: Vec<Envelope>,
    now: Instant,
}

/// The role that sends each command, for the envelope's `actor`.
fn actor(command: &Command) -> &'static str {
    match command {
        Command::Charge(_)
        | Command::RefundCharge { .. }
        | Command::PlaceHold(_)
        | Command::CaptureHold(_)
        | Command::ReleaseHold { .. } => "executor",
        Command::AddGrant(_) => "support",
        Command::ApproveBusinessVerification | Command::RejectBusinessVerification { .. } => {
            "admin"
        }
        Command::Tick => "scheduler",
        _ => "billing",
    }
}

impl History {
    /// Given an account opened at `T0`.
    fn opened() -> History {
        let mut history = History {
            account: Account::new(ACCOUNT),
            catalog: Catalog::shipped(),
            envelopes: Vec::new(),
            now: at(T0),
        };
        history.run(Command::OpenAccount);
        history
    }

    fn at(mut self, text: &str) -> History {
        self.now = at(text);
        self
    }

    /// Runs a command that must succeed and appends its sealed events.
    fn run(&mut self, command: Command) {
        let decision = decide(&self.account, &self.catalog, &command, self.now)
            .unwrap_or_else(|rejection| panic!("{command:?} was rejected: {rejection}"));
        let prev_hash = self
            .envelopes
            .last()
            .map_or(GENESIS_HASH.to_string(), |e| e.hash.clone());
        let cause = Cause {
            command_id: command.command_id(self.now),
            actor: actor(&command).to_string(),
        };
        for (envelope, _payload) in seal(
            &stream_name(ACCOUNT),
            self.account.version,
            &prev_hash,
            &cause,
            self.now,
            self.now,
            decision.events,
        ) {
            self.account.evolve(&envelope.event);
            self.envelopes.push(envelope);
        }
    }

    fn ran(mut self, command: Command) -> History {
        self.run(command);
        self
    }

    fn explain_at(&self, text: &str) -> Explanation<String> {
        render(explain(ACCOUNT, &self.envelopes, &self.catalog, at(text)))
    }
}

fn top_up(id: &str, amount: u64, expires_at: Option<&str>) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: id.into(),
        credits: amount,
        expires_at: expires_at.map(at),
    })
}

fn grant(id: &str, amount: u64, expires_at: Option<&str>) -> Command {
    Command::AddGrant(AddGrant {
        grant_id: id.into(),
        credits: amount,
        reason: "goodwill".into(),
        expires_at: expires_at.map(at),
    })
}

fn charge(id: &str, model: &str, images: Option<u32>, seconds: Option<u32>) -> Command {
    Command::Charge(Charge {
        charge_id: id.into(),
        run_id: "r1".into(),
        node_id: format!("n-{id}"),
        model: model.into(),
        quantity: Quantity { images, seconds },
        via: Via::App,
    })
}

fn hold(id: &str, model: &str, seconds: u32) -> Command {
    Command::PlaceHold(PlaceHold {
        hold_id: id.into(),
        run_id: "r1".into(),
        node_id: format!("n-{id}"),
        model: model.into(),
        quantity: Quantity {
            images: None,
            seconds: Some(seconds),
        },
        via: Via::App,
        ttl: Some("1h".parse().expect("ttl")),
    })
}

fn subscribe_pro(reference: &str, start: &str, end: &str) -> Command {
    Command::ChangeSubscription(ChangeSubscription {
        tier: Tier::Pro,
        billing: Some(Billing::Monthly),
        period_start: at(start),
        period_end: at(end),
        reference: reference.into(),
        allowance: None,
    })
}

fn renew(invoice: &str, start: &str, end: &str) -> Command {
    Command::RenewAllowance(RenewAllowance {
        invoice_id: invoice.into(),
        period_start: at(start),
        period_end: at(end),
    })
}

/// A history that touches every bucket: allowance resets, a lot that expires, a grant, a
/// spanning charge, a refund, a hold captured in part, another released.
fn busy_history() -> History {
    History::opened()
        .ran(top_up("p1", 1000, None))
        .at("2026-01-11T00:00:00Z")
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(100), None))
        .ran(charge("c3", "flux-schnell", Some(100), None))
        .ran(Command::RefundCharge {
            charge_id: "c3".into(),
            reason: "run failed".into(),
        })
        .ran(subscribe_pro(
            "sub-1",
            "2026-01-12T00:00:00Z",
            "2026-02-12T00:00:00Z",
        ))
        .at("2026-01-12T00:00:00Z")
        .ran(hold("h1", "kling-2", 10))
        .ran(Command::CaptureHold(CaptureHold {
            hold_id: "h1".into(),
            quantity: Quantity {
                images: None,
                seconds: Some(4),
            },
        }))
        .ran(hold("h2", "kling-2", 5))
        .ran(Command::ReleaseHold {
            hold_id: "h2".into(),
        })
        // Added after the charges: the soonest expiry, it would otherwise pay for them first.
        .ran(grant("g1", 40, Some("2026-01-20T00:00:00Z")))
        .at("2026-01-21T00:00:00Z")
        .ran(Command::Tick)
        .at("2026-02-12T00:00:00Z")
        .ran(renew(
            "in_1",
            "2026-02-12T00:00:00Z",
            "2026-03-12T00:00:00Z",
        ))
}

#[test]
fn deltas_of_every_entry_sum_to_the_change_in_credits_held() {
    // Given a history that touches every kind of bucket
    let history = busy_history();
    // When it is explained after its last event
    let explanation = history.explain_at("2026-03-01T00:00:00Z");
    // Then each entry's deltas add up to the change in bucket credits, and the ledger
    // identity holds after every event
    assert_eq!(explanation.timeline.len(), history.envelopes.len());
    let mut previous: i64 = 0;
    for entry in &explanation.timeline {
        let in_buckets = i64::try_from(entry.after.in_buckets.get()).unwrap();
        let sum: i64 = entry.changes.iter().map(|change| change.delta).sum();
        assert_eq!(
            sum,
            in_buckets - previous,
            "version {} ({}): {:?}",
            entry.version,
            entry.type_name,
            entry.changes
        );
        previous = in_buckets;
        let totals = entry.totals;
        assert_eq!(
            totals.granted.get() + totals.refunded.get(),
            totals.charged.get() + totals.forfeited.get() + entry.after.in_buckets.get(),
            "ledger identity at version {}",
            entry.version
        );
        assert_eq!(
            entry.after.available.get(),
            entry.after.allowance.get() + entry.after.top_ups.get() + entry.after.grants.get()
        );
    }
    // And every kind of event that moves credits shows up as moving them
    let types: BTreeSet<&str> = explanation
        .timeline
        .iter()
        .filter(|entry| !entry.changes.is_empty())
        .map(|entry| entry.type_name)
        .collect();
    for expected in [
        "account_opened",
        "top_up_purchased",
        "grant_added",
        "credits_charged",
        "charge_refunded",
        "tier_changed",
        "hold_placed",
        "hold_captured",
        "hold_released",
        "grant_expired",
        "allowance_renewed",
    ] {
        assert!(types.contains(expected), "{expected} moved nothing");
    }
}

#[test]
fn a_hold_moves_credits_into_held_and_back() {
    // Given a pro account that held 10 seconds of kling-2 and captured 4
    let explanation = busy_history().explain_at("2026-03-01T00:00:00Z");
    let entry = |type_name: &str| {
        explanation
            .timeline
            .iter()
            .find(|entry| entry.type_name == type_name)
            .unwrap_or_else(|| panic!("no {type_name}"))
    };
    // Then placing moved 200 from the allowance into held credits
    let placed = entry("hold_placed");
    assert!(placed
        .changes
        .iter()
        .any(|c| c.bucket == BucketName::Held && c.id == "h1" && c.delta == 200));
    assert!(placed
        .changes
        .iter()
        .any(|c| c.bucket == BucketName::Allowance && c.delta == -200));
    assert_eq!(placed.after.held, credits(200));
    // And capturing charged 80 and gave 120 back
    let captured = entry("hold_captured");
    assert_eq!(
        captured.drawn_from.as_deref().map(|parts| parts.len()),
        Some(1)
    );
    assert!(captured
        .changes
        .iter()
        .any(|c| c.bucket == BucketName::Held && c.delta == -200));
    assert!(captured
        .changes
        .iter()
        .any(|c| c.bucket == BucketName::Allowance && c.delta == 120));
    assert!(
        captured.summary.starts_with("captured hold h1 (version "),
        "{}",
        captured.summary
    );
    assert!(captured
        .summary
        .contains("charged 80 credits (4 seconds), 120 returned"));
}

#[test]
fn a_charge_spanning_two_buckets_lists_both_parts() {
    // Given a free account (500 allowance) with a top-up, after two charges of 200
    let history = History::opened()
        .ran(top_up("p1", 1000, None))
        .ran(charge("c1", "flux-schnell", Some(100), None))
        .ran(charge("c2", "flux-schnell", Some(100), None))
        // When a third charge of 200 finds 100 left in the allowance
        .ran(charge("c3", "flux-schnell", Some(100), None));
    let explanation = history.explain_at("2026-01-10T12:00:00Z");
    // Then its entry lists both parts, in burn order, and the same amounts as deltas
    let entry = explanation.timeline.last().unwrap();
    assert_eq!(entry.type_name, "credits_charged");
    assert_eq!(entry.command_id, "charge:c3");
    assert_eq!(entry.actor, "executor");
    let allowance_id = "2026-01-10T12:00:00Z";
    assert_eq!(
        entry.drawn_from,
        Some(vec![
            Part {
                bucket: BucketKind::Allowance,
                id: allowance_id.into(),
                amount: credits(100),
            },
            Part {
                bucket: BucketKind::TopUp,
                id: "p1".into(),
                amount: credits(100),
            },
        ])
    );
    let changes: Vec<(BucketName, &str, i64)> = entry
        .changes
        .iter()
        .map(|c| (c.bucket, c.id.as_str(), c.delta))
        .collect();
    assert_eq!(
        changes,
        vec![
            (BucketName::Allowance, allowance_id, -100),
            (BucketName::TopUp, "p1", -100)
        ]
    );
    assert_eq!(
        entry.summary,
        "charged 200 credits for flux-schnell (100 images), run r1 node n-c3"
    );
    assert_eq!(entry.after.available, credits(900));
    assert_eq!(explanation.balance.total, credits(900));
}

#[test]
fn the_balance_as_of_t_ignores_later_events_and_does_not_change_when_asked_later() {
    // Given a history up to T, explained at T
    let t = "2026-01-15T00:00:00Z";
    let mut history = History::opened()
        .ran(top_up("p1", 300, None))
        .at("2026-01-12T00:00:00Z")
        .ran(charge("c1", "flux-schnell", Some(10), None))
        .at(t)
        .ran(charge("c2", "assistant-chat", None, None));
    let first = history.explain_at(t);
    // When more events are appended after T and T is asked again
    history = history
        .at("2026-01-15T00:00:01Z")
        .ran(charge("c3", "flux-schnell", Some(50), None))
        .ran(grant("g1", 70, None))
        .at("2026-02-20T00:00:00Z")
        .ran(Command::Tick)
        .ran(top_up("p2", 5000, None));
    let later = history.explain_at(t);
    // Then the explanation as of T is identical, and counts nothing after T
    assert_eq!(first, later);
    assert_eq!(
        later.timeline.last().unwrap().command_id,
        "charge:c2",
        "the last event at T is counted"
    );
    assert!(later
        .timeline
        .iter()
        .all(|entry| entry.occurred_at <= at(t)));
    assert_eq!(later.balance.total, credits(500 + 300 - 20 - 1));
    assert!(later.balance.grants.is_empty());
    // And the balance now does count them
    let now = history.explain_at("2026-02-20T00:00:00Z");
    assert_eq!(now.version, history.account.version);
    assert_eq!(now.balance.grants.len(), 1);
}

#[test]
fn explain_as_of_t_applies_hold_timeouts_due_by_t() {
    // Given a hold of 10 credits with a 1 s ttl and no scheduler run since
    let history = History::opened().ran(Command::PlaceHold(PlaceHold {
        hold_id: "h1".into(),
        run_id: "r1".into(),
        node_id: "n1".into(),
        model: "flux-schnell".into(),
        quantity: Quantity {
            images: Some(5),
            seconds: None,
        },
        via: Via::App,
        ttl: Some("1s".parse().expect("ttl")),
    }));
    let hold_placed_at = history.now;
    let held = history.explain_at("2026-01-10T12:00:00.5Z");
    assert_eq!(held.balance.held, credits(10));
    assert_eq!(held.balance.total, credits(490));
    // When explained at its expiry, before the scheduler wrote hold_expired
    let at_expiry = history.explain_at("2026-01-10T12:00:01Z");
    // Then the credits are back, the hold is gone, and the answer is what it will be later
    assert_eq!(at_expiry.balance.held, credits(0));
    assert!(at_expiry.balance.holds.is_empty());
    assert_eq!(at_expiry.balance.total, credits(500));
    assert_eq!(at_expiry.due.len(), 1);
    assert_eq!(at_expiry.due[0].type_name, "hold_expired");
    let ticked = history.at("2026-01-10T12:00:05Z").ran(Command::Tick);
    let later = ticked.explain_at("2026-01-10T12:00:01Z");
    assert_eq!(later.balance, at_expiry.balance);
    assert_eq!(later.due, at_expiry.due);
    assert!(hold_placed_at < at("2026-01-10T12:00:01Z"));
}

#[test]
fn a_top_up_past_its_expiry_is_not_live_even_without_its_expiry_event() {
    // Given a top-up that expires on Jan 20 and no command since
    let history = History::opened().ran(top_up("p1", 100, Some("2026-01-20T00:00:00Z")));
    // When the account is explained just before and at the expiry
    let before = history.explain_at("2026-01-19T23:59:59Z");
    let after = history.explain_at("2026-01-20T00:00:00Z");
    // Then the lot counts before and not from its expiry on, though no event recorded it:
    // the expiry due by T applies at T, forfeiting the remainder
    assert!(before.balance.top_ups[0].live);
    assert_eq!(before.balance.total, credits(600));
    assert!(before.due.is_empty());
    assert!(after.balance.top_ups.is_empty(), "the lot expired at T");
    assert_eq!(after.balance.total, credits(500));
    assert_eq!(after.balance.totals.forfeited, credits(100));
    assert_eq!(after.balance.in_buckets, credits(500));
    assert!(after
        .timeline
        .iter()
        .all(|entry| entry.type_name != "top_up_expired"));
    // And the explanation says the expiry is due, with what it will forfeit
    assert_eq!(after.due.len(), 1);
    assert_eq!(after.due[0].type_name, "top_up_expired");
    assert_eq!(after.due[0].forfeited, credits(100));
    assert_eq!(
        after.due[0].summary,
        "top-up p1 expired at 2026-01-20T00:00:00Z, 100 forfeited"
    );
}

#[test]
fn a_free_account_that_used_its_flux_pro_trial_sees_why_models_are_blocked() {
    // Given a free account that ran flux-pro three times on its trial
    let history = History::opened()
        .ran(charge("c1", "flux-pro", Some(1), None))
        .ran(charge("c2", "flux-pro", Some(1), None))
        .ran(charge("c3", "flux-pro", Some(1), None));
    // When it is explained
    let explanation = history.explain_at("2026-01-11T00:00:00Z");
    let model = |id: &str| {
        explanation
            .models
            .iter()
            .find(|model| model.model == id)
            .unwrap_or_else(|| panic!("no {id}"))
    };
    // Then flux-pro is blocked because the trial is used up
    let flux_pro = model("flux-pro");
    assert_eq!(flux_pro.access, ModelAccessKind::Blocked);
    assert_eq!(flux_pro.reason_code, Some("TRIAL_EXHAUSTED"));
    assert_eq!(flux_pro.trial_status, Some(TrialStatus::Exhausted));
    assert!(flux_pro.reason.as_deref().unwrap().contains("used up"));
    // And seedance needs a higher tier
    for seedance in ["seedance-2.0-i2v", "seedance-2.0-t2v"] {
        let seedance = model(seedance);
        assert_eq!(seedance.access, ModelAccessKind::Blocked);
        assert_eq!(seedance.reason_code, Some("MODEL_TIER_REQUIRED"));
        assert_eq!(seedance.min_tier, Tier::Business);
        assert_eq!(seedance.trial_status, None);
    }
    // And free models are paid, untouched trials still open
    assert_eq!(model("flux-schnell").access, ModelAccessKind::Paid);
    assert_eq!(model("flux-schnell").reason_code, None);
    assert_eq!(model("kling-2").access, ModelAccessKind::Trial);
    assert_eq!(model("kling-2").trial_status, Some(TrialStatus::Unused));
    assert_eq!(explanation.models.len(), history.catalog.models().len());
    // And the trial runs moved no credits
    let runs: Vec<_> = explanation
        .timeline
        .iter()
        .filter(|entry| entry.type_name == "trial_run_consumed")
        .collect();
    assert_eq!(runs.len(), 3);
    assert!(explanation
        .timeline
        .iter()
        .all(|entry| entry.type_name == "account_opened" || entry.changes.is_empty()));
    assert_eq!(explanation.balance.total, credits(500));
}

#[test]
fn an_account_not_yet_opened_at_t_does_not_exist() {
    // Given an account opened at T0
    let history = History::opened().ran(top_up("p1", 100, None));
    // When it is explained before T0
    let explanation = history.explain_at("2026-01-01T00:00:00Z");
    // Then nothing counts and every model is blocked for the missing account
    assert!(!explanation.exists);
    assert_eq!(explanation.version, 0);
    assert!(explanation.timeline.is_empty());
    assert_eq!(explanation.tier, None);
    assert_eq!(explanation.balance.total, Credits::ZERO);
    assert!(explanation
        .models
        .iter()
        .all(|model| model.reason_code == Some("ACCOUNT_NOT_FOUND")));
}

#[test]
fn summaries_name_what_happened() {
    // Given the busy history
    let explanation = busy_history().explain_at("2026-03-01T00:00:00Z");
    let summary = |type_name: &str| {
        explanation
            .timeline
            .iter()
            .find(|entry| entry.type_name == type_name)
            .map(|entry| entry.summary.clone())
            .unwrap_or_else(|| panic!("no {type_name}"))
    };
    // Then each summary carries the facts support asks about
    assert_eq!(
        summary("account_opened"),
        "account opened on free with an allowance of 500 until 2026-02-10T12:00:00Z"
    );
    assert_eq!(
        summary("top_up_purchased"),
        "top-up p1 of 1000 credits, expires 2026-04-10T12:00:00Z"
    );
    assert_eq!(
        summary("allowance_renewed"),
        "allowance renewed to 5000 (invoice in_1), 4920 forfeited, until 2026-03-12T00:00:00Z"
    );
    assert!(summary("charge_refunded").starts_with("refund of charge c3 (version "));
    assert!(summary("tier_changed").starts_with("tier changed from free to pro monthly"));
    assert!(summary("grant_expired").contains("40 forfeited"));
    let renewal = explanation
        .timeline
        .iter()
        .find(|entry| entry.type_name == "allowance_renewed")
        .unwrap();
    assert_eq!(renewal.forfeited, credits(4920));
    assert_eq!(renewal.actor, "billing");
    assert_eq!(renewal.command_id, "renewal:in_1");
}

/// The keys of a JSON object, sorted.
fn keys(value: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn the_json_field_names_are_stable() {
    // Given an explanation with every part filled in
    let history = busy_history()
        .ran(hold("h3", "kling-2", 2))
        .ran(grant("g2", 5, None));
    let explanation = history.explain_at("2026-02-12T00:30:00Z");
    // When it is serialised
    let json = serde_json::to_value(&explanation).unwrap();
    // Then its field names are exactly the contract's
    assert_eq!(
        keys(&json),
        [
            "account_id",
            "at",
            "balance",
            "billing",
            "business_verification",
            "due",
            "exists",
            "last_refresh_at",
            "models",
            "next_refresh_at",
            "scope",
            "tier",
            "timeline",
            "usage",
            "version"
        ]
    );
    assert_eq!(json["at"], "2026-02-12T00:30:00Z");
    assert_eq!(json["tier"], "pro");
    assert_eq!(json["billing"], "monthly");
    assert_eq!(json["scope"], "deployment");
    assert_eq!(json["business_verification"], "none");
    // Monthly pro renews through billing: no scheduled refresh.
    assert_eq!(json["next_refresh_at"], serde_json::Value::Null);
    assert_eq!(keys(&json["usage"]), ["rows", "total"]);
    let entry = &json["timeline"][0];
    assert_eq!(
        keys(entry),
        [
            "actor",
            "after",
            "changes",
            "command_id",
            "drawn_from",
            "forfeited",
            "occurred_at",
            "recorded_at",
            "summary",
            "totals",
            "type",
            "version"
        ]
    );
    assert_eq!(entry["type"], "account_opened");
    assert_eq!(entry["occurred_at"], T0);
    assert_eq!(entry["drawn_from"], serde_json::Value::Null);
    assert_eq!(
        keys(&entry["after"]),
        [
            "allowance",
            "available",
            "grants",
            "held",
            "in_buckets",
            "top_ups"
        ]
    );
    assert_eq!(
        keys(&entry["totals"]),
        [
            "charged",
            "charged_unlimited",
            "forfeited",
            "granted",
            "refunded"
        ]
    );
    assert_eq!(keys(&entry["changes"][0]), ["bucket", "delta", "id"]);
    assert_eq!(entry["changes"][0]["bucket"], "allowance");
    assert_eq!(entry["changes"][0]["delta"], 500);
    let charge = json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["type"] == "credits_charged")
        .unwrap();
    assert_eq!(keys(&charge["drawn_from"][0]), ["amount", "bucket", "id"]);
    let held = json["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["type"] == "hold_placed")
        .unwrap();
    assert!(held["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|change| change["bucket"] == "held"));

    let balance = &json["balance"];
    assert_eq!(
        keys(balance),
        [
            "allowance",
            "grants",
            "held",
            "holds",
            "in_buckets",
            "top_ups",
            "total",
            "totals",
            "unlimited"
        ]
    );
    assert_eq!(
        keys(&balance["allowance"]),
        [
            "amount",
            "id",
            "live",
            "period_end",
            "period_start",
            "remaining"
        ]
    );
    assert_eq!(
        keys(&balance["top_ups"][0]),
        ["credits", "expires_at", "live", "lot_id", "remaining"]
    );
    assert_eq!(
        keys(&balance["grants"][0]),
        ["credits", "expires_at", "grant_id", "live", "remaining"]
    );
    assert_eq!(
        keys(&balance["holds"][0]),
        ["amount", "expires_at", "hold_id", "live", "model"]
    );
    assert_eq!(balance["holds"][0]["live"], true);

    assert_eq!(
        keys(&json["models"][0]),
        [
            "access",
            "min_tier",
            "model",
            "reason",
            "reason_code",
            "trial_status"
        ]
    );
    let seedance = json["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["model"] == "seedance-2.0-i2v")
        .unwrap();
    assert_eq!(seedance["access"], "blocked");
    assert_eq!(seedance["reason_code"], "MODEL_TIER_REQUIRED");

    // And a due item has its own small shape
    let late = history.explain_at("2026-04-20T00:00:00Z");
    let due = serde_json::to_value(&late.due).unwrap();
    assert!(!late.due.is_empty());
    assert_eq!(keys(&due[0]), ["changes", "forfeited", "summary", "type"]);
}
