//! Integration tests of the SQLite event store, in one binary: the shared conformance suite,
//! SQLite-specific behaviour, the file format checks, and the multi-process tests (a second
//! process following the file, and appends surviving SIGKILL).

mod behaviour;
mod conformance;
mod crash;
mod follow;
mod format;
mod index;
mod probe;
mod support;
