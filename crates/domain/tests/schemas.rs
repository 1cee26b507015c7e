//! Event schemas (`schemas/events/`, SPEC section 10): every event the domain writes matches the
//! JSON Schema of its type and version inside a valid envelope, every schema file is a valid
//! draft 2020-12 document, malformed data is refused, and the frozen fixture of old (v1)
//! events still validates, chains, upcasts and folds to the same balance.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use chrono::TimeDelta;
use jsonschema::Validator;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use ledger_domain::alerts::ConfigureAlerts;
use ledger_domain::command::{
    AddGrant, CaptureHold, ChangeSubscription, Charge, PaidTopUp, PlaceHold, PurchaseTopUp,
    Quantity, RenewAllowance, RevokeTopUp, SubmitBusinessVerification,
};
use ledger_domain::envelope::{self, Cause, Envelope, RawEnvelope, GENESIS_HASH};
use ledger_domain::events::{Billing, BucketKind, PaidBy, RenewalSource, Via, EVENT_TYPES};
use ledger_domain::usage::{Stored, Usage};
use ledger_domain::{
    decide, Account, Catalog, Command, Credits, DurationS, Event, Instant, Rejection, Tier,
};

// ---------------------------------------------------------------------------------------------
// Schema files
// ---------------------------------------------------------------------------------------------

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
const ROOT_BASE: &str = "https://knouds.ai/schemas/";
const ID_BASE: &str = "https://knouds.ai/schemas/events/";
const ENVELOPE: &str = "envelope.v1.json";

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/events")
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn data_schema_file(type_name: &str, version: u32) -> String {
    format!("{type_name}.v{version}.json")
}

/// Compiles a schema the way every test uses it: draft 2020-12, with `format` asserted
/// (2020-12 treats it as an annotation unless asked).
fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .with_retriever(SchemaFiles)
        .build(schema)
        .map_err(|err| err.to_string())
}

/// Resolves the schemas' `$ref`s to one another (`https://knouds.ai/schemas/...`) from the
/// files in `schemas/`, the way a consumer with the directory would; nothing is fetched.
struct SchemaFiles;

impl jsonschema::Retrieve for SchemaFiles {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri
            .as_str()
            .strip_prefix(ROOT_BASE)
            .filter(|path| !path.contains(".."))
            .ok_or_else(|| format!("{uri} is not one of the ledger's schemas"))?;
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas")
            .join(path);
        Ok(serde_json::from_str(&fs::read_to_string(file)?)?)
    }
}

/// Every schema file in `schemas/events`, parsed and compiled.
struct Schemas {
    files: BTreeMap<String, (Value, Validator)>,
}

impl Schemas {
    fn load() -> Schemas {
        let dir = schema_dir();
        let mut files = BTreeMap::new();
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .expect("UTF-8 file name")
                .to_string();
            assert!(
                name.ends_with(".json"),
                "unexpected file in schemas/events: {name}"
            );
            let text =
                fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {name}: {err}"));
            let document: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{name} is not JSON: {err}"));
            if let Err(err) = jsonschema::draft202012::meta::validate(&document) {
                panic!("{name} is not a valid draft 2020-12 schema: {err}");
            }
            let validator =
                compile(&document).unwrap_or_else(|err| panic!("{name} does not compile: {err}"));
            files.insert(name, (document, validator));
        }
        Schemas { files }
    }

    fn validator(&self, file: &str) -> &Validator {
        &self
            .files
            .get(file)
            .unwrap_or_else(|| panic!("no schema file {file}"))
            .1
    }

    /// The validation errors of `instance` against `file`, one line each.
    fn errors(&self, file: &str, instance: &Value) -> Vec<String> {
        self.validator(file)
            .iter_errors(instance)
            .map(|err| format!("{} at {:?}", err, err.instance_path().to_string()))
            .collect()
    }

    fn assert_valid(&self, file: &str, instance: &Value) {
        let errors = self.errors(file, instance);
        assert!(
            errors.is_empty(),
            "{file} refuses {instance}:\n  {}",
            errors.join("\n  ")
        );
    }

    /// Asserts that `file` refuses `instance` with an error reported at `at`.
    fn assert_invalid(&self, file: &str, instance: &Value, at: &str, why: &str) {
        let errors: Vec<_> = self.validator(file).iter_errors(instance).collect();
        assert!(!errors.is_empty(), "{file} accepts {why}: {instance}");
        assert!(
            errors
                .iter()
                .any(|err| err.instance_path().to_string() == at),
            "{file} refuses {why}, but not at {at:?}: {:?}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    }

    /// Validates a stored envelope and its `data`; returns the type and schema version.
    fn assert_stored_valid(&self, payload: &[u8]) -> (String, u32) {
        let value: Value = serde_json::from_slice(payload).expect("stored payload is JSON");
        self.assert_valid(ENVELOPE, &value);
        let type_name = value["type"].as_str().expect("type").to_string();
        let version =
            u32::try_from(value["schema_version"].as_u64().expect("schema_version")).expect("u32");
        self.assert_valid(&data_schema_file(&type_name, version), &value["data"]);
        (type_name, version)
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the domain: decide + evolve + seal, as the service would
// ---------------------------------------------------------------------------------------------

fn at(text: &str) -> Instant {
    text.parse()
        .unwrap_or_else(|err| panic!("bad instant {text:?}: {err}"))
}

/// A scenario instant in 2026, written `"MM-DD HH:MM"`.
fn t(short: &str) -> Instant {
    at(&format!("2026-{}:00Z", short.replace(' ', "T")))
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::type_name).collect()
}

/// The role that sends a command (the envelope's `actor`).
fn actor(command: &Command) -> &'static str {
    match command {
        Command::AddGrant(_) => "support",
        Command::ApproveBusinessVerification | Command::RejectBusinessVerification { .. } => {
            "admin"
        }
        Command::Charge(_)
        | Command::RefundCharge { .. }
        | Command::PlaceHold(_)
        | Command::CaptureHold(_)
        | Command::ReleaseHold { .. } => "executor",
        Command::Tick => "scheduler",
        _ => "billing",
    }
}

/// One account's stream: commands are decided on the folded state, the events sealed into
/// envelopes continuing the hash chain, and the stored payloads kept.
struct Stream<'c> {
    catalog: &'c Catalog,
    account: Account,
    prev_hash: String,
    stored: Vec<Vec<u8>>,
}

