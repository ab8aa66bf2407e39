//! The order saga as a state machine: the one place to read what happens to an order, step by
//! step. Nothing here does I/O; [`crate::driver`] runs the steps, persists each transition and
//! calls [`before`] and [`after`] to learn what comes next.
//!
//! ```text
//!  (POST /orders: items priced by catalog, order + saga row + OrderPlaced in one transaction)
//!        │
//!        ▼
//!   ┌─────────┐ reserved ┌───────────┐ authorized ┌─────────────┐ committed ┌─────────┐ captured
//!   │ Reserve ├─────────▶│ Authorize ├───────────▶│ CommitStock ├──────────▶│ Capture ├─────────▶ CONFIRMED
//!   └────┬────┘          └─────┬─────┘            └──────┬──────┘  (pivot)  └────┬────┘
//!        │ out of stock        │ declined, refused,      │ reservation           │ refused, or failing
//!        │                     │ timeout, cancelled      │ expired               │ N times: PARKED for
//!        ▼                     ▼ by user                 ▼                       ▼ an operator (resume)
//!    CANCELLED          ┌──────────────┐  voided   ┌──────────────┐
//!                       │ ReleaseStock │◀──────────┤ VoidPayment  │
//!                       └──────┬───────┘           └──────────────┘
//!                              ▼
//!                          CANCELLED      ◀── timeout / cancelled_by_user while in Reserve go to ReleaseStock
//! ```
//!
//! Three kinds of step (Garcia-Molina's sagas, in Richardson's words):
//!
//! * **compensatable** — `Reserve`, `Authorize`: undone by `ReleaseStock` and `VoidPayment`. While
//!   the saga is here, a user's cancellation or the saga's time limit sends it to compensation.
//!   Once an `Authorize` may have reached payment-service, *every* way back goes through
//!   `VoidPayment`, a refusal included: a refusal says nothing about an earlier attempt that
//!   timed out on our side but was approved on payment's, and payment's `Void` is a tombstone
//!   (it voids what exists and refuses any authorization that lands later), so the saga never
//!   has to guess whether money is held.
//! * **pivot** — `CommitStock`: once inventory has committed, stock is gone for good (inventory has
//!   no "un-commit"), so the saga can only go forward. Cancelling is refused from here on (409).
//!   A commit that inventory *refuses* (the reservation expired because the saga was too slow)
//!   proves nothing was committed, so the saga can still compensate then.
//! * **retriable** — `Capture`: retried while the answer is unknown (payment unreachable). A
//!   *refusal* is told apart from an unknown outcome: a real provider refuses captures (an
//!   expired authorization), and retrying a refusal forever would hide it. Such a saga, and any
//!   step past the pivot or in compensation that failed [`State::park_after`] times in a row, is
//!   **parked**: it stops, shows in `GET /api/v1/admin/sagas/parked` and the
//!   `order_sagas_parked` gauge, and an operator resumes it once the cause is fixed.
//!
//! Every participant call is idempotent per order id (the `.proto` files say so), which is what
//! makes "persist, call, persist" safe: a crash between the call and the second write repeats the
//! call, and the repetition has no further effect.
//!
//! ## Why pure functions
//!
//! [`before`] and [`after`] take the saga's state, a classified answer and the time, and
//! return what to do; they never call a participant, read a clock or touch the database. The
//! tests at the end of this file therefore walk every path of the diagram (declines,
//! refusals past the pivot, late authorizations, parking) in microseconds, and the driver
//! cannot take a decision that is not written here. The time comes in as a parameter because
//! the driver reads it from the database, the one clock every instance shares.
//!
//! ## Why reserve before authorize
//!
//! The order of the forward steps is a decision about what is cheap to undo. A reservation
//! costs nothing to release and holds nobody's money; an authorization holds the customer's
//! funds until it is voided, and a capture takes them. So the saga asks inventory first, asks
//! payment only once the goods are set aside, and captures only after the stock is committed:
//! a customer is never charged for an order that cannot ship, and the common failure (out of
//! stock) never touches the card. `docs/corrections.md` names the source documents' sagas
//! that charge first and says why this one does not.
//!
//! ## Patterns
//!
//! This file is patterns DATA-04 (a saga instead of a distributed transaction), DATA-05
//! (orchestrated), DATA-07 (compensating transactions) and BEY-12 (a pivot step and late
//! answers) of `docs/patterns.md`, each with its test below; the design is ADR 0009.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};

