//! The shared conformance suite against SQLite: every check as its own test on a fresh file,
//! and the whole suite running concurrently with itself on one shared file (several stores,
//! so several writers, on one file: each sees the others' events as foreign). Both again
//! with stores that move the log's tail into the stream index every three events, so that
//! every check also runs across that step, and across another writer's.

use ledger_store::conformance;

use crate::support::SqliteHarness;

macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                conformance::$check(&SqliteHarness::new()).await;
            }
        )*
        mod indexing_often {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    conformance::$check(&SqliteHarness::new().indexing_often()).await;
                }
            )*
        }
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
async fn whole_suite_on_one_shared_file() {
    whole_suite_on(SqliteHarness::shared()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_on_one_shared_file_indexing_often() {
    whole_suite_on(SqliteHarness::shared().indexing_often()).await;
}

async fn whole_suite_on(harness: SqliteHarness) {
    tokio::join!(
        conformance::run_all(&harness),
        conformance::subscription_catch_up_and_live(&harness),
        conformance::concurrent_appends_with_retries(&harness),
        conformance::global_order_matches_commit_order(&harness),
    );
}
