-- Orders, their lines, and the state of each order's saga.

CREATE TABLE orders (
    -- UUID v7: time-ordered, so "newest first" pagination is an index scan on the key.
    id                  uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL,
    -- The client's Idempotency-Key and the HMAC of the request it came with: one order per
    -- (user, key), whoever wins the race to insert it; a different body under the same key
    -- is refused by comparing fingerprints.
    idempotency_key     text        NOT NULL,
    request_fingerprint bytea       NOT NULL,
    status              text        NOT NULL DEFAULT 'PENDING'
                                    CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    cancellation_reason text,
    -- Priced by catalog-service when the order was placed, never taken from the client.
    total_amount        bigint      NOT NULL CHECK (total_amount >= 0),
    currency            text        NOT NULL,
    shipping_address    jsonb       NOT NULL,
    -- From payment-service's authorization: the only card data kept.
    card_last4          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key),
    CHECK ((status = 'CANCELLED') = (cancellation_reason IS NOT NULL))
);
CREATE INDEX orders_by_user ON orders (user_id, id DESC);

CREATE TABLE order_lines (
    order_id          uuid    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no           integer NOT NULL,
    product_id        text    NOT NULL,
    sku               text    NOT NULL,
    name              text    NOT NULL,
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_amount bigint  NOT NULL CHECK (unit_price_amount >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- One row per order: where its saga is (see src/saga.rs) and who drives it.
CREATE TABLE order_sagas (
    order_id          uuid        PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    step              text        NOT NULL,
    -- Set once the saga turned to compensation: the reason the order will be cancelled with.
    reason            text,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    -- Before the pivot, a saga still running after this is compensated (`timeout`).
    deadline          timestamptz NOT NULL,
    -- Attempts of the current step, for the back-off; reset when the step changes.
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- The lease: the instance driving the saga and until when. Another instance takes over
    -- only once it expired, so a crashed instance's sagas resume elsewhere (or after restart).
    lease_owner       uuid,
    lease_until       timestamptz,
    -- The card, encrypted, until the authorization's outcome is known (then NULL).
    sealed_card       bytea,
    authorize_sent_at timestamptz,
    last_error        text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- What the sweeper looks for: unfinished sagas that are due.
CREATE INDEX order_sagas_due ON order_sagas (next_attempt_at)
    WHERE step NOT IN ('confirmed', 'cancelled');
