//! The one load generator every scenario uses: open loop, HDR histograms, latency measured from
//! the *intended* send time.
//!
//! # Open loop, and why it matters
//!
//! A closed-loop generator (wrk, ab, most "N virtual users" tools) sends the next request when
//! the previous answer arrived. When the system stalls for a second, it simply stops sending
//! for that second, and the one slow answer is all the histogram sees: the thousands of
//! requests real users would have sent meanwhile — and that would all have waited — are never
//! issued. That is *coordinated omission*, and it makes a p99 look good exactly when it is bad.
//!
//! Here a run is a schedule: request `i` is due at `start + i / rate`. A scheduler releases each
//! ticket when it falls due ([`release`]); workers (each owning one keep-alive connection, or
//! one database session) take the next released ticket, send it, and record both
//! `answered - due` (the latency) and `answered - sent` (the service time). A worker that falls
//! behind sends the next ticket at once, and its latency includes the time it waited to be
//! sent — so a stall shows up in every request it delayed, as users would feel it. Runs that
//! fall so far behind that tickets are still unsent `grace` after the schedule ended stop
//! there; those tickets are counted as `unsent` and reported (they are failures, not
//! omissions: the verdicts count them).
//!
//! # Sub-millisecond scheduling
//!
//! tokio's timer has a resolution of one millisecond and rounds every deadline up to its next
//! tick, so a worker that slept until its ticket was due sent it 0–1 ms late, and that lateness
//! was in every latency: an nginx answering in 0.16 ms showed a p50 over 1 ms, which made every
//! gap to it look smaller than it is. The scheduler is therefore one thread of its own that
//! sleeps with the operating system's high-resolution timer (`nanosleep`; Linux wakes it within
//! its timer slack, 50 µs by default) and, at each wake, releases *every* ticket whose due time
//! has passed, each still timed from its own due time. Why this and not the alternatives:
//! spinning (or `yield_now` in a loop) for the last fraction of a millisecond is as precise but
//! burns a core, and on a machine whose two cores also run the system under test that CPU
//! would be taken from what is measured; waking on tokio's tick and sending the batch due by
//! then keeps the rate exact but still adds up to a millisecond to each latency. One sleeping
//! thread costs a wake per ticket at low rates and, at high rates, fewer (tickets due within
//! one wake's slack go out together), and the report shows the generator's CPU per window so
//! this cost stays visible.
//!
//! Saturation throughput is the one figure measured closed loop ([`Plan::saturate`]): every
//! worker sends back to back for the duration, and only the completion rate is reported
//! (latency at saturation is unbounded by definition and would mean nothing).
//!
//! # Why our own harness, and not wrk2, oha, goose or k6
//!
//! * Debian packages `wrk`, which is closed loop (the problem above); wrk2 (its open-loop fork)
//!   and oha are not packaged, and the project installs tools only from Debian or crates.
//! * Two of the scenarios do not end with an HTTP answer: an order ends when its
//!   `order.order.confirmed` event arrives, an outbox event when a consumer handles it. An HTTP
//!   load tool can send those requests but cannot time them; this harness hands each request's
//!   due time ([`Ticket::due`]) to whoever observes the end ([`Recorder`]).
//! * One harness for every scenario means one clock and one histogram type, so the ratios the
//!   report is built on compare like with like (the gateway and nginx are driven by the very
//!   same code).
//! * It is small: a schedule, an atomic ticket counter, and `hdrhistogram` (the maintained Rust
//!   port of HdrHistogram) for 3-significant-digit percentiles from 1 µs to an hour.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// What to offer the system: a rate for a duration, over a number of workers.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests per second; `None` = closed loop, as fast as the workers can go.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// How long past the end of the schedule due tickets may still be sent.
    pub grace: Duration,
}

impl Plan {
    /// An open-loop run at `rate` requests per second.
    pub fn open(rate: f64, duration: Duration) -> Self {
        Self {
            rate: Some(rate),
            duration,
            grace: duration.min(Duration::from_secs(10)),
        }
    }

    /// A closed-loop run to find the most the system completes per second.
    pub fn saturate(duration: Duration) -> Self {
        Self {
            rate: None,
            duration,
            grace: Duration::ZERO,
        }
    }
}

/// One scheduled request.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub index: u64,
    /// When it should have been sent; latency is measured from here.
    pub due: Instant,
}

/// How one request ended, as far as the worker can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with success (2xx, committed).
    Ok,
    /// Answered, but refused: the status (a 2xx whose body the scenario cannot use counts
    /// under its own status).
    Refused(u16),
    /// No answer: connection error or timeout.
    Error,
}

