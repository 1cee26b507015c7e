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

/// CPU time (user + system, every thread) this process has used, in seconds, from /proc;
/// 0 where there is none.
#[allow(dead_code)] // the charges bench measures CPU; the insight bench does not
pub fn cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The fields after the parenthesised command name; utime and stime are the 12th
            // and 13th of those, in clock ticks (USER_HZ, 100 per second on Linux).
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}
