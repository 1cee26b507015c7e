//! Given/when/then tests of the tier view's fold: commands decided by the domain at explicit
//! instants, their events folded into the row by `apply`, the row checked field by field —
//! and, after every command, against the domain's own account state.

use ledger_domain::catalog::Scope;
use ledger_domain::command::*;
use ledger_domain::events::{Billing, Event, GrantAdded, Via};
use ledger_domain::state::Verification;
use ledger_domain::{decide, Account, Catalog, Command, Credits, Instant, Tier};
use ledger_projection_tier::{apply, create, decode, encode, Row};

const T0: &str = "2026-01-10T12:00:00Z";

fn at(text: &str) -> Instant {
    text.parse().expect("test instant")
}

/// An account, its view row, and the time.
struct Given {
    account: Account,
    catalog: Catalog,
    now: Instant,
    view: Option<Row>,
}

/// An account opened at `T0` on the free plan.
fn given_account() -> Given {
    let mut given = Given {
        account: Account::new("acct-1"),
        catalog: Catalog::shipped(),
        now: at(T0),
        view: None,
    };
    given.run(Command::OpenAccount);
    given
}

impl Given {
    /// Decides `command` (which must succeed) and folds its events into the view.
    fn run(&mut self, command: Command) {
        let decision = decide(&self.account, &self.catalog, &command, self.now)
            .unwrap_or_else(|rejection| panic!("{command:?} was rejected: {rejection}"));
        for event in &decision.events {
            apply(&mut self.view, event, self.account.version + 1);
            self.account.evolve(event);
        }
        let core = self.account.core.as_ref().expect("open");
        assert_eq!(
            self.view.as_ref(),
            Some(&core.plan),
            "the view equals the fold"
        );
    }

    fn ran(mut self, command: Command) -> Self {
        self.run(command);
        self
    }

    fn when(self, command: Command) -> Self {
        self.ran(command)
    }

    fn then_row(&self) -> &Row {
        self.view.as_ref().expect("the account has a row")
    }
}

fn subscribe(
    tier: Tier,
    billing: Option<Billing>,
    allowance: Option<u64>,
    reference: &str,
) -> Command {
    Command::ChangeSubscription(ChangeSubscription {
        tier,
        billing,
        period_start: at(T0),
        period_end: at("2026-02-10T12:00:00Z"),
        reference: reference.into(),
        allowance: allowance.map(Credits::new),
    })
}

fn submit() -> Command {
    Command::SubmitBusinessVerification(SubmitBusinessVerification {
        company_name: "Acme GmbH".into(),
        country: "DE".into(),
        registration_number: "HRB 12345".into(),
    })
}

#[test]
fn account_opened_puts_the_account_on_the_free_plan() {
    let then = given_account();
    let row = then.then_row();
    assert_eq!(
        (row.tier, row.billing, row.scope),
        (Tier::Free, None, Scope::Free)
    );
    assert!(!row.unlimited);
    assert_eq!(row.plan_allowance, Some(Credits::new(500)));
    assert_eq!(row.subscription_end, at("2026-02-10T12:00:00Z"));
    assert_eq!(row.verification.status().as_str(), "none");
}

#[test]
fn only_account_opened_creates_a_row() {
    let grant = Event::GrantAdded(GrantAdded {
        grant_id: "g1".into(),
        credits: Credits::new(10),
        reason: "goodwill".into(),
        expires_at: None,
    });
    assert_eq!(create(&grant), None);
    let mut view = None;
    apply(&mut view, &grant, 1);
    assert_eq!(view, None);
}

#[test]
fn a_subscription_sets_tier_billing_scope_and_period() {
    let then = given_account().when(subscribe(Tier::Pro, Some(Billing::Annual), None, "sub-1"));
    let row = then.then_row();
    assert_eq!(
        (row.tier, row.billing, row.scope),
        (Tier::Pro, Some(Billing::Annual), Scope::Deployment)
    );
    assert_eq!(row.subscription_start, at(T0));
    assert_eq!(row.subscription_end, at("2026-02-10T12:00:00Z"));
    assert!(!row.unlimited);
}

#[test]
fn enterprise_without_an_allowance_is_unlimited() {
    let then = given_account().when(subscribe(
        Tier::Enterprise,
        Some(Billing::Monthly),
        None,
        "ent-1",
    ));
    let row = then.then_row();
    assert_eq!((row.tier, row.scope), (Tier::Enterprise, Scope::Admin));
    assert!(row.unlimited);
    assert_eq!(row.plan_allowance, None);

    let then = given_account().when(subscribe(
        Tier::Enterprise,
        Some(Billing::Monthly),
        Some(80_000),
        "ent-2",
    ));
    assert!(!then.then_row().unlimited);
    assert_eq!(then.then_row().plan_allowance, Some(Credits::new(80_000)));
}

#[test]
fn business_verification_goes_from_pending_to_approved_or_rejected() {
    let then = given_account().when(submit());
    assert_eq!(then.then_row().verification.status().as_str(), "pending");
    let approved = then.when(Command::ApproveBusinessVerification);
    match &approved.then_row().verification {
        Verification::Approved(submission) => assert_eq!(submission.company_name, "Acme GmbH"),
        other => panic!("expected approved, got {other:?}"),
    }

    let rejected = given_account()
        .ran(submit())
        .when(Command::RejectBusinessVerification {
            reason: "the registry does not know the company".into(),
        });
    match &rejected.then_row().verification {
        Verification::Rejected(_, reason) => assert!(reason.contains("registry")),
        other => panic!("expected rejected, got {other:?}"),
    }
}

#[test]
fn charges_and_credits_leave_the_plan_as_it_was() {
    let given = given_account();
    let before = given.then_row().clone();
    let then = given
        .ran(Command::AddGrant(AddGrant {
            grant_id: "g1".into(),
            credits: 100,
            reason: "goodwill".into(),
            expires_at: None,
        }))
        .when(Command::Charge(Charge {
            charge_id: "c1".into(),
            run_id: "run-1".into(),
            node_id: "n1".into(),
            model: "assistant-chat".into(),
            quantity: Quantity::default(),
            via: Via::App,
        }));
    assert_eq!(then.then_row(), &before);
}

#[test]
fn a_row_is_stored_as_deterministic_json_and_read_back_unchanged() {
    let then = given_account()
        .ran(submit())
        .ran(Command::ApproveBusinessVerification)
        .when(subscribe(
            Tier::Business,
            Some(Billing::Monthly),
            None,
            "sub-1",
        ));
    let row = then.then_row();
    let mut first = Vec::new();
    encode(row, &mut first).unwrap();
    let mut second = Vec::new();
    encode(&decode(&first).unwrap(), &mut second).unwrap();
    assert_eq!(first, second);
    assert_eq!(&decode(&first).unwrap(), row);
}