/// Sends one request. Each worker is used by one task, so it can own a connection.
pub trait Worker: Send + 'static {
    fn call(&mut self, ticket: Ticket) -> impl Future<Output = Outcome> + Send;
}

/// Latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// A histogram shared by whoever observes completions outside the worker (an event consumer,
/// an AMQP subscriber): they record `now - ticket.due`.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(histogram())),
        }
    }
}

impl Recorder {
    pub fn record_since(&self, due: Instant) {
        let elapsed = Instant::now().saturating_duration_since(due);
        let mut histogram = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        record(&mut histogram, elapsed);
    }

    pub fn len(&self) -> u64 {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn reset(&self) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reset();
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// `(percentile, ms)` pairs for a percentile-distribution plot.
    pub distribution: Vec<(f64, f64)>,
}

const DISTRIBUTION: [f64; 12] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

impl Summary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            distribution: DISTRIBUTION
                .iter()
                .map(|&p| (p, ms(histogram.value_at_quantile(p / 100.0))))
                .collect(),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    /// Requests per second offered (`None`: closed loop).
    pub offered_rate: Option<f64>,
    pub duration_s: f64,
    pub workers: usize,
    pub ok: u64,
    pub refused: u64,
    /// The refused answers by HTTP status, so a report can say *why* requests failed.
    pub refused_by_status: BTreeMap<u16, u64>,
    pub errors: u64,
    /// Due tickets never sent because the run was still behind `grace` after the schedule.
    pub unsent: u64,
    /// Completed requests (any outcome) per second of the run.
    pub achieved_rate: f64,
    /// Successful requests per second of the run.
    pub ok_rate: f64,
    /// How late the latest send was against its due time (ms): near 0 means the generator
    /// kept the schedule.
    pub max_send_lag_ms: f64,
    /// Due time → answer (the open-loop latency).
    pub latency: Summary,
    /// Send → answer (what a closed-loop tool would have reported): the time the system under
    /// test took, without the time the request waited for the generator or a free connection.
    pub service_time: Summary,
    /// CPU seconds (user + system) the bench process used during the window: the generator,
    /// plus whatever the scenario runs in the same process at the time (its event consumer,
    /// the SMTP sink). `None` where `/proc` cannot be read.
    pub generator_cpu_s: Option<f64>,
    /// [`Self::generator_cpu_s`] as a share of one core over the window, in percent.
    pub generator_cpu_percent: Option<f64>,
}

/// Releases the tickets of an open-loop schedule into `tickets`, each when it falls due: `total`
/// tickets, ticket `i` due at `start + i / rate`. Runs on a thread of its own (see "Sub-
/// millisecond scheduling" above for why), until every ticket is released, the workers have
/// gone (the channel closed) or `stopped` is set (the run gave up on the rest).
fn release(
    start: std::time::Instant,
    rate: f64,
    total: u64,
    tickets: &tokio::sync::mpsc::UnboundedSender<Ticket>,
    stopped: &AtomicBool,
) {
    let due = |index: u64| start + Duration::from_secs_f64(index as f64 / rate);
    let mut index = 0;
    while index < total && !stopped.load(Ordering::Relaxed) {
        let now = std::time::Instant::now();
        let next = due(index);
        if next > now {
            std::thread::sleep(next - now);
            continue;
        }
        // Every ticket due by now goes out in this wake, each timed from its own due time.
        while index < total && due(index) <= now {
            let ticket = Ticket {
                index,
                due: Instant::from_std(due(index)),
            };
            if tickets.send(ticket).is_err() {
                return;
            }
            index += 1;
        }
    }
}

/// Where a worker gets its next ticket.
enum Tickets {
    /// Open loop: released by [`release`] when due; `None` once the schedule is done.
    Scheduled(Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Ticket>>>),
    /// Closed loop: due at once, until `end`.
    Closed { next: Arc<AtomicU64>, end: Instant },
}

impl Tickets {
    async fn next(&self) -> Option<Ticket> {
        match self {
            Self::Scheduled(tickets) => tickets.lock().await.recv().await,
            Self::Closed { next, end } => {
                let due = Instant::now();
                (due < *end).then(|| Ticket {
                    index: next.fetch_add(1, Ordering::Relaxed),
                    due,
                })
            }
        }
    }
}

