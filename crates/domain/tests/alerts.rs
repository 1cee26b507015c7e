//! Given/when/then tests of SPEC section 14's rules in the domain: what `PUT .../alerts`
//! accepts and records, and which notifications the alerts fold derives from a history.

mod support;

use ledger_domain::alerts::{notification_id, AlertKind, AlertWatch, ConfigureAlerts};
use ledger_domain::command::Command;
use ledger_domain::decide::Reply;
use ledger_domain::events::{AlertsConfigured, Event};
use ledger_domain::Tier;
use support::*;

fn alerts(low_balance: &[u64], url: Option<&str>) -> Command {
    Command::ConfigureAlerts(ConfigureAlerts {
        low_balance: low_balance.to_vec(),
        url: url.map(str::to_string),
    })
}

fn receiver() -> Option<&'static str> {
    Some("https://alerts.example.com/ledger")
}

/// Runs commands like `Given` does and folds every event they write into an alert watch at
/// the command's time, keeping what it notifies as `(type, data)`.
struct Watched {
    given: Given,
    watch: Option<AlertWatch>,
    notified: Vec<(AlertKind, serde_json::Value)>,
}

impl Watched {
    fn new() -> Watched {
        let given = given_account();
        let watch = AlertWatch::create(&given.history[0]);
        assert!(watch.is_some(), "account_opened starts a watch");
        Watched {
            given,
            watch,
            notified: Vec::new(),
        }
    }

    fn at(mut self, text: &str) -> Self {
        self.given = self.given.at(text);
        self
    }

    fn run(mut self, command: Command) -> Self {
        let decision = self.given.run(command);
        let watch = self.watch.as_mut().expect("a watch");
        for event in &decision.events {
            let version = self.given.history.len() as u64;
            for notification in watch.apply(event, version, self.given.now) {
                self.notified.push((notification.kind, notification.data));
            }
        }
        self
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.notified
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect()
    }
}

#[test]
fn configuring_alerts_records_the_thresholds_sorted_and_the_url() {
    let then = given_account().when(alerts(&[300, 100], receiver()));
    assert_eq!(
        then.then_events(),
        [Event::AlertsConfigured(AlertsConfigured {
            low_balance: vec![credits(100), credits(300)],
            url: receiver().map(str::to_string),
        })]
    );
    assert_eq!(then.then_reply(), &Reply::AlertsConfigured);
}

#[test]
fn a_configuration_without_a_url_turns_delivery_off_and_is_recorded() {
    let then = given_account().when(alerts(&[50], None));
    assert_eq!(then.event_types(), ["alerts_configured"]);
}

#[test]
fn bad_alert_settings_are_refused_and_write_nothing() {
    let cases: [(&[u64], Option<&str>); 7] = [
        (&[0], receiver()),
        (&[10, 10], receiver()),
        (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], receiver()),
        (&[1_000_000_000_001], receiver()),
        (&[10], Some("ftp://example.com/")),
        (&[10], Some("https://user:pw@example.com/")),
        (&[10], Some("https:///no-host")),
    ];
    for (low_balance, url) in cases {
        given_account()
            .when(alerts(low_balance, url))
            .then_rejects("INVALID_REQUEST");
    }
}

#[test]
fn alerts_on_an_unknown_account_are_refused() {
    let given = Given {
        account: ledger_domain::Account::new("nobody"),
        catalog: ledger_domain::Catalog::shipped(),
        now: at(T0),
        history: Vec::new(),
    };
    given
        .when(alerts(&[10], receiver()))
        .then_rejects("ACCOUNT_NOT_FOUND");
}

#[test]
fn each_crossing_of_a_threshold_notifies_once_down_up_and_down_again() {
    let watched = Watched::new()
        .run(alerts(&[300, 100], receiver()))
        .run(charge("c1", "flux-schnell", Some(100), None)) // 500 → 300: not below 300
        .run(charge("c2", "flux-schnell", Some(1), None)) // 298: below 300
        .run(charge("c3", "flux-schnell", Some(99), None)) // 100: not below 100
        .run(chat("c4")) // 99: below 100
        .run(chat("c5")) // 98: still below both, nothing new
        .run(top_up("p1", 500)) // 598: back above both
        .run(charge("c6", "flux-schnell", Some(100), None)) // 398
        .run(charge("c7", "flux-schnell", Some(50), None)); // 298: below 300 again
    assert_eq!(
        watched.kinds(),
        [
            "balance.low",
            "balance.low",
            "balance.recovered",
            "balance.recovered",
            "balance.low"
        ]
    );
    let thresholds: Vec<u64> = watched
        .notified
        .iter()
        .map(|(_, data)| data["threshold"].as_u64().expect("a threshold"))
        .collect();
    assert_eq!(thresholds, [300, 100, 100, 300, 300]);
    assert_eq!(watched.notified[1].1["available"], 99);
}

