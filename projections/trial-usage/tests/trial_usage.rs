//! Given/when/then tests of the trial-usage view's fold: commands decided by the domain at
//! explicit instants, their events folded into the row by `apply`, the row checked field by
//! field — and, after every command, against the domain's own account state.

use ledger_domain::command::*;
use ledger_domain::events::{Event, TrialKind, TrialRunConsumed, Via};
use ledger_domain::state::TrialStatus;
use ledger_domain::{decide, Account, Catalog, Command, Instant};
use ledger_projection_trial_usage::{apply, create, decode, encode, Row};

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

/// An account opened at `T0` on the free plan (pro models are open to it as trials).
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
            Some(&core.trials),
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

#[test]
fn account_opened_creates_a_row_without_trials() {
    let then = given_account();
    assert!(then.then_row().models.is_empty());
}

#[test]
fn only_account_opened_creates_a_row() {
    let consumed = Event::TrialRunConsumed(TrialRunConsumed {
        model: "flux-pro".into(),
        run_ref: "c1".into(),
        used: 1,
        limit: 3,
    });
    assert_eq!(create(&consumed), None);
    let mut view = None;
    apply(&mut view, &consumed, 1);
    assert_eq!(view, None);
}

#[test]
fn a_count_trial_is_granted_on_first_use_and_counts_down_to_exhausted() {
    let then = given_account().when(charge("c1", "flux-pro", Some(1), None));
    let trial = then.then_row().get("flux-pro").expect("granted").clone();
    assert_eq!(
        (trial.kind, trial.limit, trial.used),
        (TrialKind::Runs, 3, 1)
    );
    assert_eq!(trial.status(at(T0)), TrialStatus::Active);

    let then = then
        .ran(charge("c2", "flux-pro", Some(1), None))
        .when(charge("c3", "flux-pro", Some(1), None));
    let trial = then.then_row().get("flux-pro").unwrap();
    assert_eq!(trial.used, 3);
    assert_eq!(trial.status(at(T0)).as_str(), "exhausted");
}

#[test]
fn a_window_trial_opens_on_first_use_counts_its_runs_and_expires_at_its_end() {
    let then = given_account().when(charge("c1", "kling-2", None, Some(5)));
    let trial = then.then_row().get("kling-2").expect("granted").clone();
    assert_eq!(trial.kind, TrialKind::Window);
    assert_eq!(trial.opened_at, Some(at(T0)));
    assert_eq!(trial.closes_at, Some(at("2026-01-17T12:00:00Z")));
    assert_eq!(trial.used, 1);
    assert_eq!(
        trial.status(at("2026-01-17T11:59:59Z")),
        TrialStatus::Active
    );
    assert_eq!(
        trial.status(at("2026-01-17T12:00:00Z")),
        TrialStatus::Expired
    );

    let then = then.ran(charge("c2", "kling-2", None, Some(5)));
    assert_eq!(then.then_row().get("kling-2").unwrap().used, 2);

    // The scheduler records the close.
    let then = then.at("2026-01-18T00:00:00Z").when(Command::Tick);
    assert!(then.then_row().get("kling-2").unwrap().closed);
}

#[test]
fn paid_runs_leave_the_trials_as_they_were() {
    let given = given_account().ran(charge("c1", "flux-pro", Some(1), None));
    let before = given.then_row().clone();
    let then = given.when(charge("c2", "flux-schnell", Some(2), None));
    assert_eq!(then.then_row(), &before);
}

#[test]
fn a_row_is_stored_as_deterministic_json_and_read_back_unchanged() {
    let then = given_account()
        .ran(charge("c1", "kling-2", None, Some(5)))
        .when(charge("c2", "flux-pro", Some(1), None));
    let row = then.then_row();
    let mut first = Vec::new();
    encode(row, &mut first).unwrap();
    let mut second = Vec::new();
    encode(&decode(&first).unwrap(), &mut second).unwrap();
    assert_eq!(first, second);
    assert_eq!(&decode(&first).unwrap(), row);
}
