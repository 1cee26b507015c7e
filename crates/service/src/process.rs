//! What the process itself uses: threads, open files and resident memory, read from
//! `/proc/self` on Linux, so `/metrics` shows that a load (a retry storm) does not grow them.

/// One sample of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStats {
    pub threads: u64,
    pub open_files: u64,
    pub resident_bytes: u64,
}

/// Samples the process now; `None` where `/proc/self` is not there (not Linux).
pub fn sample() -> Option<ProcessStats> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
    };
    let open_files = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(ProcessStats {
        threads: field("Threads:")?,
        open_files,
        // VmRSS is in kB.
        resident_bytes: field("VmRSS:")?.saturating_mul(1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_counts_this_process() {
        let stats = sample().expect("this test runs on Linux");
        assert!(stats.threads >= 1);
        assert!(stats.open_files >= 3, "stdin, stdout and stderr at least");
        assert!(stats.resident_bytes > 1024 * 1024);
    }
}
