//! Store faults, injected and real, met over HTTP (the router on a loopback port, the real
//! projector's views): commands answer 503 `UNAVAILABLE` with nothing half-written, reads
//! keep answering from the views, the service recovers by itself when the fault clears, a
//! charge whose answer was lost after it became durable is charged once, and a corrupt event
//! is reported, never skipped. `wrapper` injects faults through `ledger_store::faults` over
//! SQLite; `disk` makes the SQLite data directory read-only or full for real (a mount, which
//! needs CAP_SYS_ADMIN; without it the wrapper stands in and the test says so); `postgres`
//! does both on PostgreSQL, with backends killed and a private server restarted under load.

mod disk;
mod postgres;
mod support;
mod wrapper;