impl<'c> Stream<'c> {
    fn new(catalog: &'c Catalog, account_id: &str) -> Stream<'c> {
        Stream {
            catalog,
            account: Account::new(account_id),
            prev_hash: GENESIS_HASH.to_string(),
            stored: Vec::new(),
        }
    }

    /// Decides `command` at `when` (`"MM-DD HH:MM"` in 2026), checks that it wrote exactly the
    /// `expected` event types (space separated, in order), records the events and returns them.
    fn run(&mut self, when: &str, command: Command, expected: &str) -> Vec<Event> {
        let now = t(when);
        let decision = decide(&self.account, self.catalog, &command, now)
            .unwrap_or_else(|rejection| panic!("{now} {}: refused: {rejection:?}", command.name()));
        let expected: Vec<&str> = expected.split_whitespace().collect();
        assert_eq!(
            names(&decision.events),
            expected,
            "{now} {}",
            command.name()
        );
        let cause = Cause {
            command_id: command.command_id(now),
            actor: actor(&command).to_string(),
        };
        let stream = envelope::stream_name(&self.account.account_id);
        let recorded = now + TimeDelta::milliseconds(2);
        let events = decision.events.clone();
        let sealed = envelope::seal(
            &stream,
            self.account.version,
            &self.prev_hash,
            &cause,
            now,
            recorded,
            events,
        );
        for (sealed_envelope, payload) in sealed {
            self.account.evolve(&sealed_envelope.event);
            self.prev_hash = sealed_envelope.hash;
            self.stored.push(payload);
        }
        decision.events
    }

    /// Decides `command` at `when` and expects a refusal; nothing is recorded.
    fn refuse(&self, when: &str, command: Command) -> Rejection {
        match decide(&self.account, self.catalog, &command, t(when)) {
            Ok(decision) => panic!(
                "{when} {}: not refused: {:?}",
                command.name(),
                names(&decision.events)
            ),
            Err(rejection) => rejection,
        }
    }

    fn available(&self, when: &str) -> Credits {
        self.account
            .core
            .as_ref()
            .expect("open account")
            .available(t(when))
    }
}

const PER_CALL: Quantity = Quantity {
    images: None,
    seconds: None,
};

fn images(count: u32) -> Quantity {
    Quantity {
        images: Some(count),
        ..PER_CALL
    }
}

fn seconds(count: u32) -> Quantity {
    Quantity {
        seconds: Some(count),
        ..PER_CALL
    }
}

fn charge_via(via: Via, charge_id: &str, model: &str, quantity: Quantity) -> Command {
    Command::Charge(Charge {
        charge_id: charge_id.into(),
        run_id: format!("run-{charge_id}"),
        node_id: "node-1".into(),
        model: model.into(),
        quantity,
        via,
    })
}

fn charge(charge_id: &str, model: &str, quantity: Quantity) -> Command {
    charge_via(Via::App, charge_id, model, quantity)
}

fn api_charge(charge_id: &str, model: &str, quantity: Quantity) -> Command {
    charge_via(Via::Api, charge_id, model, quantity)
}

fn refund(charge_id: &str) -> Command {
    Command::RefundCharge {
        charge_id: charge_id.into(),
        reason: "the run failed".into(),
    }
}

fn hold(hold_id: &str, model: &str, quantity: Quantity, ttl: Option<&str>) -> Command {
    Command::PlaceHold(PlaceHold {
        hold_id: hold_id.into(),
        run_id: format!("run-{hold_id}"),
        node_id: "node-1".into(),
        model: model.into(),
        quantity,
        via: Via::App,
        ttl: ttl.map(|text| text.parse::<DurationS>().expect("duration")),
    })
}

fn capture(hold_id: &str, quantity: Quantity) -> Command {
    Command::CaptureHold(CaptureHold {
        hold_id: hold_id.into(),
        quantity,
    })
}

fn release(hold_id: &str) -> Command {
    Command::ReleaseHold {
        hold_id: hold_id.into(),
    }
}

fn top_up(purchase_id: &str, credits: u64, expires_at: &str) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: purchase_id.into(),
        credits,
        expires_at: Some(t(expires_at)),
    })
}

fn grant(grant_id: &str, credits: u64, expires_at: &str) -> Command {
    Command::AddGrant(AddGrant {
        grant_id: grant_id.into(),
        credits,
        reason: "welcome".into(),
        expires_at: Some(t(expires_at)),
    })
}

/// A subscription change for the period `[start, end)` (full RFC 3339 instants).
fn subscribe(
    reference: &str,
    tier: Tier,
    billing: Option<Billing>,
    start: &str,
    end: &str,
) -> ChangeSubscription {
    ChangeSubscription {
        tier,
        billing,
        period_start: at(start),
        period_end: at(end),
        reference: reference.into(),
        allowance: None,
    }
}

fn renew(invoice_id: &str, start: &str, end: &str) -> Command {
    Command::RenewAllowance(RenewAllowance {
        invoice_id: invoice_id.into(),
        period_start: at(start),
        period_end: at(end),
    })
}

fn submit_verification(company_name: &str) -> Command {
    Command::SubmitBusinessVerification(SubmitBusinessVerification {
        company_name: company_name.into(),
        country: "DE".into(),
        registration_number: "HRB 123456".into(),
    })
}