/// Where a saga is: the step to run next, or the end it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reserve stock for every line (inventory, all or nothing). The first step of every saga:
    /// `POST /orders` creates the saga row here.
    Reserve,
    /// Authorize the total on the customer's card (payment). The only step that needs the
    /// sealed card; leaving it deletes the card's row.
    Authorize,
    /// Turn the reservation into a permanent decrement (inventory). The pivot: from here on
    /// the user can no longer cancel and the time limit no longer applies.
    CommitStock,
    /// Capture the authorized payment (payment). Retried while unanswered, up to
    /// [`State::park_after`] attempts; a refusal parks at once.
    Capture,
    /// Compensation: void the authorization, or refund it if it was captured after all.
    /// Entered from `Authorize` and from a refused `CommitStock`, whatever the reason.
    VoidPayment,
    /// Compensation: give the reserved stock back. Always the last step before `Cancelled`
    /// except after a refused `Reserve`, which reserved nothing.
    ReleaseStock,
    /// Terminal: the order is `CONFIRMED`.
    Confirmed,
    /// Terminal: the order is `CANCELLED` with a [`Reason`].
    Cancelled,
}

impl Step {
    /// Every step; [`Step::from_str`] searches it, so a step added to the enum must be added
    /// here too, or it could be written to the database but not read back.
    pub const ALL: [Step; 8] = [
        Step::Reserve,
        Step::Authorize,
        Step::CommitStock,
        Step::Capture,
        Step::VoidPayment,
        Step::ReleaseStock,
        Step::Confirmed,
        Step::Cancelled,
    ];

    /// The name stored in the `order_sagas.step` column and used in metrics and logs.
    ///
    /// Stored data: renaming a step would leave existing rows unreadable (the driver stops on
    /// a step it cannot parse rather than guessing), so these strings only ever get added to.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Authorize => "authorize",
            Self::CommitStock => "commit_stock",
            Self::Capture => "capture",
            Self::VoidPayment => "void_payment",
            Self::ReleaseStock => "release_stock",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the saga has ended: the sweeper never picks it up again and the order's status
    /// is final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Confirmed | Self::Cancelled)
    }

    /// Whether the success of this step must be written down before the next step is called.
    ///
    /// True of every step but the pivot. `Authorize` must be persisted past (a later way back
    /// goes through `VoidPayment`), and so must every compensation. `CommitStock`'s success
    /// need not be: the row already says `CommitStock`, which no cancellation or time limit can
    /// turn back, and repeating the commit after a crash is answered from inventory's record.
    /// So the driver calls `Capture` straight away and writes both steps with `Capture`'s
    /// answer, one commit fewer per order.
    pub fn records_success_first(self) -> bool {
        !matches!(self, Self::CommitStock)
    }

    /// Whether the saga may still be turned back (by the user or by its time limit).
    ///
    /// Only the two steps before the pivot. The API uses it to answer a cancellation of a
    /// later step with 409, and [`before`] to decide whether to look at the flag at all.
    pub fn is_compensatable(self) -> bool {
        matches!(self, Self::Reserve | Self::Authorize)
    }
}

/// The stored name, so logs and metrics read like the database.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads `order_sagas.step`; a name it does not know is an error, never a guessed step.
impl FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a saga step"))
    }
}

/// Why an order was cancelled: the `cancellation_reason` the API shows.
///
/// Set when the saga turns to compensation and carried unchanged through `VoidPayment` and
/// `ReleaseStock` to `Cancelled`, so the customer learns the first cause, not the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Payment declined or refused the card, for any reason but insufficient funds. Also the
    /// reason when order-service cannot open the card it sealed, which the customer can only
    /// fix the same way: with a new order.
    PaymentDeclined,
    /// Payment declined for lack of funds: worth telling the customer apart.
    InsufficientFunds,
    /// Inventory could not reserve every line.
    OutOfStock,
    /// The saga's time limit passed before the pivot, or the reservation lapsed before the
    /// commit (the saga was too slow either way).
    Timeout,
    /// The customer cancelled before the pivot. Wins over `Timeout` when both apply, since
    /// the customer asked.
    CancelledByUser,
}

