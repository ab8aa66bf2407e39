-- Stock per sku, and reservations per order (ADR 0007).
--
-- `available` is what can still be reserved; `reserved` is held by reservations not yet
-- committed or released. Reserve moves units from `available` to `reserved`, Release moves
-- them back, Commit removes them from `reserved` (they left the warehouse). The CHECKs are the
-- last line of defence against overselling: a bug that would drive either below zero fails
-- its transaction instead.
CREATE TABLE stock (
    sku                 text        PRIMARY KEY,
    available           bigint      NOT NULL CHECK (available >= 0),
    reserved            bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- At or below this, a StockLow event is published (once, when the level crosses it).
    low_stock_threshold bigint      NOT NULL CHECK (low_stock_threshold >= 0),
    -- +1 on every change of the row; carried by every stock event so read models built from
    -- them (catalog's `in_stock`) keep the newest level whatever order events arrive in.
    version             bigint      NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One reservation per order: the order id is the idempotency key of Reserve, Commit and
-- Release. A Release for an order that never reserved leaves a `released` row with no lines,
-- so a Reserve arriving late (a retry overtaken by the compensation) is refused instead of
-- holding stock nobody will release.
CREATE TABLE reservations (
    order_id       uuid        PRIMARY KEY,
    id             uuid        NOT NULL UNIQUE,
    status         text        NOT NULL
                   CHECK (status IN ('reserved', 'committed', 'released', 'expired')),
    -- When the expiry job may release it if the saga neither committed nor released it.
    expires_at     timestamptz NOT NULL,
    release_reason text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- What the expiry job scans: only live reservations, oldest deadline first.
CREATE INDEX reservations_live_by_expiry ON reservations (expires_at) WHERE status = 'reserved';

CREATE TABLE reservation_lines (
    order_id uuid   NOT NULL REFERENCES reservations (order_id) ON DELETE CASCADE,
    sku      text   NOT NULL REFERENCES stock (sku),
    quantity bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