/// Runs `plan` over `workers` (one task each) and returns what was measured.
pub async fn run<W: Worker>(plan: &Plan, workers: Vec<W>) -> Measured {
    let worker_count = workers.len();
    let cpu_before = crate::stack::cpu_seconds(std::process::id());
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + plan.duration;
    let total = plan.rate.map(|rate| {
        let total = rate * plan.duration.as_secs_f64();
        total.round().max(1.0) as u64
    });
    let stopped = Arc::new(AtomicBool::new(false));
    let deadline = end + plan.grace;
    let (tickets, scheduler) = match (plan.rate, total) {
        (Some(rate), Some(total)) => {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let stopped = stopped.clone();
            let start = start.into_std();
            let scheduler = tokio::task::spawn_blocking(move || {
                release(start, rate, total, &sender, &stopped);
            });
            (
                Arc::new(Tickets::Scheduled(Arc::new(tokio::sync::Mutex::new(
                    receiver,
                )))),
                Some(scheduler),
            )
        }
        _ => (
            Arc::new(Tickets::Closed {
                next: Arc::new(AtomicU64::new(0)),
                end,
            }),
            None,
        ),
    };

    let mut tasks = tokio::task::JoinSet::new();
    for mut worker in workers {
        let tickets = tickets.clone();
        let stopped = stopped.clone();
        tasks.spawn(async move {
            let mut latency = histogram();
            let mut service = histogram();
            let mut counts = [0u64; 3];
            let mut statuses = BTreeMap::<u16, u64>::new();
            let mut max_lag = Duration::ZERO;
            let mut last_done = start;
            tokio::time::sleep_until(start).await;
            while let Some(ticket) = tickets.next().await {
                let sent = Instant::now();
                if stopped.load(Ordering::Relaxed) || sent > deadline {
                    stopped.store(true, Ordering::Relaxed);
                    break;
                }
                let due = ticket.due;
                max_lag = max_lag.max(sent.saturating_duration_since(due));
                let outcome = worker.call(ticket).await;
                let done = Instant::now();
                last_done = last_done.max(done);
                record(&mut latency, done - due);
                record(&mut service, done - sent);
                counts[match outcome {
                    Outcome::Ok => 0,
                    Outcome::Refused(status) => {
                        *statuses.entry(status).or_default() += 1;
                        1
                    }
                    Outcome::Error => 2,
                }] += 1;
            }
            (latency, service, counts, statuses, max_lag, last_done)
        });
    }
    drop(tickets);

    let mut latency = histogram();
    let mut service = histogram();
    let mut counts = [0u64; 3];
    let mut refused_by_status = BTreeMap::<u16, u64>::new();
    let mut max_lag = Duration::ZERO;
    let mut last_done = start;
    while let Some(joined) = tasks.join_next().await {
        let Ok((l, s, c, statuses, lag, done)) = joined else {
            continue;
        };
        let _ = latency.add(&l);
        let _ = service.add(&s);
        for (sum, count) in counts.iter_mut().zip(c) {
            *sum += count;
        }
        for (status, count) in statuses {
            *refused_by_status.entry(status).or_default() += count;
        }
        max_lag = max_lag.max(lag);
        last_done = last_done.max(done);
    }
    // Every worker has gone, so the scheduler's next send fails if it had not finished.
    stopped.store(true, Ordering::Relaxed);
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    let generator_cpu_s = cpu_before
        .zip(crate::stack::cpu_seconds(std::process::id()))
        .map(|(before, after)| after - before);
    let completed: u64 = counts.iter().sum();
    let unsent = total.map_or(0, |total| total.saturating_sub(completed));
    let elapsed = last_done
        .saturating_duration_since(start)
        .max(plan.duration)
        .as_secs_f64();
    let generator_cpu_percent = generator_cpu_s.map(|cpu| cpu / elapsed * 100.0);
    Measured {
        offered_rate: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        workers: worker_count,
        ok: counts[0],
        refused: counts[1],
        refused_by_status,
        errors: counts[2],
        unsent,
        achieved_rate: completed as f64 / elapsed,
        ok_rate: counts[0] as f64 / elapsed,
        max_send_lag_ms: max_lag.as_secs_f64() * 1000.0,
        latency: Summary::of(&latency),
        service_time: Summary::of(&service),
        generator_cpu_s,
        generator_cpu_percent,
    }
}

#[cfg(test)]
mod tests {
    //! These run on the real clock: the scheduler is a thread sleeping with the operating
    //! system's timer (that is the point), which tokio's paused clock cannot drive. Their
    //! bounds leave room for a busy machine.

    use super::*;

    struct Sleepy(Duration);

    impl Worker for Sleepy {
        async fn call(&mut self, _: Ticket) -> Outcome {
            tokio::time::sleep(self.0).await;
            Outcome::Ok
        }
    }

