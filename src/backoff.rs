//! Retry delays: exponential backoff with jitter, so that gateways reconnecting after an
//! outage do not arrive in lockstep.

use std::time::Duration;

/// Delay before retry number `failures` (1-based): 1 s, 2 s, 4 s … capped at 60 s, each
/// scaled by a random factor in [0.5, 1).
pub fn backoff(failures: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << failures.min(6).saturating_sub(1)).min(Duration::from_secs(60));
    base.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff grows, is capped at a minute, and is jittered.
    #[test]
    fn backoff_bounds() {
        assert!(backoff(1) <= Duration::from_secs(1));
        assert!(backoff(30) <= Duration::from_secs(60) && backoff(30) >= Duration::from_secs(16));
    }
}
