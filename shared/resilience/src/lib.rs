//! The circuit breaker, once for every caller: order-service puts one in front of each saga
//! participant (catalog, inventory, payment), the gateway one in front of each upstream.
//!
//! **Why a breaker at all.** When a peer is down, every call to it would otherwise spend a
//! full deadline finding that out, holding a connection, a task and (in order-service) a saga
//! lease, while the peer is hammered by retries as it comes back. After
//! [`Policy::failures_to_open`] consecutive failures the circuit *opens*: calls are refused at
//! once, without touching the network, for [`Policy::open_for`]. Then it is *half-open*: one
//! trial call goes through; its success closes the circuit, its failure opens it again.
//!
//! **Why one crate.** Order-service and the gateway used to carry a breaker each, with two
//! subtly different state machines (one let a dropped trial call block the half-open circuit
//! for good). A reader should find one breaker, with one set of tests.
//!
//! **Why our own and not a crate.** The breaker has to sit *inside* each caller's own retry
//! policy (order: `backon` with jitter around a tonic call; gateway: one retry of idempotent
//! requests) and report its state in our metrics with our labels. `failsafe`, the maintained
//! breaker crate, wraps the call in its own future adaptor and brings its own back-off and
//! failure predicates, which would duplicate both for what is a hundred lines here; `tower`
//! has no breaker.
//!
//! **What counts as a failure** is the caller's decision, reported with [`Call::record`]: the
//! peer could not be reached or did not answer in time (gRPC `Unavailable`/`DeadlineExceeded`,
//! HTTP 502–504). A refusal is an answer: a peer that says "no such product" is up.
//!
//! **Observability.** The state is a gauge (0 closed, 1 half-open, 2 open) and every change
//! is counted and logged; the caller names the metrics ([`Metrics`]) so dashboards and alert
//! rules keep each service's own metric names.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive failures that open the circuit (at least 1; a success resets the count).
    pub failures_to_open: u32,
    /// How long an open circuit refuses calls before letting one trial through.
    pub open_for: Duration,
}

/// The names under which a breaker reports itself: `state` is a gauge, `transitions` a counter
/// with a `to` label, both labelled `peer_label = <peer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    pub state: &'static str,
    pub transitions: &'static str,
    pub peer_label: &'static str,
}

/// The three states, as a caller or a test sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// One trial call may go through (or is out); its outcome decides.
    HalfOpen,
    /// Calls are refused without touching the network.
    Open,
}

