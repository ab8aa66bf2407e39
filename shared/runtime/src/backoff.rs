//! The one retry schedule for loops that must keep going until shutdown: reconnecting to the
//! broker, re-attaching a consumer, relaying an outbox while the broker is down.
//!
//! Exponential from 100 ms up to a ceiling, with jitter so that many instances that lost the
//! same dependency at the same moment do not all come back at the same moment, and no limit on
//! attempts: these loops end with the process, not with a give-up. Call it again to start over
//! after a success.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays of 100 ms, 200 ms, 400 ms, ... capped at `max_delay`, jittered, never exhausted.
pub fn forever(max_delay: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max_delay)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_ceiling_and_never_runs_out() {
        let delays: Vec<Duration> = forever(Duration::from_secs(1)).take(50).collect();
        assert_eq!(delays.len(), 50);
        // Jitter adds up to one more base delay on top, never more.
        assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(2)));
        assert!(delays[40] >= Duration::from_secs(1));
    }
}
