//! The payment operations: idempotent, serialised per payment, recorded, and never holding a
//! database transaction open across the provider call.
//!
//! Every operation runs the same three steps:
//!
//! 1. **Begin** (one short transaction, the payment row locked `FOR UPDATE`): replay an earlier
//!    result of the same operation, or wait if another operation on this payment is in flight,
//!    or refuse what the state machine forbids (a `refused` row), or record a `started` row with
//!    a lease. Nothing slow happens while the lock is held.
//! 2. **Call the provider**, with no transaction open, in a task of its own: a caller that gives
//!    up (a gRPC deadline) does not cancel it, so the result is recorded for its retry.
//! 3. **Record** (a second short transaction): the `completed` row and its event through the
//!    outbox, together. The unique index on completed rows makes a duplicate record fail.
//!
//! A duplicate arriving during step 2 finds the `started` row's lease and polls until the
//! result is recorded, then replays it: one provider call, the same answer to both callers.
//! If the process dies during step 2, the lease expires and the next retry takes over,
//! calling the provider again with the same idempotency key (a real provider deduplicates on
//! it). An attempt whose lease expired before it could record (a paused process) abandons its
//! result rather than record it late, over a takeover's.
//!
//! **Money under uncertainty.** An authorization whose outcome is unknown (no answer in time,
//! an answer lost, a process that died, an approval too late to record) may hold the customer's
//! money at the provider while the payment reads PENDING. Three things make sure every such
//! hold settles:
//!
//! * every authorization is put on the reconciliation queue when it starts (due when its lease
//!   ends) and taken off when its result is recorded, so whatever kept it from recording, the
//!   reconciler ([`crate::reconciler`]) asks the provider what happened and records it;
//! * a Void does not need a known outcome: for an order without a payment it leaves a tombstone
//!   (`voided_orders`) that refuses any later Authorize, and for a PENDING payment it voids at
//!   the provider by the authorization's key and records VOIDED, after which the ledger refuses
//!   any Authorize. Authorize's begin and Void take the same per-order advisory lock, so of the
//!   two racing, one clearly comes first;
//! * a provider refusal (capture of an expired hold, a void to be retried) is an answer, recorded
//!   as a `refused` row with the provider's reason, never mistaken for "no answer".
//!
//! ## Why not one transaction around everything
//!
//! Holding a row lock (and a pooled connection) across a provider call that may take seconds
//! would let a slow card stall every request queued behind it and drain the pool under load.
//! Splitting the work in two short transactions costs a `started` row and a lease; in return a
//! slow provider only slows its own payment. The lease (provider timeout plus ten seconds) is
//! longer than any live attempt can take, so only a dead or paused attempt ever loses it.
//!
//! ## The invariants, and what holds each
//!
//! | invariant | held by |
//! |---|---|
//! | one result per (payment, operation, key) | the partial unique index on `completed` rows; a second insert is reported as a duplicate, not an error |
//! | one provider call in flight per payment | the `started` row's lease, taken under the payment's row lock |
//! | one payment per order | `payments.order_id` is unique; Authorize is keyed by the order |
//! | an event exactly when a completed row is written | both in one transaction (`Payments::complete`) |
//! | no unsettled authorization is forgotten | the queue row written with its `started` row |
//! | no authorization after a void | the per-order lock, the tombstone, and the ledger's VOIDED |
//!
//! ## Where it sits
//!
//! Two callers, one set of rules: [`crate::grpc`] calls [`Payments::authorize`],
//! [`Payments::capture`], [`Payments::void`] and [`Payments::refund`] for the order saga, and
//! [`crate::reconciler`] calls [`Payments::snapshot`], [`Payments::record_found_authorization`]
//! and [`Payments::release_hold`] for what nobody is waiting for any more. Below it,
//! [`crate::ledger`] decides and [`crate::provider`] acts; the HTTP API reads the same tables
//! through [`completed`] and [`crate::ledger::Ledger::replay`]. Every write here goes to
//! `payment_operations` (append-only), `payments` (insert only), `voided_orders`, the
//! reconciliation queue or the outbox: no row is ever updated to say what a payment is.
//!
//! The attempt task runs in the span of the request that started it, so its log lines and the
//! events it records belong to the caller's trace
//! (`the_event_an_authorize_records_in_its_own_task_continues_the_callers_trace` in
//! `tests/payments.rs`).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use shop_events::{
    Money,
    payment::{PaymentAuthorized, PaymentCaptured, PaymentFailed, PaymentRefunded, PaymentVoided},
};
use shop_messaging::outbox::postgres::{self as outbox, enqueue_event};
use shop_runtime::{ApiError, ErrorKind};
use sqlx::{PgConnection, PgPool};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    card::{Card, CardSummary},
    ledger::{Completed, Decision, Ledger, Operation, Outcome, State},
    provider::{AuthorizationOutcome, CardProvider, ProviderError},
    reconciler,
};

/// Who the audit trail names for what the reconciler records (in `requested_by`).
///
/// Any other `requested_by` is the calling service's name from its token (`unknown` without
/// one), so an auditor can tell a saga's request from the service settling an uncertainty on
/// its own.
pub const RECONCILER: &str = "payment-service/reconciler";

/// The answer to an Authorize for an order whose payment was voided before it existed.
///
/// Sent as `FAILED_PRECONDITION`: the order was given up, and no retry of the same Authorize
/// can change that. order-service reads it as a decline and goes on compensating, which is
/// what it was already doing when it sent the void.
pub const ORDER_VOIDED: &str = "This order's payment was voided; it cannot be authorized any more (the order was given up: place a new order).";

/// A payment as stored: the facts fixed when it was authorized.
///
/// Nothing here ever changes after the insert: what happens to the payment later is in its
/// operation rows.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Payment {
    /// The payment's id (UUIDv7), part of every provider idempotency key.
    pub id: Uuid,
    /// The order it pays for; unique, so an order has one payment and Authorize is keyed by it.
    pub order_id: Uuid,
    /// The customer, from the saga's request; the HTTP API shows a customer only their own.
    pub user_id: Uuid,
    /// The authorized amount, in minor units of `currency`.
    pub amount: i64,
    /// ISO 4217 code; every amount of the payment is in it.
    pub currency: String,
    /// The card's network ([`crate::card::Brand::as_str`]).
    pub card_brand: String,
    /// The card's last four digits: with the brand, all that is kept of it.
    pub card_last4: String,
    /// When the first Authorize created the row.
    pub created_at: DateTime<Utc>,
}

impl Payment {
    /// `amount` minor units in this payment's currency: every amount a payment moves is in
    /// the currency it was authorized in, so callers never pair an amount with a currency.
    pub fn money(&self, amount: i64) -> Money {
        Money {
            amount,
            currency: self.currency.clone(),
        }
    }
}

