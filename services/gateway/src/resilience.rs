//! Per-upstream protection: a circuit breaker and a bulkhead.
//!
//! * **Bulkhead**: at most `UPSTREAM_CONCURRENCY` requests in flight to one service. A slow
//!   service then ties up a bounded number of the gateway's connections and tasks; requests
//!   beyond it are refused at once with 503 instead of queueing until everything times out.
//! * **Circuit breaker**: after [`FAILURES_TO_OPEN`] consecutive failures (unreachable, timed
//!   out, 502/503/504), the circuit *opens*: calls fail fast with 503 for [`OPEN_FOR`], sparing
//!   a service that is down a stream of doomed requests and the clients a timeout each. Then it
//!   is *half-open*: one trial request goes through; success closes the circuit, failure opens
//!   it again. The state is the `gateway_circuit_state{upstream}` gauge (0 closed, 1 half-open,
//!   2 open).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Consecutive failures that open a circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open circuit refuses calls before letting a trial through.
pub const OPEN_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    upstream: &'static str,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(upstream: &'static str) -> Self {
        let breaker = Self {
            upstream,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        breaker.publish(State::Closed { failures: 0 });
        breaker
    }

    /// A permit for one call, or `None` while the circuit refuses calls. The caller reports the
    /// outcome with [`Call::record`]; a call dropped unreported (the client went away) frees
    /// the half-open trial slot instead of blocking it forever.
    pub fn call(&self) -> Option<Call<'_>> {
        self.allow().then_some(Call {
            breaker: self,
            recorded: false,
        })
    }

    fn allow(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen {
                    trial_in_flight: true,
                };
                self.publish(*state);
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { trial_in_flight } => {
                if trial_in_flight {
                    false
                } else {
                    *state = State::HalfOpen {
                        trial_in_flight: true,
                    };
                    true
                }
            }
        }
    }

    fn abandon(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { .. } = *state {
            *state = State::HalfOpen {
                trial_in_flight: false,
            };
        }
    }

    fn record(&self, success: bool) {
        let mut state = self.lock();
        let next = match (*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < FAILURES_TO_OPEN => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: Instant::now() + OPEN_FOR,
            },
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&*state);
        *state = next;
        if changed {
            if matches!(next, State::Open { .. }) {
                tracing::warn!(upstream = self.upstream, "circuit opened");
            } else {
                tracing::info!(upstream = self.upstream, "circuit closed");
            }
            self.publish(next);
        }
    }

    /// Whether the circuit currently refuses calls (for the stale-if-error decision).
    pub fn is_open(&self) -> bool {
        matches!(*self.lock(), State::Open { until } if Instant::now() < until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, state: State) {
        let value = match state {
            State::Closed { .. } => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        };
        metrics::gauge!("gateway_circuit_state", "upstream" => self.upstream).set(value);
    }
}

/// One call let through by a [`CircuitBreaker`].
#[derive(Debug)]
pub struct Call<'a> {
    breaker: &'a CircuitBreaker,
    recorded: bool,
}

impl Call<'_> {
    /// Reports how the call ended: a failure is the upstream's (unreachable, timed out, 502-504).
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(success);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_a_success_closes_it() {
        let breaker = CircuitBreaker::new("test");
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(breaker.allow());
            breaker.record(false);
        }
        breaker.record(true);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.record(false);
        }
        assert!(breaker.allow(), "the count restarted after the success");
        breaker.record(false);
        assert!(breaker.is_open());
        assert!(!breaker.allow());

        // Time travel: pretend the open period is over.
        *breaker.lock() = State::Open {
            until: Instant::now(),
        };
        let trial = breaker.call().expect("one trial call");
        assert!(breaker.call().is_none(), "only one");
        drop(trial);
        let trial = breaker.call().expect("an abandoned trial frees the slot");
        trial.record(true);
        assert!(breaker.allow() && breaker.allow(), "closed again");
    }
}
