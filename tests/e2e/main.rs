//! End-to-end tests of the ledger's HTTP surface (SPEC sections 8 and 11): the real `ledger`
//! binary serving on a real loopback port, each test with its own server and data directory,
//! every request and answer held to `schemas/openapi.json`.
//!
//! Modules: `support` (the harness), `openapi` (the document against `ROUTES`), `errors`
//! (every error code), `roles` (the role matrix), `stories` (the seeds' stories),
//! `idempotency`, `admission`, `reads` (events, explain, audit, health, metrics), `insight`
//! (model badges, refresh dates, history, usage), `alerts` (signed webhooks to a receiver in
//! the test), `cli`
//! (the tools on a stopped server's data, start-up failures), `export` (export files verified
//! offline, the documented hash input), `lifecycle` (shutdown, tokens), `concurrency` (no
//! overdraft, no double charge), `stripe` (Stripe's webhooks, signed, through the billing
//! story), `console` (the support page in headless Chromium), `fuzz` (schemathesis's
//! generated requests), `security` (secrets kept out of logs, bounded requests, slow-loris,
//! the token file's mode), `bank` (the bank-invariant checker of issue 15 on every store) and
//! `soak` (load through SIGKILLs of a node, a projector and the scheduler;
//! `LEDGER_SOAK_LONG=1` for ten minutes).

mod admission;
mod alerts;
mod bank;
mod cli;
mod cluster;
mod concurrency;
mod console;
mod contract;
mod errors;
mod export;
mod fuzz;
mod idempotency;
mod insight;
mod lifecycle;
mod openapi;
mod reads;
mod rebuild;
mod roles;
mod security;
mod soak;
mod stories;
mod storm;
mod stripe;
mod support;
