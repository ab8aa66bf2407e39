//! The state machine, as a pure function of a payment's completed operations.
//!
//! A payment has no mutable `state` column: its state is what replaying its completed
//! operations (the append-only `payment_operations` rows) gives. [`Ledger::replay`] does that,
//! and [`Ledger::decide`] says what a new request may do — replay an earlier result, go ahead
//! (moving how much money), or be refused with a reason — so every rule of the README's
//! diagram is in this file, and tested here without a database.
//!
//! ```text
//!              Authorize                Capture                  Refund (part)
//!   (none) ──────────────▶ AUTHORIZED ───────────▶ CAPTURED ────────────────▶ PARTIALLY_REFUNDED
//!   PENDING                     │                      │                          │      │ Refund (part)
//!      │ │ declined             │ Void                 │ Refund (all)             │      └──────┐
//!      │ ▼                      ▼                      ▼                          ▼ Refund (rest) │
//!      │ DECLINED             VOIDED                REFUNDED ◀───────────────────────────────────┘
//!      │                        ▲
//!      └────────────────────────┘ Void (no authorization outcome known: a tombstone)
//! ```
//!
//! The void of a PENDING payment is what settles money under uncertainty: an authorization
//! that timed out or lost its answer may or may not hold money at the provider, and the order
//! gave up on it. The void is carried out at the provider by the authorization's key, and the
//! VOIDED state is final: any later Authorize is refused, so a retry still on its way cannot
//! hold money for a cancelled order.
//!
//! ## Why derive the state
//!
//! A stored `state` column would be a second record of what the operation log already says,
//! and the two could disagree after a crash between writes. Folding the log cannot disagree
//! with it, and the log is what an auditor asks for anyway. The price is a replay on every
//! read, which is a handful of rows per payment (ADR 0008 notes when a snapshot would pay off).
//!
//! Nothing here touches the database, the provider or the clock: [`crate::payments`] loads the
//! rows, asks this module, and carries out the answer. That split is what lets the tests at
//! the bottom of the file walk every transition in microseconds.
//!
//! Where it sits: [`crate::payments`] replays and decides twice for every operation that
//! calls the provider, once when it begins (under the payment's lock) and again when it
//! records the result (the state may have moved meanwhile); the HTTP API replays to show a
//! customer the state; the reconciler reads the replayed state to know what to ask the
//! provider. None of them keeps a state of its own. This is the "partly" of pattern DATA-09 (event sourcing) in `docs/patterns.md`:
//! one aggregate, folded from its log, while events still leave through the outbox.

use std::fmt;

/// The four things a caller can ask for.
///
/// Also the `operation` column of `payment_operations` and part of the idempotency key sent to
/// the provider (`<payment>:<operation>:<key>`), so the names below are stored data: renaming
/// one would orphan existing rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Hold the order's amount on the card; creates the payment (one per order). Sent by the
    /// saga once the stock is reserved.
    Authorize,
    /// Take the whole held amount; the only capture a payment gets. Sent by the saga once the
    /// stock is committed.
    Capture,
    /// Release a hold that was never captured, or settle an authorization whose outcome is
    /// unknown (see the module documentation).
    Void,
    /// Give captured money back, whole or in parts. The saga sends one, under the empty key,
    /// when its void finds the payment already captured.
    Refund,
}

impl Operation {
    /// The stored and logged name (`authorize`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Capture => "capture",
            Self::Void => "void",
            Self::Refund => "refund",
        }
    }

    /// The inverse of [`Operation::as_str`]; `None` for anything else, so a bad stored value
    /// or `PAYMENT_CRASH_AFTER_PROVIDER` setting is noticed rather than guessed.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "authorize" => Some(Self::Authorize),
            "capture" => Some(Self::Capture),
            "void" => Some(Self::Void),
            "refund" => Some(Self::Refund),
            _ => None,
        }
    }
}

/// For `PAYMENT_CRASH_AFTER_PROVIDER`, read through the shared configuration reader; the
/// error lists the four names so the message says what would have been accepted.
impl std::str::FromStr for Operation {
    type Err = &'static str;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name).ok_or("expected authorize, capture, void or refund")
    }
}

