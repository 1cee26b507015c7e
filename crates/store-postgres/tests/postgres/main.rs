//! Integration tests of the PostgreSQL event store, in one binary, against a real server
//! (`LEDGER_TEST_POSTGRES`, else `postgres://postgres@127.0.0.1:5432/test`): the shared
//! conformance suite, store-specific behaviour, the format check, the position-gap test,
//! subscription reconnects, and appends surviving SIGKILL of a child process (this same
//! binary, re-executed). Every test works in a schema of its own and drops it at the end.

mod behaviour;
mod conformance;
mod crash;
mod format;
mod gap;
mod reconnect;
mod support;