/// A free account: charges from credits, both kinds of trial (count and window), a top-up and
/// a grant with their expiry, holds captured, released and expired (one forfeiting its expired
/// lot), a refund, the trial window closing and the anniversary refresh clamped at month end.
fn free_account(catalog: &Catalog) -> Stream<'_> {
    let mut s = Stream::new(catalog, "alice");
    s.run("01-31 10:00", Command::OpenAccount, "account_opened");
    s.run(
        "01-31 10:01",
        Command::ConfigureAlerts(ConfigureAlerts {
            low_balance: vec![400, 100],
            url: Some("https://alerts.example.com/ledger".into()),
        }),
        "alerts_configured",
    );
    s.run(
        "02-01 09:00",
        charge("c-1", "flux-schnell", images(3)),
        "credits_charged",
    );

    // Trials: flux-pro counts runs, kling-2 opens a 7-day window.
    let events = s.run(
        "02-01 09:05",
        charge("c-2", "flux-pro", images(1)),
        "trial_granted trial_run_consumed credits_charged",
    );
    let Event::CreditsCharged(charged) = &events[2] else {
        unreachable!()
    };
    assert_eq!(
        (charged.paid_by, charged.cost),
        (PaidBy::Trial, Credits::ZERO)
    );
    let window = "trial_granted trial_window_opened credits_charged";
    s.run("02-01 09:10", charge("c-3", "kling-2", seconds(5)), window);
    s.run(
        "02-02 09:00",
        charge("c-t2", "flux-pro", images(2)),
        "trial_run_consumed credits_charged",
    );
    s.run(
        "02-02 09:01",
        charge("c-t3", "flux-pro", images(2)),
        "trial_run_consumed credits_charged",
    );
    let exhausted = s.refuse("02-02 09:02", charge("c-t4", "flux-pro", images(1)));
    assert!(
        matches!(exhausted, Rejection::TrialExhausted { limit: 3, .. }),
        "{exhausted:?}"
    );
    let scope = s.refuse(
        "02-02 09:03",
        api_charge("c-api", "flux-schnell", images(1)),
    );
    assert!(
        matches!(scope, Rejection::ScopeRequired { .. }),
        "{scope:?}"
    );

    // Lots, burned soonest expiry first (the grant, then the top-up), and a refund.
    s.run(
        "02-01 10:00",
        top_up("p-1", 300, "02-05 00:00"),
        "top_up_purchased",
    );
    s.run(
        "02-01 10:05",
        grant("g-1", 40, "02-03 00:00"),
        "grant_added",
    );
    let events = s.run(
        "02-01 11:00",
        charge("c-4", "flux-schnell", images(100)),
        "credits_charged",
    );
    let Event::CreditsCharged(charged) = &events[0] else {
        unreachable!()
    };
    let buckets: Vec<BucketKind> = charged.drawn_from.iter().map(|part| part.bucket).collect();
    assert_eq!(buckets, [BucketKind::Grant, BucketKind::TopUp]);
    s.run("02-01 11:01", refund("c-4"), "charge_refunded");

    // Holds: captured in part, released, expired; one paid by the window trial.
    s.run(
        "02-01 12:00",
        hold("h-1", "flux-schnell", images(10), None),
        "hold_placed",
    );
    s.run("02-01 12:01", capture("h-1", images(4)), "hold_captured");
    s.run(
        "02-01 12:10",
        hold("h-2", "flux-schnell", images(5), Some("90s")),
        "hold_placed",
    );
    s.run("02-01 12:11", release("h-2"), "hold_released");
    s.run(
        "02-01 12:20",
        hold("h-3", "assistant-chat", PER_CALL, Some("90s")),
        "hold_placed",
    );
    s.run("02-01 12:22", Command::Tick, "hold_expired");
    s.run(
        "02-01 13:00",
        hold("h-4", "kling-2", seconds(4), None),
        "hold_placed",
    );
    s.run("02-01 13:05", capture("h-4", seconds(3)), "hold_captured");

    // Expiries: the grant, then the top-up while a hold earmarks it (forfeited on return).
    s.run("02-03 00:00", Command::Tick, "grant_expired");
    s.run(
        "02-04 23:59",
        hold("h-5", "flux-schnell", images(10), Some("2m")),
        "hold_placed",
    );
    let events = s.run("02-05 00:01", Command::Tick, "top_up_expired hold_expired");
    let Event::HoldExpired(expired) = &events[1] else {
        unreachable!()
    };
    assert_eq!((expired.returned.len(), expired.forfeited.len()), (0, 1));
    s.run("02-08 09:10", Command::Tick, "trial_window_closed");
    let closed = s.refuse("02-08 09:11", charge("c-5", "kling-2", seconds(1)));
    assert!(
        matches!(closed, Rejection::TrialExpired { .. }),
        "{closed:?}"
    );

    // Opened on Jan 31: the first anniversary clamps to Feb 28, the next is Mar 31.
    let events = s.run("02-28 10:00", Command::Tick, "allowance_renewed");
    let Event::AllowanceRenewed(renewed) = &events[0] else {
        unreachable!()
    };
    assert_eq!(renewed.source, RenewalSource::Anniversary);
    assert_eq!(renewed.allowance_period_end, at("2026-03-31T10:00:00Z"));
    assert_eq!(s.available("02-28 10:00"), Credits::new(500));
    s
}

