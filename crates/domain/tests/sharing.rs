//! A copy of an account's state shares its buckets with the live state: the command handler
//! keeps a copy after every answer, and what a copy costs must not grow with the lots an
//! account has gathered (issue 15's ten-minute soak).

use chrono::TimeDelta;
use ledger_domain::buckets::Bucket;
use ledger_domain::command::{ChangeSubscription, Charge, PurchaseTopUp, Quantity};
use ledger_domain::events::{Billing, Via};
use ledger_domain::{decide, Account, Catalog, Command, Instant, Tier};

// jemalloc counts the bytes each thread allocates, so tests running beside each other in
// this binary do not count each other's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes this thread has allocated so far.
fn allocated_bytes() -> u64 {
    tikv_jemalloc_ctl::thread::allocatedp::read()
        .expect("jemalloc's per-thread counter")
        .get()
}

/// Lots on the account: a customer who bought top-ups for years.
const LOTS: usize = 2_000;

fn run(account: &mut Account, catalog: &Catalog, command: &Command, now: Instant) {
    let decision = decide(account, catalog, command, now).expect("accepted");
    for event in decision.events {
        account.apply(event);
    }
}

fn account_with_lots(catalog: &Catalog, now: Instant) -> Account {
    let mut account = Account::new("long-time-customer");
    run(&mut account, catalog, &Command::OpenAccount, now);
    let subscribe = Command::ChangeSubscription(ChangeSubscription {
        tier: Tier::Pro,
        billing: Some(Billing::Monthly),
        period_start: now,
        period_end: now + TimeDelta::days(30),
        reference: "sub".into(),
        allowance: None,
    });
    run(&mut account, catalog, &subscribe, now);
    for lot in 0..LOTS {
        let top_up = Command::PurchaseTopUp(PurchaseTopUp {
            purchase_id: format!("lot-{lot}"),
            credits: 100,
            expires_at: Some(now + TimeDelta::days(365)),
        });
        run(&mut account, catalog, &top_up, now);
    }
    account
}

#[test]
fn regression_each_kept_answer_copied_every_bucket_of_the_account() {
    // Given an account with 2,000 top-up lots
    let catalog = Catalog::shipped();
    let now: Instant = "2026-03-01T00:00:00Z".parse().expect("an instant");
    let mut account = account_with_lots(&catalog, now);
    let mut kept = Vec::new();
    let charges = 20;

    // When charges are decided and applied, and the core is copied after each, as the
    // command handler keeps its answers
    let before = allocated_bytes();
    for index in 0..charges {
        let charge = Command::Charge(Charge {
            charge_id: format!("charge-{index}"),
            run_id: "run".into(),
            node_id: format!("node-{index}"),
            model: "assistant-chat".into(),
            quantity: Quantity {
                images: None,
                seconds: None,
            },
            via: Via::Api,
        });
        run(&mut account, &catalog, &charge, now);
        kept.push(account.core.clone());
    }
    let per_charge = (allocated_bytes() - before) / charges as u64;

    // Then a copy costs what the charge changed, not a clone of each bucket and its id:
    // with a plain vector every copy allocated all 2,000 buckets again
    let all_buckets = (LOTS * std::mem::size_of::<Bucket>()) as u64;
    assert!(
        per_charge < all_buckets / 4,
        "{per_charge} bytes allocated per charge and copy, against {all_buckets} bytes for \
         the {LOTS} buckets"
    );
    assert_eq!(kept.len(), charges);
    let live = account.core.as_ref().expect("an open account");
    let first = kept[0].as_ref().expect("an open account");
    assert_eq!(live.balance.buckets.len(), first.balance.buckets.len());
    assert!(
        live.balance.totals.net() < first.balance.totals.net(),
        "the copies are of the state at their time, not views of the live one"
    );
}