impl BreakerState {
    /// The gauge value: ordered by how bad it is, so `max` over instances is meaningful.
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// The state with the data each state needs; invalid combinations (a failure count while
/// open, a trial flag while closed) cannot be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { since: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl State {
    fn public(self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// One peer's breaker. All methods take `&self`: share it (`Arc`, or a field of shared state)
/// among every task that calls the peer.
#[derive(Debug)]
pub struct CircuitBreaker {
    peer: &'static str,
    policy: Policy,
    metrics: Metrics,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker for `peer`; its gauge is exported at once, so a dashboard shows every
    /// peer from the start, not only those that once failed.
    pub fn new(peer: &'static str, policy: Policy, metrics: Metrics) -> Self {
        let breaker = Self {
            peer,
            policy: Policy {
                failures_to_open: policy.failures_to_open.max(1),
                ..policy
            },
            metrics,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        breaker.export(BreakerState::Closed);
        breaker
    }

    /// A permit for one call, or `None` while the circuit refuses calls. The caller reports the
    /// outcome with [`Call::record`]. A permit dropped unreported (the caller was cancelled:
    /// a client went away, a saga step timed out) frees the half-open trial slot; otherwise
    /// the circuit would wait forever for a trial that never reports.
    pub fn call(&self) -> Option<Call<'_>> {
        self.allow().then_some(Call {
            breaker: self,
            recorded: false,
        })
    }

    /// The current state. An open circuit whose `open_for` has passed still reads `Open`
    /// until the next [`call`](Self::call) turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.lock().public()
    }

    fn allow(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { since } if since.elapsed() >= self.policy.open_for => {
                self.transition(
                    &mut state,
                    State::HalfOpen {
                        trial_in_flight: true,
                    },
                );
                true
            }
            State::Open { .. }
            | State::HalfOpen {
                trial_in_flight: true,
            } => false,
            State::HalfOpen {
                trial_in_flight: false,
            } => {
                *state = State::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
        }
    }

    fn record(&self, success: bool) {
        let mut state = self.lock();
        let next = match (*state, success) {
            // Any answer proves the peer is up, whichever state we were in.
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.policy.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // A call let through before the circuit opened fails late: it proves nothing new,
            // and must not extend the open period.
            (State::Open { since }, false) => State::Open { since },
            (State::Closed { .. } | State::HalfOpen { .. }, false) => State::Open {
                since: Instant::now(),
            },
        };
        self.transition(&mut state, next);
    }

    fn abandon(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { .. } = *state {
            *state = State::HalfOpen {
                trial_in_flight: false,
            };
        }
    }

    /// Sets the state; a change of state (not of a count) is logged, counted and exported.
    fn transition(&self, state: &mut State, next: State) {
        let (from, to) = (state.public(), next.public());
        *state = next;
        if from == to {
            return;
        }
        if to == BreakerState::Open {
            tracing::warn!(peer = self.peer, ?from, ?to, "circuit breaker");
        } else {
            tracing::info!(peer = self.peer, ?from, ?to, "circuit breaker");
        }
        metrics::counter!(self.metrics.transitions,
            self.metrics.peer_label => self.peer, "to" => to.label())
        .increment(1);
        self.export(to);
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!(self.metrics.state, self.metrics.peer_label => self.peer)
            .set(state.gauge());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path can panic while holding the lock with the state half-written (every
        // write is one assignment); keep serving rather than poison every later call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One call let through by a [`CircuitBreaker`]: report how it ended with [`Call::record`].
#[derive(Debug)]
#[must_use = "report the outcome with `record`, or the call counts as abandoned"]
pub struct Call<'a> {
    breaker: &'a CircuitBreaker,
    recorded: bool,
}

impl Call<'_> {
    /// How the call ended: `false` when the peer could not be reached or did not answer in
    /// time; `true` for any answer from the peer itself, a refusal included.
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
    use metrics_exporter_prometheus::PrometheusBuilder;

    const METRICS: Metrics = Metrics {
        state: "test_breaker_state",
        transitions: "test_breaker_transitions_total",
        peer_label: "peer",
    };

    fn breaker(failures_to_open: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker::new(
            "peer",
            Policy {
                failures_to_open,
                open_for,
            },
            METRICS,
        )
    }

    /// One call, reported.
    fn outcome(breaker: &CircuitBreaker, success: bool) {
        breaker
            .call()
            .expect("the circuit lets it through")
            .record(success);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = breaker(3, Duration::from_secs(3600));
        outcome(&breaker, false);
        outcome(&breaker, false);
        outcome(&breaker, true); // a success resets the count
        outcome(&breaker, false);
        outcome(&breaker, false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        outcome(&breaker, false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.call().is_none(), "open: refused without calling");
    }

    #[test]
    fn after_the_open_period_one_trial_goes_through_and_its_success_closes_the_circuit() {
        let breaker = breaker(1, Duration::ZERO);
        outcome(&breaker, false);
        assert_eq!(breaker.state(), BreakerState::Open);

        let trial = breaker.call().expect("the open period is over: a trial");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.call().is_none(), "only one trial at a time");
        trial.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.call().is_some() && breaker.call().is_some());
    }

    #[test]
    fn a_failed_trial_opens_the_circuit_again() {
        let breaker = breaker(5, Duration::ZERO);
        for _ in 0..5 {
            outcome(&breaker, false);
        }
        let trial = breaker.call().expect("a trial");
        trial.record(false);
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "one failed trial is enough, not another five"
        );
    }

    #[test]
    fn an_abandoned_trial_frees_the_half_open_slot() {
        let breaker = breaker(1, Duration::ZERO);
        outcome(&breaker, false);
        let trial = breaker.call().expect("a trial");
        drop(trial); // the caller was cancelled before an answer
        assert!(
            breaker.call().is_some(),
            "the next caller becomes the trial instead of waiting forever"
        );
    }

    #[test]
    fn a_late_failure_does_not_extend_the_open_period() {
        let breaker = breaker(1, Duration::from_millis(50));
        let early = breaker.call().expect("closed");
        let late = breaker.call().expect("closed");
        early.record(false);
        let opened = *breaker.lock();
        std::thread::sleep(Duration::from_millis(10));
        late.record(false);
        assert_eq!(*breaker.lock(), opened, "still the first opening");
    }

    #[test]
    fn the_state_is_exported_as_a_gauge_and_changes_are_counted() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // The exposition lines for our metrics, e.g. `test_breaker_state{peer="peer"} 2`.
        let line = |prefix: &str| {
            handle
                .render()
                .lines()
                .find(|line| line.starts_with(prefix))
                .map(str::to_owned)
        };
        let state = || line("test_breaker_state{peer=\"peer\"}");
        let opened = || line("test_breaker_transitions_total{peer=\"peer\",to=\"open\"}");
        metrics::with_local_recorder(&recorder, || {
            let breaker = breaker(1, Duration::ZERO);
            assert_eq!(
                state().as_deref(),
                Some("test_breaker_state{peer=\"peer\"} 0")
            );
            outcome(&breaker, false);
            assert!(state().is_some_and(|l| l.ends_with(" 2")), "open");
            assert!(opened().is_some_and(|l| l.ends_with(" 1")), "counted");
            let trial = breaker.call().expect("a trial");
            assert!(state().is_some_and(|l| l.ends_with(" 1")), "half-open");
            trial.record(true);
            assert!(state().is_some_and(|l| l.ends_with(" 0")), "closed");
        });
    }
}