/// A business customer: verification rejected then approved, business monthly with a billing
/// renewal, API runs and a partial capture, Pro annual with its anniversary refresh, enterprise
/// unlimited (a charge, its refund, holds and a renewal, all unlimited), enterprise with a
/// custom allowance, and the cancel back to free.
fn business_account(catalog: &Catalog) -> Stream<'_> {
    let mut s = Stream::new(catalog, "bob_gmbh");
    s.run("03-02 08:00", Command::OpenAccount, "account_opened");

    // Verification: rejected, business refused, submitted again and approved.
    let submitted = "business_verification_submitted";
    s.run("03-02 08:10", submit_verification("Bob GmbH"), submitted);
    let reason = "registration number not found".to_string();
    let reject = Command::RejectBusinessVerification { reason };
    s.run("03-03 08:00", reject, "business_verification_rejected");
    let business = subscribe(
        "sub-b1",
        Tier::Business,
        Some(Billing::Monthly),
        "2026-03-05T00:00:00Z",
        "2026-04-05T00:00:00Z",
    );
    let required = s.refuse("03-04 08:00", Command::ChangeSubscription(business.clone()));
    assert!(
        matches!(required, Rejection::BusinessVerificationRequired { .. }),
        "{required:?}"
    );
    s.run(
        "03-04 08:00",
        submit_verification("Bob GmbH & Co. KG"),
        submitted,
    );
    s.run(
        "03-04 09:00",
        Command::ApproveBusinessVerification,
        "business_verification_approved",
    );

    // Business monthly: API runs, a partial capture, a billing renewal.
    s.run(
        "03-05 00:00",
        Command::ChangeSubscription(business),
        "tier_changed",
    );
    s.run(
        "03-06 10:00",
        api_charge("b-1", "seedance-2.0-i2v", seconds(10)),
        "credits_charged",
    );
    s.run(
        "03-06 10:05",
        api_charge("b-2", "custom-lora", PER_CALL),
        "credits_charged",
    );
    s.run(
        "03-06 11:00",
        hold("bh-1", "seedance-2.0-t2v", seconds(30), Some("30m")),
        "hold_placed",
    );
    let events = s.run("03-06 11:10", capture("bh-1", seconds(20)), "hold_captured");
    let Event::HoldCaptured(captured) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        (captured.cost, captured.returned.len()),
        (Credits::new(800), 1)
    );
    let invoice = renew("inv-b2", "2026-04-05T00:00:00Z", "2026-05-05T00:00:00Z");
    s.run("04-05 00:01", invoice, "allowance_renewed");

    // Pro annual: 5,000 + 20 % bonus, refreshed monthly by the scheduler.
    let annual = subscribe(
        "sub-b2",
        Tier::Pro,
        Some(Billing::Annual),
        "2026-04-10T00:00:00Z",
        "2027-04-10T00:00:00Z",
    );
    let events = s.run(
        "04-10 00:00",
        Command::ChangeSubscription(annual),
        "tier_changed",
    );
    let Event::TierChanged(changed) = &events[0] else {
        unreachable!()
    };
    assert_eq!(changed.allowance, Some(Credits::new(6_000)));
    let events = s.run("05-10 00:00", Command::Tick, "allowance_renewed");
    let Event::AllowanceRenewed(renewed) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        (renewed.source, renewed.allowance),
        (RenewalSource::Anniversary, Some(Credits::new(6_000)))
    );

    // Enterprise unlimited: everything succeeds and is recorded with its cost.
    let unlimited = subscribe(
        "sub-b3",
        Tier::Enterprise,
        Some(Billing::Monthly),
        "2026-05-15T00:00:00Z",
        "2026-06-15T00:00:00Z",
    );
    let events = s.run(
        "05-15 00:00",
        Command::ChangeSubscription(unlimited),
        "tier_changed",
    );
    let Event::TierChanged(changed) = &events[0] else {
        unreachable!()
    };
    assert_eq!(changed.allowance, None);
    let events = s.run(
        "05-16 10:00",
        api_charge("b-3", "seedance-2.0-t2v", seconds(60)),
        "credits_charged",
    );
    let Event::CreditsCharged(charged) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        (charged.paid_by, charged.balance_after),
        (PaidBy::Unlimited, None)
    );
    s.run("05-16 10:01", refund("b-3"), "charge_refunded");
    s.run(
        "05-16 11:00",
        hold("bh-2", "kling-2", seconds(8), None),
        "hold_placed",
    );
    s.run("05-16 11:05", capture("bh-2", seconds(6)), "hold_captured");
    s.run(
        "05-16 12:00",
        hold("bh-3", "flux-pro", images(2), None),
        "hold_placed",
    );
    s.run("05-16 12:01", release("bh-3"), "hold_released");
    let invoice = renew("inv-b4", "2026-06-15T00:00:00Z", "2026-07-15T00:00:00Z");
    s.run("06-15 00:01", invoice, "allowance_renewed");

    // Enterprise with a custom allowance, then cancelled to free.
    let custom = ChangeSubscription {
        allowance: Some(Credits::new(25_000)),
        ..subscribe(
            "sub-b4",
            Tier::Enterprise,
            Some(Billing::Monthly),
            "2026-06-20T00:00:00Z",
            "2026-07-20T00:00:00Z",
        )
    };
    s.run(
        "06-20 00:00",
        Command::ChangeSubscription(custom),
        "tier_changed",
    );
    let cancel = subscribe(
        "sub-b5",
        Tier::Free,
        None,
        "2026-07-01T00:00:00Z",
        "2026-08-01T00:00:00Z",
    );
    s.run(
        "07-01 00:00",
        Command::ChangeSubscription(cancel),
        "tier_changed",
    );
    assert_eq!(s.available("07-01 00:00"), Credits::new(500));
    s
}

/// A top-up pack bought through a payment provider, partly spent, then refunded: the lot's
/// remainder is revoked (SPEC section 12).
fn refunded_account(catalog: &Catalog) -> Stream<'_> {
    let mut s = Stream::new(catalog, "carol");
    s.run("04-01 09:00", Command::OpenAccount, "account_opened");
    let paid = Command::PurchasePaidTopUp(PaidTopUp {
        top_up: PurchaseTopUp {
            purchase_id: "cs_test_carol".into(),
            credits: 1_000,
            expires_at: Some(t("04-20 09:00")),
        },
        payment_ref: "pi_carol".into(),
    });
    s.run("04-01 09:05", paid, "top_up_purchased");
    // The lot expires before the allowance, so it pays first.
    s.run(
        "04-02 10:00",
        charge("c-carol", "flux-schnell", images(50)),
        "credits_charged",
    );
    let revoke = Command::RevokeTopUp(RevokeTopUp {
        payment_ref: "pi_carol".into(),
        reference: "ch_carol".into(),
    });
    let events = s.run("04-03 10:00", revoke, "top_up_revoked");
    let Event::TopUpRevoked(revoked) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        (revoked.revoked, revoked.spent),
        (Credits::new(900), Credits::new(100))
    );
    assert_eq!(s.available("04-03 10:00"), Credits::new(500));
    s
}

// ---------------------------------------------------------------------------------------------
// What the domain writes matches the schemas
// ---------------------------------------------------------------------------------------------