/// One row of the audit trail.
///
/// Append-only (a trigger refuses UPDATE and DELETE). An attempt that calls the provider
/// writes a `started` row and later, under the same `attempt_id`, the row that ends it;
/// decisions that need no provider call (a refusal, a settled void, a reconciler's finding)
/// are a single row. Strings rather than enums: rows are read back as they were written, even
/// by code that predates a value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRow {
    /// Insertion order, the order in which [`Ledger::replay`] folds the rows.
    pub seq: i64,
    /// The payment the row belongs to.
    pub payment_id: Uuid,
    /// [`Operation::as_str`].
    pub operation: String,
    /// The caller's key within the operation (empty but for keyed refunds).
    pub idempotency_key: String,
    /// Ties a `started` row to the row that ended it.
    pub attempt_id: Uuid,
    /// `started`, `completed`, `refused`, `abandoned` or `settled`; only `completed` rows
    /// move money.
    pub phase: String,
    /// [`Outcome::as_str`] of a completed row.
    pub outcome: Option<String>,
    /// Minor units the row is about (asked for, moved, or 0).
    pub amount: Option<i64>,
    /// A decline code, a refusal's reason, a refund's reason, or why an attempt was abandoned.
    pub reason: Option<String>,
    /// The provider's reference of an approved authorization (and of a hold the reconciler
    /// released).
    pub provider_reference: Option<String>,
    /// The calling service, or [`RECONCILER`].
    pub requested_by: String,
    /// Until when a `started` attempt owns the operation.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The database's time of the insert.
    pub recorded_at: DateTime<Utc>,
}

impl OperationRow {
    /// The row as the state machine sees it, if it is a completed one with names it knows.
    ///
    /// A completed row whose operation or outcome this version cannot read is left out of the
    /// fold rather than misread; every name written here is one this code parses.
    fn completed(&self) -> Option<Completed> {
        if self.phase != "completed" {
            return None;
        }
        Some(Completed {
            operation: Operation::parse(&self.operation)?,
            key: self.idempotency_key.clone(),
            outcome: Outcome::parse(self.outcome.as_deref()?)?,
            amount: self.amount.unwrap_or(0),
        })
    }
}

/// The completed operations of `rows` (oldest first) and the rows they came from.
///
/// Both lists have the same length and order, so an index [`Ledger::decide`] returns into the
/// first also finds the row (with its reason and timestamp) in the second.
pub fn completed(rows: &[OperationRow]) -> (Vec<Completed>, Vec<&OperationRow>) {
    rows.iter()
        .filter_map(|row| row.completed().map(|c| (c, row)))
        .unzip()
}

/// The answer to an operation: the payment, the completed operation's result, and the
/// ledger as that operation left it.
///
/// The same shape for a first call and a replay, built from the recorded rows either way,
/// so a retry cannot get a different answer from the one the first call got (or would have
/// got).
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The payment's fixed facts.
    pub payment: Payment,
    /// What the operation did.
    pub outcome: Outcome,
    /// Minor units this operation moved.
    pub amount: i64,
    /// The decline code, for a declined authorization (the row's reason otherwise, e.g. a
    /// refund's).
    pub reason: Option<String>,
    /// The ledger right after this operation (for a refund: what was refunded up to it).
    pub ledger: Ledger,
    /// True when this answer is an earlier call's result.
    pub replayed: bool,
}

/// A validated authorization request.
///
/// In the service only [`crate::grpc`] builds one, after every field passed, so the operation
/// can take the amount, currency and card as checked.
#[derive(Debug)]
pub struct Authorize {
    /// The order, the key of the operation: one payment per order, whoever asks how often.
    pub order_id: Uuid,
    /// The customer the payment will belong to; a retry naming another customer is refused.
    pub user_id: Uuid,
    /// Minor units to hold, above 0 (a free order never reaches payment-service).
    pub amount: i64,
    /// ISO 4217 code; the payment's only currency from now on.
    pub currency: String,
    /// The card, for the provider call only: summarised for storage, then moved into the
    /// attempt and dropped with it.
    pub card: Card,
}

/// A validated refund request.
#[derive(Debug, Clone)]
pub struct Refund {
    /// Whose payment: refunds are found by order, like every other operation.
    pub order_id: Uuid,
    /// `None`: everything captured and not refunded yet. `Some` must be in the payment's
    /// currency and at most what is left.
    pub amount: Option<Money>,
    /// The caller's idempotency key: empty for the saga's one compensation refund, a key of
    /// the caller's choosing for each partial refund.
    pub key: String,
    /// Why, recorded on the row and carried by `PaymentRefunded`.
    pub reason: String,
}

/// The payment operations, shared by the gRPC handlers and the reconciler.
///
/// Cheap to clone (a pool, an `Arc` and durations): each attempt task takes its own copy.
/// Holds no state of its own between calls; everything it knows is in the database, which is
/// why several instances can serve the same payments.
#[derive(Debug, Clone)]
pub struct Payments {
    /// The service's database, including the provider's simulated record.
    pool: PgPool,
    /// The one provider, behind its trait: [`crate::provider::SimulatedProvider`] in every
    /// deployment of this system; a real provider's client would take its place.
    provider: Arc<dyn CardProvider>,
    /// The bound on one provider call.
    provider_timeout: Duration,
    /// How long a `started` attempt owns its operation: the provider timeout plus ten seconds
    /// for the short transactions around the call.
    lease: Duration,
    /// The runtime's tracker: attempts spawned on it are awaited at shutdown.
    tasks: TaskTracker,
    /// `PAYMENT_CRASH_AFTER_PROVIDER` (tests only).
    crash_after: Option<Operation>,
}

/// What step 1 found.
///
/// Only `Started` leads to a provider call and only `InFlight` sends [`Payments::run`] round
/// its polling loop; every other variant is the request's answer.
enum Begin {
    /// The operation already completed: its recorded answer.
    Replay(Receipt),
    /// Nothing to do, nothing to refuse (a void of a declined payment).
    Settled(Receipt),
    /// Forbidden in this state (recorded as a `refused` row), or the order's payment was voided.
    Refused(String),
    /// Another attempt holds a live lease on this payment: wait and begin again.
    InFlight,
    /// A `started` row and its lease are committed: go and call the provider.
    Started(Started),
    /// A void for an order without a payment: the tombstone is written.
    Tombstone,
}

/// An attempt recorded as `started`, ready for the provider call.
///
/// Everything steps 2 and 3 need, owned, so the attempt can move into a task of its own.
#[derive(Debug, Clone)]
struct Started {
    /// The payment, as step 1 read it under its lock.
    payment: Payment,
    /// The id of the `started` row; the recording step checks that this attempt still owns
    /// the lease.
    attempt_id: Uuid,
    /// What is being done.
    operation: Operation,
    /// The caller's key within the operation.
    key: String,
    /// Minor units the operation moves.
    amount: i64,
    /// The approved authorization's provider reference (capture, void, refund); empty for the
    /// void of a payment whose authorization has no known outcome.
    reference: String,
    /// A refund's reason, carried to its completed row and event.
    reason: String,
    /// The caller, for the audit rows this attempt writes. Carried rather than looked up,
    /// because the attempt runs in its own task after the request's handler may have gone.
    requested_by: String,
}

impl Started {
    /// Whether this attempt leaves the payment's money unsettled when it ends without a
    /// result: an authorization, or the void of one whose outcome is unknown.
    fn leaves_unsettled(&self) -> bool {
        self.operation == Operation::Authorize
            || (self.operation == Operation::Void && self.reference.is_empty())
    }
}