#[test]
fn one_event_crossing_two_thresholds_notifies_the_higher_one_first() {
    let watched = Watched::new()
        .run(alerts(&[350, 400], receiver()))
        .run(charge("c1", "flux-schnell", Some(100), None)); // 500 → 300
    let thresholds: Vec<&serde_json::Value> = watched
        .notified
        .iter()
        .map(|(_, d)| &d["threshold"])
        .collect();
    assert_eq!(thresholds, [400, 350]);
}

#[test]
fn a_balance_already_below_a_new_threshold_notifies_at_once_and_a_repeat_setting_does_not() {
    let watched = Watched::new()
        .run(charge("c1", "flux-schnell", Some(100), None))
        .run(charge("c2", "flux-schnell", Some(100), None)) // 100 left, nobody listening
        .run(alerts(&[150], receiver()))
        .run(alerts(&[150], receiver()));
    assert_eq!(watched.kinds(), ["balance.low"]);
}

#[test]
fn nothing_is_derived_before_alerts_are_configured() {
    let watched = Watched::new()
        .run(charge("c1", "flux-schnell", Some(100), None))
        .run(top_up("p1", 100));
    assert!(watched.notified.is_empty(), "{:?}", watched.notified);
}

#[test]
fn trials_exhausted_and_expired_are_notified() {
    let watched = Watched::new()
        .run(alerts(&[], receiver()))
        .run(charge("t1", "flux-pro", Some(1), None))
        .run(charge("t2", "flux-pro", Some(1), None))
        .run(charge("t3", "flux-pro", Some(1), None))
        .run(charge("k1", "kling-2", None, Some(1)))
        .at("2026-01-18T12:00:00Z")
        .run(Command::Tick);
    assert_eq!(watched.kinds(), ["trial.exhausted", "trial.expired"]);
    assert_eq!(watched.notified[0].1["model"], "flux-pro");
    assert_eq!(watched.notified[1].1["model"], "kling-2");
}

#[test]
fn an_expired_hold_and_a_renewal_are_notified() {
    let watched = Watched::new()
        .run(alerts(&[], receiver()))
        .run(hold("h1", "flux-schnell", Some(10), None, Some("15m")))
        .at("2026-01-10T12:30:00Z")
        .run(Command::Tick)
        .at("2026-02-10T12:00:00Z")
        .run(Command::Tick);
    assert_eq!(watched.kinds(), ["hold.expired", "allowance.renewed"]);
    assert_eq!(watched.notified[0].1["returned"], 20);
    assert_eq!(watched.notified[1].1["allowance"], 500);
}

#[test]
fn an_unlimited_account_never_crosses_a_threshold() {
    let watched = Watched::new()
        .run(alerts(&[100], receiver()))
        .run(Command::ChangeSubscription(
            ledger_domain::command::ChangeSubscription {
                tier: Tier::Enterprise,
                billing: Some(ledger_domain::events::Billing::Monthly),
                period_start: at(T0),
                period_end: at("2026-02-10T12:00:00Z"),
                reference: "sub-1".into(),
                allowance: None,
            },
        ))
        .run(charge("c1", "flux-schnell", Some(100), None));
    assert!(watched.kinds().is_empty(), "{:?}", watched.kinds());
}

#[test]
fn notification_ids_depend_on_the_event_and_nothing_else() {
    let id = notification_id("acct-1", 7, "balance.low:300");
    assert_eq!(id, notification_id("acct-1", 7, "balance.low:300"));
    assert_ne!(id, notification_id("acct-1", 8, "balance.low:300"));
    assert_ne!(id, notification_id("acct-1", 7, "balance.low:100"));
    assert_ne!(id, notification_id("acct-2", 7, "balance.low:300"));
}
