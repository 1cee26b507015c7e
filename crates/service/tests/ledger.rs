//! The command handler under concurrency: many tasks on two service replicas (two
//! `Ledger`s with separate caches over one store) charge one account. No overdraft, no lost
//! or doubled charge, and every retry with the same id gets the first answer.

use std::sync::Arc;

use ledger_domain::command::{Charge, Quantity};
use ledger_domain::decide::Reply;
use ledger_domain::events::Via;
use ledger_domain::{Catalog, Command};
use ledger_service::clock::SystemClock;
use ledger_service::ledger::{CommandError, Ledger};
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;

fn catalog_with_free_allowance(allowance: u64) -> Catalog {
    let mut doc: serde_json::Value =
        serde_json::from_str(ledger_domain::catalog::DEFAULT_CATALOG_JSON).unwrap();
    doc["plans"]["free"]["monthly_allowance"] = allowance.into();
    Catalog::from_json(&doc.to_string()).unwrap()
}

/// A ledger over `store` with account `acct` opened.
async fn ledger_with_account(store: &Arc<dyn EventStore>) -> Ledger {
    let ledger = Ledger::new(
        store.clone(),
        Arc::new(catalog_with_free_allowance(1_000)),
        Arc::new(SystemClock),
    );
    ledger
        .execute("acct", &Command::OpenAccount, "billing")
        .await
        .unwrap();
    ledger
}

/// Account `acct` replayed from every event of its stream in `store`.
async fn replayed(store: &Arc<dyn EventStore>) -> ledger_domain::Account {
    let mut events = Vec::new();
    for recorded in store.read_stream("account-acct", 1, 100_000).await.unwrap() {
        let raw = ledger_domain::envelope::RawEnvelope::parse(&recorded.payload).unwrap();
        events.push(raw.decode().unwrap().event);
    }
    ledger_domain::Account::replay("acct", &events)
}

fn chat(id: usize) -> Command {
    Command::Charge(Charge {
        charge_id: format!("c{id}"),
        run_id: "run".into(),
        node_id: format!("n{id}"),
        model: "assistant-chat".into(),
        quantity: Quantity::default(),
        via: Via::App,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replicas_never_overdraw_nor_double_charge() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let catalog = Arc::new(catalog_with_free_allowance(1_000));
    let replicas = [
        Ledger::new(store.clone(), catalog.clone(), Arc::new(SystemClock)),
        Ledger::new(store.clone(), catalog.clone(), Arc::new(SystemClock)),
    ];
    replicas[0]
        .execute("hot", &Command::OpenAccount, "billing")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for worker in 0..32usize {
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for round in 0..40usize {
                let id = worker * 40 + round;
                // Each charge is sent twice, to different replicas, as a retrying executor would.
                for attempt in 0..2 {
                    let ledger = &replicas[(id + attempt) % 2];
                    let result = ledger.execute("hot", &chat(id), "executor").await;
                    results.push((id, attempt, result));
                }
            }
            results
        }));
    }
    let mut accepted = std::collections::BTreeMap::new();
    let mut refused = 0;
    for task in tasks {
        for (id, attempt, result) in task.await.unwrap() {
            match result {
                Ok(outcome) => {
                    let Reply::Charged(receipt) = &outcome.reply else {
                        panic!("not a charge receipt")
                    };
                    if let Some(first) = accepted.insert(id, receipt.clone()) {
                        assert_eq!(
                            first, *receipt,
                            "a retry of c{id} must get the first answer"
                        );
                        assert_eq!(attempt, 1);
                    }
                }
                Err(CommandError::Rejected(rejection)) => {
                    assert_eq!(rejection.code(), "INSUFFICIENT_CREDITS");
                    refused += 1;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
    }
    assert_eq!(
        accepted.len(),
        1_000,
        "exactly the credits available were charged"
    );
    assert_eq!(refused, (1_280 - 1_000) * 2);

    let (account, _) = replicas[1].load("hot").await.unwrap();
    let core = account.core.unwrap();
    assert_eq!(core.balance.available(chrono::Utc::now()).get(), 0);
    assert_eq!(account.records.charges.len(), 1_000);
    let events = store.read_stream("account-hot", 1, 10_000).await.unwrap();
    let charges = events
        .iter()
        .filter(|e| e.event_type == "credits_charged")
        .count();
    assert_eq!(charges, 1_000);
}

#[tokio::test]
async fn a_store_failure_is_unavailable_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    store.close().await.unwrap();
    let read_only: Arc<dyn EventStore> = Arc::new(SqliteStore::open_read_only(&path).unwrap());
    let ledger = Ledger::new(
        read_only.clone(),
        Arc::new(Catalog::shipped()),
        Arc::new(SystemClock),
    );
    let err = ledger
        .execute("acme", &Command::OpenAccount, "billing")
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Store(_)), "{err}");
    assert!(read_only
        .read_stream("account-acme", 1, 10)
        .await
        .unwrap()
        .is_empty());
}

