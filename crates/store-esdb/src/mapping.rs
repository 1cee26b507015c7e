//! Translations between the ledger's store model and EventStoreDB's: versions, positions,
//! events and errors.
//!
//! Versions: EventStoreDB numbers the events of a stream from 0 (its *revision*); the ledger
//! numbers them from 1 (its *version*, so that 0 can mean "no stream"). Hence
//! `version = revision + 1` everywhere, an expectation of `Exact(v)` is sent as revision
//! `v - 1`, and a missing stream is version 0.
//!
//! Positions: the ledger's [`GlobalPosition`] is the event's *commit position* in the
//! transaction log. Events appended through gRPC are implicitly committed, so each has its
//! own commit position (equal to its prepare position), strictly increasing in log order.

use kurrentdb::{CurrentRevision, ResolvedEvent, StreamState};
use ledger_store::{ExpectedVersion, GlobalPosition, RecordedEvent, StoreError, StreamVersion};

/// Largest revision the server can store (it keeps revisions as signed 64-bit numbers).
const MAX_REVISION: u64 = i64::MAX as u64;

/// The ledger version of the event at EventStoreDB revision `revision` (0-based → 1-based).
pub fn version_of_revision(revision: u64) -> StreamVersion {
    revision.saturating_add(1)
}

/// The EventStoreDB revision of the event at ledger version `version` (1-based → 0-based).
/// `None` for version 0, which names no event.
pub fn revision_of_version(version: StreamVersion) -> Option<u64> {
    version.checked_sub(1)
}

/// The stream state sent with an append: `NoStream` stays `NoStream`; `Exact(v)` becomes the
/// exact revision `v - 1` of the stream's last event. `Exact(0)` means "no events", which is
/// `NoStream` too. The server never gets `Any`: every ledger append is optimistic.
pub fn expected_stream_state(expected: ExpectedVersion) -> Result<StreamState, StoreError> {
    match expected {
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => Ok(StreamState::NoStream),
        ExpectedVersion::Exact(version) if version - 1 > MAX_REVISION => Err(StoreError::Invalid(
            format!("expected version {version} is beyond what EventStoreDB can store"),
        )),
        ExpectedVersion::Exact(version) => Ok(StreamState::StreamRevision(version - 1)),
    }
}

/// The ledger version of a stream from the server's `current` revision (0 = no stream).
pub fn actual_version(current: CurrentRevision) -> StreamVersion {
    match current {
        CurrentRevision::NoStream => 0,
        CurrentRevision::Current(revision) => version_of_revision(revision),
    }
}

/// The commit position the server reports, or `None` when it reports none: old servers send
/// `u64::MAX` (their -1) for events read from a stream, and `0` stands for "no position" in
/// append results (the log starts with system records, so no user event sits at 0).
pub fn known_position(commit: u64) -> Option<GlobalPosition> {
    (commit != 0 && commit != u64::MAX).then_some(commit)
}

/// Converts an event read from the server. Link resolution is never asked for, so the
/// event itself (not a link) is the one to map.
pub fn recorded_event(resolved: ResolvedEvent) -> Result<RecordedEvent, StoreError> {
    let fallback_position = resolved.commit_position;
    let Some(event) = resolved.event else {
        return Err(StoreError::Incompatible(
            "the server sent a read response without an event".into(),
        ));
    };
    let position = known_position(event.position.commit)
        .or_else(|| fallback_position.and_then(known_position))
        .ok_or_else(|| {
            StoreError::Incompatible(format!(
                "the server reports no $all position for event {} of {}; \
                 EventStoreDB 22.10 or later (or KurrentDB) is required",
                event.revision,
                event.stream_id()
            ))
        })?;
    Ok(RecordedEvent {
        stream: event.stream_id().to_owned(),
        version: version_of_revision(event.revision),
        position,
        event_id: event.id,
        event_type: event.event_type,
        payload: event.data.to_vec(),
        attachment: None,
    })
}

/// Is `err` a sign that the client's connection task has stopped for good? kurrentdb 1.2 ends
/// that task when a (re)connection fails, after which every call answers `ConnectionClosed`;
/// the only way back is a new client.
pub fn connection_lost(err: &kurrentdb::Error) -> bool {
    matches!(
        err,
        kurrentdb::Error::ConnectionClosed | kurrentdb::Error::GrpcConnectionError(_)
    )
}

