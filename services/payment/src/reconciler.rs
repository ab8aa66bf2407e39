//! The reconciler: every payment whose outcome at the provider is unknown is eventually asked
//! about, recorded, and, when nobody should keep the money, released.
//!
//! Payments get on the `reconciliation_queue` table from [`crate::payments`]: every
//! authorization when it starts (due when its lease ends: if the process dies, nobody else
//! would ever look), an authorization that timed out, lost its answer or came back too late
//! to record (due at once), and a void of a payment with no known authorization outcome. A
//! recorded authorization takes its payment off the queue.
//!
//! Every `RECONCILE_INTERVAL_MS`, each instance claims due rows with `FOR UPDATE SKIP LOCKED`
//! (several instances share the queue without working on the same row) and, per payment:
//!
//! | payment here | provider says | what the reconciler does |
//! |---|---|---|
//! | an attempt in flight | — | looks again when its lease ends |
//! | PENDING | held (or captured) | records the Authorize as approved, with the reference and `PaymentAuthorized` |
//! | PENDING | declined | records the decline and `PaymentFailed` |
//! | PENDING | voided or expired | nothing is held: done |
//! | VOIDED or DECLINED | held | voids the hold at the provider (a `settled` audit row); refused → tries again later |
//! | any | nothing, shortly after the last attempt | looks again: the provider may still act on a request it got late |
//! | any | nothing, for longer than a lease | done: a retry calls again with the same key |
//! | AUTHORIZED, CAPTURED, ... | — | done: the saga settles those |
//!
//! Unsettled-for-too-long is visible: `payment_unsettled_authorizations` counts queue rows
//! older than `RECONCILE_ALERT_AFTER_SECONDS`, and `payment_reconciliations_total{result}`
//! counts what each look came to.
//!
//! Why a queue written ahead and not a scan of PENDING payments: the queue row is written in
//! the same transaction as the attempt's `started` row, so no crash can leave an attempt that
//! nobody will look at, and the reconciler reads only the few rows that need it instead of
//! every payment. Why here and not in order-service: the money is this service's truth, and it
//! must settle even when no order is waiting for the answer any more (ADR 0008).
//!
//! What the reconciler records runs outside any request, so its events carry no caller's
//! trace context; a trace of the order ends at the attempt that left the payment uncertain.
//!
//! ## Where it sits
//!
//! [`crate::PaymentService`] spawns one [`Reconciler`] per instance on the runtime's task
//! tracker. It writes through the same [`Payments`] as the gRPC API (the same decisions, the
//! same events), with its own guard: it looks only at payments with no attempt in flight, and
//! records an authorization only after checking that again under the payment's lock, so it
//! never races a live call. Nothing outside this service waits for it: what it records is
//! published like any result, and order-service, if its saga still runs, gets the recorded
//! result by repeating its request.
//!
//! ## On a crash
//!
//! A pass that dies leaves its claimed rows with a due time one lease plus one provider
//! timeout ahead, so they come back by themselves; whatever it had already recorded is
//! committed with its event, and a look repeated after that finds the payment settled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shop_runtime::{ApiError, Context};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    ledger::{Operation, State},
    payments::{Payments, provider_key},
    provider::{AuthorizationOutcome, DeclineReason, ProviderError, ProviderRecord},
};

/// Rows one pass claims at most: keeps a pass (and the claim it holds) short after a backlog,
/// and leaves the rest to the next pass or another instance.
///
/// Looks run one after the other within a pass, so fifty rows bound how many provider calls
/// one pass can make (two per row at most).
const BATCH: i64 = 50;