impl Reason {
    /// Every reason, for the API's enum and for reading rows back. The published enum is built
    /// from this list and [`Reason::from_str`] searches it, so a reason missing here could be
    /// stored but neither read back nor documented.
    pub const ALL: [Reason; 5] = [
        Reason::PaymentDeclined,
        Reason::InsufficientFunds,
        Reason::OutOfStock,
        Reason::Timeout,
        Reason::CancelledByUser,
    ];

    /// The stored and published name (`order_sagas.reason`, the order's
    /// `cancellation_reason`, `OrderCancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentDeclined => "payment_declined",
            Self::InsufficientFunds => "insufficient_funds",
            Self::OutOfStock => "out_of_stock",
            Self::Timeout => "timeout",
            Self::CancelledByUser => "cancelled_by_user",
        }
    }
}

/// The `cancellation_reason` enum of the public API, from [`Reason::ALL`].
impl utoipa::PartialSchema for Reason {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(Reason::ALL.map(Reason::as_str)))
            .description(Some("Why the order was cancelled."))
            .into()
    }
}

/// Named `CancellationReason` in the document, the name clients see next to the order's
/// `cancellation_reason`.
impl utoipa::ToSchema for Reason {
    fn name() -> std::borrow::Cow<'static, str> {
        "CancellationReason".into()
    }
}

/// The stored name, as the API shows it.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads `order_sagas.reason`; like [`Step`]'s, an unknown name is an error rather than a
/// guess, so a row written by a newer version stops the run instead of being misread.
impl FromStr for Reason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a cancellation reason"))
    }
}

/// What the driver knows about a saga when it decides (read from its row, under its lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The step to run (or the end reached).
    pub step: Step,
    /// Set once the saga turned to compensation: the reason the order will be cancelled with.
    pub reason: Option<Reason>,
    /// Attempts of the current step so far, this one included. Counted afresh for each step
    /// (a transition writes 0, or 1 when it also records the next step's first attempt) and
    /// from zero again when an operator resumes a parked saga.
    pub attempts: u32,
    /// After this many attempts without an answer, a step that cannot give up (past the pivot,
    /// or a compensation) is parked for an operator instead of retried forever.
    pub park_after: u32,
    /// The user asked to cancel (`POST /orders/{id}/cancel`). Read again under the row lock
    /// before every transition, so a cancellation that arrives during a call is seen when the
    /// call answers.
    pub cancel_requested: bool,
    /// After this the saga gives up (before the pivot) and compensates with `timeout`.
    /// Written once, with the database's clock, when the order is placed.
    pub deadline: DateTime<Utc>,
    /// When an `Authorize` was last sent, if ever. A void that finds no authorization keeps
    /// looking until [`LATE_AUTHORIZATION`] after it, so one landing late is still voided.
    pub authorize_sent_at: Option<DateTime<Utc>>,
    /// How long after the last `Authorize` one may still land (payment-service still working on
    /// a call whose deadline we gave up on).
    pub late_authorization: Duration,
}

/// The default of [`State::late_authorization`]: longer than payment-service can take.
///
/// [`crate::config`] uses it as the default of `ORDER_LATE_AUTHORIZATION_SECONDS`, and the
/// driver fills [`State::late_authorization`] from the configuration.
pub const LATE_AUTHORIZATION: Duration = Duration::from_secs(60);

/// What a participant answered to a step, classified.
///
/// [`crate::participants`] turns every gRPC answer and status into one of these, so no proto
/// type reaches the state machine, and the state machine never has to know which code a
/// participant used for "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The participant did it (or had already done it: every call is idempotent).
    Done,
    /// The participant said no, for good: no stock, card declined, reservation expired. The
    /// reason is what the order is cancelled with when the step is before the pivot; later
    /// steps decide their own (a refused commit is `timeout`, a refused capture parks).
    Refused(Reason),
    /// Compensation only: there was nothing to undo. For a void it means no authorization
    /// (yet), which only a payment-service without tombstones answers; the saga then keeps
    /// looking for a late one for [`State::late_authorization`]. A refund that finds nothing
    /// captured, and a `NOT_FOUND` from Release, are read the same way.
    NothingToUndo,
    /// Payment answered that the authorization was already captured: refund instead of void.
    /// Refund only follows such an answer; the saga never captures and then compensates itself.
    AlreadyCaptured,
    /// No answer we can act on: unreachable, deadline exceeded, circuit open, internal error.
    /// Safe to repeat later, since every call is idempotent.
    Unknown,
}

