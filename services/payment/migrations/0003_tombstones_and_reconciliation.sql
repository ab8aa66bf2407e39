-- Every hold settles: voids of orders without a payment, and the payments whose provider
-- outcome is still to be found out.

-- A Void for an order that has no payment yet (its Authorize never arrived, or has not arrived
-- yet). Authorize checks this table under the same per-order advisory lock as Void, so an
-- Authorize arriving after the void is refused instead of holding money for a cancelled order.
CREATE TABLE voided_orders (
    order_id     uuid        PRIMARY KEY,
    requested_by text        NOT NULL,
    voided_at    timestamptz NOT NULL DEFAULT now()
);

-- Payments whose outcome at the provider is not known to be settled: an authorization in
-- flight (due when its lease ends, in case the process dies), one that timed out or lost its
-- answer, an approval that came too late to be recorded, a void of an authorization with no
-- known outcome. The reconciler (src/reconciler.rs) claims due rows, asks the provider, records
-- what it says and voids holds nobody should keep; a settled payment's row is deleted.
CREATE TABLE reconciliation_queue (
    payment_id  uuid        PRIMARY KEY REFERENCES payments (id),
    reason      text        NOT NULL,
    -- when the payment first needed reconciling: its age is what the alert gauge measures
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    due_at      timestamptz NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    last_result text,
    -- set by the reconciler instance working on the row, cleared by a new enqueue: a
    -- reconciler only deletes or reschedules a row nobody queued again meanwhile
    claim       uuid
);
CREATE INDEX reconciliation_queue_due ON reconciliation_queue (due_at);

-- `settled`: a request that needed nothing from the provider and changed no state (a void of a
-- declined payment: nothing is held), or the reconciler releasing a hold the provider kept for
-- a payment already VOIDED or DECLINED. Recorded so the audit trail shows who asked and why.
ALTER TABLE payment_operations DROP CONSTRAINT payment_operations_phase_check;
ALTER TABLE payment_operations ADD CONSTRAINT payment_operations_phase_check
    CHECK (phase IN ('started', 'completed', 'abandoned', 'refused', 'settled'));
