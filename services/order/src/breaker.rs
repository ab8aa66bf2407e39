//! A circuit breaker per downstream service.
//!
//! When a participant is down, every saga waiting on it would otherwise spend a full deadline
//! per attempt finding that out, holding leases and connections while the participant gets
//! hammered as it comes back. After `failures` consecutive failures the breaker *opens*: calls
//! fail at once, without touching the network. After `cooldown` it lets *one* probe through
//! (*half-open*); its success closes the breaker, its failure opens it for another cooldown.
//! The state is exported as the gauge `order_circuit_breaker_state{downstream}` (0 closed,
//! 1 half-open, 2 open), and every change is logged.
//!
//! Why our own and not a crate: the breaker has to sit *inside* our retry policy (backon) and
//! report its state in our metrics; the crates we looked at (`failsafe`) bring their own
//! backoff and future adaptors that would duplicate both, for what is sixty lines here.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The breaker's states, with the gauge value each is exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    /// In half-open state: whether the one probe is out.
    probing: bool,
}

/// One downstream's breaker. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct Breaker {
    downstream: &'static str,
    failures: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(downstream: &'static str, failures: u32, cooldown: Duration) -> Self {
        let breaker = Self {
            downstream,
            failures: failures.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probing: false,
            }),
        };
        breaker.export(BreakerState::Closed);
        breaker
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether a call may go out now. In half-open state only one caller gets `true` until
    /// that call reported back.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                if inner
                    .opened_at
                    .is_some_and(|at| at.elapsed() >= self.cooldown)
                {
                    self.transition(&mut inner, BreakerState::HalfOpen);
                    inner.probing = true;
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen if inner.probing => false,
            BreakerState::HalfOpen => {
                inner.probing = true;
                true
            }
        }
    }

    /// The downstream answered (any answer from the service itself counts, a refusal too).
    pub fn on_success(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.probing = false;
        if inner.state != BreakerState::Closed {
            self.transition(&mut inner, BreakerState::Closed);
        }
    }

    /// The downstream could not be reached or did not answer in time.
    pub fn on_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        inner.probing = false;
        let trip = match inner.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => inner.consecutive_failures >= self.failures,
            BreakerState::Open => false,
        };
        if trip {
            inner.opened_at = Some(Instant::now());
            self.transition(&mut inner, BreakerState::Open);
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        tracing::warn!(downstream = self.downstream, from = ?inner.state, ?to, "circuit breaker");
        inner.state = to;
        self.export(to);
        metrics::counter!("order_circuit_breaker_transitions_total",
            "downstream" => self.downstream, "to" => format!("{to:?}").to_lowercase())
        .increment(1);
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!("order_circuit_breaker_state", "downstream" => self.downstream)
            .set(state.gauge());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way
        // that matters; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_once_and_closes_on_success() {
        let breaker = Breaker::new("test", 3, Duration::from_millis(0));
        breaker.on_failure();
        breaker.on_success(); // a success resets the count
        breaker.on_failure();
        breaker.on_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.on_failure();
        assert_eq!(breaker.state(), BreakerState::Open);

        // Cooldown of zero: the next caller is the probe, the one after waits for it.
        assert!(breaker.allow());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow());
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_open_means_no_calls() {
        let breaker = Breaker::new("test", 1, Duration::from_secs(3600));
        breaker.on_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow(), "still cooling down");

        let breaker = Breaker::new("test", 1, Duration::ZERO);
        breaker.on_failure();
        assert!(breaker.allow());
        breaker.on_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