/// What the driver does next.
///
/// The whole vocabulary of the driver: it persists a `Go`, reschedules a `Retry` with a
/// back-off, and stops on a `Park`. There is no "fail": a saga either moves, waits or asks a
/// person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Persist this step (and reason) and carry on with it at once. The same step and reason
    /// for a saga that has already ended, so recording it twice changes nothing.
    Go(Step, Option<Reason>),
    /// Stay on the current step; try again after a back-off ([`retry_delay`]). The lease is
    /// given up meanwhile, so any instance may take the next attempt.
    Retry,
    /// Stop here, on the current step, until an operator resumes the saga: a refusal past the
    /// pivot, or too many unanswered attempts of a step that cannot turn back.
    Park,
}

/// Where compensation starts from `step`: undo everything that may have happened, including
/// what a lost answer may have done, so the first compensation covers the step itself.
///
/// Only ever called for `Reserve`, `Authorize` and a refused `CommitStock`; the last arm keeps
/// the match total for steps that never compensate.
fn compensate_from(step: Step, reason: Reason) -> Next {
    match step {
        // A Reserve whose answer we never saw may have reserved: release (a no-op otherwise).
        Step::Reserve => Next::Go(Step::ReleaseStock, Some(reason)),
        // An Authorize whose answer we never saw may have authorized: void, then release.
        Step::Authorize | Step::CommitStock => Next::Go(Step::VoidPayment, Some(reason)),
        other => Next::Go(other, Some(reason)),
    }
}

/// Before running the current step: does the saga turn to compensation without calling anyone?
/// Only while it is compensatable: the user cancelled, or its time limit passed.
///
/// A cancellation wins over the time limit when both apply, so the customer who asked sees
/// `cancelled_by_user`.
///
/// The driver asks this before every call and again, inside [`after`], when a forward step
/// succeeded: a cancellation that arrived during the call is not lost.
pub fn before(state: &State, now: DateTime<Utc>) -> Option<Next> {
    if !state.step.is_compensatable() {
        return None;
    }
    if state.cancel_requested {
        return Some(compensate_from(state.step, Reason::CancelledByUser));
    }
    if now >= state.deadline {
        return Some(compensate_from(state.step, Reason::Timeout));
    }
    None
}