/// A caller that gives up (a dropped HTTP request) while its command is being written leaves
/// the cache either confirmed or marked, never ahead of the stream: later commands decide on
/// exactly what the stream holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_dropped_half_way_never_leaves_the_cache_ahead_of_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let ledger = ledger_with_account(&store).await;
    for id in 0..300usize {
        // Give up after a few tens of microseconds: sometimes before the append, sometimes
        // while it is in flight, sometimes after.
        let patience = std::time::Duration::from_micros(10 + (id as u64 * 37) % 400);
        let _ = tokio::time::timeout(patience, ledger.execute("acct", &chat(id), "executor")).await;
    }
    // The next command decides on the stream as it is.
    ledger
        .execute("acct", &chat(10_000), "executor")
        .await
        .unwrap();
    let (cached, _) = ledger.load("acct").await.unwrap();
    assert_eq!(cached, replayed(&store).await);
}

/// A lone command decided on its caller's task holds the account; when that caller gives up
/// half-way, commands that queued meanwhile are still decided (the account is handed to a
/// driver), never left waiting for a next command that may not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_never_strands_the_commands_queued_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let ledger = ledger_with_account(&store).await;
    for round in 0..200usize {
        let impatient = {
            let ledger = ledger.clone();
            let patience = std::time::Duration::from_micros(20 + (round as u64 * 53) % 500);
            tokio::spawn(async move {
                let command = chat(2 * round);
                let _ = tokio::time::timeout(patience, ledger.execute("acct", &command, "x")).await;
            })
        };
        let patient = chat(2 * round + 1);
        let waiting = ledger.execute("acct", &patient, "executor");
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert!(
            answered.is_ok(),
            "round {round}: a queued command was never decided"
        );
        impatient.await.unwrap();
    }
}

