//! The usage view's fold: commands decided by the domain at explicit instants, their events
//! folded into the row by `apply` at those instants, and the row read back from its stored
//! form unchanged.

use ledger_domain::command::{Charge, Command, Quantity};
use ledger_domain::events::Via;
use ledger_domain::usage::{Stored, UsageBy, UsageRange};
use ledger_domain::{decide, Account, Catalog, Instant};
use ledger_projection_usage::{apply, decode, encode, Row};

fn at(text: &str) -> Instant {
    text.parse().expect("test instant")
}

fn charge(id: &str, model: &str, images: Option<u32>) -> Command {
    Command::Charge(Charge {
        charge_id: id.into(),
        run_id: "run".into(),
        node_id: "node".into(),
        model: model.into(),
        quantity: Quantity {
            images,
            seconds: None,
        },
        via: Via::App,
    })
}

#[test]
fn the_row_counts_runs_per_day_and_model_and_survives_storage() {
    let catalog = Catalog::shipped();
    let mut account = Account::new("acct");
    let mut view: Option<Row> = None;
    let steps = [
        ("2026-01-10T23:59:59Z", Command::OpenAccount),
        (
            "2026-01-10T23:59:59Z",
            charge("c1", "flux-schnell", Some(2)),
        ),
        (
            "2026-01-11T00:00:00Z",
            charge("c2", "flux-schnell", Some(1)),
        ),
        ("2026-01-11T08:00:00Z", charge("c3", "flux-pro", Some(1))),
        (
            "2026-01-12T08:00:00Z",
            Command::RefundCharge {
                charge_id: "c2".into(),
                reason: "failed".into(),
            },
        ),
    ];
    for (when, command) in steps {
        let decision = decide(&account, &catalog, &command, at(when)).expect("decided");
        for event in &decision.events {
            let stored = Stored {
                version: account.version + 1,
                schema_version: event.schema_version(),
                occurred_at: at(when),
            };
            apply(&mut view, event, stored);
            account.evolve(event);
        }
    }
    let row = view.expect("account_opened created the row");
    let report = row.report(&UsageRange::ALL, UsageBy::Day, &catalog);
    let days: Vec<(&str, u64, u64)> = report
        .rows
        .iter()
        .map(|row| (row.key.as_str(), row.runs, row.credits.get()))
        .collect();
    // The refund takes its run back from the day of the charge, not the day of the refund.
    assert_eq!(days, [("2026-01-10", 1, 4), ("2026-01-11", 1, 0)]);
    // Charges are not remembered; only the day each run of stream versions was charged on.
    assert!(row.legacy_charges.is_empty());
    let charge_days: Vec<(u64, String)> = row
        .charge_days
        .iter()
        .map(|entry| (entry.0, entry.1.to_string()))
        .collect();
    assert_eq!(
        charge_days,
        [(2, "2026-01-10".to_string()), (3, "2026-01-11".to_string())]
    );
    let mut stored = Vec::new();
    encode(&row, &mut stored).expect("encode");
    assert_eq!(decode(&stored).expect("decode"), row);
}