/// After running the current step: where the participant's answer leads.
///
/// The match names every step explicitly (no catch-all over steps), so a new step does not
/// compile until it has its decisions.
///
/// `now` is the database's time read under the saga row's lock, so the deadline and the late
/// authorization window are judged on the clock that wrote them.
pub fn after(state: &State, outcome: Outcome, now: DateTime<Utc>) -> Next {
    use Outcome::*;
    use Step::*;
    match (state.step, outcome) {
        // Forward steps that can still be turned back: a success arriving after a cancellation
        // or after the time limit is compensated instead of built upon.
        (Reserve | Authorize, Done) => match before(state, now) {
            Some(compensation) => compensation,
            None if state.step == Reserve => Next::Go(Authorize, None),
            None => Next::Go(CommitStock, None),
        },
        // All or nothing: a refused reservation reserved nothing.
        (Reserve, Refused(reason)) => Next::Go(Cancelled, Some(reason)),
        // A declined card authorized nothing *in this attempt*, but an earlier attempt whose
        // answer we never saw may have: the way back goes through the void (a no-op on a
        // declined payment), never straight to the stock.
        (Authorize, Refused(reason)) => Next::Go(VoidPayment, Some(reason)),
        (Reserve | Authorize, _) => before(state, now).unwrap_or(Next::Retry),

        (CommitStock, Done) => Next::Go(Capture, None),
        // Inventory refused: the reservation lapsed, so nothing was committed and the saga can
        // still compensate (it was too slow: `timeout`).
        (CommitStock, Refused(_)) => compensate_from(CommitStock, Reason::Timeout),
        // Past the pivot an unknown answer is retried, never compensated: it may have committed.
        (CommitStock, _) => retry_or_park(state),

        (Capture, Done) => Next::Go(Confirmed, None),
        // The provider said no (an expired authorization): retrying will not change that, and
        // the stock is committed, so a person decides.
        (Capture, Refused(_)) => Next::Park,
        (Capture, _) => retry_or_park(state),

        (VoidPayment, Done | AlreadyCaptured) => Next::Go(ReleaseStock, state.reason),
        // Nothing to void yet; an Authorize still in flight at payment-service may land later.
        (VoidPayment, NothingToUndo | Refused(_)) => {
            let window_open = state.authorize_sent_at.is_some_and(|sent| {
                now < sent
                    + chrono::Duration::from_std(state.late_authorization).unwrap_or_default()
            });
            if window_open {
                Next::Retry
            } else {
                Next::Go(ReleaseStock, state.reason)
            }
        }
        // A compensation must complete: retried until the participant answers (parked, visibly,
        // if it keeps failing).
        (VoidPayment, Unknown) => retry_or_park(state),

        (ReleaseStock, Done | NothingToUndo | Refused(_) | AlreadyCaptured) => {
            Next::Go(Cancelled, state.reason)
        }
        (ReleaseStock, Unknown) => retry_or_park(state),

        // Terminal states stay where they are.
        (Confirmed | Cancelled, _) => Next::Go(state.step, state.reason),
    }
}

/// Another attempt later, or, after [`State::park_after`] attempts, a stop for an operator.
///
/// Used only where giving up is not an option (past the pivot, and in compensation); before
/// the pivot the deadline ends the retries instead.
fn retry_or_park(state: &State) -> Next {
    if state.attempts >= state.park_after {
        Next::Park
    } else {
        Next::Retry
    }
}