/// Puts a payment on the queue (or moves its due time), `reason` saying why.
///
/// Called by [`crate::payments`] in three places: when an authorization starts (due when its
/// lease ends), when an attempt that leaves money unsettled ends without a result (due now),
/// and when a payment is voided without a known outcome (due now, for one more look).
///
/// Runs on the caller's connection, inside the transaction that creates the uncertainty, so
/// the queue row exists exactly when the uncertainty does. Re-queuing clears any claim, which
/// is how a pass in progress learns (through its claim condition) that it must not delete the
/// row.
pub async fn enqueue(
    conn: &mut PgConnection,
    payment_id: Uuid,
    reason: &str,
    due: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // The first `enqueued_at` stays: how long a payment has been unsettled is what alerts.
    sqlx::query(
        "INSERT INTO reconciliation_queue (payment_id, reason, due_at) VALUES ($1, $2, $3)
         ON CONFLICT (payment_id) DO UPDATE
         SET reason = EXCLUDED.reason, due_at = EXCLUDED.due_at, claim = NULL",
    )
    .bind(payment_id)
    .bind(reason)
    .bind(due)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a settled payment off the queue, in the transaction that records the settling
/// outcome.
///
/// Only a recorded authorization calls it: once the outcome is in the log, the provider has
/// nothing left to tell about it.
pub async fn dequeue(conn: &mut PgConnection, payment_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM reconciliation_queue WHERE payment_id = $1")
        .bind(payment_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// What one look at a payment came to.
///
/// The labels become the `result` of `payment_reconciliations_total` (and, for `Later`, the
/// queue row's `last_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Settled (the label says how): off the queue, unless an attempt queued the payment
    /// again meanwhile.
    Done(&'static str),
    /// Not yet: look again at that time (the label says why, and is kept on the row for
    /// whoever investigates a payment that stays unsettled).
    Later(&'static str, DateTime<Utc>),
}

/// The background task and one pass of it.
///
/// Runs on every instance; they share the queue through `FOR UPDATE SKIP LOCKED` and a claim
/// token per pass, so no row is worked on twice at once and nobody waits for a lock.
#[derive(Debug, Clone)]
pub struct Reconciler {
    /// The same operations the gRPC API uses, so what the reconciler records is decided and
    /// written exactly like an attempt's result.
    payments: Payments,
    /// Pause between passes, and the delay of a "look again soon" (`RECONCILE_INTERVAL_MS`).
    interval: Duration,
    /// Age of a queue row from which it counts as an alert (`RECONCILE_ALERT_AFTER_SECONDS`);
    /// measured from the row's first `enqueued_at`, which re-queuing keeps.
    alert_after: Duration,
}

impl Reconciler {
    /// Looks at due entries every `interval`; an authorization still unsettled after
    /// `alert_after` is counted in a metric (the `PaymentsUnsettled` alert), because by then a
    /// person should look at the provider's side.
    pub fn new(payments: Payments, interval: Duration, alert_after: Duration) -> Self {
        Self {
            payments,
            interval,
            alert_after,
        }
    }

    /// Runs a pass every interval on `ctx.tasks`, until `ctx.shutdown`. A pass cut short by
    /// shutdown is harmless: its claims lapse and another instance (or the next start) takes
    /// the rows.
    ///
    /// The first pass comes one interval after start. A failed pass (the database away) is
    /// logged and the loop simply waits for the next interval: the rows are still due then.
    pub fn spawn(self, ctx: &Context) {
        let shutdown = ctx.shutdown.clone();
        ctx.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.interval) => {}
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = self.pass() => {
                        if let Err(err) = result {
                            tracing::warn!(error = %err, "reconciliation pass failed");
                        }
                    }
                }
            }
        });
    }

    /// Claims the due rows and looks at each; returns how many it looked at.
    ///
    /// The claim token written on the rows is what lets the end of a look tell "still mine"
    /// from "queued again by a new attempt meanwhile": only a row still carrying this pass's
    /// token is deleted or rescheduled.
    ///
    /// A failed look is logged and rescheduled one interval later; only a failure to claim
    /// or to update the queue itself ends the pass with an error (the next pass tries again).
    pub async fn pass(&self) -> Result<usize, sqlx::Error> {
        let pool = self.payments.pool();
        let unsettled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconciliation_queue
             WHERE enqueued_at < now() - make_interval(secs => $1)",
        )
        .bind(self.alert_after.as_secs_f64())
        .fetch_one(pool)
        .await?;
        #[allow(clippy::cast_precision_loss)] // a count of rows
        metrics::gauge!("payment_unsettled_authorizations").set(unsettled as f64);

        let claim = Uuid::now_v7();
        // Claimed for as long as a look can take (two provider calls); should this instance
        // die, the rows are due again after that.
        let hold = self.payments.lease() + self.payments.provider_timeout();
        let claimed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE reconciliation_queue
             SET due_at = now() + make_interval(secs => $2), attempts = attempts + 1, claim = $3
             WHERE payment_id IN (
                 SELECT payment_id FROM reconciliation_queue WHERE due_at <= now()
                 ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING payment_id",
        )
        .bind(BATCH)
        .bind(hold.as_secs_f64())
        .bind(claim)
        .fetch_all(pool)
        .await?;
        for &payment_id in &claimed {
            let look = match self.look(payment_id).await {
                Ok(look) => look,
                Err(err) => {
                    tracing::warn!(%payment_id, error = %err, "reconciliation failed");
                    Look::Later("error", Utc::now() + self.interval_chrono())
                }
            };
            // The claim condition: a row queued again meanwhile (a new attempt) is left as is.
            let result = match look {
                Look::Done(result) => {
                    sqlx::query(
                        "DELETE FROM reconciliation_queue WHERE payment_id = $1 AND claim = $2",
                    )
                    .bind(payment_id)
                    .bind(claim)
                    .execute(pool)
                    .await?;
                    result
                }
                Look::Later(result, due) => {
                    sqlx::query(
                        "UPDATE reconciliation_queue SET due_at = $3, last_result = $4, claim = NULL
                         WHERE payment_id = $1 AND claim = $2",
                    )
                    .bind(payment_id)
                    .bind(claim)
                    .bind(due)
                    .bind(result)
                    .execute(pool)
                    .await?;
                    result
                }
            };
            // Settling is worth an info line; "not yet" comes back every interval.
            match look {
                Look::Done(_) => tracing::info!(%payment_id, result, "reconciled"),
                Look::Later(_, due) => {
                    tracing::debug!(%payment_id, result, %due, "reconcile later")
                }
            }
            metrics::counter!("payment_reconciliations_total", "result" => result).increment(1);
        }
        Ok(claimed.len())
    }

    /// The interval as a `chrono` duration, to add to database times; the 5 s fallback only
    /// covers an interval too large for `chrono` to represent.
    fn interval_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.interval).unwrap_or(chrono::Duration::seconds(5))
    }

    /// One payment: ask the provider, record the truth, release what nobody should hold.
    ///
    /// The provider is asked by the authorization's key, never by a reference: a payment is on
    /// the queue because its authorization may never have returned one.
    async fn look(&self, payment_id: Uuid) -> Result<Look, ApiError> {
        let payments = &self.payments;
        let snapshot = payments.snapshot(payment_id).await?;
        if let Some(until) = snapshot.in_flight_until {
            return Ok(Look::Later("in_flight", until));
        }
        let soon = snapshot.now + self.interval_chrono();
        let key = provider_key(payment_id, Operation::Authorize, "");
        let asked = tokio::time::timeout(
            payments.provider_timeout(),
            payments.provider().retrieve(&key),
        )
        .await;
        let Ok(Ok(found)) = asked else {
            return Ok(Look::Later("provider_unavailable", soon));
        };
        // A request the provider got late may still be acted on: "nothing" is only final once
        // no attempt could still be on its way.
        let lease = chrono::Duration::from_std(payments.lease())
            .map_err(|err| ApiError::internal(err.to_string()))?;
        let may_still_act = snapshot.now < snapshot.last_activity + lease;
        let payment = &snapshot.payment;
        Ok(match (snapshot.state, found) {
            (
                State::Pending,
                ProviderRecord::Held { reference, .. } | ProviderRecord::Captured { reference, .. },
            ) => {
                let answer = AuthorizationOutcome::Approved { reference };
                match payments.record_found_authorization(payment, answer).await? {
                    Some(_) => Look::Done("authorized"),
                    None => Look::Later("in_flight", soon),
                }
            }
            (State::Pending, ProviderRecord::Declined { reason }) => {
                let reason = DeclineReason::parse(&reason).unwrap_or(DeclineReason::CardDeclined);
                let answer = AuthorizationOutcome::Declined(reason);
                match payments.record_found_authorization(payment, answer).await? {
                    Some(_) => Look::Done("declined"),
                    None => Look::Later("in_flight", soon),
                }
            }
            (State::Pending, ProviderRecord::Voided | ProviderRecord::Expired) => {
                Look::Done("nothing_held")
            }
            (_, ProviderRecord::Nothing) if may_still_act => Look::Later("unknown_yet", soon),
            (_, ProviderRecord::Nothing) => Look::Done("nothing_known"),
            (State::Voided | State::Declined, ProviderRecord::Held { reference, .. }) => {
                match payments.release_hold(payment, &reference).await {
                    Ok(()) => Look::Done("hold_voided"),
                    Err(ProviderError::Refused(_)) => Look::Later("void_refused", soon),
                    Err(ProviderError::Unavailable(_)) => Look::Later("provider_unavailable", soon),
                }
            }
            _ => Look::Done("settled"),
        })
    }
}
