//! The ledger service: command handling over an event store, the admission check over the
//! views, the HTTP API of SPEC section 8, bearer-token roles, metrics, audit and the
//! scheduler, and Stripe's webhooks. Everything with IO lives here or further out; the rules live in the domain.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod clock;
pub mod explain_text;
pub mod export;
pub mod insight;
pub mod ledger;
pub mod metrics;
pub mod pages;
pub mod process;
pub mod scheduler;
pub mod stripe;
pub mod summary;
pub mod tokens;
pub mod views;