#[test]
fn every_event_the_domain_writes_matches_its_schema() {
    let schemas = Schemas::load();
    let catalog = Catalog::shipped();
    let streams = [
        free_account(&catalog),
        business_account(&catalog),
        refunded_account(&catalog),
    ];

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut validated = 0;
    for stream in &streams {
        let mut prev_hash = GENESIS_HASH.to_string();
        let replayed = stream.stored.iter().fold(
            Account::new(&stream.account.account_id),
            |mut account, payload| {
                let (type_name, version) = schemas.assert_stored_valid(payload);
                assert_eq!(
                    Event::current_schema_version(&type_name),
                    Some(version),
                    "{type_name} written at an old version"
                );
                *seen.entry(type_name).or_default() += 1;
                validated += 1;
                // What was validated is what the audit trail reads back.
                let raw = RawEnvelope::parse(payload).expect("stored payload parses");
                assert_eq!(
                    raw.prev_hash, prev_hash,
                    "chain link at version {}",
                    raw.version
                );
                assert_eq!(
                    raw.computed_hash(),
                    raw.hash,
                    "hash at version {}",
                    raw.version
                );
                prev_hash = raw.hash.clone();
                account.evolve(&raw.decode().expect("stored payload decodes").event);
                account
            },
        );
        assert_eq!(
            replayed, stream.account,
            "replaying {} from its stored payloads",
            stream.account.account_id
        );
    }

    let missing: Vec<&str> = EVENT_TYPES
        .iter()
        .copied()
        .filter(|name| !seen.contains_key(*name))
        .collect();
    assert!(missing.is_empty(), "the scenarios never emit {missing:?}");
    assert_eq!(seen.len(), EVENT_TYPES.len());
    println!("validated {validated} envelopes and their data: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// The schema files themselves
// ---------------------------------------------------------------------------------------------

/// Every bucket kind, each once: the match fails to compile when a kind is added, which
/// points here, and from here to the one schema file that lists the kinds.
fn every_bucket_kind() -> [BucketKind; 4] {
    let kinds = [
        BucketKind::Allowance,
        BucketKind::Grant,
        BucketKind::TopUp,
        BucketKind::Unlimited,
    ];
    for kind in kinds {
        match kind {
            BucketKind::Allowance | BucketKind::Grant | BucketKind::TopUp => {}
            BucketKind::Unlimited => {}
        }
    }
    kinds
}

#[test]
fn bucket_kinds_are_listed_in_one_schema_file_and_match_the_domain() {
    let common: Value = serde_json::from_str(
        &fs::read_to_string(schema_dir().join("../common/parts.v1.json")).expect("parts.v1.json"),
    )
    .expect("JSON");
    let listed = |def: &str| -> Vec<Value> {
        common["$defs"][def]["properties"]["bucket"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{def} lists its bucket kinds"))
            .clone()
    };
    let kinds: Vec<Value> = every_bucket_kind()
        .iter()
        .map(|kind| serde_json::to_value(kind).expect("a kind serialises"))
        .collect();
    assert_eq!(listed("part"), kinds, "part: every kind, in order");
    let real: Vec<Value> = kinds
        .iter()
        .filter(|kind| *kind != "unlimited")
        .cloned()
        .collect();
    assert_eq!(listed("bucket_part"), real, "bucket_part: the real buckets");
    // The event schemas refer to these definitions instead of copying them.
    let schemas = Schemas::load();
    for (file, (document, _)) in &schemas.files {
        for def in ["part", "bucket_part"] {
            if let Some(local) = document["$defs"].get(def) {
                assert_eq!(
                    local,
                    &json!({ "$ref": format!("{ROOT_BASE}common/parts.v1.json#/$defs/{def}") }),
                    "{file}: $defs/{def} refers to the shared definition"
                );
            }
        }
    }
}

#[test]
fn every_event_type_has_a_schema_for_every_version() {
    let schemas = Schemas::load();
    let mut expected: BTreeSet<String> = BTreeSet::from([ENVELOPE.to_string()]);
    for type_name in EVENT_TYPES {
        let current = Event::current_schema_version(type_name).expect("a known type has a version");
        // The current version, and every older one: old events are still read (and upcast).
        for version in 1..=current {
            expected.insert(data_schema_file(type_name, version));
        }
    }
    let present: BTreeSet<String> = schemas.files.keys().cloned().collect();
    let missing: Vec<&String> = expected.difference(&present).collect();
    let stray: Vec<&String> = present.difference(&expected).collect();
    assert!(missing.is_empty(), "missing schema files: {missing:?}");
    assert!(
        stray.is_empty(),
        "schema files for no known type or version: {stray:?}"
    );
}

#[test]
fn every_schema_file_is_a_well_formed_draft_2020_12_schema() {
    let schemas = Schemas::load();
    for (file, (document, _)) in &schemas.files {
        assert_eq!(document["$schema"], DRAFT_2020_12, "{file}: $schema");
        assert_eq!(document["$id"], format!("{ID_BASE}{file}"), "{file}: $id");
        for keyword in ["title", "description"] {
            assert!(
                document[keyword]
                    .as_str()
                    .is_some_and(|text| !text.is_empty()),
                "{file}: {keyword}"
            );
        }
        // Closed objects with every field required: nullable fields are present as null.
        assert_eq!(document["type"], "object", "{file}: type");
        assert_eq!(
            document["additionalProperties"], false,
            "{file}: additionalProperties"
        );
        let properties: BTreeSet<&str> = document["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{file}: properties"))
            .keys()
            .map(String::as_str)
            .collect();
        let required: BTreeSet<&str> = document["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: required"))
            .iter()
            .map(|name| name.as_str().expect("required names are strings"))
            .collect();
        if file == ENVELOPE {
            // `position` is known only once the store has committed the event.
            let optional: Vec<&str> = properties.difference(&required).copied().collect();
            assert_eq!(optional, ["position"], "{file}: optional fields");
        } else {
            assert_eq!(required, properties, "{file}: every field is required");
        }
    }
    let types: Vec<&str> = schemas.files[ENVELOPE].0["properties"]["type"]["enum"]
        .as_array()
        .expect("envelope type enum")
        .iter()
        .map(|name| name.as_str().expect("type names are strings"))
        .collect();
    assert_eq!(
        types, EVENT_TYPES,
        "the envelope's type enum lists every event type"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed data is refused
// ---------------------------------------------------------------------------------------------

/// Sets (`Some`) or removes (`None`) the value at a JSON pointer; the parent must exist.
fn put(value: &mut Value, pointer: &str, new: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    match (value.pointer_mut(parent), new) {
        (Some(Value::Object(object)), Some(new)) => {
            object.insert(key.to_string(), new);
        }
        (Some(Value::Object(object)), None) => {
            object.remove(key).expect("the field to remove exists");
        }
        (Some(Value::Array(array)), Some(new)) => {
            array[key.parse::<usize>().expect("an index")] = new
        }
        _ => panic!("cannot edit {pointer} in {value}"),
    }
}

/// Variants of a valid instance that one schema must refuse, each with the error reported at
/// the right place.
struct Refusals<'s> {
    schemas: &'s Schemas,
    file: &'static str,
    valid: Value,
}

impl<'s> Refusals<'s> {
    fn new(schemas: &'s Schemas, file: &'static str, valid: Value) -> Refusals<'s> {
        schemas.assert_valid(file, &valid);
        Refusals {
            schemas,
            file,
            valid,
        }
    }

    fn edited(&self, pointer: &str, new: Option<Value>) -> Value {
        let mut value = self.valid.clone();
        put(&mut value, pointer, new);
        value
    }

    /// Setting `pointer` to `new` is refused, with an error at `error_at`.
    fn set_at(&self, pointer: &str, new: Value, error_at: &str, why: &str) {
        let value = self.edited(pointer, Some(new));
        self.schemas
            .assert_invalid(self.file, &value, error_at, why);
    }

    /// Setting `pointer` to `new` is refused, with an error right there.
    fn set(&self, pointer: &str, new: Value, why: &str) {
        self.set_at(pointer, new, pointer, why);
    }

    /// Adding the unknown field `pointer` is refused, with an error at its parent.
    fn add(&self, pointer: &str, new: Value, why: &str) {
        let parent = pointer.rsplit_once('/').expect("a JSON pointer").0;
        self.set_at(pointer, new, parent, why);
    }

    /// Removing `pointer` is refused, with an error at its parent.
    fn remove(&self, pointer: &str, why: &str) {
        let value = self.edited(pointer, None);
        let parent = pointer.rsplit_once('/').expect("a JSON pointer").0;
        self.schemas.assert_invalid(self.file, &value, parent, why);
    }
}

fn charge_v2() -> Value {
    json!({
        "charge_id": "c-1", "run_id": "run-1", "node_id": "node-1", "model": "kling-2", "via": "api",
        "price_unit": "per_second", "unit_price": 20, "quantity": 12, "cost": 240, "paid_by": "credits",
        "drawn_from": [
            {"bucket": "allowance", "id": "2026-03-05T00:00:00Z", "amount": 200},
            {"bucket": "top_up", "id": "p-1", "amount": 40}
        ],
        "balance_after": 4760
    })
}

/// What `credits_charged` v1 looked like: v2 without `via`, `paid_by` and `balance_after`.
fn charge_v1() -> Value {
    let mut charge = charge_v2();
    for field in ["/via", "/paid_by", "/balance_after"] {
        put(&mut charge, field, None);
    }
    charge
}

#[test]
fn schemas_refuse_extra_missing_and_out_of_range_fields() {
    let schemas = Schemas::load();
    let top_up =
        json!({"purchase_id": "p-1", "credits": 300, "expires_at": "2026-02-05T00:00:00Z"});
    let top_up = Refusals::new(&schemas, "top_up_purchased.v1.json", top_up);
    top_up.add("/bonus", json!(10), "an extra field");
    top_up.set("/credits", json!(-300), "a negative amount");
    top_up.set("/credits", json!(0), "a purchase of nothing");
    top_up.set("/credits", json!(2.5), "a fractional amount");
    top_up.set("/credits", json!("300"), "an amount as a string");
    top_up.remove("/expires_at", "a missing field");
    top_up.set("/expires_at", Value::Null, "null where none is allowed");
    top_up.set("/expires_at", json!("2026-02-05 00:00"), "not RFC 3339");
    top_up.set(
        "/expires_at",
        json!("2026-02-30T00:00:00Z"),
        "an impossible date",
    );
    top_up.set("/expires_at", json!("2026-02-05T01:00:00+01:00"), "not UTC");
    top_up.set("/purchase_id", json!(""), "an empty id");
    top_up.set(
        "/purchase_id",
        json!("p\n1"),
        "a control character in an id",
    );

    let grant = json!({"grant_id": "g-1", "credits": 40, "reason": "welcome", "expires_at": null});
    let grant = Refusals::new(&schemas, "grant_added.v1.json", grant);
    grant.remove("/expires_at", "a nullable field left out");
    grant.set("/reason", json!("   "), "a blank reason");
    grant.set("/credits", json!(-40), "a negative amount");

    let trial = json!({"model": "flux-pro", "kind": "runs", "runs": 3, "window_s": null});
    let trial = Refusals::new(&schemas, "trial_granted.v1.json", trial);
    trial.set("/runs", Value::Null, "a count trial without runs");
    trial.set("/kind", json!("Runs"), "an enum not in snake_case");

    let approved = Refusals::new(
        &schemas,
        "business_verification_approved.v1.json",
        json!({}),
    );
    approved.add("/by", json!("admin"), "a field in an empty event");

    let alerts = json!({"low_balance": [100, 400], "url": "https://alerts.example.com/in"});
    let alerts = Refusals::new(&schemas, "alerts_configured.v1.json", alerts);
    alerts.set_at(
        "/low_balance",
        json!([0]),
        "/low_balance/0",
        "a threshold of nothing",
    );
    alerts.set("/low_balance", json!([5, 5]), "a threshold twice");
    alerts.set(
        "/url",
        json!("ftp://example.com"),
        "a scheme that is not http(s)",
    );
    alerts.set(
        "/url",
        json!("https://user@example.com/"),
        "credentials in the URL",
    );
    alerts.remove("/url", "a nullable field left out");
}

#[test]
fn charge_schemas_refuse_bad_parts_and_mixed_versions() {
    let schemas = Schemas::load();
    let v2 = Refusals::new(&schemas, "credits_charged.v2.json", charge_v2());
    v2.set(
        "/drawn_from/1/amount",
        json!(-40),
        "a part with a negative amount",
    );
    v2.add(
        "/drawn_from/0/lot",
        json!("x"),
        "a part with an extra field",
    );
    v2.remove("/drawn_from/0/id", "a part without its id");
    v2.set("/drawn_from/1/bucket", json!("topup"), "an unknown bucket");
    v2.set(
        "/drawn_from/0/id",
        json!("p-1"),
        "an allowance id that is no instant",
    );
    v2.set(
        "/drawn_from/1/bucket",
        json!("unlimited"),
        "credits from the marker",
    );
    v2.set_at(
        "/paid_by",
        json!("trial"),
        "/cost",
        "a trial that cost credits",
    );
    v2.set_at(
        "/paid_by",
        json!("unlimited"),
        "/balance_after",
        "unlimited, with a balance",
    );
    v2.set(
        "/paid_by",
        json!("free_node"),
        "free_node (free nodes write nothing)",
    );
    v2.set("/via", json!("ui"), "a `via` alias the Rust reader accepts");
    v2.set("/quantity", json!(3601), "more than 3600 seconds");
    v2.set_at(
        "/price_unit",
        json!("per_call"),
        "/quantity",
        "a per-call quantity",
    );
    v2.remove("/balance_after", "a missing balance_after");
    schemas.assert_invalid("credits_charged.v2.json", &charge_v1(), "", "v1 data");

    let v1 = Refusals::new(&schemas, "credits_charged.v1.json", charge_v1());
    v1.set("/cost", json!(-1), "a negative cost");
    v1.remove("/drawn_from", "a missing drawn_from");
    v1.add("/paid_by", json!("credits"), "a v2 field");
    schemas.assert_invalid("credits_charged.v1.json", &charge_v2(), "", "v2 data");
}

#[test]
fn envelope_schema_refuses_broken_envelopes() {
    let schemas = Schemas::load();
    let catalog = Catalog::shipped();
    let mut stream = Stream::new(&catalog, "carol");
    stream.run("01-01 00:00", Command::OpenAccount, "account_opened");
    let stored: Value = serde_json::from_slice(&stream.stored[0]).expect("JSON");
    let upper_hash = stored["hash"].as_str().expect("hash").to_uppercase();
    let envelope = Refusals::new(&schemas, ENVELOPE, stored);
    schemas.assert_valid(ENVELOPE, &envelope.edited("/position", Some(json!(17))));
    envelope.add("/signature", json!("x"), "an extra field");
    envelope.remove("/hash", "a missing hash");
    envelope.set("/hash", json!(upper_hash), "an uppercase hash");
    envelope.set("/prev_hash", json!("00"), "a short prev_hash");
    envelope.set("/event_id", json!("event-1"), "an event id that is no UUID");
    envelope.set(
        "/stream",
        json!("carol"),
        "a stream that is not an account's",
    );
    envelope.set("/version", json!(0), "version 0");
    envelope.set("/position", json!(-1), "a negative position");
    envelope.set("/type", json!("AccountOpened"), "an unknown type");
    envelope.set("/schema_version", json!(0), "schema version 0");
    envelope.set("/data", json!("{}"), "data that is not an object");
    envelope.set(
        "/recorded_at",
        json!("yesterday"),
        "a recorded_at that is no instant",
    );
}

// ---------------------------------------------------------------------------------------------
// The frozen fixture of old events
// ---------------------------------------------------------------------------------------------

/// `events_v1.jsonl` is data, written once when `credits_charged` was at version 1 and never
/// regenerated: this digest catches any edit, even one that keeps the chain consistent.
const EVENTS_V1_SHA256: &str = "8cff884db335317fb096f58e80679627d1d4bbabbdf5445bc4d9122c2d8ecd7a";
const EVENTS_V1_ACCOUNT: &str = "acme-legacy-0042";

fn read_fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

#[test]
fn fixture_events_v1_is_unchanged() {
    let path = fixture_dir().join("events_v1.jsonl");
    let bytes =
        fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        EVENTS_V1_SHA256,
        "events_v1.jsonl was modified"
    );
}