/// A completed operation about to be recorded.
///
/// Built by an attempt from the provider's answer, or by the reconciler from the provider's
/// record; both go through [`Payments::complete`], which is why a result found later is
/// recorded exactly as one received in time would have been.
struct Completion<'a> {
    /// The payment the result belongs to, as the writer last read it.
    payment: &'a Payment,
    /// The operation that completed.
    operation: Operation,
    /// The caller's key within the operation; with `operation`, what the unique index on
    /// completed rows is keyed by.
    key: &'a str,
    /// The attempt's id: for [`Guard::Lease`], the `started` row whose lease must still hold;
    /// for the reconciler, a fresh id of its own.
    attempt_id: Uuid,
    /// What the provider did.
    outcome: Outcome,
    /// Minor units moved (0 for a decline or the void of a pending payment).
    amount: i64,
    /// A decline code, or a refund's reason.
    reason: Option<String>,
    /// The provider's reference of an approved authorization, kept on the completed row so
    /// capture, void and refund can name the hold.
    reference: Option<String>,
    /// The caller's name, or [`RECONCILER`].
    requested_by: &'a str,
}

/// What must still hold when a result is recorded.
///
/// Checked inside the recording transaction, under the payment's row lock, so the proof and
/// the write cannot be separated by another writer.
///
/// The two writers of results need different proofs that nobody else is writing: an attempt
/// proves it still owns its lease, the reconciler proves that no attempt owns one.
#[derive(Debug, Clone, Copy)]
enum Guard {
    /// The attempt's lease has not expired (an attempt recording its own provider call).
    Lease,
    /// No attempt is in flight (the reconciler recording what the provider says).
    NothingInFlight,
}

/// What recording a result came to.
///
/// Only `Done` wrote anything; the two others leave the log as it was and tell the writer
/// what to do instead (answer with the winner's result, or give the result up, which for an
/// authorization puts it in the reconciler's hands).
enum Recorded {
    /// The completed row and its event were committed.
    Done(Receipt),
    /// The same operation was recorded first by another attempt: its result stands.
    Duplicate,
    /// Too late to record (the lease lapsed, something else is in flight, or the state moved
    /// on, e.g. the payment was voided meanwhile); why.
    Stale(String),
}

/// What the reconciler sees of a payment.
///
/// Read without locks: the reconciler only uses it to decide what to ask the provider, and an
/// authorization it then records goes through [`Payments::record_found_authorization`], which
/// checks again under the payment's lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The payment's facts.
    pub payment: Payment,
    /// Its derived state.
    pub state: State,
    /// The latest lease of an attempt still in flight: the reconciler comes back then instead
    /// of racing the attempt.
    pub in_flight_until: Option<DateTime<Utc>>,
    /// When anything was last recorded for the payment. Until one lease after it, a provider
    /// that knows nothing may still act on a request that reached it late.
    pub last_activity: DateTime<Utc>,
    /// The database's clock at the read: every time here is compared with it, never with the
    /// process's.
    pub now: DateTime<Utc>,
}

/// The idempotency key the provider sees for an operation: `<payment>:<operation>:<key>`.
///
/// Public because the reconciler needs the authorization's key to ask the provider what
/// became of it ([`CardProvider::retrieve`]).
///
/// The same for every attempt and retry of one operation, different for every other
/// operation, so the provider deduplicates exactly the calls that must have one effect.
pub fn provider_key(payment_id: Uuid, operation: Operation, key: &str) -> String {
    format!("{payment_id}:{operation}:{key}")
}

/// Takes the per-order lock Authorize's begin and Void share, until the transaction ends.
///
/// Without it, an Authorize and a Void for an order without a payment could each miss the
/// other: the Void finds no payment and writes a tombstone while the Authorize, not seeing the
/// tombstone yet, creates the payment and goes on to hold money for a voided order. The
/// two-key form keeps these locks apart from any single-key advisory lock (the outbox's).
async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    /// "payment order": the first key, naming what the second one (a hash of the order) is.
    const ORDER_LOCKS: i32 = 0x5041_594f;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
        .bind(ORDER_LOCKS)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}

