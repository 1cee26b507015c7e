//! The shared conformance suite against PostgreSQL: every check as its own test in a fresh
//! schema, and the whole suite running concurrently with itself on one shared schema through
//! several stores (several nodes, each with its own writer), each seeing the others' events
//! as foreign.

use ledger_store::conformance;

use crate::support::PgHarness;

macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(harness) = PgHarness::new().await else { return };
                conformance::$check(&harness).await;
            }
        )*
    };
}

checks!(
    contiguous_versions,
    no_stream_on_existing_stream,
    exact_version_conflicts,
    concurrent_appends_one_winner_per_version,
    concurrent_appends_with_retries,
    idempotent_retry,
    event_id_conflicts,
    global_order_matches_commit_order,
    read_all_paging,
    missing_and_empty_reads,
    head_position_tracks_appends,
    invalid_requests,
    subscription_catch_up_and_live,
    subscription_resumes_after_restart,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_on_one_shared_schema() {
    let Some(harness) = PgHarness::new().await else {
        return;
    };
    tokio::join!(
        conformance::run_all(&harness),
        conformance::subscription_catch_up_and_live(&harness),
        conformance::concurrent_appends_with_retries(&harness),
        conformance::concurrent_appends_one_winner_per_version(&harness),
        conformance::global_order_matches_commit_order(&harness),
    );
}
