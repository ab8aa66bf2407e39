-- Payments and their append-only operation log. No column anywhere holds a card number or a
-- CVC: only the brand and the last four digits (checked below).

-- One payment per order: `order_id` UNIQUE is what makes Authorize idempotent per order. The
-- row holds the facts fixed at authorization; the payment's *state* is not stored here, it
-- follows from its completed operations (services/payment/src/ledger.rs).
CREATE TABLE payments (
    id         uuid        PRIMARY KEY,
    order_id   uuid        NOT NULL UNIQUE,
    user_id    uuid        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    currency   text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    card_brand text        NOT NULL,
    card_last4 text        NOT NULL CHECK (card_last4 ~ '^[0-9]{4}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_user ON payments (user_id, created_at DESC);

-- The audit trail: who asked what, when, with which result. Rows are only ever inserted.
--
-- An operation that reaches the provider writes two rows: `started` before the call (with a
-- lease: while it has not expired, a duplicate request waits instead of calling the provider
-- again) and `completed` (or `abandoned`, when the provider did not answer) after it. A request
-- the state machine refuses writes one `refused` row.
CREATE TABLE payment_operations (
    seq                bigserial   PRIMARY KEY,
    payment_id         uuid        NOT NULL REFERENCES payments (id),
    operation          text        NOT NULL CHECK (operation IN ('authorize', 'capture', 'void', 'refund')),
    -- '' for the one authorize/capture/void of a payment and its default refund; a caller's
    -- key for each further partial refund.
    idempotency_key    text        NOT NULL DEFAULT '',
    attempt_id         uuid        NOT NULL,
    phase              text        NOT NULL CHECK (phase IN ('started', 'completed', 'abandoned', 'refused')),
    -- completed: approved | declined | captured | voided | refunded
    outcome            text,
    -- minor units moved (in the payment's currency)
    amount             bigint      CHECK (amount >= 0),
    -- decline code, refusal message, refund reason or why an attempt was abandoned
    reason             text,
    provider_reference text,
    -- the caller's service identity, from its token
    requested_by       text        NOT NULL,
    lease_expires_at   timestamptz,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((phase = 'completed') = (outcome IS NOT NULL)),
    CHECK ((phase = 'started') = (lease_expires_at IS NOT NULL))
);
CREATE INDEX payment_operations_payment ON payment_operations (payment_id, seq);

-- At most one result per operation: of two attempts racing to record one (a retry that took
-- over an expired lease, say), the second insert fails and that attempt answers with the first
-- one's result. This index, not application code, is the last word on "charged once".
CREATE UNIQUE INDEX payment_operations_one_result
    ON payment_operations (payment_id, operation, idempotency_key)
    WHERE phase = 'completed';

-- Append-only, enforced by the database rather than by convention.
CREATE FUNCTION payment_operations_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payment_operations is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER payment_operations_append_only
    BEFORE UPDATE OR DELETE ON payment_operations
    FOR EACH ROW EXECUTE FUNCTION payment_operations_append_only();
