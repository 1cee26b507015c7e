//! The conformance suite every [`crate::EventStore`] adapter must pass.
//!
//! An adapter's tests implement [`Harness`] and either call [`run_all`] or call each check
//! (every `pub async fn` below) from its own `#[tokio::test]`. A check panics with a message
//! naming itself on the first deviation, and wraps every store call in a timeout so that a
//! broken adapter fails instead of hanging.
//!
//! # The contract these checks pin down
//!
//! The trait docs leave a few rules open; every adapter follows these:
//!
//! - **Versions.** A stream's events have versions 1, 2, 3, ... with no gaps. An append's
//!   events get the versions after the expected one, in the order given.
//! - **Expected version.** An append whose expectation does not match the stream fails with
//!   [`StoreError::WrongExpectedVersion`] carrying the stream's actual last version (0 when it
//!   does not exist) and writes nothing, unless it is an idempotent retry (next rule).
//! - **Idempotent retry.** Let the *slots* of an append be the versions `expected + 1 ..=
//!   expected + n`. When the stream already holds events in those slots:
//!   - if every new event matches the stored event in its slot (same id, type and payload),
//!     the append is a retry: it returns the stored outcome (`first_version`, `last_version`
//!     of those slots, `position` of the last one) and writes nothing, even if the stream has
//!     moved on since;
//!   - else, if some new event has the same id as the event stored in its slot but a
//!     different type or payload, it fails with [`StoreError::EventIdConflict`] for that id;
//!   - else it fails with [`StoreError::WrongExpectedVersion`].
//!
//!   Ids are only compared with the events stored in the append's slots. The suite does not
//!   require refusing an append at the right version that reuses an id stored elsewhere (in
//!   another stream, or at another version): event ids derive from (stream, command, index),
//!   EventStoreDB only deduplicates within a stream, and SQLite keeps no index of ids.
//! - **Validation.** [`StoreError::Invalid`] for an empty batch, an empty stream name, a stream
//!   name starting with `$` (reserved for EventStoreDB system streams) or containing control
//!   characters, an empty event type, or the same event id twice in one batch. Reading an
//!   empty stream name is also `Invalid`. Invalid requests write nothing.
//! - **Reads.** A missing stream reads as empty; `limit == 0` reads nothing; `from_version` 0
//!   reads from the first event. `read_all` and subscriptions return events in strictly
//!   increasing position, and positions follow commit order: an append acknowledged before
//!   another starts has the smaller position.
//! - **Subscriptions.** `subscribe_all(after)` yields every event with position > `after`
//!   exactly once, in order, then waits for new ones; subscribing again after the last
//!   position seen (even across a restart) continues without gaps or duplicates.
//!
//! # Shared stores
//!
//! [`Harness::open`] may return a store that already holds other tests' events, and other
//! tests may append while a check runs (EventStoreDB is shared). So every check uses fresh
//! streams named `account-conf-{uuid}` and only looks at its own streams, or at positions after
//! the head it saw when it started; foreign events are only checked for ordering.
//!
//! The checks live by topic: appends and their version rules (`appends`), reads in stream
//! and global order (`reads`), subscriptions (`subscriptions`); `support` holds what they
//! share.

mod appends;
pub mod crash;
mod reads;
mod subscriptions;
mod support;

use async_trait::async_trait;

pub use appends::*;
pub use reads::*;
pub use subscriptions::*;

#[cfg(test)]
mod tests;

/// How an adapter's tests give the suite stores to check.
#[async_trait]
pub trait Harness: Send + Sync {
    type Store: crate::EventStore;
    /// A store to test against. It may already hold events of other tests (EventStoreDB is shared), so every test uses fresh unique stream names (`account-conf-{uuid}`) and only looks at its own streams / positions after the head it saw at the start.
    async fn open(&self) -> Self::Store;
    /// Close `store` and open the same underlying data again (a restart).
    async fn reopen(&self, store: Self::Store) -> Self::Store;
}

/// Runs every conformance check, panicking with a clear message on the first failure.
pub async fn run_all<H: Harness>(harness: &H) {
    contiguous_versions(harness).await;
    no_stream_on_existing_stream(harness).await;
    exact_version_conflicts(harness).await;
    concurrent_appends_one_winner_per_version(harness).await;
    concurrent_appends_with_retries(harness).await;
    idempotent_retry(harness).await;
    event_id_conflicts(harness).await;
    global_order_matches_commit_order(harness).await;
    read_all_paging(harness).await;
    missing_and_empty_reads(harness).await;
    head_position_tracks_appends(harness).await;
    invalid_requests(harness).await;
    subscription_catch_up_and_live(harness).await;
    subscription_resumes_after_restart(harness).await;
}