#[test]
fn fixture_events_v1_validates_chains_upcasts_and_folds() {
    let schemas = Schemas::load();
    let text = read_fixture("events_v1.jsonl");
    let mut account = Account::new(EVENTS_V1_ACCOUNT);
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut last_position = 0;
    let mut charges_v1 = 0;
    let mut unlimited_v1 = 0;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let (type_name, version) = schemas.assert_stored_valid(line.as_bytes());
        assert_eq!(
            version, 1,
            "line {line_no}: every event of this fixture is at schema version 1"
        );

        let raw = RawEnvelope::parse(line.as_bytes())
            .unwrap_or_else(|err| panic!("line {line_no}: {err}"));
        assert_eq!(
            raw.stream,
            envelope::stream_name(EVENTS_V1_ACCOUNT),
            "line {line_no}: stream"
        );
        assert_eq!(
            raw.version,
            index as u64 + 1,
            "line {line_no}: versions start at 1 without gaps"
        );
        let position = raw.position.expect("exported events carry their position");
        assert!(
            position > last_position,
            "line {line_no}: positions increase"
        );
        last_position = position;
        assert_eq!(
            raw.prev_hash, prev_hash,
            "line {line_no}: prev_hash links to the previous hash"
        );
        assert_eq!(raw.computed_hash(), raw.hash, "line {line_no}: hash");
        prev_hash = raw.hash.clone();

        let decoded = raw
            .decode()
            .unwrap_or_else(|err| panic!("line {line_no}: {err}"));
        assert_eq!(decoded.event.type_name(), type_name);
        // The upcast event is a valid event of the current version.
        let current = decoded.event.schema_version();
        schemas.assert_valid(
            &data_schema_file(&type_name, current),
            &decoded.event.data_json(),
        );
        if let Event::CreditsCharged(charge) = &decoded.event {
            charges_v1 += 1;
            let stored: Value = serde_json::from_str(raw.data.get()).expect("data is JSON");
            let mut upcast = decoded.event.data_json();
            assert_eq!(
                upcast["via"], "app",
                "line {line_no}: v1 runs came from the app"
            );
            assert_eq!(charge.via, Via::App);
            let unlimited = charge
                .drawn_from
                .iter()
                .any(|part| part.bucket == BucketKind::Unlimited);
            let paid_by = if unlimited {
                unlimited_v1 += 1;
                PaidBy::Unlimited
            } else {
                PaidBy::Credits
            };
            assert_eq!(charge.paid_by, paid_by, "line {line_no}: paid_by");
            assert_eq!(
                charge.balance_after, None,
                "line {line_no}: v1 did not know the balance"
            );
            // Everything v1 recorded survives the upcast unchanged.
            for field in ["/via", "/paid_by", "/balance_after"] {
                put(&mut upcast, field, None);
            }
            assert_eq!(upcast, stored, "line {line_no}: v1 fields");
        }
        account.evolve(&decoded.event);
    }
    assert_eq!(account.version, 18, "events in the fixture");
    assert_eq!(charges_v1, 8, "credits_charged v1 events in the fixture");
    assert_eq!(unlimited_v1, 1, "v1 charges of an unlimited account");

    let core = account
        .core
        .as_ref()
        .expect("the fixture opens the account");
    let end = at("2025-07-02T07:15:09Z");
    assert_eq!(core.plan.tier, Tier::Pro);
    assert!(!core.plan.unlimited);
    // 5,000 Pro allowance - 20 for the last charge + the 200 grant; the top-up expired.
    assert_eq!(core.available(end), Credits::new(5_180));
    assert_eq!(core.balance.totals.charged, Credits::new(6_009));
    assert_eq!(core.balance.totals.refunded, Credits::new(3_000));
    assert_eq!(core.balance.totals.charged_unlimited, Credits::new(400));
    let totals = core.balance.totals;
    let net = totals.granted.get() + totals.refunded.get()
        - totals.charged.get()
        - totals.forfeited.get();
    assert_eq!(
        net,
        core.total_in_buckets().get(),
        "totals balance the buckets"
    );
}