/// The stored name, so logs, metrics labels and provider keys all spell it the same way.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a completed operation did (the `outcome` of a `completed` row).
///
/// Only outcomes that change the payment are here. A refused request is recorded too (an
/// auditor wants to see a capture-after-void attempt), but with another status, so it never
/// reaches [`Ledger::replay`] and cannot move money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider holds the amount: the payment is authorized.
    Approved,
    /// The provider refused the card; nothing is held. An answer, not an error.
    Declined,
    /// The held amount was taken.
    Captured,
    /// The hold was released (or, for a pending payment, cancelled by key).
    Voided,
    /// Some or all captured money went back; several refunds add up.
    Refunded,
}

impl Outcome {
    /// The stored name (`approved`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Captured => "captured",
            Self::Voided => "voided",
            Self::Refunded => "refunded",
        }
    }

    /// The inverse of [`Outcome::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "approved" => Some(Self::Approved),
            "declined" => Some(Self::Declined),
            "captured" => Some(Self::Captured),
            "voided" => Some(Self::Voided),
            "refunded" => Some(Self::Refunded),
            _ => None,
        }
    }
}

/// A payment's state, derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created; its authorization is in flight (or was abandoned and awaits a retry).
    Pending,
    /// The amount is held on the card; Capture or Void may follow.
    Authorized,
    /// The provider refused; final. A Void is answered as already settled.
    Declined,
    /// The money was taken; only refunds may follow.
    Captured,
    /// The hold was released, or the authorization cancelled before its outcome was known;
    /// final, and it refuses any later Authorize.
    Voided,
    /// Part of the captured amount went back; more refunds may follow up to the rest.
    PartiallyRefunded,
    /// Everything captured went back; final.
    Refunded,
}

/// The `state` enum of the public API, from the names [`State::as_str`] gives.
///
/// Written by hand from [`State::ALL`] so the document cannot list a state the code does not
/// have, or miss one it has.
impl utoipa::PartialSchema for State {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(State::ALL.map(State::as_str)))
            .into()
    }
}

impl utoipa::ToSchema for State {
    fn name() -> std::borrow::Cow<'static, str> {
        "PaymentState".into()
    }
}

impl State {
    /// Every state; a new variant that is not listed fails `every_state_is_listed`.
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Authorized,
        State::Declined,
        State::Captured,
        State::Voided,
        State::PartiallyRefunded,
        State::Refunded,
    ];

    /// The name the REST API shows. The gRPC API has its own enum (`PaymentStatus`), mapped
    /// in [`crate::grpc`], where `PENDING` has no value of its own.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Authorized => "AUTHORIZED",
            Self::Declined => "DECLINED",
            Self::Captured => "CAPTURED",
            Self::Voided => "VOIDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Refunded => "REFUNDED",
        }
    }
}

/// One completed operation, in the order it was recorded.
///
/// No time, no caller and no provider reference: nothing the rules depend on, so the rules
/// cannot come to depend on it by accident.
///
/// The part of a `payment_operations` row the rules need; [`crate::payments`] builds it from
/// the rows whose status is `completed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// What was asked.
    pub operation: Operation,
    /// The caller's idempotency key within the operation: empty for Authorize, Capture, Void
    /// and the saga's compensation refund; the caller's own key for a partial refund.
    pub key: String,
    /// What it did.
    pub outcome: Outcome,
    /// Minor units the operation moved (authorized, captured, refunded; 0 for a decline).
    pub amount: i64,
}

/// A payment's money, as its completed operations leave it.
///
/// All amounts are minor units of the payment's currency (a payment has one currency, fixed at
/// authorization), so they add without rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    /// Where the payment is.
    pub state: State,
    /// The amount held by the approval (0 before one). What a capture takes and a void
    /// releases.
    pub authorized: i64,
    /// The amount taken by the capture (0 before one). The ceiling of every refund.
    pub captured: i64,
    /// The sum of all refunds; never above `captured` ([`Ledger::decide`] refuses more).
    pub refunded: i64,
}

