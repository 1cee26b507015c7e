//! What the service's benchmarks share: reading their knobs from the environment and taking
//! medians. Included by each bench target with `mod support;`.

// Rates and ratios of measurements are floats; no credit amount is.
#![allow(clippy::float_arithmetic)]

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The number in environment variable `name`, or `default` when it is not set.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> BenchResult<T> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{name} must be a number, not {text:?}").into()),
        Err(_) => Ok(default),
    }
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