/// The delay before the `attempt`-th retry of a step (1-based): exponential from `base`, capped,
/// then spread over the upper half of that ceiling by `jitter` (what is often called "equal
/// jitter"), so sagas that failed together (a participant went down) do not all come back at
/// the same instant. `jitter` is a number in `[0, 1)`; values outside `[0, 1]` are clamped.
///
/// A pure function of its inputs, so the test below checks the curve exactly; the driver
/// passes the attempt count from the saga row, `RETRY_BASE` and `ORDER_RETRY_MAX_MS`.
pub fn retry_delay(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
    let ceiling = exponential.min(cap);
    // At least half the ceiling, so a retry never comes back immediately.
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: Step) -> State {
        State {
            step,
            reason: None,
            attempts: 1,
            park_after: 20,
            cancel_requested: false,
            deadline: Utc::now() + chrono::Duration::seconds(30),
            authorize_sent_at: None,
            late_authorization: Duration::from_secs(60),
        }
    }

    fn run(state: &State, outcome: Outcome) -> Next {
        after(state, outcome, Utc::now())
    }

    /// With every participant saying yes, the saga visits the four forward steps in order and
    /// ends confirmed without a reason; nothing turns it around on the way.
    #[test]
    fn the_happy_path_goes_forward_step_by_step_to_confirmed() {
        let mut state = at(Step::Reserve);
        let mut path = vec![state.step];
        while !state.step.is_terminal() {
            assert_eq!(before(&state, Utc::now()), None);
            match run(&state, Outcome::Done) {
                Next::Go(step, reason) => {
                    state.step = step;
                    state.reason = reason;
                }
                Next::Retry | Next::Park => panic!("a success is never retried or parked"),
            }
            path.push(state.step);
        }
        assert_eq!(
            path,
            [
                Step::Reserve,
                Step::Authorize,
                Step::CommitStock,
                Step::Capture,
                Step::Confirmed
            ]
        );
        assert_eq!(state.reason, None);
    }

    /// A refused reservation held nothing, so the saga ends at once: no void, no release.
    #[test]
    fn out_of_stock_cancels_without_authorizing_or_releasing() {
        assert_eq!(
            run(&at(Step::Reserve), Outcome::Refused(Reason::OutOfStock)),
            Next::Go(Step::Cancelled, Some(Reason::OutOfStock))
        );
    }

    /// A decline goes back through the void and the release, and the decline's own reason
    /// survives both compensations to the end.
    #[test]
    fn a_declined_card_voids_then_releases_the_stock_then_cancels_with_its_reason() {
        for reason in [Reason::PaymentDeclined, Reason::InsufficientFunds] {
            // Through the void: an earlier attempt whose answer was lost may have authorized.
            assert_eq!(
                run(&at(Step::Authorize), Outcome::Refused(reason)),
                Next::Go(Step::VoidPayment, Some(reason))
            );
            let mut voiding = at(Step::VoidPayment);
            voiding.reason = Some(reason);
            assert_eq!(
                run(&voiding, Outcome::Done),
                Next::Go(Step::ReleaseStock, Some(reason))
            );
            let mut releasing = at(Step::ReleaseStock);
            releasing.reason = Some(reason);
            assert_eq!(
                run(&releasing, Outcome::Done),
                Next::Go(Step::Cancelled, Some(reason))
            );
        }
    }

    /// Before the pivot an unanswered step is retried until the deadline, then compensated with
    /// `timeout`, even when a success arrives after the deadline.
    #[test]
    fn unknown_answers_are_retried_until_the_time_limit_then_compensated() {
        let mut state = at(Step::Authorize);
        assert_eq!(run(&state, Outcome::Unknown), Next::Retry);
        state.deadline = Utc::now() - chrono::Duration::seconds(1);
        let timeout = Next::Go(Step::VoidPayment, Some(Reason::Timeout));
        assert_eq!(run(&state, Outcome::Unknown), timeout);
        assert_eq!(before(&state, Utc::now()), Some(timeout));
        // A late success is compensated too: the saga already gave up.
        assert_eq!(run(&state, Outcome::Done), timeout);

        state.step = Step::Reserve;
        assert_eq!(
            before(&state, Utc::now()),
            Some(Next::Go(Step::ReleaseStock, Some(Reason::Timeout)))
        );
    }

    /// From `CommitStock` on, neither a cancellation nor an expired deadline turns the saga
    /// around: an unknown answer is only retried.
    #[test]
    fn past_the_pivot_nothing_turns_back() {
        for step in [Step::CommitStock, Step::Capture] {
            let mut state = at(step);
            state.cancel_requested = true;
            state.deadline = Utc::now() - chrono::Duration::seconds(1);
            assert_eq!(before(&state, Utc::now()), None, "{step}");
            assert_eq!(run(&state, Outcome::Unknown), Next::Retry, "{step}");
        }
        assert_eq!(
            run(&at(Step::Capture), Outcome::Done),
            Next::Go(Step::Confirmed, None)
        );
    }

    /// A refused capture parks at once; every step that cannot give up parks on its
    /// `park_after`-th unanswered attempt and not before; a step before the pivot never parks.
    #[test]
    fn a_refused_capture_parks_and_so_do_steps_that_keep_failing_past_the_pivot() {
        assert_eq!(
            run(
                &at(Step::Capture),
                Outcome::Refused(Reason::PaymentDeclined)
            ),
            Next::Park
        );
        for step in [
            Step::CommitStock,
            Step::Capture,
            Step::VoidPayment,
            Step::ReleaseStock,
        ] {
            let mut state = at(step);
            state.attempts = 19;
            assert_eq!(run(&state, Outcome::Unknown), Next::Retry, "{step}");
            state.attempts = 20;
            assert_eq!(run(&state, Outcome::Unknown), Next::Park, "{step}");
        }
        // Before the pivot the time limit decides, never parking.
        let mut authorizing = at(Step::Authorize);
        authorizing.attempts = 100;
        assert_eq!(run(&authorizing, Outcome::Unknown), Next::Retry);
    }

    /// A refused commit means nothing was committed, so the saga compensates (through the void)
    /// with `timeout`, whatever reason the refusal carried.
    #[test]
    fn a_commit_refused_because_the_reservation_expired_compensates() {
        assert_eq!(
            run(&at(Step::CommitStock), Outcome::Refused(Reason::OutOfStock)),
            Next::Go(Step::VoidPayment, Some(Reason::Timeout))
        );
    }

    /// A cancellation before the pivot compensates from the current step, including the effect
    /// of a call that succeeded while the cancellation came in.
    #[test]
    fn cancellation_by_the_user_compensates_what_was_done() {
        let mut reserving = at(Step::Reserve);
        reserving.cancel_requested = true;
        assert_eq!(
            before(&reserving, Utc::now()),
            Some(Next::Go(Step::ReleaseStock, Some(Reason::CancelledByUser)))
        );
        // The reservation succeeded while the cancellation came in: release it.
        assert_eq!(
            run(&reserving, Outcome::Done),
            Next::Go(Step::ReleaseStock, Some(Reason::CancelledByUser))
        );
        let mut authorizing = at(Step::Authorize);
        authorizing.cancel_requested = true;
        assert_eq!(
            run(&authorizing, Outcome::Done),
            Next::Go(Step::VoidPayment, Some(Reason::CancelledByUser))
        );
    }

    /// A void that finds no authorization waits only while an `Authorize` sent recently might
    /// still land; once that window has passed, or if none was ever sent, it moves on.
    #[test]
    fn a_void_that_finds_nothing_waits_for_a_late_authorization() {
        let mut voiding = at(Step::VoidPayment);
        voiding.reason = Some(Reason::Timeout);
        // Never sent an Authorize: nothing can land.
        assert_eq!(
            run(&voiding, Outcome::NothingToUndo),
            Next::Go(Step::ReleaseStock, Some(Reason::Timeout))
        );
        // Sent one a moment ago: it may still land; look again later.
        voiding.authorize_sent_at = Some(Utc::now());
        assert_eq!(run(&voiding, Outcome::NothingToUndo), Next::Retry);
        // Long enough ago: it cannot land any more.
        voiding.authorize_sent_at = Some(Utc::now() - chrono::Duration::seconds(61));
        assert_eq!(
            run(&voiding, Outcome::NothingToUndo),
            Next::Go(Step::ReleaseStock, Some(Reason::Timeout))
        );
        // A voided or refunded payment moves on; an unanswered void is repeated.
        assert_eq!(
            run(&voiding, Outcome::Done),
            Next::Go(Step::ReleaseStock, Some(Reason::Timeout))
        );
        assert_eq!(
            run(&voiding, Outcome::AlreadyCaptured),
            Next::Go(Step::ReleaseStock, Some(Reason::Timeout))
        );
        assert_eq!(run(&voiding, Outcome::Unknown), Next::Retry);
    }

    /// A compensation ignores the deadline: it is retried while unanswered and ends the saga
    /// cancelled once it is done.
    #[test]
    fn compensations_are_retried_until_they_complete() {
        let mut releasing = at(Step::ReleaseStock);
        releasing.reason = Some(Reason::Timeout);
        releasing.deadline = Utc::now() - chrono::Duration::hours(1);
        assert_eq!(before(&releasing, Utc::now()), None);
        assert_eq!(run(&releasing, Outcome::Unknown), Next::Retry);
        assert_eq!(
            run(&releasing, Outcome::Done),
            Next::Go(Step::Cancelled, Some(Reason::Timeout))
        );
    }

    /// Every step and reason in `ALL` reads back as itself from its stored name, and a name
    /// that is no step is an error rather than a default.
    #[test]
    fn names_round_trip() {
        for step in Step::ALL {
            assert_eq!(step.as_str().parse::<Step>(), Ok(step));
        }
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
        }
        assert!("shipped".parse::<Step>().is_err());
    }

    /// The delay doubles per attempt, never exceeds the cap and is never below half the
    /// ceiling, so a retry never comes back at once.
    #[test]
    fn retry_delays_grow_are_capped_and_never_zero() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(retry_delay(1, base, cap, 0.0), Duration::from_millis(50));
        assert_eq!(retry_delay(1, base, cap, 0.999_999).as_millis(), 99);
        assert_eq!(retry_delay(4, base, cap, 0.0), Duration::from_millis(400));
        assert_eq!(retry_delay(40, base, cap, 0.0), Duration::from_millis(2500));
        assert!(retry_delay(40, base, cap, 1.0) <= cap);
    }
}