/// What a request may do, given the ledger.
///
/// Four answers rather than "ok or error" because a payment service has four honest replies: "you
/// already asked, here is what happened", "go ahead", "no, and here is why", and "nothing to
/// do, it is already so". Conflating the first and last with success or failure is what makes
/// retries of money movements dangerous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same operation (same key) already completed: answer with its result, index into
    /// the completed operations.
    Replay(usize),
    /// Go ahead; the operation moves this many minor units (0 for an Authorize, whose amount
    /// is the payment's, and for the void of a payment with no known outcome).
    Proceed(i64),
    /// Not allowed in this state; the reason tells the caller what happened instead. When it
    /// answers a request it is recorded as a `refused` row, so the audit trail shows the
    /// attempt.
    Refuse(String),
    /// Nothing to do and nothing to refuse: what the request asks for is already the case
    /// (a void of a declined payment: nothing is held). Answer with the completed operation
    /// at this index.
    AlreadySettled(usize),
}

impl Ledger {
    /// Folds the completed operations, oldest first.
    ///
    /// Total: any sequence gives a ledger. Sequences [`Ledger::decide`] would never allow (a
    /// capture without an approval) are not checked here; the database's uniqueness rules and
    /// the decisions that wrote the rows are what keep them out.
    pub fn replay(completed: &[Completed]) -> Self {
        let mut ledger = Self {
            state: State::Pending,
            authorized: 0,
            captured: 0,
            refunded: 0,
        };
        for op in completed {
            match op.outcome {
                Outcome::Approved => {
                    ledger.state = State::Authorized;
                    ledger.authorized = op.amount;
                }
                Outcome::Declined => ledger.state = State::Declined,
                Outcome::Captured => {
                    ledger.state = State::Captured;
                    ledger.captured = op.amount;
                }
                Outcome::Voided => ledger.state = State::Voided,
                Outcome::Refunded => {
                    ledger.refunded += op.amount;
                    ledger.state = if ledger.refunded >= ledger.captured {
                        State::Refunded
                    } else {
                        State::PartiallyRefunded
                    };
                }
            }
        }
        ledger
    }

