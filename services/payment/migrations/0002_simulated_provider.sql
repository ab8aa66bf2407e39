-- The simulated card provider's own record, in a schema of its own.
--
-- This is a stand-in for the provider's system, not part of payment-service's data: a real
-- provider keeps its authorizations on its side of the network, and payment-service learns
-- about them only by asking (services/payment/src/provider.rs, the `CardProvider` trait). It
-- lives in this database only so that it survives a restart of payment-service, as a real
-- provider's record would; no query outside `SimulatedProvider` touches this schema (tests
-- read it as "what the provider says").
--
-- Like payment-service's own tables it holds no card number: the test card's behaviour that
-- matters after the authorization (`quirk`) is all it keeps of the card.
CREATE SCHEMA simulated_provider;

-- One row per authorization the provider was asked for, keyed by the merchant's idempotency
-- key (`<payment_id>:authorize:`), which is also how a merchant that never got an answer finds
-- it again ("retrieve by reference") or cancels it.
CREATE TABLE simulated_provider.authorizations (
    idempotency_key text        PRIMARY KEY,
    -- the provider's own reference; NULL for a key voided before any authorization arrived
    reference       text        UNIQUE,
    amount          bigint      NOT NULL DEFAULT 0 CHECK (amount >= 0),
    currency        text,
    status          text        NOT NULL
                                CHECK (status IN ('held', 'captured', 'voided', 'expired', 'declined')),
    decline_reason  text,
    -- how this test card misbehaves after it was approved
    quirk           text        CHECK (quirk IN ('capture_expires', 'void_refused_once')),
    void_refusals   integer     NOT NULL DEFAULT 0,
    refunded        bigint      NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Capture, void and refund requests that took effect, by the merchant's idempotency key: a
-- repeated key is answered again, not carried out again.
CREATE TABLE simulated_provider.requests (
    idempotency_key   text        PRIMARY KEY,
    operation         text        NOT NULL CHECK (operation IN ('capture', 'void', 'refund')),
    authorization_key text        NOT NULL REFERENCES simulated_provider.authorizations (idempotency_key),
    amount            bigint      NOT NULL DEFAULT 0,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
