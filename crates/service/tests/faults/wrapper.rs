//! Faults injected with the wrapper over a real SQLite store.

use std::sync::Arc;

use ledger_service::tokens::Role;
use ledger_store::faults::{Fault, Op, Times};
use ledger_store::EventStore;
use ledger_store_sqlite::SqliteStore;
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::support::{
    assert_unavailable, charge_load, check_account, open_accounts, replay, settle_and_check, Server,
};

async fn sqlite_server() -> (TempDir, Server) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.sqlite")).expect("open the store"));
    let server = Server::start(store, &dir.path().join("views")).await;
    (dir, server)
}

/// Runs the checks of an append that fails before it is durable, for each way it fails.
pub async fn append_failing_before_durable(server: &Server, account: &str) -> usize {
    let mut acknowledged = Vec::new();
    let mut requests = 0;
    for (n, fault) in [Fault::Fail, Fault::CommitFailed, Fault::DiskFull]
        .into_iter()
        .enumerate()
    {
        let before = replay(server.inner.as_ref(), account).await;
        server.faults.arm(Op::Append, fault.clone(), Times::Once);
        let charge_id = format!("before-durable-{n}");
        let (status, body) = server.charge(account, &charge_id).await;
        assert_unavailable(status, &body);
        let after = replay(server.inner.as_ref(), account).await;
        assert_eq!(after.version, before.version, "{fault:?} wrote something");
        assert_eq!(after.core, before.core, "{fault:?} changed the account");
        // The same key, once the store works: charged now, as a first answer.
        let (status, body) = server.charge(account, &charge_id).await;
        assert_eq!(status, StatusCode::CREATED, "{fault:?}, the retry: {body}");
        acknowledged.push(charge_id);
        requests += 2;
    }
    assert!(!server.faults.armed(), "every one-shot fault was hit");
    check_account(server, account, &acknowledged).await;
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_failing_before_it_is_durable_answers_503_and_writes_nothing() {
    let (_dir, server) = sqlite_server().await;
    server.open_funded("a1").await;
    let requests = append_failing_before_durable(&server, "a1").await;
    println!(
        "sqlite wrapper: {} faults injected, {requests} requests",
        server.faults.injected()
    );
    server.stop().await;
}

/// The durable-then-error case on `account`: the first answer is lost, the retry answers as
/// a replay of the stored charge, and the account is charged once.
pub async fn answer_lost_after_durable(server: &Server, account: &str) -> usize {
    server
        .faults
        .arm(Op::Append, Fault::AfterDurable, Times::Once);
    let (status, body) = server.charge(account, "lost-answer").await;
    assert_unavailable(status, &body);
    let stored = replay(server.inner.as_ref(), account).await;
    assert_eq!(
        stored.charges.get("lost-answer"),
        Some(&1),
        "the charge was written before its answer was lost"
    );
    let (status, first) = server.charge(account, "lost-answer").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry replays the stored charge: {first}"
    );
    let (status, again) = server.charge(account, "lost-answer").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(first, again, "every replay gives the same answer");
    assert_eq!(first["cost"], json!(1), "{first}");
    let head = server.inner.head_position().await.expect("head");
    assert_eq!(
        first["position"],
        json!(head),
        "the answer names the stored event"
    );
    check_account(server, account, &["lost-answer".to_string()]).await;
    3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_answer_is_lost_after_it_is_durable_is_charged_once() {
    let (_dir, server) = sqlite_server().await;
    server.open_funded("a1").await;
    answer_lost_after_durable(&server, "a1").await;
    server.stop().await;
}

/// A store outage on `accounts` under load: commands 503, reads from the views, recovery
/// once cleared. Returns the requests sent.
pub async fn outage_under_load(server: &Server, accounts: &[String]) -> usize {
    // The accounts were just opened: read once the views hold them (on PostgreSQL a CI run
    // read before the projector caught up and got 404).
    let head = server.inner.head_position().await.expect("head");
    let (status, before) = server.summary(&accounts[0], head).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    for op in [
        Op::Append,
        Op::ReadStream,
        Op::ReadAll,
        Op::Subscribe,
        Op::SubscriptionNext,
        Op::HeadPosition,
    ] {
        server.faults.arm(op, Fault::Fail, Times::UntilCleared);
    }
    let outage = charge_load(server, accounts, 4, 5, "outage").await;
    assert!(
        outage.acknowledged.is_empty(),
        "a charge was acknowledged with the store down"
    );
    // Reads answer from the views all along.
    let (status, during) = server.summary(&accounts[0], None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the summary during the outage: {during}"
    );
    assert_eq!(during["balance"], before["balance"], "{during}");
    server.assert_views_answer(&accounts[0]).await;
    // Reads of the store itself say so.
    let (status, events) = server
        .get(
            &format!("/v1/accounts/{}/events", accounts[0]),
            Role::Support,
        )
        .await;
    assert_unavailable(status, &events);
    // Cleared: no restart, the next commands succeed and the views catch up.
    server.faults.clear();
    let after = charge_load(server, accounts, 4, 5, "after").await;
    assert!(
        after.unavailable.is_empty(),
        "503 after the store came back"
    );
    settle_and_check(server, accounts, outage.merge(after)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_answers_503_reads_keep_answering_and_the_service_recovers() {
    let (_dir, server) = sqlite_server().await;
    let accounts = open_accounts(&server, "o", 3).await;
    let requests = outage_under_load(&server, &accounts).await;
    println!(
        "sqlite outage: {} faults injected, {requests} requests",
        server.faults.injected()
    );
    server.stop().await;
}

/// N failures then success: a flaky store costs retries, never a double charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_store_under_load_loses_and_doubles_nothing() {
    let (_dir, server) = sqlite_server().await;
    let accounts = open_accounts(&server, "f", 3).await;
    // Every fault at once, each a few times, while four clients charge.
    server
        .faults
        .arm(Op::Append, Fault::AfterDurable, Times::N(6));
    server
        .faults
        .arm(Op::Append, Fault::CommitFailed, Times::N(6));
    server.faults.arm(Op::ReadStream, Fault::Fail, Times::N(6));
    server
        .faults
        .arm(Op::SubscriptionNext, Fault::Fail, Times::N(3));
    let load = charge_load(&server, &accounts, 4, 15, "flaky").await;
    server.faults.clear();
    let injected = server.faults.injected();
    assert!(injected > 0, "no fault was hit");
    let requests = settle_and_check(&server, &accounts, load).await;
    println!("sqlite flaky: {injected} faults injected, {requests} requests");
    server.stop().await;
}

/// A corrupt event read back is an error everywhere it is read, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_event_is_reported_and_never_skipped() {
    let (dir, mut server) = sqlite_server().await;
    server.open_funded("c1").await;
    server.open_funded("c2").await;
    let stream = ledger_domain::envelope::stream_name("c1");
    // The command side: a fresh node (cold cache) reads the stream and refuses to guess.
    let fresh = Server::start(server.inner.clone(), &dir.path().join("views-fresh")).await;
    fresh.wait_views_caught_up().await;
    fresh
        .faults
        .arm_on(&stream, Op::ReadStream, Fault::Corrupt, Times::UntilCleared);
    let before = replay(server.inner.as_ref(), "c1").await;
    let (status, body) = fresh.charge("c1", "on-garbage").await;
    assert_unavailable(status, &body);
    let (status, body) = fresh.get("/v1/accounts/c1/events", Role::Support).await;
    assert_unavailable(status, &body);
    let (status, body) = fresh.get("/v1/accounts/c1/explain", Role::Support).await;
    assert_unavailable(status, &body);
    assert_eq!(
        replay(server.inner.as_ref(), "c1").await.version,
        before.version,
        "nothing was written on a corrupt stream"
    );
    // The other account is unaffected.
    let (status, body) = fresh.charge("c2", "elsewhere").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    fresh.faults.clear();
    let (status, body) = fresh.charge("c1", "on-garbage").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    fresh.stop().await;

    // The read side: a projector fed a corrupt event stops with an error naming it, and
    // its views do not move past it.
    server
        .faults
        .arm_on(&stream, Op::SubscriptionNext, Fault::Corrupt, Times::Once);
    let (status, body) = server.charge("c1", "to-corrupt").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let position = body["position"].as_u64().expect("a position");
    server.assert_projector_stopped_at(&stream, position).await;
    assert!(
        server.views.position().is_none_or(|p| p < position),
        "the views moved past the corrupt event"
    );
    let (status, body) = server
        .get(
            &format!("/v1/accounts/c1?min_position={position}"),
            Role::Support,
        )
        .await;
    assert_unavailable(status, &body);

    // The audit export: a corrupt event is a 503, never a short file.
    let audit = Server::start(server.inner.clone(), &dir.path().join("views-audit")).await;
    audit.wait_views_caught_up().await;
    audit
        .faults
        .arm_on(&stream, Op::ReadAll, Fault::Corrupt, Times::UntilCleared);
    let (status, body) = audit.get("/v1/audit/events", Role::Finance).await;
    assert_unavailable(status, &body);
    audit.stop().await;
}

/// Regression: with the store down, `GET /v1/audit/events` answered 200 and then cut the
/// body short, or cut the connection before any status (the first page failed inside the
/// streamed body), where every other read of the store answers 503. It answers 503
/// `UNAVAILABLE` now, and the export is whole once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_audit_export_with_the_store_down_did_not_answer_503() {
    let (_dir, server) = sqlite_server().await;
    server.open_funded("x1").await;
    server
        .faults
        .arm(Op::ReadAll, Fault::Fail, Times::UntilCleared);
    for _ in 0..3 {
        let (status, body) = server.get("/v1/audit/events", Role::Finance).await;
        assert_unavailable(status, &body);
    }
    server.faults.clear();
    let response = reqwest::Client::new()
        .get(format!("{}/v1/audit/events", server.base))
        .bearer_auth("faults-finance-token-0123456789")
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("the whole export");
    assert_eq!(
        text.lines().count(),
        2,
        "account_opened and the top-up: {text}"
    );
    server.stop().await;
}
