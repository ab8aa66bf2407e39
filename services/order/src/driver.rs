//! Runs sagas: the I/O around [`crate::saga`]. For each step it
//!
//! 1. checks it still holds the saga's **lease** and writes the attempt (persisted *before*
//!    the call: attempt count, lease renewed, and for `Authorize` the time it was sent);
//! 2. calls the participant ([`crate::participants`]);
//! 3. in one transaction, under the saga row's lock and only if it still holds the lease,
//!    asks [`saga::after`] where the answer leads and writes that (persisted *after* the call),
//!    with the order's status and its event in the outbox when the saga ends.
//!
//! Step 1 rarely needs a commit of its own: the transaction of step 3 also writes the next
//! step's first attempt, and `POST /orders` writes the first `Reserve` attempt with the order.
//! Only a run the sweeper starts (a retry, a resume) writes its attempt separately. And the
//! pivot's success is not written on its own ([`Step::records_success_first`]): the run goes
//! on to `Capture` and writes both with its answer. So a saga that goes straight through costs
//! three commits after the placing one (after `Reserve`, `Authorize` and `Capture`).
//!
//! `POST /orders` hands the first run what it has just written ([`Placed`]), so the run calls
//! `Reserve` without reading the saga, the order or its lines back.
//!
//! **Who drives.** A saga row carries a lease (`lease_owner`, `lease_until`). `lease_owner`
//! names one *run*, not an instance: a token drawn afresh each time a saga is leased.
//! `POST /orders` creates the saga already leased to the run it starts at once. Every other
//! run begins with the [sweeper](Driver::sweep): every `ORDER_SWEEP_INTERVAL_MS` each instance
//! claims due sagas whose lease is free or expired (`FOR UPDATE SKIP LOCKED`, so two instances
//! never claim the same row), each with a new token. Every write is fenced by
//! `lease_owner = <my run's token>`: a run that lost its lease (it stalled past `lease_until`
//! and a sweeper took the saga over) can no longer change the saga, even when that sweeper
//! belongs to its own instance, which an instance-wide owner would let through. A lease
//! outlives one call with its retries (the configuration enforces it), so one saga has one
//! driver at a time.
//!
//! **Crashes.** Nothing lives only in memory: a crashed instance's sagas are found by the
//! sweeper of any instance (the restarted one included) once their lease expired, and resume
//! at the step persisted last. The step may then run twice; every participant is idempotent
//! per order, so the second run has no further effect.
//!
//! **Retries.** An answer that settles nothing ([`Outcome::Unknown`]) schedules the same step
//! again after an exponential, jittered back-off (`next_attempt_at`) and gives the lease up.
//!
//! **Parking.** A refusal past the pivot, or a step that cannot turn back and failed
//! `ORDER_PARK_AFTER_ATTEMPTS` times in a row, is parked ([`Next::Park`]): `parked_at` and
//! `parked_reason` are set, the sweeper skips it, the `order_sagas_parked` gauge counts it, and
//! an operator lists and resumes it through the admin API ([`crate::admin`]).
//!
//! **One clock.** Deadlines and lease times are written with the database's `now()`, so they
//! are also *compared* with the database's `now()` (read with the saga row), never with this
//! process's clock: two instances on machines whose clocks disagree still agree on when a saga
//! timed out.
//!
//! **Card data.** The sealed card lives in `order_cards`, a row of its own that the transition
//! leaving `Authorize` (or ending the saga) *deletes*.
//!
//! **Tracing.** A run started by `POST /orders` carries the request's span, so the whole saga
//! of a new order is one trace; see [`Driver::start`].
//!
//! ## Where it sits
//!
//! [`crate::api`] creates a saga (row leased to a new run, first attempt marked) and hands
//! it to [`Driver::start`]; [`crate::admin`] and the cancel route call [`Driver::sweep`] so a
//! change is picked up at once; [`crate::OrderService`] spawns [`Driver::sweep_forever`]. The
//! driver in turn asks [`crate::saga`] what to do and [`crate::participants`] to do it, and is
//! the only writer of `order_sagas` besides those three requests (a new saga, a cancellation
//! flag, a resume).
//!
//! ## What happens on a crash at each point
//!
//! | the process dies | what the next run sees | what it does |
//! |---|---|---|
//! | before the attempt is written | the previous transition | runs the step (a first attempt) |
//! | after the attempt, before or during the call | the attempt counted, no answer | calls again; the participant answers from its record |
//! | after the answer, before recording it | same as above | calls again; same answer, no second effect |
//! | after recording | the next step | carries on from there |
//! | after `CommitStock` answered, before `Capture` is recorded | `CommitStock` | commits again (inventory replays it), then captures |
//!
//! In every row the next run starts only once the dead instance's lease has run out, so a
//! crash costs the saga a wait of about one `ORDER_SAGA_LEASE_MS` (plus a sweep interval),
//! never the order (patterns BEY-08 and DEP-05).
//!
//! The tests that hold this module to its word are in `tests/saga.rs` (two instances on one
//! database, a stalled instance taken over by another and a stalled run by its own instance,
//! three writes of the saga row per order, nothing read back after placing), `tests/crash.rs`
//! (killed before and after recording each step) and `tests/outage.rs` (a participant down for
//! a while, payment lost right after the pivot).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use shop_events::{
    Money,
    order::{OrderCancelled, OrderConfirmed, OrderLine},
};
use shop_messaging::outbox::postgres::{self as outbox, enqueue_event};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    card::CardVault,
    config::SagaConfig,
    participants::Participants,
    saga::{self, Next, Outcome, Reason, State, Step},
};