impl Payments {
    /// The operations over `pool`, calling `provider` with `provider_timeout` per call. Each
    /// provider call runs on `tasks` (the runtime's tracker), so a shutdown waits for the calls
    /// in flight and their results are recorded.
    pub fn new(
        pool: PgPool,
        provider: Arc<dyn CardProvider>,
        provider_timeout: Duration,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            pool,
            provider,
            provider_timeout,
            // Longer than any live attempt can take, so only a dead or paused one loses it.
            lease: provider_timeout + Duration::from_secs(10),
            tasks,
            crash_after: None,
        }
    }

    /// Aborts the process right after the provider answered `operation`, before recording
    /// (`PAYMENT_CRASH_AFTER_PROVIDER`, refused outside tests by [`crate::config`]).
    ///
    /// A builder step rather than a constructor argument, so the ordinary construction
    /// cannot set it by accident. An unanswered call (`Unavailable`) never triggers it: there
    /// is no answer to lose.
    #[must_use]
    pub fn crash_after(mut self, operation: Option<Operation>) -> Self {
        self.crash_after = operation;
        self
    }

    /// The payment database; the reconciler works its queue through it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The card provider, which the reconciler asks about outcomes by the authorization's key.
    pub fn provider(&self) -> &dyn CardProvider {
        self.provider.as_ref()
    }

    /// The bound on one provider call; an answer later than this is an unknown outcome. The
    /// reconciler bounds its own provider calls with it too.
    pub fn provider_timeout(&self) -> Duration {
        self.provider_timeout
    }

    /// How long an attempt owns its operation: also how long a provider may plausibly still
    /// act on a request whose answer never came.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Holds the order's amount on the card, once per order: a retry (same order) replays the
    /// first result, so the saga may repeat a call whose answer it lost without charging twice.
    /// The card is summarised before anything is stored; only the provider call sees it whole.
    ///
    /// # Errors
    ///
    /// A conflict (`FAILED_PRECONDITION`) when the order's payment was voided (the saga gave
    /// up: [`ORDER_VOIDED`]) or when a retry differs from the first request (amount, card,
    /// customer); `UNAVAILABLE` when the
    /// provider did not answer, after which the same request may be sent again. A decline is
    /// not an error: it is a receipt with [`Outcome::Declined`].
    pub async fn authorize(&self, request: Authorize, caller: &str) -> Result<Receipt, ApiError> {
        let summary = request.card.summary();
        let mut card = Some(request.card);
        let new = NewPayment {
            order_id: request.order_id,
            user_id: request.user_id,
            amount: request.amount,
            currency: request.currency,
            card: summary,
        };
        self.run(
            request.order_id,
            Operation::Authorize,
            "",
            None,
            String::new(),
            caller,
            Some(&new),
            &mut card,
        )
        .await?
        .ok_or_else(|| ApiError::internal("an authorization ended without a payment"))
    }

    /// Takes the authorized amount, once per order (a retry replays). Captured only after the
    /// stock is committed, so money is never taken for an order that cannot ship.
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` without a payment; a conflict when the state forbids it (not authorized,
    /// voided, refunded) or when the provider refuses (an expired hold: the message says only
    /// a void is left); `UNAVAILABLE` when the provider did not answer.
    pub async fn capture(&self, order_id: Uuid, caller: &str) -> Result<Receipt, ApiError> {
        let mut no_card = None;
        self.run(
            order_id,
            Operation::Capture,
            "",
            None,
            String::new(),
            caller,
            None,
            &mut no_card,
        )
        .await?
        .ok_or_else(|| ApiError::internal("a capture ended without a payment"))
    }

    /// The void of the order's payment; `None` when the order has no payment (a tombstone was
    /// written: nothing can be authorized for the order any more).
    ///
    /// Always settles the question of money: an authorized payment is voided at the provider by
    /// its reference, a pending one (outcome unknown) by its authorization's key, a declined
    /// one is answered as it is (nothing is held). A captured payment is refused: a refund is
    /// what gives that money back.
    ///
    /// # Errors
    ///
    /// A conflict for a captured or refunded payment (order-service then refunds instead);
    /// `UNAVAILABLE` when the provider did not answer or refused the void for now, since the
    /// same request later may succeed. Never `NOT_FOUND`: no payment means a tombstone.
    pub async fn void(&self, order_id: Uuid, caller: &str) -> Result<Option<Receipt>, ApiError> {
        let mut no_card = None;
        self.run(
            order_id,
            Operation::Void,
            "",
            None,
            String::new(),
            caller,
            None,
            &mut no_card,
        )
        .await
    }

    /// Gives back captured money, the rest by default or a part under the caller's key: each
    /// key refunds once, and the ledger refuses refunding more than was captured.
    ///
    /// A partial amount must be in the payment's currency (a field error otherwise), since a
    /// payment never converts.
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` without a payment; a conflict when nothing captured is left to refund, the
    /// amount exceeds what is left, or the provider refuses; `UNAVAILABLE` when the provider
    /// did not answer. A repeat under the same key replays the first refund.
    pub async fn refund(&self, request: Refund, caller: &str) -> Result<Receipt, ApiError> {
        let mut no_card = None;
        self.run(
            request.order_id,
            Operation::Refund,
            &request.key,
            request.amount.as_ref(),
            request.reason.clone(),
            caller,
            None,
            &mut no_card,
        )
        .await?
        .ok_or_else(|| ApiError::internal("a refund ended without a payment"))
    }

    /// The recorded result of the order's Authorize, if it completed: what a retry gets even
    /// when its card no longer passes validation (an expiry month that passed since).
    ///
    /// A plain read without locks or leases: it only reports a result that is already final,
    /// and `None` (no payment, or no completed Authorize yet) sends the caller back to the
    /// validation error it already has.
    pub async fn recorded_authorization(
        &self,
        order_id: Uuid,
    ) -> Result<Option<Receipt>, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let payment: Option<Payment> = sqlx::query_as("SELECT * FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(payment) = payment else {
            return Ok(None);
        };
        let rows = operations(&mut conn, payment.id).await?;
        let (done, done_rows) = completed(&rows);
        Ok(done
            .iter()
            .position(|op| op.operation == Operation::Authorize)
            .map(|index| receipt(&payment, &done, &done_rows, index, true)))
    }

    /// Steps 1 to 3, polling while another operation on the payment is in flight. `None`: a
    /// void found no payment and left a tombstone.
    ///
    /// The poll starts at 20 ms and doubles up to 250 ms: short enough that a duplicate of a
    /// quick call gets its answer almost at once, long enough that a slow card's duplicates do
    /// not hammer the database. It ends when the other attempt records or its lease lapses;
    /// the caller's own deadline usually ends it first, and its retry then finds the result.
    ///
    /// The card, when there is one, is moved into the attempt's task, the only code that needs
    /// it, and is dropped when that task ends.
    #[allow(clippy::too_many_arguments)] // private; the four public operations name them
    async fn run(
        &self,
        order_id: Uuid,
        operation: Operation,
        key: &str,
        refund: Option<&Money>,
        reason: String,
        caller: &str,
        new: Option<&NewPayment>,
        card: &mut Option<Card>,
    ) -> Result<Option<Receipt>, ApiError> {
        let mut pause = Duration::from_millis(20);
        loop {
            let begun = self
                .begin(order_id, operation, key, refund, &reason, caller, new)
                .await;
            let begun = match begun {
                Ok(begun) => begun,
                Err(err) => {
                    record_metric(operation, metric_outcome_of_error(&err));
                    return Err(err);
                }
            };
            match begun {
                Begin::Replay(receipt) => {
                    record_metric(operation, "replayed");
                    return Ok(Some(receipt));
                }
                Begin::Settled(receipt) => {
                    record_metric(operation, "nothing_held");
                    return Ok(Some(receipt));
                }
                Begin::Tombstone => {
                    record_metric(operation, "tombstone");
                    return Ok(None);
                }
                Begin::Refused(reason) => {
                    record_metric(operation, "refused");
                    return Err(ApiError::conflict(reason));
                }
                Begin::InFlight => {
                    // Bounded by the other attempt's lease: once it expires, `begin` takes over.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Begin::Started(started) => {
                    let this = self.clone();
                    let card = card.take();
                    // Its own task: a caller that disconnects does not cancel the provider call
                    // or the recording of its result. Tracked, so shutdown waits for it. A new
                    // task starts outside every span, so it is given the request's: its log
                    // lines and the events it records carry the caller's trace, not a new one.
                    let attempt = self.tasks.spawn(
                        async move {
                            let receipt = this.attempt(started, card).await;
                            let outcome = match &receipt {
                                Ok(receipt) => receipt.outcome.as_str(),
                                Err(err) => metric_outcome_of_error(err),
                            };
                            record_metric(operation, outcome);
                            receipt
                        }
                        .instrument(tracing::Span::current()),
                    );
                    return attempt
                        .await
                        .map_err(|err| {
                            ApiError::internal(format!("payment attempt failed: {err}"))
                        })?
                        .map(Some);
                }
            }
        }
    }

    /// Step 1, in one short transaction.
    ///
    /// Order of the checks, each for a reason: the per-order advisory lock first (Authorize and
    /// Void only), so a racing Void and Authorize of one order are serialised; the tombstone
    /// before creating a payment, so a voided order never gets one; the payment row lock
    /// before reading its operations, so the decision sees every committed row; a replay
    /// before the in-flight check, so a retry of a finished operation is answered at once; and
    /// only then the state machine's verdict. The database's `now()` is the clock for leases,
    /// so instances with skewed clocks agree on when one has lapsed.
    #[allow(clippy::too_many_arguments)]
    async fn begin(
        &self,
        order_id: Uuid,
        operation: Operation,
        key: &str,
        refund: Option<&Money>,
        reason: &str,
        caller: &str,
        new: Option<&NewPayment>,
    ) -> Result<Begin, ApiError> {
        let mut tx = self.pool.begin().await?;
        if matches!(operation, Operation::Authorize | Operation::Void) {
            lock_order(&mut tx, order_id).await?;
        }
        if let Some(new) = new {
            let voided: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM voided_orders WHERE order_id = $1)",
            )
            .bind(order_id)
            .fetch_one(&mut *tx)
            .await?;
            if voided {
                // No payment row to hang a `refused` row on: the tombstone is the record, and
                // nothing went to the provider.
                tracing::info!(%order_id, "authorize refused: the order's payment was voided");
                return Ok(Begin::Refused(ORDER_VOIDED.to_owned()));
            }
            // Concurrent first attempts: the unique order_id makes the second insert wait for
            // the first to commit, then do nothing.
            sqlx::query(
                "INSERT INTO payments (id, order_id, user_id, amount, currency, card_brand, card_last4)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(new.order_id)
            .bind(new.user_id)
            .bind(new.amount)
            .bind(&new.currency)
            .bind(new.card.brand.as_str())
            .bind(&new.card.last4)
            .execute(&mut *tx)
            .await?;
        }
        let payment: Option<Payment> =
            sqlx::query_as("SELECT * FROM payments WHERE order_id = $1 FOR UPDATE")
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(payment) = payment else {
            if operation == Operation::Void {
                // Nothing was authorized and now nothing will be: the tombstone refuses the
                // Authorize should it still arrive.
                sqlx::query(
                    "INSERT INTO voided_orders (order_id, requested_by) VALUES ($1, $2)
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(caller)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Begin::Tombstone);
            }
            return Err(ApiError::not_found("No payment exists for this order."));
        };
        if let Some(new) = new {
            new.same_as(&payment)?;
        }
        if let Some(money) = refund
            && money.currency != payment.currency
        {
            return Err(ApiError::validation(vec![shop_runtime::FieldError::new(
                "amount.currency",
                format!("must be the payment's currency, {}", payment.currency),
            )]));
        }

        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let rows = operations(&mut tx, payment.id).await?;
        let (done, done_rows) = completed(&rows);
        let ledger = Ledger::replay(&done);
        let amount = match ledger.decide(&done, operation, key, refund.map(|m| m.amount)) {
            Decision::Replay(index) => {
                return Ok(Begin::Replay(receipt(
                    &payment, &done, &done_rows, index, true,
                )));
            }
            // Decided only once nothing else is in flight: its result may change the answer.
            _ if in_flight(&rows, now) => return Ok(Begin::InFlight),
            Decision::AlreadySettled(index) => {
                insert_row(
                    &mut tx,
                    &Row {
                        payment_id: payment.id,
                        operation,
                        key,
                        attempt_id: Uuid::now_v7(),
                        phase: "settled",
                        outcome: None,
                        amount: Some(0),
                        reason: Some("nothing_held: the authorization was declined"),
                        reference: None,
                        requested_by: caller,
                        lease: None,
                    },
                )
                .await?;
                tx.commit().await?;
                return Ok(Begin::Settled(receipt(
                    &payment, &done, &done_rows, index, true,
                )));
            }
            Decision::Proceed(amount) => amount,
            Decision::Refuse(refusal) => {
                insert_row(
                    &mut tx,
                    &Row {
                        payment_id: payment.id,
                        operation,
                        key,
                        attempt_id: Uuid::now_v7(),
                        phase: "refused",
                        outcome: None,
                        amount: refund.map(|m| m.amount),
                        reason: Some(&refusal),
                        reference: None,
                        requested_by: caller,
                        lease: None,
                    },
                )
                .await?;
                tx.commit().await?;
                return Ok(Begin::Refused(refusal));
            }
        };
        let amount = if operation == Operation::Authorize {
            payment.amount
        } else {
            amount
        };
        let reference = done_rows
            .iter()
            .find_map(|row| row.provider_reference.clone())
            .unwrap_or_default();
        let attempt_id = Uuid::now_v7();
        let lease = now
            + chrono::Duration::from_std(self.lease)
                .map_err(|err| ApiError::internal(err.to_string()))?;
        insert_row(
            &mut tx,
            &Row {
                payment_id: payment.id,
                operation,
                key,
                attempt_id,
                phase: "started",
                outcome: None,
                amount: Some(amount),
                reason: (!reason.is_empty()).then_some(reason),
                reference: None,
                requested_by: caller,
                lease: Some(lease),
            },
        )
        .await?;
        if operation == Operation::Authorize {
            // Written ahead: if this attempt never records (the process dies, the answer is
            // lost), the reconciler asks the provider once the lease is over. Recording the
            // result takes the payment off the queue.
            reconciler::enqueue(&mut tx, payment.id, "authorization_started", lease).await?;
        }
        tx.commit().await?;
        Ok(Begin::Started(Started {
            payment,
            attempt_id,
            operation,
            key: key.to_owned(),
            amount,
            reference,
            reason: reason.to_owned(),
            requested_by: caller.to_owned(),
        }))
    }

    /// Steps 2 and 3.
    ///
    /// The provider call is bounded by `provider_timeout`; running out of time is treated
    /// exactly like a provider that said it is unavailable (outcome unknown). The three
    /// answers lead three ways: a result is recorded, a refusal ends the attempt with the
    /// provider's reason, an unknown outcome abandons the attempt (queueing an authorization,
    /// or a void of one with no known outcome, for the reconciler) and tells the caller to
    /// retry with `UNAVAILABLE`.
    async fn attempt(&self, started: Started, card: Option<Card>) -> Result<Receipt, ApiError> {
        let idempotency_key = provider_key(started.payment.id, started.operation, &started.key);
        let authorize_key = provider_key(started.payment.id, Operation::Authorize, "");
        let call = async {
            let provider = self.provider.as_ref();
            let reference = started.reference.as_str();
            match started.operation {
                Operation::Authorize => {
                    let card = card
                        .ok_or_else(|| ProviderError::Unavailable("no card to authorize".into()))?;
                    provider
                        .authorize(
                            &idempotency_key,
                            &card,
                            started.amount,
                            &started.payment.currency,
                        )
                        .await
                }
                Operation::Capture => provider
                    .capture(&idempotency_key, reference, started.amount)
                    .await
                    .map(|()| approved(reference)),
                // Without a reference (no known authorization outcome) the provider voids by
                // the authorization's key.
                Operation::Void => provider
                    .void(
                        &idempotency_key,
                        &authorize_key,
                        (!reference.is_empty()).then_some(reference),
                    )
                    .await
                    .map(|()| approved(reference)),
                Operation::Refund => provider
                    .refund(&idempotency_key, reference, started.amount)
                    .await
                    .map(|()| approved(reference)),
            }
        };
        let timer = std::time::Instant::now();
        let answer = match tokio::time::timeout(self.provider_timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(ProviderError::Unavailable(format!(
                "no answer within {:?}",
                self.provider_timeout
            ))),
        };
        metrics::histogram!("payment_provider_call_seconds", "operation" => started.operation.as_str())
            .record(timer.elapsed().as_secs_f64());
        if !matches!(answer, Err(ProviderError::Unavailable(_))) {
            self.crash_if_asked(&started);
        }
        match answer {
            Ok(answer) => self.record(&started, answer).await,
            Err(ProviderError::Refused(reason)) => {
                self.refused_by_provider(&started, &reason).await
            }
            Err(err @ ProviderError::Unavailable(_)) => {
                tracing::warn!(operation = %started.operation, payment_id = %started.payment.id, error = %err, "provider call failed");
                self.abandon(&started, "provider_unavailable").await?;
                Err(ApiError::unavailable(
                    "The card provider did not answer; retry the same request.",
                ))
            }
        }
    }

    /// `PAYMENT_CRASH_AFTER_PROVIDER`: dies the hardest way there is (no destructors, no
    /// graceful shutdown), between the provider's answer and its recording, as a power cut
    /// would.
    fn crash_if_asked(&self, started: &Started) {
        if self.crash_after == Some(started.operation) {
            tracing::error!(operation = %started.operation, payment_id = %started.payment.id,
                "PAYMENT_CRASH_AFTER_PROVIDER: aborting the process");
            std::process::abort();
        }
    }

    /// Step 3: the completed row and its event, in one transaction.
    ///
    /// A result that can no longer be recorded as this attempt's is never dropped silently: it
    /// is logged and the attempt is abandoned, which puts an authorization back on the
    /// reconciliation queue.
    async fn record(
        &self,
        started: &Started,
        answer: AuthorizationOutcome,
    ) -> Result<Receipt, ApiError> {
        let (outcome, amount, reason, reference) = match (started.operation, answer) {
            (Operation::Authorize, AuthorizationOutcome::Approved { reference }) => {
                (Outcome::Approved, started.amount, None, Some(reference))
            }
            (Operation::Authorize, AuthorizationOutcome::Declined(why)) => {
                (Outcome::Declined, 0, Some(why.as_str().to_owned()), None)
            }
            (Operation::Capture, _) => (Outcome::Captured, started.amount, None, None),
            (Operation::Void, _) => (Outcome::Voided, started.amount, None, None),
            (Operation::Refund, _) => (
                Outcome::Refunded,
                started.amount,
                (!started.reason.is_empty()).then(|| started.reason.clone()),
                None,
            ),
        };
        let completion = Completion {
            payment: &started.payment,
            operation: started.operation,
            key: &started.key,
            attempt_id: started.attempt_id,
            outcome,
            amount,
            reason,
            reference,
            requested_by: &started.requested_by,
        };
        match self.complete(&completion, Guard::Lease).await? {
            Recorded::Done(receipt) => Ok(receipt),
            // Another attempt recorded this operation first (a takeover): its result stands.
            Recorded::Duplicate => {
                self.replay(&started.payment, started.operation, &started.key)
                    .await
            }
            Recorded::Stale(why) => {
                // An answer that can no longer be recorded as this attempt's: the lease lapsed
                // (a paused process) or the payment moved on. Never dropped silently: an
                // authorization goes back on the reconciliation queue (`abandon`), and the
                // reconciler records or voids what the provider holds.
                tracing::warn!(operation = %started.operation, payment_id = %started.payment.id,
                    %why, "provider answer too late to record");
                self.abandon(started, &why).await?;
                Err(ApiError::unavailable(
                    "The payment operation took too long; retry the same request.",
                ))
            }
        }
    }

    /// Records a completed operation and its event in one transaction, if `guard` and the
    /// state machine still allow it. Shared by the attempts and the reconciler.
    ///
    /// The decision is taken again here, under the payment's lock, because the state may have
    /// moved since step 1 (the lease lapsed and another attempt took over, or recorded). The
    /// unique index on completed rows is the last guard against two writers: a second
    /// completed row for the same operation inserts nothing and is reported as a duplicate.
    /// The same transaction takes an authorization off the reconciliation queue, and puts a
    /// payment voided without a known outcome back on it for one more look at the provider.
    async fn complete(&self, c: &Completion<'_>, guard: Guard) -> Result<Recorded, ApiError> {
        let payment = c.payment;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE")
            .bind(payment.id)
            .execute(&mut *tx)
            .await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let rows = operations(&mut tx, payment.id).await?;
        match guard {
            Guard::Lease => {
                let lease_held = rows.iter().any(|row| {
                    row.attempt_id == c.attempt_id
                        && row.phase == "started"
                        && row.lease_expires_at.is_some_and(|lease| lease > now)
                });
                if !lease_held {
                    return Ok(Recorded::Stale("lease_expired".into()));
                }
            }
            Guard::NothingInFlight => {
                if in_flight(&rows, now) {
                    return Ok(Recorded::Stale("in_flight".into()));
                }
            }
        }
        let (done, _) = completed(&rows);
        let before = Ledger::replay(&done);
        let asked = (c.operation == Operation::Refund).then_some(c.amount);
        match before.decide(&done, c.operation, c.key, asked) {
            Decision::Proceed(_) => {}
            Decision::Replay(_) => return Ok(Recorded::Duplicate),
            Decision::AlreadySettled(_) => return Ok(Recorded::Stale("settled".into())),
            Decision::Refuse(reason) => return Ok(Recorded::Stale(reason)),
        }
        let inserted = insert_row(
            &mut tx,
            &Row {
                payment_id: payment.id,
                operation: c.operation,
                key: c.key,
                attempt_id: c.attempt_id,
                phase: "completed",
                outcome: Some(c.outcome),
                amount: Some(c.amount),
                reason: c.reason.as_deref(),
                reference: c.reference.as_deref(),
                requested_by: c.requested_by,
                lease: None,
            },
        )
        .await?;
        if !inserted {
            return Ok(Recorded::Duplicate);
        }
        let rows = operations(&mut tx, payment.id).await?;
        let (done, done_rows) = completed(&rows);
        let ledger = Ledger::replay(&done);
        enqueue(
            &mut tx,
            payment,
            c.outcome,
            c.amount,
            c.reason.as_deref(),
            &ledger,
        )
        .await?;
        match c.operation {
            // The authorization's outcome is known: nothing left to reconcile.
            Operation::Authorize => reconciler::dequeue(&mut tx, payment.id).await?,
            // Voided without a known authorization: one more look at the provider, for a hold
            // that shows up after all.
            Operation::Void if before.state == State::Pending => {
                reconciler::enqueue(&mut tx, payment.id, "voided_without_outcome", now).await?;
            }
            _ => {}
        }
        outbox::commit(tx).await?;

        match c.outcome {
            Outcome::Captured => {
                metrics::counter!("payment_captured_minor_units_total", "currency" => payment.currency.clone())
                    .increment(c.amount.unsigned_abs());
            }
            Outcome::Refunded => {
                metrics::counter!("payment_refunded_minor_units_total", "currency" => payment.currency.clone())
                    .increment(c.amount.unsigned_abs());
            }
            _ => {}
        }
        let index = done.len() - 1;
        Ok(Recorded::Done(receipt(
            payment, &done, &done_rows, index, false,
        )))
    }

    /// The provider answered and refused: an answer, recorded as a `refused` row ending the
    /// attempt, with the provider's reason.
    ///
    /// A refused void is `UNAVAILABLE` and every other refusal a conflict, because of what
    /// the saga must do next: a void has to happen eventually, so "try again" is the honest
    /// answer; a refused capture or refund will not change by repetition.
    async fn refused_by_provider(
        &self,
        started: &Started,
        reason: &str,
    ) -> Result<Receipt, ApiError> {
        let message = match started.operation {
            Operation::Capture => format!(
                "The provider refused the capture: {reason}. Nothing was captured; the authorization can only be voided now."
            ),
            Operation::Void => {
                format!("The provider refused the void for now ({reason}); retry the same request.")
            }
            operation => format!("The provider refused the {operation}: {reason}."),
        };
        tracing::warn!(operation = %started.operation, payment_id = %started.payment.id, reason, "provider refused");
        self.end_attempt(started, "refused", &message).await?;
        Err(match started.operation {
            // Refused for now; the same request later may succeed.
            Operation::Void => ApiError::unavailable(message),
            _ => ApiError::conflict(message),
        })
    }

    /// Records that an attempt ended without a result; a retry may start a new one at once,
    /// instead of waiting for the lease to lapse.
    async fn abandon(&self, started: &Started, why: &str) -> Result<(), ApiError> {
        self.end_attempt(started, "abandoned", why).await
    }

    /// Ends an attempt without a completed row (`abandoned` or `refused`). An authorization
    /// (or the void of one with no known outcome) goes on the reconciliation queue, due now:
    /// the provider may hold money nobody recorded.
    async fn end_attempt(
        &self,
        started: &Started,
        phase: &'static str,
        why: &str,
    ) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        insert_row(
            &mut tx,
            &Row {
                payment_id: started.payment.id,
                operation: started.operation,
                key: &started.key,
                attempt_id: started.attempt_id,
                phase,
                outcome: None,
                amount: Some(started.amount),
                reason: Some(why),
                reference: None,
                requested_by: &started.requested_by,
                lease: None,
            },
        )
        .await?;
        if started.leaves_unsettled() {
            let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(&mut *tx)
                .await?;
            let reason = format!("{}_{phase}: {why}", started.operation);
            reconciler::enqueue(&mut tx, started.payment.id, &reason, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The recorded answer of the operation under `key`, for an attempt that lost the race to
    /// record it: both callers get the one result that was recorded.
    async fn replay(
        &self,
        payment: &Payment,
        operation: Operation,
        key: &str,
    ) -> Result<Receipt, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let rows = operations(&mut conn, payment.id).await?;
        let (done, done_rows) = completed(&rows);
        let index = done
            .iter()
            .position(|op| op.operation == operation && op.key == key)
            .ok_or_else(|| ApiError::internal("a recorded operation disappeared"))?;
        Ok(receipt(payment, &done, &done_rows, index, true))
    }

    // What the reconciler uses: the same recording as the attempts, with its own guard.

    /// The payment, its state, and whether an attempt is in flight.
    ///
    /// Fails with `NOT_FOUND` for an unknown payment id; a queue row cannot name one (its
    /// `payment_id` references `payments`).
    ///
    /// The in-flight lease and the last activity are what keep the reconciler from racing a
    /// live attempt or concluding "nothing happened" while the provider may still act.
    pub async fn snapshot(&self, payment_id: Uuid) -> Result<Snapshot, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let payment: Payment = sqlx::query_as("SELECT * FROM payments WHERE id = $1")
            .bind(payment_id)
            .fetch_one(&mut *conn)
            .await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *conn)
            .await?;
        let rows = operations(&mut conn, payment_id).await?;
        let (done, _) = completed(&rows);
        let in_flight_until = in_flight(&rows, now)
            .then(|| rows.iter().filter_map(|row| row.lease_expires_at).max())
            .flatten();
        let last_activity = rows
            .iter()
            .map(|row| row.recorded_at)
            .max()
            .unwrap_or(payment.created_at);
        Ok(Snapshot {
            state: Ledger::replay(&done).state,
            payment,
            in_flight_until,
            last_activity,
            now,
        })
    }

    /// Records what the provider says became of an authorization nobody recorded (approved
    /// with its reference, or declined), with its event, as the attempt would have. `None`
    /// when it cannot be recorded now: an attempt is in flight, or the payment is no longer
    /// PENDING (a retry recorded it, or it was voided).
    pub async fn record_found_authorization(
        &self,
        payment: &Payment,
        answer: AuthorizationOutcome,
    ) -> Result<Option<Receipt>, ApiError> {
        let (outcome, amount, reason, reference) = match answer {
            AuthorizationOutcome::Approved { reference } => {
                (Outcome::Approved, payment.amount, None, Some(reference))
            }
            AuthorizationOutcome::Declined(why) => {
                (Outcome::Declined, 0, Some(why.as_str().to_owned()), None)
            }
        };
        let completion = Completion {
            payment,
            operation: Operation::Authorize,
            key: "",
            attempt_id: Uuid::now_v7(),
            outcome,
            amount,
            reason,
            reference,
            requested_by: RECONCILER,
        };
        Ok(
            match self.complete(&completion, Guard::NothingInFlight).await? {
                Recorded::Done(receipt) => Some(receipt),
                Recorded::Duplicate | Recorded::Stale(_) => None,
            },
        )
    }

    /// Releases a hold the provider keeps for a payment that is VOIDED or DECLINED here, and
    /// says so in the audit trail (a `settled` row: the payment's state does not change). Its
    /// own idempotency key (`<payment>:void:reconciler`): the payment's own void key may have
    /// been used up by a void that found nothing to release.
    ///
    /// # Errors
    ///
    /// The provider's [`ProviderError`]: `Refused` is recorded as a `refused` row and the
    /// reconciler looks again later; `Unavailable` (no answer, or the audit row could not be
    /// written) records nothing here, and the next look asks the provider again, whose
    /// deduplication makes a repeated void harmless.
    pub async fn release_hold(
        &self,
        payment: &Payment,
        reference: &str,
    ) -> Result<(), ProviderError> {
        let key = provider_key(payment.id, Operation::Void, "reconciler");
        let authorize_key = provider_key(payment.id, Operation::Authorize, "");
        let call = self.provider.void(&key, &authorize_key, Some(reference));
        let answer = match tokio::time::timeout(self.provider_timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(ProviderError::Unavailable("no answer".into())),
        };
        let (phase, why) = match &answer {
            Ok(()) => ("settled", "provider_hold_released".to_owned()),
            Err(ProviderError::Refused(reason)) => (
                "refused",
                format!("the provider refused to release the hold: {reason}"),
            ),
            Err(ProviderError::Unavailable(_)) => return answer,
        };
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|err| ProviderError::Unavailable(err.to_string()))?;
        insert_row(
            &mut conn,
            &Row {
                payment_id: payment.id,
                operation: Operation::Void,
                key: "reconciler",
                attempt_id: Uuid::now_v7(),
                phase,
                outcome: None,
                amount: Some(0),
                reason: Some(&why),
                reference: Some(reference),
                requested_by: RECONCILER,
                lease: None,
            },
        )
        .await
        .map_err(|err| ProviderError::Unavailable(err.to_string()))?;
        answer
    }
}

