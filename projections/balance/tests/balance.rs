//! Given/when/then tests of the balance view's fold: commands decided by the domain at
//! explicit instants, their events folded into the row by `apply`, the row checked field by
//! field — and, after every command, against the domain's own account state.

use ledger_domain::command::*;
use ledger_domain::events::{AccountOpened, Billing, BucketKind, Event, TopUpPurchased, Via};
use ledger_domain::{decide, Account, Catalog, Command, Credits, Instant, Tier};
use ledger_projection_balance::{apply, create, decode, encode, Row};

const T0: &str = "2026-01-10T12:00:00Z";

fn at(text: &str) -> Instant {
    text.parse().expect("test instant")
}

fn credits(amount: u64) -> Credits {
    Credits::new(amount)
}

/// An account, its view row, and the time.
struct Given {
    account: Account,
    catalog: Catalog,
    now: Instant,
    view: Option<Row>,
}

/// An account opened at `T0` (free plan: 500 credits a month).
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
    fn at(mut self, text: &str) -> Self {
        self.now = at(text);
        self
    }

    /// Decides `command` (which must succeed) and folds its events into the view.
    fn run(&mut self, command: Command) -> Vec<Event> {
        let decision = decide(&self.account, &self.catalog, &command, self.now)
            .unwrap_or_else(|rejection| panic!("{command:?} was rejected: {rejection}"));
        for event in &decision.events {
            apply(&mut self.view, event, self.account.version + 1);
            self.account.evolve(event);
        }
        let core = self.account.core.as_ref().expect("open");
        assert_eq!(
            self.view.as_ref(),
            Some(&core.balance),
            "the view equals the fold"
        );
        decision.events
    }

    fn ran(mut self, command: Command) -> Self {
        self.run(command);
        self
    }

    fn when(mut self, command: Command) -> Self {
        self.run(command);
        self
    }

    fn then_row(&self) -> &Row {
        self.view.as_ref().expect("the account has a row")
    }
}

fn charge(id: &str, model: &str, images: Option<u32>, seconds: Option<u32>) -> Command {
    Command::Charge(Charge {
        charge_id: id.into(),
        run_id: "run-1".into(),
        node_id: format!("node-{id}"),
        model: model.into(),
        quantity: Quantity { images, seconds },
        via: Via::App,
    })
}

fn hold(id: &str, images: u32) -> Command {
    Command::PlaceHold(PlaceHold {
        hold_id: id.into(),
        run_id: "run-1".into(),
        node_id: format!("node-{id}"),
        model: "flux-schnell".into(),
        quantity: Quantity {
            images: Some(images),
            seconds: None,
        },
        via: Via::App,
        ttl: None,
    })
}

#[test]
fn account_opened_creates_the_row_with_the_first_allowance() {
    let then = given_account();
    let row = then.then_row();
    let allowance = row.allowance().expect("an allowance");
    assert_eq!(allowance.id, "2026-01-10T12:00:00Z");
    assert_eq!(allowance.expires_at, Some(at("2026-02-10T12:00:00Z")));
    assert_eq!(
        (allowance.credits, allowance.remaining),
        (credits(500), credits(500))
    );
    assert!(row.buckets.len() == 1 && row.open_holds.is_empty());
    assert_eq!(row.totals.granted, credits(500));
    assert_eq!(row.available(at(T0)), credits(500));
}

#[test]
fn only_account_opened_creates_a_row() {
    let top_up = Event::TopUpPurchased(TopUpPurchased {
        purchase_id: "p1".into(),
        credits: credits(100),
        expires_at: at("2026-03-01T00:00:00Z"),
        expires_at_requested: Some(true),
        payment_ref: None,
    });
    assert_eq!(create(&top_up), None);
    let mut view = None;
    apply(&mut view, &top_up, 1);
    assert_eq!(view, None);
    let opened = Event::AccountOpened(AccountOpened {
        account_id: "acct-1".into(),
        tier: Tier::Free,
        scope: ledger_domain::catalog::Scope::Free,
        period_start: at(T0),
        period_end: at("2026-02-10T12:00:00Z"),
        allowance: credits(500),
    });
    apply(&mut view, &opened, 1);
    assert_eq!(view.map(|row| row.totals.granted), Some(credits(500)));
}