/// `events_v2_top_ups.jsonl`: written when `top_up_purchased` was at schema version 2 (no
/// `payment_ref`).
const EVENTS_V2_TOP_UPS_SHA256: &str =
    "24d71622d3587a08e5b3e364602420bf90812a78a80e1dec0efbe92042ad4d19";

/// The envelopes of a frozen fixture, with the schema version each was stored at: checks the
/// file's SHA-256, each stored envelope and its data against the schemas of their versions,
/// the hash chain, and that each upcast event is valid at the current version.
fn frozen_fixture(schemas: &Schemas, name: &str, sha256: &str) -> Vec<(u32, Envelope)> {
    let text = read_fixture(name);
    assert_eq!(
        hex::encode(Sha256::digest(text.as_bytes())),
        sha256,
        "{name} was modified"
    );
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut envelopes = Vec::new();
    for line in text.lines() {
        let (type_name, version) = schemas.assert_stored_valid(line.as_bytes());
        let raw = RawEnvelope::parse(line.as_bytes()).expect("fixture line parses");
        assert_eq!(raw.prev_hash, prev_hash, "{type_name}: chain link");
        assert_eq!(raw.computed_hash(), raw.hash, "{type_name}: hash");
        prev_hash = raw.hash.clone();
        let envelope = raw.decode().expect("fixture line decodes");
        assert_eq!(envelope.schema_version, version, "the version as stored");
        schemas.assert_valid(
            &data_schema_file(&type_name, envelope.event.schema_version()),
            &envelope.event.data_json(),
        );
        envelopes.push((version, envelope));
    }
    envelopes
}