/// The recording path takes an [`AuthorizationOutcome`] for every operation; a capture, void
/// or refund that succeeded is "approved" under the authorization's reference.
fn approved(reference: &str) -> AuthorizationOutcome {
    AuthorizationOutcome::Approved {
        reference: reference.to_owned(),
    }
}

/// The first Authorize's facts, compared with a retry's.
#[derive(Debug)]
struct NewPayment {
    /// The order, unique in `payments`: what makes Authorize once per order.
    order_id: Uuid,
    /// The customer the payment is shown to.
    user_id: Uuid,
    /// Minor units to hold.
    amount: i64,
    /// ISO 4217 code of `amount`.
    currency: String,
    /// Brand and last four: all of the card the row keeps.
    card: CardSummary,
}

impl NewPayment {
    /// A retry must be the same request: a different amount or card under the same order is a
    /// caller bug, and answering it with the first result would hide that.
    fn same_as(&self, payment: &Payment) -> Result<(), ApiError> {
        let same = payment.user_id == self.user_id
            && payment.amount == self.amount
            && payment.currency == self.currency
            && payment.card_brand == self.card.brand.as_str()
            && payment.card_last4 == self.card.last4;
        if same {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Conflict,
                "This order already has a payment for a different amount, card or customer; a retry must repeat the first request.",
            ))
        }
    }
}