/// The charge receipt of an answer.
fn receipt(result: &Result<ledger_service::ledger::Outcome, CommandError>) -> Reply {
    result.as_ref().expect("answered").reply.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_node_kept_every_charge_whole_and_grew_with_its_history() {
    // Given an account with 3,000 charges, more than a node keeps whole, and more events
    // than it keeps positions of
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let catalog = Arc::new(catalog_with_free_allowance(10_000));
    let ledger = Ledger::new(store.clone(), catalog.clone(), Arc::new(SystemClock));
    ledger
        .execute("long", &Command::OpenAccount, "billing")
        .await
        .unwrap();
    let mut first = Vec::new();
    for chunk in (0..3_000).collect::<Vec<_>>().chunks(256) {
        let commands = chunk.iter().map(|id| (chat(*id), "executor".to_string()));
        first.extend(ledger.execute_all("long", commands.collect()).await);
    }
    let (account, _) = ledger.load("long").await.unwrap();
    assert!(
        account.records.whole_len() <= 2_048,
        "{} records whole",
        account.records.whole_len()
    );
    assert!(
        account.records.spilled_for(&chat(0)).is_some(),
        "c0 spilled"
    );
    let events_before = store.read_stream("account-long", 1, 10_000).await.unwrap();

    // When the first charge is retried on this node, the second on a fresh node, and the
    // third is refunded here and its refund retried on the other node, which still has
    // the charge spilled and has not seen the refund
    let again = ledger.execute("long", &chat(0), "executor").await;
    let other = Ledger::new(store.clone(), catalog.clone(), Arc::new(SystemClock));
    let other_again = other.execute("long", &chat(1), "executor").await;
    let refund = Command::RefundCharge {
        charge_id: "c2".into(),
        reason: "bad output".into(),
    };
    let refunded = ledger.execute("long", &refund, "support").await;
    let refund_again = other.execute("long", &refund, "support").await;

    // Then each retry is a replay of the first answer, at the first answer's position (read
    // back from the stream), and the stream holds only the refund beyond what it held
    for (retry, first) in [(&again, &first[0]), (&other_again, &first[1])] {
        let outcome = retry.as_ref().expect("replayed");
        assert!(outcome.replayed);
        assert_eq!(receipt(retry), receipt(first));
        assert_eq!(outcome.position, first.as_ref().expect("charged").position);
    }
    assert!(!refunded.as_ref().expect("refunded").replayed);
    assert!(refund_again.as_ref().expect("replayed").replayed);
    assert_eq!(receipt(&refund_again), receipt(&refunded));
    let events_after = store.read_stream("account-long", 1, 10_000).await.unwrap();
    assert_eq!(events_after.len(), events_before.len() + 1);
    assert_eq!(events_after.last().unwrap().event_type, "charge_refunded");
}

/// Issue 18: a command whose append's fate was unknown (its caller hung up mid-append, or
/// the store lost the answer) made the account's next command read its whole stream again,
/// hundreds of milliseconds once the history was long. Now the batch is taken back out of
/// the cache and only what the stream has beyond it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_lost_append_answer_made_the_next_command_reload_the_whole_stream() {
    use ledger_store::faults::{Fault, Faults, FaultyStore, Op, Times};

    // Given an account with 300 charges, and a charge whose events were written but whose
    // answer was lost
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let faults = Faults::new();
    let store: Arc<dyn EventStore> = Arc::new(FaultyStore::new(inner, faults.clone()));
    let ledger = ledger_with_account(&store).await;
    for id in 0..300usize {
        ledger.execute("acct", &chat(id), "executor").await.unwrap();
    }
    faults.arm(Op::Append, Fault::AfterDurable, Times::Once);
    let lost = ledger.execute("acct", &chat(300), "executor").await;
    assert!(matches!(lost, Err(CommandError::Store(_))), "{lost:?}");
    let read_before = faults.stream_events_read();

    // When the next charge comes, and then the lost one is retried
    let next = ledger.execute("acct", &chat(301), "executor").await;
    let read_for_next = faults.stream_events_read() - read_before;
    let retried = ledger.execute("acct", &chat(300), "executor").await;

    // Then the next charge read only the lost charge's event back, not the 302 before it;
    // the retry is a replay; and the cache equals a replay of the stream
    assert!(next.is_ok(), "{next:?}");
    assert_eq!(read_for_next, 1, "events read to decide the next charge");
    assert!(retried.expect("replayed").replayed);
    let (cached, _) = ledger.load("acct").await.unwrap();
    assert_eq!(
        store
            .read_stream("account-acct", 1, 1_000)
            .await
            .unwrap()
            .len(),
        303
    );
    assert_eq!(cached, replayed(&store).await);
}

/// Issue 18: a hot account's driver took its next batch the moment it had answered the last
/// one, before those callers could queue again. The account's callers then split into two
/// cohorts, and every durable commit carried half of them.
#[tokio::test(flavor = "current_thread")]
async fn regression_a_hot_accounts_callers_split_into_half_size_batches() {
    const CALLERS: usize = 32;
    const ROUNDS: usize = 10;

    // Given 32 callers that each charge one account 10 times, one charge after another
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).unwrap());
    let ledger = ledger_with_account(&store).await;

    // When they all run at once
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let charge = chat(caller * ROUNDS + round);
                    ledger.execute("acct", &charge, "executor").await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }

    // Then every charge is written, in about one batch per round: a batch's events share
    // the instant it was decided at
    let mut batches = std::collections::BTreeSet::new();
    let mut charges = 0;
    for recorded in store.read_stream("account-acct", 2, 10_000).await.unwrap() {
        let raw = ledger_domain::envelope::RawEnvelope::parse(&recorded.payload).unwrap();
        if raw.type_name == "credits_charged" {
            charges += 1;
            batches.insert(raw.occurred_at.clone());
        }
    }
    assert_eq!(charges, CALLERS * ROUNDS);
    assert!(
        batches.len() <= ROUNDS + 3,
        "{} batches for {ROUNDS} rounds of {CALLERS} callers",
        batches.len()
    );
}