/// The terminal steps, as SQL sees them: the sweeper never claims them and the gauges do not
/// count them. Must list exactly the steps [`Step::is_terminal`] names, spelled as
/// [`Step::as_str`] spells them.
const TERMINAL: &str = "('confirmed', 'cancelled')";

/// The shortest back-off between two attempts of a step; it doubles per attempt up to
/// `ORDER_RETRY_MAX_MS` ([`saga::retry_delay`]).
const RETRY_BASE: Duration = Duration::from_millis(200);

/// The saga engine of one instance.
///
/// Shared behind an `Arc` by the API (which starts the saga of a new order) and the sweeper.
/// It keeps no saga in memory between steps: the database is the only state, so any instance
/// can continue any saga.
#[derive(Debug)]
pub struct Driver {
    /// The service's database: orders, saga rows, sealed cards, outbox.
    pub pool: PgPool,
    /// The gRPC clients of inventory and payment (and catalog). A clone sits in the API's state
    /// for pricing.
    pub participants: Participants,
    /// Opens the sealed card for the `Authorize` step. The API also uses it, to seal the card
    /// and to fingerprint a placing request.
    pub vault: CardVault,
    /// Leases, deadlines, retry bounds, parking, fault injection. The API reads the saga
    /// timeout and the lease from here when it writes a new saga row.
    pub config: SagaConfig,
    /// The runtime's tracker: runs spawned on it are awaited at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins: runs hand their leases back, the sweeper stops.
    pub shutdown: CancellationToken,
    /// One permit per saga driven at once (`ORDER_MAX_IN_FLIGHT`): the sweeper claims no more
    /// than it has, and `POST /orders` answers 503 when none is left.
    slots: Arc<Semaphore>,
    /// `ORDER_STALL_BEFORE_RECORDING` fires once per process: set by the first stall, so the
    /// run that takes the saga over in the same process is not stalled again.
    stalled: std::sync::atomic::AtomicBool,
}

/// A participant's answer to a step, with what the driver keeps of it.
#[derive(Debug, Clone)]
struct Answer {
    /// What the answer means for the saga: the input of [`saga::after`].
    outcome: Outcome,
    /// The card's last four digits, from an authorization: written to the order in the
    /// transaction that records it.
    last4: Option<String>,
    /// What the participant said when it refused or failed (for `last_error`, parking).
    detail: Option<String>,
}

impl Answer {
    /// An answer that is only its outcome (no card digits, no detail).
    fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            last4: None,
            detail: None,
        }
    }
}

/// Where a run goes after [`Driver::record`] persisted a transition.
#[derive(Debug)]
enum Then {
    /// The saga ended, waits for a retry, was parked, or this run lost its lease: the run
    /// returns, and the row says what comes next (nothing, a due time, an operator, a new
    /// owner).
    Stop,
    /// The next step's first attempt is persisted with the transition: call it now, with the
    /// row built from what was just written.
    Run(Row),
    /// The next step turns around before any call (the user cancelled or the deadline passed
    /// meanwhile): read the row back and decide again.
    Reload,
}

/// A saga row, as read under the lease.
///
/// Joined with its order and its card row by [`Driver::load`], so one query gives a step
/// everything its call needs; after a transition that runs the next step at once, the driver
/// builds the next `Row` itself instead of reading it back.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    /// The database's clock when the row was read: the one clock deadlines are compared with.
    db_now: DateTime<Utc>,
    /// [`Step::as_str`] of the current step.
    step: String,
    /// [`Reason::as_str`] once the saga compensates.
    reason: Option<String>,
    /// The customer asked to cancel.
    cancel_requested: bool,
    /// The saga's time limit (before the pivot).
    deadline: DateTime<Utc>,
    /// When an `Authorize` last went out.
    authorize_sent_at: Option<DateTime<Utc>>,
    /// The encrypted card, until the saga leaves `Authorize`.
    sealed_card: Option<Vec<u8>>,
    /// Attempts of the current step so far.
    attempts: i32,
    /// The customer (from the order), for the authorization and the events.
    user_id: Uuid,
    /// The order's total in minor units, what is authorized.
    total_amount: i64,
    /// The order's currency.
    currency: String,
    /// The stock lines `Reserve` asks for, when the run already has them (handed over by
    /// `POST /orders`); otherwise [`Driver::lines`] reads them.
    #[sqlx(skip)]
    lines: Option<Vec<(String, u32)>>,
    /// The database still shows the step before this one, whose success was not written
    /// down on its own ([`Step::records_success_first`]): whatever this step's answer
    /// leads to is written with the step itself.
    #[sqlx(skip)]
    behind: bool,
}