/// Whether some operation of the payment holds an unexpired lease without a result.
///
/// "Without a result" means no `completed`, `abandoned` or `refused` row under the same
/// attempt id: an attempt that ended early frees the payment at once, instead of making the
/// next caller wait for the lease.
///
/// Computed from the rows rather than stored as a flag, for the same reason the state is: a
/// flag could be left set by a crash, while a lease simply runs out.
fn in_flight(rows: &[OperationRow], now: DateTime<Utc>) -> bool {
    rows.iter().any(|row| {
        row.phase == "started"
            && row.lease_expires_at.is_some_and(|lease| lease > now)
            && !rows.iter().any(|other| {
                other.attempt_id == row.attempt_id
                    && matches!(other.phase.as_str(), "completed" | "abandoned" | "refused")
            })
    })
}

/// The receipt of the `index`-th completed operation, with the ledger as it left it.
///
/// The ledger is replayed only up to that operation, so a replayed refund reports the total
/// refunded at the time, not what later refunds added.
fn receipt(
    payment: &Payment,
    done: &[Completed],
    done_rows: &[&OperationRow],
    index: usize,
    replayed: bool,
) -> Receipt {
    let op = &done[index];
    Receipt {
        payment: payment.clone(),
        outcome: op.outcome,
        amount: op.amount,
        reason: done_rows[index].reason.clone(),
        ledger: Ledger::replay(&done[..=index]),
        replayed,
    }
}