/// Maps a client error of operation `op` on `subject` (a stream, `$all`) to the store's.
pub fn store_error(op: &str, subject: &str, err: &kurrentdb::Error) -> StoreError {
    use kurrentdb::Error as E;
    match err {
        E::ConnectionClosed
        | E::GrpcConnectionError(_)
        | E::ServerError(_)
        | E::NotLeaderException(_)
        | E::DeadlineExceeded
        | E::InitializationError(_) => StoreError::Unavailable(format!("{op} {subject}: {err}")),
        E::AccessDenied => StoreError::Unavailable(format!(
            "{op} {subject}: access denied (give credentials in the connection string: \
             esdb://user:password@host:2113)"
        )),
        // A request the server refused as malformed (an oversized append, say) fails the
        // same way on every retry; anything else unmapped is treated as transient.
        E::Grpc { code, message } => match i32::from(*code) {
            GRPC_INVALID_ARGUMENT | GRPC_FAILED_PRECONDITION | GRPC_OUT_OF_RANGE => {
                StoreError::Invalid(format!("{op} {subject}: {message}"))
            }
            _ => StoreError::Unavailable(format!("{op} {subject}: gRPC {code:?}: {message}")),
        },
        E::ResourceDeleted => StoreError::Invalid(format!("{op} {subject}: the stream is deleted")),
        E::ResourceNotFound => StoreError::Invalid(format!("{op} {subject}: not found")),
        E::ResourceAlreadyExists
        | E::UnsupportedFeature
        | E::InternalParsingError(_)
        | E::InternalClientError
        | E::IllegalStateError(_)
        | E::WrongExpectedVersion { .. } => {
            StoreError::Incompatible(format!("{op} {subject}: {err}"))
        }
    }
}

/// gRPC status codes (fixed by the gRPC specification) that mean "do not retry"; matched by
/// number so this crate needs no direct dependency on the client's tonic version.
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_FAILED_PRECONDITION: i32 = 9;
const GRPC_OUT_OF_RANGE: i32 = 11;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_revisions_plus_one() {
        assert_eq!(version_of_revision(0), 1);
        assert_eq!(version_of_revision(41), 42);
        assert_eq!(revision_of_version(1), Some(0));
        assert_eq!(revision_of_version(42), Some(41));
        assert_eq!(revision_of_version(0), None);
    }

    #[test]
    fn expectations_become_exact_zero_based_revisions() {
        let state = |expected| match expected_stream_state(expected) {
            Ok(state) => state,
            Err(e) => panic!("{expected:?} should map: {e}"),
        };
        assert_eq!(state(ExpectedVersion::NoStream), StreamState::NoStream);
        assert_eq!(state(ExpectedVersion::Exact(0)), StreamState::NoStream);
        assert_eq!(
            state(ExpectedVersion::Exact(1)),
            StreamState::StreamRevision(0)
        );
        assert_eq!(
            state(ExpectedVersion::Exact(7)),
            StreamState::StreamRevision(6)
        );
        assert_eq!(
            state(ExpectedVersion::Exact(i64::MAX as u64 + 1)),
            StreamState::StreamRevision(i64::MAX as u64)
        );
        assert!(matches!(
            expected_stream_state(ExpectedVersion::Exact(u64::MAX)),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn actual_versions_count_a_missing_stream_as_zero() {
        assert_eq!(actual_version(CurrentRevision::NoStream), 0);
        assert_eq!(actual_version(CurrentRevision::Current(0)), 1);
        assert_eq!(actual_version(CurrentRevision::Current(9)), 10);
    }

    #[test]
    fn placeholder_positions_are_not_positions() {
        assert_eq!(known_position(0), None);
        assert_eq!(known_position(u64::MAX), None);
        assert_eq!(known_position(1_234), Some(1_234));
    }

    #[test]
    fn transport_failures_are_unavailable_and_the_rest_is_not() {
        let unavailable = [
            kurrentdb::Error::ConnectionClosed,
            kurrentdb::Error::DeadlineExceeded,
            kurrentdb::Error::ServerError("node gone".into()),
            kurrentdb::Error::GrpcConnectionError(
                kurrentdb::GrpcConnectionError::MaxDiscoveryAttemptReached(3),
            ),
            kurrentdb::Error::AccessDenied,
        ];
        for err in &unavailable {
            assert!(
                matches!(
                    store_error("append to", "account-1", err),
                    StoreError::Unavailable(_)
                ),
                "{err:?}"
            );
        }
        assert!(matches!(
            store_error("read", "account-1", &kurrentdb::Error::ResourceDeleted),
            StoreError::Invalid(_)
        ));
        assert!(matches!(
            store_error("read", "$all", &kurrentdb::Error::UnsupportedFeature),
            StoreError::Incompatible(_)
        ));
        assert!(connection_lost(&kurrentdb::Error::ConnectionClosed));
        assert!(!connection_lost(&kurrentdb::Error::DeadlineExceeded));
    }
}