    /// The point of the harness: one worker that needs 20 ms per request, offered one request
    /// every 10 ms, falls further behind with every request, and the latency says so (a
    /// closed-loop tool would report a flat 20 ms). tokio's timer makes each sleep 20–21 ms,
    /// so the run gets more than the default second of grace to finish.
    #[tokio::test]
    async fn a_worker_that_falls_behind_shows_the_wait_in_the_latency() {
        let plan = Plan {
            grace: Duration::from_secs(5),
            ..Plan::open(100.0, Duration::from_secs(1))
        };
        let measured = run(&plan, vec![Sleepy(Duration::from_millis(20))]).await;
        assert_eq!(measured.ok, 100);
        assert_eq!(measured.unsent, 0);
        // The service time stays near 20 ms (a busy machine wakes the sleeps late: a few ms,
        // never the hundreds the latency grows by) ...
        assert!(
            (19.0..30.0).contains(&measured.service_time.p50_ms)
                && measured.service_time.p99_ms < 50.0,
            "{:?}",
            measured.service_time
        );
        // ... while the last request waited ~1 s to be sent: due at 990 ms, answered at 2000 ms.
        assert!(measured.latency.max_ms > 990.0, "{:?}", measured.latency);
    }

    /// Answers at once: an in-process server with no work to do.
    struct Instantly;

    impl Worker for Instantly {
        async fn call(&mut self, _: Ticket) -> Outcome {
            tokio::task::yield_now().await;
            Outcome::Ok
        }
    }

    /// 20,000 requests per second for a second: all of them sent within the second (±2 %),
    /// which a scheduler sending one ticket per timer wake could not do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_schedule_sends_20000_per_second_within_2_percent() {
        let measured = run(
            &Plan::open(20_000.0, Duration::from_secs(1)),
            (0..4).map(|_| Instantly).collect(),
        )
        .await;
        assert_eq!(measured.ok, 20_000, "{measured:?}");
        assert_eq!(measured.unsent, 0);
        assert!(
            (measured.achieved_rate - 20_000.0).abs() <= 400.0,
            "{measured:?}"
        );
        assert!(measured.generator_cpu_s.is_some());
    }

    /// A server that needs 5 ms: the latency from the due time includes those 5 ms, and the
    /// generator's own lateness on top of them stays well under tokio's 1 ms timer tick.
    ///
    /// Up to three tries, the best one judged: the bound is about the schedule, and a machine
    /// busy with other work (a parallel build, CI) can make any one second of it late; a
    /// scheduler rounding to whole milliseconds would miss it in every try.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latency_runs_from_the_due_time_and_the_schedule_is_kept_to_under_half_a_millisecond() {
        let mut tries = Vec::new();
        for _ in 0..3 {
            let measured = run(
                &Plan::open(1_000.0, Duration::from_secs(1)),
                (0..16).map(|_| Sleepy(Duration::from_millis(5))).collect(),
            )
            .await;
            assert_eq!(measured.ok, 1_000, "{measured:?}");
            assert!(measured.latency.p50_ms >= 5.0, "{:?}", measured.latency);
            let lateness = measured.latency.p50_ms - measured.service_time.p50_ms;
            assert!(lateness >= 0.0, "sent before due: {lateness:.3} ms");
            if lateness < 0.5 {
                return;
            }
            tries.push(lateness);
        }
        panic!("due → sent p50 in three tries: {tries:.3?} ms, none under 0.5 ms");
    }

    /// Answers 429 to every third ticket and 503 to the rest.
    struct Refusing;

    impl Worker for Refusing {
        async fn call(&mut self, ticket: Ticket) -> Outcome {
            Outcome::Refused(if ticket.index.is_multiple_of(3) {
                429
            } else {
                503
            })
        }
    }

    #[tokio::test]
    async fn refused_answers_are_counted_by_status() {
        let measured = run(&Plan::open(100.0, Duration::from_secs(1)), vec![Refusing]).await;
        assert_eq!(measured.refused, 100);
        assert_eq!(
            measured.refused_by_status,
            BTreeMap::from([(429, 34), (503, 66)])
        );
    }

    /// An overloaded target: one connection needing 100 ms, offered 100 requests a second.
    #[tokio::test]
    async fn tickets_still_due_after_the_grace_period_are_counted_unsent() {
        let plan = Plan {
            rate: Some(100.0),
            duration: Duration::from_secs(1),
            grace: Duration::from_millis(100),
        };
        let measured = run(&plan, vec![Sleepy(Duration::from_millis(100))]).await;
        assert_eq!(measured.ok + measured.unsent, 100);
        assert!(measured.unsent > 80, "{measured:?}");
    }

    #[tokio::test]
    async fn a_saturation_run_counts_what_the_workers_complete() {
        let measured = run(
            &Plan::saturate(Duration::from_secs(1)),
            vec![
                Sleepy(Duration::from_millis(10)),
                Sleepy(Duration::from_millis(10)),
            ],
        )
        .await;
        assert!((160..=200).contains(&measured.ok), "{measured:?}");
        assert!(measured.offered_rate.is_none());
    }
}