#[test]
fn fixture_events_v2_top_ups_upcast_to_purchases_without_a_payment() {
    let schemas = Schemas::load();
    let mut account = Account::new("acme-topups-0007");
    for (version, envelope) in frozen_fixture(
        &schemas,
        "events_v2_top_ups.jsonl",
        EVENTS_V2_TOP_UPS_SHA256,
    ) {
        let event = envelope.event;
        if let Event::TopUpPurchased(purchase) = &event {
            assert_eq!(version, 2, "the fixture's purchases are v2");
            assert_eq!(purchase.payment_ref, None, "v2 knew no payment");
            assert!(purchase.expires_at_requested.is_some(), "v2 fields survive");
        }
        account.evolve(&event);
    }
    let core = account
        .core
        .as_ref()
        .expect("the fixture opens the account");
    assert_eq!(core.balance.of_kind(BucketKind::TopUp).count(), 2);
    assert_eq!(
        core.available(at("2025-09-04T00:00:00Z")),
        Credits::new(3_250)
    );
}

/// `events_v2_charges.jsonl`: written when `credits_charged` was at schema version 2 and
/// `charge_refunded` at version 1, which named its charge by id only.
const EVENTS_V2_CHARGES_SHA256: &str =
    "5d80e27efcdaaff70f44f5e1aa61dcd4c43768861377e9eff6da2193f1285ee8";

#[test]
fn fixture_events_v2_charges_fold_and_their_v1_refunds_take_usage_back() {
    let schemas = Schemas::load();
    let catalog = Catalog::shipped();
    let mut account = Account::new("acme-charges-0011");
    let mut usage = Usage::default();
    for (version, envelope) in frozen_fixture(
        &schemas,
        "events_v2_charges.jsonl",
        EVENTS_V2_CHARGES_SHA256,
    ) {
        match &envelope.event {
            Event::CreditsCharged(_) => assert_eq!(version, 2, "the fixture's charges are v2"),
            Event::ChargeRefunded(refund) => {
                assert_eq!(version, 1, "the fixture's refunds are v1");
                assert_eq!(
                    (refund.model.as_deref(), refund.charge_version, refund.cost),
                    (None, None, None),
                    "v1 named the charge by id only"
                );
            }
            _ => {}
        }
        usage.apply(&envelope.event, Stored::of(&envelope));
        account.evolve(&envelope.event);
    }
    assert_eq!(account.version, 14, "events in the fixture");
    let core = account
        .core
        .as_ref()
        .expect("the fixture opens the account");
    assert_eq!(
        core.available(at("2025-10-09T08:00:00Z")),
        Credits::new(2_488)
    );

    let counted = |usage: &Usage| -> Vec<(String, String, u64, u64)> {
        usage
            .days
            .iter()
            .flat_map(|(day, models)| {
                models.iter().map(move |(model, tally)| {
                    (
                        day.to_string(),
                        model.clone(),
                        tally.runs,
                        tally.credits.get(),
                    )
                })
            })
            .collect()
    };
    let row = |day: &str, model: &str, runs: u64, credits: u64| {
        (day.to_string(), model.to_string(), runs, credits)
    };
    // The v1 refunds took their runs back from the charges' days: a trial run of kling-2
    // charged two seconds before midnight, and a paid chat run just after it.
    assert_eq!(
        counted(&usage),
        [
            row("2025-10-06", "flux-pro", 1, 0),
            row("2025-10-06", "kling-2", 0, 0),
            row("2025-10-07", "assistant-chat", 0, 0),
            row("2025-10-07", "flux-pro", 1, 0),
            row("2025-10-09", "flux-schnell", 1, 12),
        ]
    );
    let remembered: Vec<&str> = usage.legacy_charges.keys().map(String::as_str).collect();
    assert_eq!(remembered, ["chg-0011-1", "chg-0011-4", "chg-0011-5"]);

    // A refund decided today names the old charge, and the row forgets it.
    let now = at("2025-10-10T00:00:00Z");
    let decision = decide(&account, &catalog, &refund("chg-0011-5"), now).expect("refunded");
    let [Event::ChargeRefunded(refunded)] = decision.events.as_slice() else {
        panic!("one refund: {:?}", names(&decision.events));
    };
    assert_eq!(
        (
            refunded.model.as_deref(),
            refunded.charge_version,
            refunded.cost
        ),
        (Some("flux-schnell"), Some(14), Some(Credits::new(12)))
    );
    let stored = Stored {
        version: 15,
        schema_version: Event::current_schema_version("charge_refunded").expect("known"),
        occurred_at: now,
    };
    usage.apply(&decision.events[0], stored);
    assert_eq!(counted(&usage)[4], row("2025-10-09", "flux-schnell", 0, 0));
    assert!(!usage.legacy_charges.contains_key("chg-0011-5"));
}

#[test]
fn every_old_schema_version_has_fixture_events() {
    let mut found: BTreeSet<(String, u32)> = BTreeSet::new();
    for entry in fs::read_dir(fixture_dir()).expect("fixtures directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "jsonl") {
            let text = fs::read_to_string(&path).expect("fixture is UTF-8");
            for line in text.lines() {
                let raw = RawEnvelope::parse(line.as_bytes()).expect("fixture line parses");
                found.insert((raw.type_name, raw.schema_version));
            }
        }
    }
    for type_name in EVENT_TYPES {
        let current = Event::current_schema_version(type_name).expect("known type");
        for version in 1..current {
            assert!(
                found.contains(&(type_name.to_string(), version)),
                "no fixture holds {type_name} at old schema version {version}"
            );
        }
    }
}
