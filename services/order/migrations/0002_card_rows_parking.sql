-- Card data in a row of its own, deleted once the authorization's outcome is known; sagas
-- that stop for an operator ("parked") instead of retrying forever.

-- The sealed card (AES-256-GCM, bound to the order id) lives here only while the saga may
-- still have to send it to payment-service. The row is DELETED when the saga leaves
-- `authorize` (or ends), not overwritten in place: a small table whose rows are short-lived,
-- vacuumed eagerly so dead tuples holding ciphertext do not linger. The CVC never outlives the
-- authorization (PCI DSS 3.2.2) because nothing else ever stores it.
CREATE TABLE order_cards (
    order_id uuid  PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    sealed   bytea NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50);

INSERT INTO order_cards (order_id, sealed)
    SELECT order_id, sealed_card FROM order_sagas WHERE sealed_card IS NOT NULL;
ALTER TABLE order_sagas DROP COLUMN sealed_card;

-- A saga past its pivot that a participant refuses (a capture the provider declines) or that
-- failed too many times stops here with the reason, visible to operators
-- (`GET /api/v1/admin/sagas/parked`), until one resumes it. The sweeper skips it meanwhile.
ALTER TABLE order_sagas
    ADD COLUMN parked_at     timestamptz,
    ADD COLUMN parked_reason text;

DROP INDEX order_sagas_due;
CREATE INDEX order_sagas_due ON order_sagas (next_attempt_at)
    WHERE step NOT IN ('confirmed', 'cancelled') AND parked_at IS NULL;
CREATE INDEX order_sagas_parked ON order_sagas (parked_at) WHERE parked_at IS NOT NULL;
