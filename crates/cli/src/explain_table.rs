//! The table `ledger explain` prints without `--json`: how the explanation reads on a
//! terminal. The domain explains (data), the service words each entry (the `summary` lines
//! the API answers too), and only the CLI lays them out as columns.

use std::fmt::Write as _;

use ledger_domain::catalog::{Scope, Tier};
use ledger_domain::events::Billing;
use ledger_domain::explain::{Explanation, ModelAccessKind};
use ledger_domain::state::VerificationStatus;
use ledger_domain::time::rfc3339;

/// Column alignment in [`table`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Writes `rows` under `header` as aligned columns, two spaces apart, without trailing
/// spaces.
fn table(out: &mut String, header: &[&str], align: &[Align], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            let width = widths.get(index).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            match align.get(index).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The refresh dates and the usage-by-model table that follow the timeline.
fn usage_text(out: &mut String, e: &Explanation<String>, at: &str) {
    out.push('\n');
    let _ = writeln!(
        out,
        "allowance last refreshed {}, next refresh {}",
        e.last_refresh_at
            .map_or_else(|| "never".to_string(), |at| rfc3339(&at)),
        e.next_refresh_at
            .map_or_else(|| "through billing".to_string(), |at| rfc3339(&at)),
    );
    out.push('\n');
    if e.usage.rows.is_empty() {
        let _ = writeln!(out, "usage by model up to {at}: none");
        return;
    }
    let _ = writeln!(out, "usage by model up to {at} (net of refunds):");
    let mut rows: Vec<Vec<String>> = e
        .usage
        .rows
        .iter()
        .map(|row| {
            vec![
                row.key.clone(),
                row.runs.to_string(),
                row.credits.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "total".to_string(),
        e.usage.total.runs.to_string(),
        e.usage.total.credits.to_string(),
    ]);
    table(
        out,
        &["MODEL", "RUNS", "CREDITS"],
        &[Align::Left, Align::Right, Align::Right],
        &rows,
    );
}

fn live_text(live: bool) -> String {
    if live { "live" } else { "expired" }.to_string()
}

/// The table `ledger explain` prints without `--json`: the plan, the timeline with the
/// credits available after each event, the refresh dates and usage by model, the buckets as of `at`, what is due and the models
/// that could not run. Plain text, no colours.
pub fn render_text(explanation: &Explanation<String>) -> String {
    let e = explanation;
    let at = rfc3339(&e.at);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "account {} as of {at} (version {})",
        e.account_id, e.version
    );
    let _ = writeln!(
        out,
        "tier {}  billing {}  scope {}  business verification {}",
        e.tier.map_or("-", Tier::as_str),
        e.billing.map_or("-", Billing::as_str),
        e.scope.map_or("-", Scope::as_str),
        e.business_verification
            .map_or("-", VerificationStatus::as_str)
    );

    out.push('\n');
    let rows: Vec<Vec<String>> = e
        .timeline
        .iter()
        .map(|entry| {
            vec![
                entry.version.to_string(),
                rfc3339(&entry.occurred_at),
                entry.type_name.to_string(),
                entry.summary.clone(),
                entry.after.available.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["VERSION", "OCCURRED AT", "TYPE", "SUMMARY", "AVAILABLE"],
        &[
            Align::Right,
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
        ],
        &rows,
    );
    usage_text(&mut out, e, &at);

    out.push('\n');
    let b = &e.balance;
    if b.unlimited {
        let _ = writeln!(
            out,
            "balance as of {at}: unlimited ({} available in top-ups and grants), {} held",
            b.total, b.held
        );
    } else {
        let _ = writeln!(
            out,
            "balance as of {at}: {} available, {} held",
            b.total, b.held
        );
    }
    let mut rows = Vec::new();
    if let Some(allowance) = &b.allowance {
        rows.push(vec![
            "allowance".to_string(),
            allowance.id.clone(),
            allowance.remaining.to_string(),
            rfc3339(&allowance.period_end),
            live_text(allowance.live),
        ]);
    }
    for lot in &b.top_ups {
        rows.push(vec![
            "top_up".to_string(),
            lot.lot_id.clone(),
            lot.remaining.to_string(),
            lot.expires_at
                .map_or_else(|| "never".to_string(), |at| rfc3339(&at)),
            live_text(lot.live),
        ]);
    }
    for lot in &b.grants {
        rows.push(vec![
            "grant".to_string(),
            lot.grant_id.clone(),
            lot.remaining.to_string(),
            lot.expires_at
                .map_or_else(|| "never".to_string(), |at| rfc3339(&at)),
            live_text(lot.live),
        ]);
    }
    for hold in &b.holds {
        rows.push(vec![
            "held".to_string(),
            hold.hold_id.clone(),
            hold.amount.to_string(),
            rfc3339(&hold.expires_at),
            if hold.live { "open" } else { "timed out" }.to_string(),
        ]);
    }
    table(
        &mut out,
        &["BUCKET", "ID", "REMAINING", "EXPIRES", "STATUS"],
        &[
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Left,
            Align::Left,
        ],
        &rows,
    );

    if !e.due.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "due by {at}, not yet recorded:");
        let rows: Vec<Vec<String>> = e
            .due
            .iter()
            .map(|due| vec![due.type_name.to_string(), due.summary.clone()])
            .collect();
        table(
            &mut out,
            &["TYPE", "SUMMARY"],
            &[Align::Left, Align::Left],
            &rows,
        );
    }

    out.push('\n');
    let blocked: Vec<Vec<String>> = e
        .models
        .iter()
        .filter(|model| model.access == ModelAccessKind::Blocked)
        .map(|model| {
            vec![
                model.model.clone(),
                model.min_tier.to_string(),
                model.reason_code.unwrap_or("-").to_string(),
                model.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if blocked.is_empty() {
        let _ = writeln!(out, "blocked models as of {at}: none");
    } else {
        let _ = writeln!(out, "blocked models as of {at}:");
        table(
            &mut out,
            &["MODEL", "MIN TIER", "CODE", "REASON"],
            &[Align::Left, Align::Left, Align::Left, Align::Left],
            &blocked,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ledger_domain::command::{Charge, PurchaseTopUp, Quantity};
    use ledger_domain::events::Via;
    use ledger_domain::{Catalog, Command, Instant};
    use ledger_service::audit;
    use ledger_service::clock::Clock;
    use ledger_service::ledger::Ledger;
    use ledger_store::EventStore;
    use ledger_store_sqlite::SqliteStore;

    use super::render_text;

    /// Every command of the history happens at one instant.
    #[derive(Debug)]
    struct Fixed(Instant);

    impl Clock for Fixed {
        fn now(&self) -> Instant {
            self.0
        }
    }

    fn at(text: &str) -> Instant {
        text.parse().expect("an RFC 3339 instant")
    }

    fn charge(id: &str, model: &str, images: u32) -> Command {
        Command::Charge(Charge {
            charge_id: id.into(),
            run_id: "r1".into(),
            node_id: format!("n-{id}"),
            model: model.into(),
            quantity: Quantity {
                images: Some(images),
                seconds: None,
            },
            via: Via::App,
        })
    }

    #[tokio::test]
    async fn render_text_shows_the_plan_the_timeline_the_buckets_and_blocked_models() {
        // Given a free account with a top-up, a trial used up and a charge
        let dir = tempfile::tempdir().expect("a scratch directory");
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).expect("a store"));
        let catalog = Catalog::shipped();
        let t0 = at("2026-01-10T12:00:00Z");
        let ledger = Ledger::new(
            store.clone(),
            Arc::new(catalog.clone()),
            Arc::new(Fixed(t0)),
        );
        let top_up = Command::PurchaseTopUp(PurchaseTopUp {
            purchase_id: "p1".into(),
            credits: 1000,
            expires_at: Some(at("2026-04-01T00:00:00Z")),
        });
        for (command, role) in [
            (Command::OpenAccount, "billing"),
            (top_up, "billing"),
            (charge("c1", "flux-pro", 1), "executor"),
            (charge("c2", "flux-pro", 1), "executor"),
            (charge("c3", "flux-pro", 1), "executor"),
            (charge("c4", "flux-schnell", 8), "executor"),
        ] {
            ledger
                .execute("acct-1", &command, role)
                .await
                .unwrap_or_else(|err| panic!("{command:?}: {err}"));
        }
        // When it is rendered as text
        let when = at("2026-01-11T00:00:00Z");
        let explanation =
            audit::explain_account(store.as_ref(), &catalog, "acct-1", Some(when), when)
                .await
                .expect("an explanation");
        let text = render_text(&explanation);
        // Then the header, the timeline lines, the buckets and the blocked models are there
        let has_line = |needle: &[&str]| {
            text.lines()
                .any(|line| needle.iter().all(|part| line.contains(part)))
        };
        assert!(
            text.starts_with("account acct-1 as of 2026-01-11T00:00:00Z (version "),
            "{text}"
        );
        assert!(has_line(&["tier free", "scope free"]), "{text}");
        assert!(
            has_line(&["VERSION", "TYPE", "SUMMARY", "AVAILABLE"]),
            "{text}"
        );
        assert!(
            has_line(&[
                "top_up_purchased",
                "top-up p1 of 1000 credits, expires 2026-04-01T00:00:00Z",
                "1500"
            ]),
            "{text}"
        );
        assert!(
            has_line(&[
                "credits_charged",
                "charged 16 credits for flux-schnell (8 images), run r1 node n-c4",
                "1484"
            ]),
            "{text}"
        );
        assert!(has_line(&[
            "balance as of 2026-01-11T00:00:00Z: 1484 available"
        ]));
        assert!(
            has_line(&["allowance", "2026-01-10T12:00:00Z", "484", "live"]),
            "{text}"
        );
        assert!(
            has_line(&["top_up", "p1", "1000", "2026-04-01T00:00:00Z", "live"]),
            "{text}"
        );
        assert!(has_line(&["flux-pro", "TRIAL_EXHAUSTED"]), "{text}");
        assert!(
            has_line(&["seedance-2.0-i2v", "business", "MODEL_TIER_REQUIRED"]),
            "{text}"
        );
        assert!(!has_line(&["flux-schnell", "MODEL_TIER_REQUIRED"]));
        // And it is plain: no escape codes, no trailing spaces, aligned columns
        assert!(!text.contains('\u{1b}'));
        assert!(text.lines().all(|line| line == line.trim_end()));
        let timeline: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("VERSION"))
            .take_while(|line| !line.is_empty())
            .collect();
        let type_column = timeline[0].find("TYPE").unwrap();
        for line in &timeline[1..] {
            assert!(
                line[type_column..].starts_with(|c: char| c.is_ascii_lowercase()),
                "misaligned: {line}"
            );
            assert_eq!(line.len(), timeline[0].len(), "misaligned: {line}");
        }
    }
}
