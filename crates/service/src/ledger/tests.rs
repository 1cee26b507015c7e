//! The cached account's bounded memory of first answers.

use std::sync::Arc;

use ledger_domain::buckets::Bucket;
use ledger_domain::decide::decide;
use ledger_domain::state::Core;
use ledger_domain::{Account, Catalog, Command, Instant};

use super::cached::{answer_weight, Cached, FIRST_ANSWERS_MAX, FIRST_ANSWERS_WEIGHT_MAX};

fn at() -> Instant {
    "2026-03-01T00:00:00Z".parse().expect("an instant")
}

/// An open account's core with `buckets` buckets.
fn core_with(buckets: usize) -> Arc<Core> {
    let catalog = Catalog::shipped();
    let opened = decide(&Account::new("a"), &catalog, &Command::OpenAccount, at())
        .expect("an account opens");
    let account = Account::replay("a", &opened.events);
    let mut core = account.core.expect("open");
    let template = core.balance.buckets[0].clone();
    core.balance.buckets = (0..buckets)
        .map(|index| {
            let mut bucket = Bucket::clone(&template);
            bucket.id = format!("lot-{index}");
            Arc::new(bucket)
        })
        .collect();
    Arc::new(core)
}

fn remember(cached: &mut Cached, versions: std::ops::Range<u64>, core: &Arc<Core>) {
    for version in versions {
        cached.remember_answer(version, Arc::clone(core), at());
    }
}

#[test]
fn regression_first_answers_grew_with_the_lots_of_each_account() {
    let mut cached = Cached::new("a");
    let small = core_with(1);
    remember(&mut cached, 1..21, &small);
    assert_eq!(cached.first_answers.len(), FIRST_ANSWERS_MAX);
    assert_eq!(
        cached.first_answers.keys().next(),
        Some(&5),
        "the oldest go first"
    );

    // Each weighs 201: five fit in 1,024, and they push the small ones out first.
    let large = core_with(200);
    remember(&mut cached, 21..31, &large);
    assert_eq!(
        cached.first_answers.keys().copied().collect::<Vec<_>>(),
        [26, 27, 28, 29, 30]
    );
    assert!(cached.first_answers_weight() <= FIRST_ANSWERS_WEIGHT_MAX);

    // Heavier than the bound alone: the newest answer is kept all the same.
    let huge = core_with(FIRST_ANSWERS_WEIGHT_MAX * 2);
    remember(&mut cached, 31..34, &huge);
    assert_eq!(
        cached.first_answers.keys().copied().collect::<Vec<_>>(),
        [33]
    );
    assert_eq!(cached.first_answers_weight(), answer_weight(&huge));

    // Answering the same version again replaces its answer.
    cached.remember_answer(33, Arc::clone(&small), at());
    assert_eq!(cached.first_answers_weight(), answer_weight(&small));
}