/// What `POST /orders` has just written, handed to the saga's first run so that it calls
/// `Reserve` at once without reading anything back. The run used to read the saga row (joined
/// with the order and the card) and then the lines, and the request read the order and its
/// lines again for its answer: four of an order's transactions, for data the request held in
/// memory.
#[derive(Debug)]
pub struct Placed {
    /// The database's `now()` in the placing transaction (the clock deadlines are compared with).
    pub db_now: DateTime<Utc>,
    /// The saga's time limit, as stored.
    pub deadline: DateTime<Utc>,
    /// The sealed card, as stored in `order_cards`.
    pub sealed_card: Vec<u8>,
    /// The customer.
    pub user_id: Uuid,
    /// The total in minor units.
    pub total_amount: i64,
    /// The order's currency.
    pub currency: String,
    /// The lines as stored, in line order.
    pub lines: Vec<OrderLine>,
}

impl Placed {
    /// The saga row as the placing transaction wrote it: at `Reserve`, its first attempt
    /// counted, not cancelled, no authorization sent yet.
    fn into_row(self) -> Row {
        Row {
            db_now: self.db_now,
            step: Step::Reserve.as_str().to_owned(),
            reason: None,
            cancel_requested: false,
            deadline: self.deadline,
            authorize_sent_at: None,
            sealed_card: Some(self.sealed_card),
            attempts: 1,
            user_id: self.user_id,
            total_amount: self.total_amount,
            currency: self.currency,
            lines: Some(stock_lines(&self.lines)),
            behind: false,
        }
    }
}

/// The stock lines of an order, by sku, each quantity summed: what [`Driver::lines`] reads
/// from the database, computed from lines in memory.
fn stock_lines(lines: &[OrderLine]) -> Vec<(String, u32)> {
    let mut by_sku = std::collections::BTreeMap::<&str, u32>::new();
    for line in lines {
        let quantity = by_sku.entry(line.sku.as_str()).or_default();
        *quantity = quantity.saturating_add(line.quantity);
    }
    by_sku
        .into_iter()
        .map(|(sku, quantity)| (sku.to_owned(), quantity))
        .collect()
}

impl Row {
    /// The row as [`crate::saga`] sees it. An unreadable step or reason (a row written by a
    /// newer version, say) is an error, and the run stops rather than guessing.
    fn state(&self, config: &SagaConfig) -> Result<State, String> {
        Ok(State {
            step: self.step.parse()?,
            reason: self.reason.as_deref().map(str::parse).transpose()?,
            attempts: u32::try_from(self.attempts).unwrap_or_default(),
            park_after: config.park_after,
            cancel_requested: self.cancel_requested,
            deadline: self.deadline,
            authorize_sent_at: self.authorize_sent_at,
            late_authorization: config.late_authorization,
        })
    }
}