#[test]
fn a_charge_draws_from_the_allowance() {
    let then = given_account().when(charge("c1", "flux-schnell", Some(2), None));
    let row = then.then_row();
    assert_eq!(row.allowance().unwrap().remaining, credits(496));
    assert_eq!(row.totals.charged, credits(4));
}

#[test]
fn a_top_up_adds_a_lot_with_its_expiry_and_expires_with_its_remainder_forfeited() {
    let then = given_account().when(Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: "p1".into(),
        credits: 1_000,
        expires_at: Some(at("2026-01-20T00:00:00Z")),
    }));
    let row = then.then_row();
    let top_ups: Vec<_> = row.of_kind(BucketKind::TopUp).collect();
    assert_eq!(top_ups.len(), 1);
    assert_eq!(top_ups[0].id, "p1");
    assert_eq!(top_ups[0].remaining, credits(1_000));
    assert_eq!(top_ups[0].expires_at, Some(at("2026-01-20T00:00:00Z")));
    assert_eq!(row.totals.granted, credits(1_500));

    // The lot expires first, so it pays first.
    let then = then
        .ran(charge("c1", "flux-schnell", Some(5), None))
        .at("2026-01-21T00:00:00Z")
        .when(Command::Tick);
    let row = then.then_row();
    assert!(
        row.of_kind(BucketKind::TopUp).next().is_none(),
        "the expired lot is gone"
    );
    assert_eq!(row.totals.forfeited, credits(990));
}

#[test]
fn held_credits_stay_earmarked_until_the_hold_is_captured() {
    let then = given_account().when(hold("h1", 4));
    let row = then.then_row();
    assert!(row.open_holds.contains_key("h1"));
    assert_eq!(row.held(), credits(8));
    assert_eq!(row.available(at(T0)), credits(492));

    let then = then.when(Command::CaptureHold(CaptureHold {
        hold_id: "h1".into(),
        quantity: Quantity {
            images: Some(2),
            seconds: None,
        },
    }));
    let row = then.then_row();
    assert!(row.open_holds.is_empty());
    assert_eq!(row.held(), credits(0));
    assert_eq!(
        row.available(at(T0)),
        credits(496),
        "the unused half came back"
    );
    assert_eq!(row.totals.charged, credits(4));
}

#[test]
fn a_refund_puts_the_charge_back_in_its_bucket() {
    let then = given_account()
        .ran(charge("c1", "flux-schnell", Some(3), None))
        .when(Command::RefundCharge {
            charge_id: "c1".into(),
            reason: "the run failed".into(),
        });
    let row = then.then_row();
    assert_eq!(row.allowance().unwrap().remaining, credits(500));
    assert_eq!(row.totals.refunded, credits(6));
}

#[test]
fn a_plan_change_starts_a_new_allowance_marked_with_its_event_version() {
    let then = given_account()
        .ran(charge("c1", "assistant-chat", None, None))
        .when(Command::ChangeSubscription(ChangeSubscription {
            tier: Tier::Pro,
            billing: Some(Billing::Monthly),
            period_start: at(T0),
            period_end: at("2026-02-10T12:00:00Z"),
            reference: "sub-1".into(),
            allowance: None,
        }));
    let row = then.then_row();
    let allowance = row.allowance().unwrap();
    assert_eq!(allowance.credits, credits(5_000));
    assert_eq!(allowance.origin.version, 3, "open, charge, then the change");
    assert_eq!(
        row.totals.forfeited,
        credits(499),
        "the old allowance's remainder"
    );
}

#[test]
fn a_row_is_stored_as_deterministic_json_and_read_back_unchanged() {
    let then = given_account()
        .ran(hold("h1", 2))
        .ran(hold("h2", 1))
        .when(charge("c1", "flux-schnell", Some(1), None));
    let row = then.then_row();
    let mut first = Vec::new();
    encode(row, &mut first).unwrap();
    let mut second = Vec::new();
    encode(&decode(&first).unwrap(), &mut second).unwrap();
    assert_eq!(first, second);
    assert_eq!(&decode(&first).unwrap(), row);
}
