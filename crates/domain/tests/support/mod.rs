//! Given/when/then harness for domain rules: commands run through `decide` and `evolve` at
//! explicit instants, as the service would run them.

#![allow(dead_code)]

use ledger_domain::command::*;
use ledger_domain::decide::{decide, Decision, Reply};
use ledger_domain::events::{Event, Via};
use ledger_domain::{Account, Catalog, Credits, Instant, Rejection};

pub fn at(text: &str) -> Instant {
    text.parse().expect("test instant")
}

pub const T0: &str = "2026-01-10T12:00:00Z";

/// An account with its history, the catalog and the current time.
pub struct Given {
    pub account: Account,
    pub catalog: Catalog,
    pub now: Instant,
    pub history: Vec<Event>,
}

/// The outcome of the command under test.
pub struct Then {
    pub before: Account,
    pub account: Account,
    pub outcome: Result<Decision, Rejection>,
}

/// An account opened at `T0` on the shipped catalog.
pub fn given_account() -> Given {
    given_account_at(T0)
}

pub fn given_account_at(opened_at: &str) -> Given {
    let mut given = Given {
        account: Account::new("acct-1"),
        catalog: Catalog::shipped(),
        now: at(opened_at),
        history: Vec::new(),
    };
    given.run(Command::OpenAccount);
    given
}

impl Given {
    /// Moves the clock.
    pub fn at(mut self, text: &str) -> Self {
        self.now = at(text);
        self
    }

    /// Runs a command that must succeed, keeping its events.
    pub fn run(&mut self, command: Command) -> Decision {
        let decision = decide(&self.account, &self.catalog, &command, self.now)
            .unwrap_or_else(|rejection| panic!("given {command:?} was rejected: {rejection}"));
        for event in &decision.events {
            self.account.evolve(event);
            self.history.push(event.clone());
        }
        decision
    }

    pub fn ran(mut self, command: Command) -> Self {
        self.run(command);
        self
    }

    pub fn when(self, command: Command) -> Then {
        let outcome = decide(&self.account, &self.catalog, &command, self.now);
        let before = self.account.clone();
        let mut account = self.account;
        if let Ok(decision) = &outcome {
            for event in &decision.events {
                account.evolve(event);
            }
        }
        Then {
            before,
            account,
            outcome,
        }
    }

    pub fn available(&self) -> u64 {
        self.account
            .core
            .as_ref()
            .expect("open")
            .available(self.now)
            .get()
    }
}

impl Then {
    /// The command was refused with `code`, and nothing would be written.
    pub fn then_rejects(self, code: &str) -> Rejection {
        match self.outcome {
            Ok(decision) => panic!("expected {code}, got events {:?}", decision.events),
            Err(rejection) => {
                assert_eq!(rejection.code(), code, "{rejection}");
                rejection
            }
        }
    }

    /// The command succeeded; returns its events.
    pub fn then_events(&self) -> &[Event] {
        match &self.outcome {
            Ok(decision) => &decision.events,
            Err(rejection) => panic!("expected success, got {rejection}"),
        }
    }

    pub fn then_reply(&self) -> &Reply {
        match &self.outcome {
            Ok(decision) => &decision.reply,
            Err(rejection) => panic!("expected success, got {rejection}"),
        }
    }

    /// The command was an idempotent retry: the first answer, nothing written.
    pub fn then_replayed(&self) -> &Reply {
        let decision = self
            .outcome
            .as_ref()
            .unwrap_or_else(|r| panic!("expected a replay, got {r}"));
        assert!(decision.replayed, "expected a replay");
        assert!(decision.events.is_empty(), "a replay writes nothing");
        &decision.reply
    }

    pub fn event_types(&self) -> Vec<&'static str> {
        self.then_events().iter().map(Event::type_name).collect()
    }
}

pub fn top_up(id: &str, credits: u64) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: id.into(),
        credits,
        expires_at: None,
    })
}

pub fn top_up_until(id: &str, credits: u64, expires_at: &str) -> Command {
    Command::PurchaseTopUp(PurchaseTopUp {
        purchase_id: id.into(),
        credits,
        expires_at: Some(at(expires_at)),
    })
}

pub fn grant(id: &str, credits: u64, expires_at: Option<&str>) -> Command {
    Command::AddGrant(AddGrant {
        grant_id: id.into(),
        credits,
        reason: "goodwill".into(),
        expires_at: expires_at.map(at),
    })
}

fn quantity(images: Option<u32>, seconds: Option<u32>) -> Quantity {
    Quantity { images, seconds }
}

pub fn charge(id: &str, model: &str, images: Option<u32>, seconds: Option<u32>) -> Command {
    Command::Charge(Charge {
        charge_id: id.into(),
        run_id: "run-1".into(),
        node_id: format!("node-{id}"),
        model: model.into(),
        quantity: quantity(images, seconds),
        via: Via::App,
    })
}

/// A charge of the per-call assistant model (1 credit).
pub fn chat(id: &str) -> Command {
    charge(id, "assistant-chat", None, None)
}

pub fn api_chat(id: &str) -> Command {
    match chat(id) {
        Command::Charge(mut c) => {
            c.via = Via::Api;
            Command::Charge(c)
        }
        _ => unreachable!(),
    }
}

pub fn hold(
    id: &str,
    model: &str,
    images: Option<u32>,
    seconds: Option<u32>,
    ttl: Option<&str>,
) -> Command {
    Command::PlaceHold(PlaceHold {
        hold_id: id.into(),
        run_id: "run-1".into(),
        node_id: format!("node-{id}"),
        model: model.into(),
        quantity: quantity(images, seconds),
        via: Via::App,
        ttl: ttl.map(|t| t.parse().expect("ttl")),
    })
}

pub fn capture(id: &str, images: Option<u32>, seconds: Option<u32>) -> Command {
    Command::CaptureHold(CaptureHold {
        hold_id: id.into(),
        quantity: quantity(images, seconds),
    })
}

pub fn subscribe(
    tier: ledger_domain::Tier,
    billing: Option<ledger_domain::events::Billing>,
    start: &str,
    end: &str,
    reference: &str,
) -> Command {
    Command::ChangeSubscription(ChangeSubscription {
        tier,
        billing,
        period_start: at(start),
        period_end: at(end),
        reference: reference.into(),
        allowance: None,
    })
}

pub fn renew(invoice: &str, start: &str, end: &str) -> Command {
    Command::RenewAllowance(RenewAllowance {
        invoice_id: invoice.into(),
        period_start: at(start),
        period_end: at(end),
    })
}

pub fn verify() -> Command {
    Command::SubmitBusinessVerification(SubmitBusinessVerification {
        company_name: "Acme Ltd".into(),
        country: "GB".into(),
        registration_number: "01234567".into(),
    })
}

pub fn credits(amount: u64) -> Credits {
    Credits::new(amount)
}