    /// Decides a request for `operation` under idempotency `key`. `refund_amount` is the amount a
    /// refund asks for (`None`: everything not refunded yet).
    ///
    /// Replays come first: a retry must get the first call's answer even though the state may
    /// have moved on since. One exception: a capture is not replayed once money was refunded;
    /// a caller asking to capture a refunded payment is told so instead of reading "captured".
    pub fn decide(
        &self,
        completed: &[Completed],
        operation: Operation,
        key: &str,
        refund_amount: Option<i64>,
    ) -> Decision {
        let earlier = completed
            .iter()
            .position(|op| op.operation == operation && op.key == key);
        let refunded_after_capture =
            matches!(self.state, State::PartiallyRefunded | State::Refunded);
        match (operation, earlier) {
            (Operation::Capture, Some(_)) if refunded_after_capture => {
                return Decision::Refuse(
                    "The payment was captured and has since been refunded; it cannot be captured again."
                        .into(),
                );
            }
            (_, Some(index)) => return Decision::Replay(index),
            (_, None) => {}
        }
        let refuse = |reason: &str| Decision::Refuse(reason.to_owned());
        match (operation, self.state) {
            (Operation::Authorize, State::Pending) => Decision::Proceed(0),
            (Operation::Authorize, State::Voided) => refuse(
                "This order's payment was voided before its authorization completed; it cannot be authorized any more.",
            ),
            (Operation::Authorize, _) => {
                refuse("The order already has a payment with a different outcome.")
            }
            // Nothing is known to be held; the void is carried out by the authorization's key.
            (Operation::Void, State::Pending) => Decision::Proceed(0),
            (_, State::Pending) => refuse("The payment is not authorized (yet); authorize first."),
            (Operation::Void, State::Declined) => {
                let declined = completed
                    .iter()
                    .rposition(|op| op.outcome == Outcome::Declined)
                    .unwrap_or_default();
                Decision::AlreadySettled(declined)
            }
            (_, State::Declined) => {
                refuse("The payment was declined; there is nothing to capture or refund.")
            }
            (Operation::Capture, State::Authorized) => Decision::Proceed(self.authorized),
            (Operation::Capture, State::Voided) => {
                refuse("The payment was voided; it can no longer be captured.")
            }
            (Operation::Capture, _) => refuse("The payment was already captured."),
            (Operation::Void, State::Authorized) => Decision::Proceed(self.authorized),
            (Operation::Void, State::Voided) => refuse("The payment was already voided."),
            (Operation::Void, _) => {
                refuse("The payment was captured; it cannot be voided any more, refund it instead.")
            }
            (Operation::Refund, State::Authorized) => {
                refuse("The payment was not captured; void it instead of refunding.")
            }
            (Operation::Refund, State::Voided) => {
                refuse("The payment was voided; there is nothing to refund.")
            }
            (Operation::Refund, State::Refunded) => {
                refuse("Everything captured has already been refunded.")
            }
            (Operation::Refund, State::Captured | State::PartiallyRefunded) => {
                let remaining = self.captured - self.refunded;
                match refund_amount {
                    None => Decision::Proceed(remaining),
                    Some(amount) if amount <= remaining => Decision::Proceed(amount),
                    Some(amount) => Decision::Refuse(format!(
                        "A refund of {amount} exceeds what is left to refund ({remaining} of {} captured).",
                        self.captured
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `State::ALL` lists every state in declaration order; the exhaustive match makes a new
    /// state a compile error here until it is listed.
    #[test]
    fn every_state_is_listed() {
        // Exhaustive: a new variant must be added here, and then to `State::ALL`.
        let index = |state: State| match state {
            State::Pending => 0,
            State::Authorized => 1,
            State::Declined => 2,
            State::Captured => 3,
            State::Voided => 4,
            State::PartiallyRefunded => 5,
            State::Refunded => 6,
        };
        for (i, state) in State::ALL.into_iter().enumerate() {
            assert_eq!(index(state), i);
        }
    }

    fn op(operation: Operation, key: &str, outcome: Outcome, amount: i64) -> Completed {
        Completed {
            operation,
            key: key.into(),
            outcome,
            amount,
        }
    }

    fn authorized() -> Vec<Completed> {
        vec![op(Operation::Authorize, "", Outcome::Approved, 1000)]
    }

    fn captured() -> Vec<Completed> {
        let mut ops = authorized();
        ops.push(op(Operation::Capture, "", Outcome::Captured, 1000));
        ops
    }

    fn decide(ops: &[Completed], operation: Operation, key: &str, amount: Option<i64>) -> Decision {
        Ledger::replay(ops).decide(ops, operation, key, amount)
    }

    fn refused(decision: &Decision) -> bool {
        matches!(decision, Decision::Refuse(_))
    }

    /// The fold gives each state of the diagram, and two partial refunds that add up to the
    /// capture end `REFUNDED`.
    #[test]
    fn state_follows_from_the_completed_operations() {
        assert_eq!(Ledger::replay(&[]).state, State::Pending);
        assert_eq!(Ledger::replay(&authorized()).state, State::Authorized);
        let mut ops = captured();
        assert_eq!(Ledger::replay(&ops).state, State::Captured);
        ops.push(op(Operation::Refund, "a", Outcome::Refunded, 400));
        let ledger = Ledger::replay(&ops);
        assert_eq!(
            (ledger.state, ledger.refunded),
            (State::PartiallyRefunded, 400)
        );
        ops.push(op(Operation::Refund, "b", Outcome::Refunded, 600));
        assert_eq!(Ledger::replay(&ops).state, State::Refunded);
    }

    /// A repeated Authorize, Capture or keyed Refund is a replay pointing at the first result,
    /// never a second movement of money.
    #[test]
    fn retries_replay_the_first_result() {
        assert_eq!(
            decide(&authorized(), Operation::Authorize, "", None),
            Decision::Replay(0)
        );
        assert_eq!(
            decide(&captured(), Operation::Capture, "", None),
            Decision::Replay(1)
        );
        let mut ops = captured();
        ops.push(op(Operation::Refund, "a", Outcome::Refunded, 400));
        assert_eq!(
            decide(&ops, Operation::Refund, "a", Some(400)),
            Decision::Replay(2)
        );
    }

    /// Every arrow missing from the diagram is a refusal: capture or refund after a void,
    /// void after a capture, capture or refund after a decline, more after a full refund.
    #[test]
    fn forbidden_transitions_are_refused() {
        let mut voided = authorized();
        voided.push(op(Operation::Void, "", Outcome::Voided, 1000));
        assert!(refused(&decide(&voided, Operation::Capture, "", None)));
        assert!(refused(&decide(&voided, Operation::Refund, "", None)));
        assert!(refused(&decide(&captured(), Operation::Void, "", None)));
        assert!(refused(&decide(&authorized(), Operation::Refund, "", None)));
        assert!(refused(&decide(&[], Operation::Capture, "", None)));
        let declined = vec![op(Operation::Authorize, "", Outcome::Declined, 0)];
        for operation in [Operation::Capture, Operation::Refund] {
            assert!(refused(&decide(&declined, operation, "", None)));
        }
        let mut refunded = captured();
        refunded.push(op(Operation::Refund, "", Outcome::Refunded, 1000));
        assert!(refused(&decide(&refunded, Operation::Capture, "", None)));
        assert!(refused(&decide(&refunded, Operation::Refund, "more", None)));
    }

    /// Partial refunds may add up to the capture and no further; a refund without an amount
    /// takes what is left.
    #[test]
    fn refunds_never_exceed_the_captured_amount() {
        let mut ops = captured();
        assert_eq!(
            decide(&ops, Operation::Refund, "", None),
            Decision::Proceed(1000)
        );
        assert!(refused(&decide(&ops, Operation::Refund, "a", Some(1001))));
        ops.push(op(Operation::Refund, "a", Outcome::Refunded, 700));
        assert!(refused(&decide(&ops, Operation::Refund, "b", Some(301))));
        assert_eq!(
            decide(&ops, Operation::Refund, "b", Some(300)),
            Decision::Proceed(300)
        );
        assert_eq!(
            decide(&ops, Operation::Refund, "c", None),
            Decision::Proceed(300)
        );
    }

    /// The void of a payment with no known outcome is allowed, moves nothing, and closes the
    /// payment: no Authorize, Capture or Refund after it, while the void itself replays.
    #[test]
    fn a_pending_payment_can_be_voided_and_never_authorized_after() {
        assert_eq!(decide(&[], Operation::Void, "", None), Decision::Proceed(0));
        let tombstone = vec![op(Operation::Void, "", Outcome::Voided, 0)];
        assert_eq!(Ledger::replay(&tombstone).state, State::Voided);
        let Decision::Refuse(reason) = decide(&tombstone, Operation::Authorize, "", None) else {
            panic!("an Authorize after the void must be refused");
        };
        assert!(
            reason.contains("voided before its authorization completed"),
            "{reason}"
        );
        // A retry of the void is answered with the void.
        assert_eq!(
            decide(&tombstone, Operation::Void, "", None),
            Decision::Replay(0)
        );
        for operation in [Operation::Capture, Operation::Refund] {
            assert!(refused(&decide(&tombstone, operation, "", None)));
        }
    }

    /// A void of a declined payment is already settled (nothing is held), so the saga's
    /// compensation gets an answer rather than an error.
    #[test]
    fn voiding_a_declined_payment_is_answered_not_refused() {
        let declined = vec![op(Operation::Authorize, "", Outcome::Declined, 0)];
        assert_eq!(
            decide(&declined, Operation::Void, "", None),
            Decision::AlreadySettled(0)
        );
    }
}
