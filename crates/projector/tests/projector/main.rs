//! The projector's integration tests, in one binary: the property test against the domain
//! fold, the kill test, and the runtime's paths (resume, rebuild, following files, refusals).

mod child;
mod kill;
mod properties;
mod runtime;
mod support;