/// A payment's operation rows in the order they happened: what every operation replays with
/// [`Ledger::replay`] before it decides anything (the state is never stored).
///
/// All phases, not only completed rows: the in-flight check needs the `started` rows and
/// the rows that ended them. [`completed`] then keeps what moves money.
pub async fn operations(
    conn: &mut PgConnection,
    payment_id: Uuid,
) -> Result<Vec<OperationRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM payment_operations WHERE payment_id = $1 ORDER BY seq")
        .bind(payment_id)
        .fetch_all(conn)
        .await
}

/// A row of `payment_operations` about to be appended; see [`OperationRow`] for the columns.
struct Row<'a> {
    /// `payment_id`.
    payment_id: Uuid,
    /// `operation`, by [`Operation::as_str`].
    operation: Operation,
    /// `idempotency_key`: empty but for keyed refunds and the reconciler's own void.
    key: &'a str,
    /// `attempt_id`: the same for a `started` row and the row that ends it.
    attempt_id: Uuid,
    /// `phase`: `started`, `completed`, `refused`, `abandoned` or `settled`.
    phase: &'static str,
    /// `outcome`, only for a `completed` row.
    outcome: Option<Outcome>,
    /// `amount` in minor units: asked for, moved, or 0.
    amount: Option<i64>,
    /// `reason`: a decline code, a refusal, a refund's reason, or why an attempt ended.
    reason: Option<&'a str>,
    /// `provider_reference`, for an approval and for a hold the reconciler released or tried
    /// to release.
    reference: Option<&'a str>,
    /// `requested_by`: the calling service or [`RECONCILER`].
    requested_by: &'a str,
    /// `lease_expires_at`, only for a `started` row.
    lease: Option<DateTime<Utc>>,
}