impl Driver {
    /// A driver with `config.max_in_flight` slots:
    /// a new order finding none is refused with 503 and `Retry-After`, and the sweeper claims
    /// only as many sagas as there are free slots, so a burst cannot run more sagas than the
    /// connections and participants were sized for. Runs are spawned on `tasks` and stop at
    /// `shutdown`, handing their leases back at once.
    pub fn new(
        pool: PgPool,
        participants: Participants,
        vault: CardVault,
        config: SagaConfig,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_in_flight));
        Self {
            pool,
            participants,
            vault,
            config,
            tasks,
            shutdown,
            slots,
            stalled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A slot to drive one more saga, if this instance has one free.
    ///
    /// Never waits: `POST /orders` turns `None` into 503 with `Retry-After`, and the sweeper
    /// hands a claimed saga straight back. The slot is released when the run that holds it
    /// ends, whatever way it ends.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Drives `order_id` (leased to this run as `lease`) in the background, holding `permit` until
    /// the run ends. `placed`: what `POST /orders` just wrote, the first `Reserve` attempt
    /// included, so the run calls at once without reading anything; `None` (the sweeper) reads
    /// the row and persists the attempt first.
    ///
    /// The run gets a `saga` span, a child of the caller's span: started by `POST /orders`, the
    /// saga's gRPC calls and the events it publishes stay in the trace of the request that
    /// placed the order (a spawned task would otherwise start from no span, and every call
    /// would begin a trace of its own). A run the sweeper resumes is outside that trace.
    pub fn start(
        self: &Arc<Self>,
        order_id: Uuid,
        lease: Uuid,
        placed: Option<Placed>,
        permit: OwnedSemaphorePermit,
    ) {
        let driver = self.clone();
        let span = tracing::info_span!("saga", %order_id);
        self.tasks.spawn(
            async move {
                driver.drive(order_id, lease, placed).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// Runs the saga step after step until it ends, must wait for a retry, or the lease is
    /// gone. Errors of our own database end the run; the sweeper resumes it later.
    ///
    /// It does not check the lease before it starts, because every read and write it makes is
    /// fenced by it: called with a lease that is no longer the saga's, its first read finds no
    /// row and it returns.
    pub async fn drive(&self, order_id: Uuid, lease: Uuid, placed: Option<Placed>) {
        if let Err(err) = self.drive_steps(order_id, lease, placed).await {
            tracing::warn!(%order_id, error = %err, "saga run interrupted; it resumes later");
        }
    }

    /// The loop behind [`Driver::drive`]: shutdown check, load (or reuse) the row, decide with
    /// [`saga::before`], mark the attempt, call, record. Test-only faults are injected between
    /// the call and the recording, and right after the recording, the two moments a crash
    /// must be survivable.
    async fn drive_steps(
        &self,
        order_id: Uuid,
        lease: Uuid,
        placed: Option<Placed>,
    ) -> Result<(), sqlx::Error> {
        // The row as the placing request or the last transition left it, with the current
        // step's attempt persisted: no need to read it back.
        let mut marked = placed.is_some();
        let mut ready: Option<Row> = placed.map(Placed::into_row);
        loop {
            if self.shutdown.is_cancelled() {
                // Hand the saga over at once instead of letting the lease run out.
                self.give_up_lease(order_id, lease, None, Duration::ZERO)
                    .await?;
                return Ok(());
            }
            let mut row = match ready.take() {
                Some(row) => row,
                None => match self.load(order_id, lease).await? {
                    Some(row) => row,
                    None => {
                        tracing::debug!(%order_id, "lease lost or saga unknown");
                        return Ok(());
                    }
                },
            };
            let state = match row.state(&self.config) {
                Ok(state) => state,
                Err(err) => {
                    tracing::error!(%order_id, error = %err, "unreadable saga row");
                    return Ok(());
                }
            };
            if state.step.is_terminal() {
                self.give_up_lease(order_id, lease, None, Duration::ZERO)
                    .await?;
                return Ok(());
            }
            // The user cancelled or the time limit passed: turn around without calling anyone.
            if saga::before(&state, row.db_now).is_some() {
                match self.record(order_id, lease, &row, None).await? {
                    Then::Stop => return Ok(()),
                    Then::Reload => marked = false,
                    Then::Run(next) => {
                        ready = Some(next);
                        marked = true;
                    }
                }
                continue;
            }
            if !marked {
                if !self.mark_attempt(order_id, lease, state.step).await? {
                    return Ok(());
                }
                row.attempts += 1;
            }
            let started = Instant::now();
            let answer = self.run(order_id, &row, state.step).await;
            metrics::histogram!("order_saga_step_duration_seconds",
                "step" => state.step.as_str(), "outcome" => outcome_label(answer.outcome))
            .record(started.elapsed().as_secs_f64());
            tracing::debug!(%order_id, step = %state.step, outcome = ?answer.outcome, "step answered");
            self.inject_before_recording(order_id, state.step).await;
            // The pivot's success goes on to the next step unwritten: see
            // `Step::records_success_first`. The lease renewed with the pivot's attempt covers
            // both calls; should it run out meanwhile, the new owner repeats the pivot (a
            // replay) and this run's recording is fenced off.
            if !state.step.records_success_first()
                && answer.outcome == Outcome::Done
                && let Next::Go(next, None) = saga::after(&state, Outcome::Done, row.db_now)
            {
                if self.config.faults.crash_after == Some(state.step) {
                    crash(order_id, state.step);
                }
                ready = Some(Row {
                    step: next.as_str().to_owned(),
                    attempts: 1,
                    lines: None,
                    behind: true,
                    ..row
                });
                marked = true;
                continue;
            }
            let then = self.record(order_id, lease, &row, Some(answer)).await?;
            if self.config.faults.crash_after == Some(state.step) {
                crash(order_id, state.step);
            }
            match then {
                Then::Stop => return Ok(()),
                Then::Reload => marked = false,
                Then::Run(next) => {
                    ready = Some(next);
                    marked = true;
                }
            }
        }
    }

    /// `ORDER_CRASH_BEFORE_RECORDING` / `ORDER_STALL_BEFORE_RECORDING`: the participant acted,
    /// and this instance dies or pauses before it writes down what it learned.
    ///
    /// The stall lasts twice the lease, so the lease runs out and a sweeper takes the saga over
    /// meanwhile (another instance's sweeper, or this instance's own); the stalled run's
    /// recording is fenced off by its lease token once it wakes up, and changes nothing.
    async fn inject_before_recording(&self, order_id: Uuid, step: Step) {
        let faults = &self.config.faults;
        if faults.crash_before_recording == Some(step) {
            crash(order_id, step);
        }
        if faults.stall_before_recording == Some(step)
            && !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let stall = self.config.lease.saturating_mul(2);
            tracing::error!(%order_id, %step, ?stall, "ORDER_STALL_BEFORE_RECORDING: pausing");
            tokio::time::sleep(stall).await;
        }
    }

    /// The saga and its order (and its sealed card while it has one), if this run still holds
    /// the lease and nobody parked it.
    ///
    /// `None` is not an error: the lease ran out (another instance may have it) or the saga
    /// was parked, and in both cases this run has nothing more to do.
    async fn load(&self, order_id: Uuid, lease: Uuid) -> Result<Option<Row>, sqlx::Error> {
        sqlx::query_as(
            "SELECT now() AS db_now, s.step, s.reason, s.cancel_requested, s.deadline,
                    s.authorize_sent_at, c.sealed AS sealed_card, s.attempts, o.user_id,
                    o.total_amount, o.currency
             FROM order_sagas s JOIN orders o ON o.id = s.order_id
                  LEFT JOIN order_cards c ON c.order_id = s.order_id
             WHERE s.order_id = $1 AND s.lease_owner = $2 AND s.lease_until > now()
               AND s.parked_at IS NULL",
        )
        .bind(order_id)
        .bind(lease)
        .fetch_optional(&self.pool)
        .await
    }

    /// Persisted before the call: one more attempt, the lease renewed, and when an
    /// authorization goes out (a void must then look for it even if we never hear back).
    ///
    /// `false` when this run no longer holds a live lease: the run stops without calling,
    /// since whoever holds it now drives the saga.
    async fn mark_attempt(
        &self,
        order_id: Uuid,
        lease: Uuid,
        step: Step,
    ) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE order_sagas
             SET attempts = attempts + 1,
                 lease_until = now() + $3 * interval '1 millisecond',
                 authorize_sent_at = CASE WHEN $4 THEN now() ELSE authorize_sent_at END,
                 updated_at = now()
             WHERE order_id = $1 AND lease_owner = $2 AND lease_until > now()",
        )
        .bind(order_id)
        .bind(lease)
        .bind(millis(self.config.lease))
        .bind(step == Step::Authorize)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Calls the participant of `step`.
    ///
    /// Never fails: every problem becomes an [`Outcome`] the saga knows how to handle (our own
    /// database failing to list the lines is an unknown outcome, retried later).
    async fn run(&self, order_id: Uuid, row: &Row, step: Step) -> Answer {
        let p = &self.participants;
        let reason = row.reason.as_deref().and_then(|r| r.parse().ok());
        match step {
            Step::Reserve => match self.lines(order_id, row).await {
                Ok(lines) => Answer::of(p.reserve(order_id, lines).await),
                Err(err) => {
                    tracing::warn!(%order_id, error = %err, "cannot read the order's lines");
                    Answer::of(Outcome::Unknown)
                }
            },
            Step::Authorize => {
                let card = row
                    .sealed_card
                    .as_deref()
                    .and_then(|sealed| self.vault.open(order_id, sealed).ok());
                let Some(card) = card else {
                    // Only if ORDER_CARD_KEY changed under a running saga (or the card row is
                    // gone): nothing to charge. A refusal like a decline, so the saga voids
                    // whatever an earlier attempt may have authorized before releasing stock.
                    tracing::error!(%order_id, "the card cannot be read; declining");
                    return Answer {
                        outcome: Outcome::Refused(Reason::PaymentDeclined),
                        last4: None,
                        detail: Some("the sealed card could not be opened".to_owned()),
                    };
                };
                let amount = shop_proto::common::v1::Money {
                    amount: row.total_amount,
                    currency: row.currency.clone(),
                };
                let (outcome, last4) = p.authorize(order_id, row.user_id, amount, card).await;
                Answer {
                    outcome,
                    last4,
                    detail: None,
                }
            }
            Step::CommitStock => Answer::of(p.commit(order_id).await),
            Step::Capture => {
                let (outcome, detail) = p.capture(order_id).await;
                Answer {
                    outcome,
                    last4: None,
                    detail,
                }
            }
            Step::VoidPayment => Answer::of(p.void(order_id).await),
            Step::ReleaseStock => Answer::of(p.release(order_id, reason).await),
            Step::Confirmed | Step::Cancelled => Answer::of(Outcome::Done),
        }
    }

    /// The order's stock lines by sku (two products may share none, but be safe: summed):
    /// the row's own when the placing request handed them over, else read.
    async fn lines(&self, order_id: Uuid, row: &Row) -> Result<Vec<(String, u32)>, sqlx::Error> {
        if let Some(lines) = &row.lines {
            return Ok(lines.clone());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT sku, sum(quantity)::bigint FROM order_lines WHERE order_id = $1
             GROUP BY sku ORDER BY sku",
        )
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(sku, quantity)| (sku, u32::try_from(quantity).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Persisted after the call (or, with no outcome, a turn to compensation decided by
    /// [`saga::before`]): the transition, decided under the row lock with the freshest
    /// `cancel_requested`.
    ///
    /// When the saga moves on to a step it can run at once, the same transaction also
    /// persists that step's first attempt (what [`Driver::mark_attempt`] writes otherwise), so
    /// a step costs one commit instead of two; the run then calls without reading the row
    /// back ([`Then::Run`]). A cancellation that lands after this commit is seen when the
    /// call answers, exactly as one landing during the call.
    ///
    /// An error is our own database's: the transaction rolls back, nothing was decided, and
    /// the run ends. The lease then runs out and a sweeper repeats the step, which the
    /// participant answers from its own record.
    async fn record(
        &self,
        order_id: Uuid,
        lease: Uuid,
        row: &Row,
        answer: Option<Answer>,
    ) -> Result<Then, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Fenced by the lease: a run that stalled past it (a sweeper took over, maybe this
        // instance's own) changes nothing any more.
        let fresh: Option<(bool, DateTime<Utc>)> = sqlx::query_as(
            "SELECT cancel_requested, now() FROM order_sagas
             WHERE order_id = $1 AND lease_owner = $2 AND lease_until > now() FOR UPDATE",
        )
        .bind(order_id)
        .bind(lease)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((cancel_requested, now)) = fresh else {
            tracing::info!(%order_id, "lease lost before recording; the new owner drives the saga");
            return Ok(Then::Stop);
        };
        let mut state = match row.state(&self.config) {
            Ok(state) => state,
            Err(_) => return Ok(Then::Stop),
        };
        state.cancel_requested = cancel_requested;
        let outcome = answer.as_ref().map(|answer| answer.outcome);
        let next = match outcome {
            Some(outcome) => saga::after(&state, outcome, now),
            None => saga::before(&state, now).unwrap_or(Next::Retry),
        };
        let detail = answer.as_ref().and_then(|answer| answer.detail.clone());
        let (step, reason) = match next {
            Next::Go(step, reason) => (step, reason),
            Next::Retry => {
                tx.rollback().await?;
                let attempt = u32::try_from(row.attempts).unwrap_or(u32::MAX);
                let delay = saga::retry_delay(attempt, RETRY_BASE, self.config.retry_max, jitter());
                let error = detail.or_else(|| outcome.map(|o| outcome_label(o).to_owned()));
                // A row that is behind moves on to this step, so the retry starts here (and
                // the operator API shows the step that is failing).
                let at = row.behind.then_some((state.step, row.attempts));
                self.give_up_lease_at(order_id, lease, error.as_deref(), delay, at)
                    .await?;
                return Ok(Then::Stop);
            }
            Next::Park => {
                let why = match (outcome, detail) {
                    (Some(Outcome::Refused(_)), Some(detail)) => {
                        format!("{} refused: {detail}", state.step)
                    }
                    (_, detail) => format!(
                        "{} got no usable answer in {} attempts{}",
                        state.step,
                        state.attempts,
                        detail.map(|d| format!(" (last: {d})")).unwrap_or_default()
                    ),
                };
                // Parked at the step that failed, with its attempts (the row may be behind).
                sqlx::query(
                    "UPDATE order_sagas
                     SET parked_at = now(), parked_reason = $2, last_error = $2,
                         step = $3, attempts = $4,
                         lease_owner = NULL, lease_until = NULL, updated_at = now()
                     WHERE order_id = $1",
                )
                .bind(order_id)
                .bind(&why)
                .bind(state.step.as_str())
                .bind(row.attempts)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                metrics::counter!("order_sagas_parked_total", "step" => state.step.as_str())
                    .increment(1);
                tracing::warn!(%order_id, step = %state.step, reason = %why,
                    "saga parked: an operator must look at it (GET /api/v1/admin/sagas/parked)");
                return Ok(Then::Stop);
            }
        };
        let last4 = answer.and_then(|answer| answer.last4);
        let leaving_authorize = state.step == Step::Authorize && step != Step::Authorize;
        let ended = step.is_terminal();
        // Does the next step run at once? Not if it is itself about to turn around.
        let next_state = State {
            step,
            reason,
            ..state.clone()
        };
        let run_next = !ended && saga::before(&next_state, now).is_none();
        let (authorize_sent_at,): (Option<DateTime<Utc>>,) = sqlx::query_as(
            "UPDATE order_sagas
             SET step = $2, reason = $3, next_attempt_at = now(), last_error = NULL,
                 attempts = CASE WHEN $6 THEN 1 ELSE 0 END,
                 authorize_sent_at = CASE WHEN $6 AND $2 = 'authorize' THEN now()
                                          ELSE authorize_sent_at END,
                 lease_owner = CASE WHEN $4 THEN NULL ELSE lease_owner END,
                 lease_until = CASE WHEN $4 THEN NULL ELSE now() + $5 * interval '1 millisecond' END,
                 updated_at = now()
             WHERE order_id = $1
             RETURNING authorize_sent_at",
        )
        .bind(order_id)
        .bind(step.as_str())
        .bind(reason.map(Reason::as_str))
        .bind(ended)
        .bind(millis(self.config.lease))
        .bind(run_next)
        .fetch_one(&mut *tx)
        .await?;
        if row.sealed_card.is_some() && (leaving_authorize || ended) {
            // The card is needed no more: its row is deleted, not blanked. (The row read or
            // handed over says whether there still is one.)
            sqlx::query("DELETE FROM order_cards WHERE order_id = $1")
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(last4) = last4 {
            sqlx::query("UPDATE orders SET card_last4 = $2 WHERE id = $1")
                .bind(order_id)
                .bind(last4)
                .execute(&mut *tx)
                .await?;
        }
        if ended {
            finish(&mut tx, order_id, row, step, reason).await?;
            // `finish` enqueued the order's event: publish it now, not at the next poll.
            outbox::commit(tx).await?;
        } else {
            tx.commit().await?;
        }
        if ended {
            let outcome = if step == Step::Confirmed {
                "confirmed"
            } else {
                "cancelled"
            };
            metrics::counter!("orders_total", "outcome" => outcome,
                "reason" => reason.map_or("", Reason::as_str))
            .increment(1);
            tracing::info!(%order_id, %step, reason = reason.map(Reason::as_str), "saga ended");
            return Ok(Then::Stop);
        }
        tracing::debug!(%order_id, from = %state.step, to = %step, "saga moved");
        if !run_next {
            return Ok(Then::Reload);
        }
        Ok(Then::Run(Row {
            db_now: now,
            step: step.as_str().to_owned(),
            reason: reason.map(|reason| reason.as_str().to_owned()),
            cancel_requested,
            authorize_sent_at,
            sealed_card: if leaving_authorize {
                None
            } else {
                row.sealed_card.clone()
            },
            attempts: 1,
            // Only `Reserve` reads them, and a run never returns to it.
            lines: None,
            // Just written: the row is up to date.
            behind: false,
            ..row.clone()
        }))
    }

    /// Gives the lease up and schedules the next attempt `delay` from now.
    ///
    /// Giving the lease up (rather than sleeping on it) lets whichever instance sweeps first
    /// take the next attempt, and costs nothing while the saga waits. Fenced by the lease like
    /// every other write.
    async fn give_up_lease(
        &self,
        order_id: Uuid,
        lease: Uuid,
        error: Option<&str>,
        delay: Duration,
    ) -> Result<(), sqlx::Error> {
        self.give_up_lease_at(order_id, lease, error, delay, None)
            .await
    }

    /// [`Driver::give_up_lease`], also writing the step the run is at and its attempts when
    /// `at` is given: for a row that is behind (see [`Row::behind`]).
    async fn give_up_lease_at(
        &self,
        order_id: Uuid,
        lease: Uuid,
        error: Option<&str>,
        delay: Duration,
        at: Option<(Step, i32)>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE order_sagas
             SET lease_owner = NULL, lease_until = NULL,
                 next_attempt_at = now() + $3 * interval '1 millisecond',
                 last_error = COALESCE($4, last_error),
                 step = COALESCE($5, step), attempts = COALESCE($6, attempts),
                 updated_at = now()
             WHERE order_id = $1 AND lease_owner = $2",
        )
        .bind(order_id)
        .bind(lease)
        .bind(millis(delay))
        .bind(error)
        .bind(at.map(|(step, _)| step.as_str()))
        .bind(at.map(|(_, attempts)| attempts))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims due sagas (free or expired lease) and drives them; returns how many.
    ///
    /// Claiming is one `UPDATE ... WHERE order_id IN (SELECT ... FOR UPDATE SKIP LOCKED)`:
    /// instances sweeping at the same moment skip each other's rows instead of waiting, and
    /// the oldest due sagas go first.
    ///
    /// Also sets the `order_sagas_in_flight` and `order_sagas_parked` gauges from the table,
    /// so they are right whichever instance changed a saga. Public so the API can sweep at once
    /// after a cancellation or an operator's resume, instead of waiting for the next interval.
    pub async fn sweep(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        // Claim no more than this instance has free slots for. The slots are taken one by one
        // after the claim, not held during it: holding them all would make a `POST /orders`
        // arriving meanwhile find none and answer 503.
        let room = self.slots.available_permits();
        let mut claimed_count = 0;
        if room > 0 {
            // Each claimed saga gets a lease of its own: the run that drives it is the only
            // holder, even against an older run of this same instance that stalled past its
            // lease (see `lease_owner` in the module's documentation).
            let claimed: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
                "UPDATE order_sagas
                 SET lease_owner = gen_random_uuid(),
                     lease_until = now() + $1 * interval '1 millisecond'
                 WHERE order_id IN (
                     SELECT order_id FROM order_sagas
                     WHERE step NOT IN {TERMINAL} AND next_attempt_at <= now()
                       AND parked_at IS NULL
                       AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY next_attempt_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED)
                 RETURNING order_id, lease_owner"
            ))
            .bind(millis(self.config.lease))
            .bind(i64::try_from(room).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
            claimed_count = claimed.len();
            for (order_id, lease) in claimed {
                match self.try_slot() {
                    Some(permit) => self.start(order_id, lease, None, permit),
                    // Placements took the slots meanwhile: hand the saga back at once.
                    None => {
                        self.give_up_lease(order_id, lease, None, Duration::ZERO)
                            .await?
                    }
                }
            }
        }
        let (pending, parked): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE parked_at IS NULL),
                    count(*) FILTER (WHERE parked_at IS NOT NULL)
             FROM order_sagas WHERE step NOT IN {TERMINAL}"
        ))
        .fetch_one(&self.pool)
        .await?;
        metrics::gauge!("order_sagas_in_flight").set(pending as f64);
        metrics::gauge!("order_sagas_parked").set(parked as f64);
        Ok(claimed_count)
    }

    /// The sweeper loop: at start (resuming what a crash left behind) and then periodically.
    ///
    /// A failed sweep (database unreachable) is retried after a growing, jittered back-off
    /// capped at 10 s; the first success brings back the normal interval.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut backoff = shop_runtime::backoff::forever(Duration::from_secs(10));
        loop {
            let wait = match self.sweep().await {
                Ok(_) => {
                    backoff = shop_runtime::backoff::forever(Duration::from_secs(10));
                    self.config.sweep_interval
                }
                Err(err) => {
                    tracing::warn!(error = %err, "saga sweep failed");
                    backoff.next().unwrap_or(self.config.sweep_interval)
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The order's end, in the saga's last transaction: its status, and its event in the outbox.
///
/// The status only moves from `PENDING`, so even a transition recorded twice (it cannot be,
/// under the lease) could not confirm a cancelled order or the reverse.
///
/// The event is written in the transaction that ends the saga (pattern BEY-01), so the end
/// and its announcement commit together: no confirmed order lacks its `OrderConfirmed`, and
/// no event announces an end that rolled back. An outbox error comes back as a
/// `sqlx::Error::Protocol`, so the caller's one error type covers it; the transaction then
/// rolls back and the order stays `PENDING` until the step is recorded again.
async fn finish(
    tx: &mut PgConnection,
    order_id: Uuid,
    row: &Row,
    step: Step,
    reason: Option<Reason>,
) -> Result<(), sqlx::Error> {
    let status = if step == Step::Confirmed {
        "CONFIRMED"
    } else {
        "CANCELLED"
    };
    // Cancelled without a reason cannot happen (every path to Cancelled sets one); the
    // table's CHECK would refuse it, so fall back to the most general reason.
    let reason = (step == Step::Cancelled).then(|| reason.unwrap_or(Reason::Timeout));
    sqlx::query(
        "UPDATE orders SET status = $2, cancellation_reason = $3, updated_at = now()
         WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(order_id)
    .bind(status)
    .bind(reason.map(Reason::as_str))
    .execute(&mut *tx)
    .await?;
    let total = Money {
        amount: row.total_amount,
        currency: row.currency.clone(),
    };
    let published = match reason {
        None => {
            let items = event_lines(&mut *tx, order_id, &row.currency).await?;
            enqueue_event(
                &mut *tx,
                &OrderConfirmed {
                    order_id,
                    user_id: row.user_id,
                    items,
                    total,
                },
            )
            .await
        }
        Some(reason) => {
            enqueue_event(
                &mut *tx,
                &OrderCancelled {
                    order_id,
                    user_id: row.user_id,
                    reason: reason.as_str().to_owned(),
                    total,
                },
            )
            .await
        }
    };
    published.map_err(|err| sqlx::Error::Protocol(format!("outbox: {err}")))?;
    Ok(())
}

/// The order's lines as events carry them, in the order they were placed.
///
/// Public because the API builds `OrderPlaced` and its order views from the same query, so
/// every event and answer describes the lines identically.
pub async fn event_lines(
    conn: &mut PgConnection,
    order_id: Uuid,
    currency: &str,
) -> Result<Vec<OrderLine>, sqlx::Error> {
    let rows: Vec<(String, String, String, i32, i64)> = sqlx::query_as(
        "SELECT product_id, sku, name, quantity, unit_price_amount FROM order_lines
         WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(product_id, sku, name, quantity, amount)| OrderLine {
            product_id,
            sku,
            name,
            quantity: u32::try_from(quantity).unwrap_or_default(),
            unit_price: Money {
                amount,
                currency: currency.to_owned(),
            },
        })
        .collect())
}

/// The `outcome` label of the step metrics, also written as `last_error` when a retried step's
/// participant gave no detail.
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Done => "done",
        Outcome::Refused(_) => "refused",
        Outcome::NothingToUndo => "nothing_to_undo",
        Outcome::AlreadyCaptured => "already_captured",
        Outcome::Unknown => "unknown",
    }
}

/// A duration as whole milliseconds for SQL interval arithmetic, saturating.
///
/// Every time the driver writes is computed by the database (`now()`, or `now() + <millis> *
/// interval '1 millisecond'`), so the process's clock never enters a saga row.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A number in `[0, 1)` for back-off jitter; quality does not matter, spread does.
///
/// Taken from the clock's nanoseconds rather than a random number generator: sagas that
/// failed together reach this line at slightly different instants, which is all the spread
/// a back-off needs, and it adds no dependency.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

/// `ORDER_CRASH_AFTER_STEP`: test-only fault injection (refused by release builds, see
/// [`crate::config`]). Dies the hardest way there is — no destructors, no graceful shutdown,
/// no flushing — right after the transition out of `step` committed, as a power cut would.
fn crash(order_id: Uuid, step: Step) -> ! {
    tracing::error!(%order_id, %step, "ORDER_CRASH_AFTER_STEP: aborting the process");
    std::process::abort()
}