/// Appends a row; false when it is a second `completed` row for the same operation.
///
/// `ON CONFLICT ... DO NOTHING` on the partial unique index turns a race between two
/// recorders into a boolean instead of an aborted transaction, so the loser can replay the
/// winner's result.
async fn insert_row(conn: &mut PgConnection, row: &Row<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO payment_operations
           (payment_id, operation, idempotency_key, attempt_id, phase, outcome, amount, reason,
            provider_reference, requested_by, lease_expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (payment_id, operation, idempotency_key) WHERE phase = 'completed' DO NOTHING",
    )
    .bind(row.payment_id)
    .bind(row.operation.as_str())
    .bind(row.key)
    .bind(row.attempt_id)
    .bind(row.phase)
    .bind(row.outcome.map(Outcome::as_str))
    .bind(row.amount)
    .bind(row.reason)
    .bind(row.reference)
    .bind(row.requested_by)
    .bind(row.lease)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The event of a completed operation, into the outbox of the recording transaction.
///
/// One event per completed row, never from anywhere else: an event exists exactly when a
/// completed row does, and a replay publishes nothing. Events carry the card's brand and last
/// four at most.
async fn enqueue(
    tx: &mut PgConnection,
    payment: &Payment,
    outcome: Outcome,
    amount: i64,
    reason: Option<&str>,
    ledger: &Ledger,
) -> Result<(), shop_messaging::Error> {
    let (payment_id, order_id, user_id) = (payment.id, payment.order_id, payment.user_id);
    match outcome {
        Outcome::Approved => {
            enqueue_event(
                tx,
                &PaymentAuthorized {
                    payment_id,
                    order_id,
                    user_id,
                    amount: payment.money(amount),
                    card_brand: payment.card_brand.clone(),
                    card_last4: payment.card_last4.clone(),
                },
            )
            .await?;
        }
        Outcome::Declined => {
            enqueue_event(
                tx,
                &PaymentFailed {
                    payment_id,
                    order_id,
                    user_id,
                    amount: payment.money(payment.amount),
                    reason: reason.unwrap_or("card_declined").to_owned(),
                    card_brand: payment.card_brand.clone(),
                    card_last4: payment.card_last4.clone(),
                },
            )
            .await?;
        }
        Outcome::Captured => {
            enqueue_event(
                tx,
                &PaymentCaptured {
                    payment_id,
                    order_id,
                    user_id,
                    amount: payment.money(amount),
                },
            )
            .await?;
        }
        Outcome::Voided => {
            enqueue_event(
                tx,
                &PaymentVoided {
                    payment_id,
                    order_id,
                    user_id,
                    amount: payment.money(amount),
                },
            )
            .await?;
        }
        Outcome::Refunded => {
            enqueue_event(
                tx,
                &PaymentRefunded {
                    payment_id,
                    order_id,
                    user_id,
                    amount: payment.money(amount),
                    total_refunded: payment.money(ledger.refunded),
                    reason: reason.unwrap_or_default().to_owned(),
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// `payment_operations_total{operation, outcome}`: every request, by what became of it.
///
/// One counter for all four operations, so a dashboard shows declines, refusals, replays and
/// provider outages side by side.
fn record_metric(operation: Operation, outcome: &'static str) {
    metrics::counter!("payment_operations_total", "operation" => operation.as_str(), "outcome" => outcome)
        .increment(1);
}

/// The `outcome` label of a request that ended in an error, by the error's kind.
fn metric_outcome_of_error(err: &ApiError) -> &'static str {
    match err.kind() {
        ErrorKind::Validation | ErrorKind::BadRequest => "invalid",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Conflict => "refused",
        ErrorKind::Unavailable => "provider_unavailable",
        _ => "error",
    }
}
