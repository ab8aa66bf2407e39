-- Accounts, refresh tokens and (in development) the signing keys of user-service.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Normalised (trimmed, lower-case) before it gets here, so UNIQUE means "one account per
    -- address" whatever the caller's capitalisation.
    email         text        NOT NULL UNIQUE,
    name          text        NOT NULL,
    -- PHC string: $argon2id$v=19$m=...,t=...,p=...$salt$hash (parameters travel with the hash,
    -- so they can be raised later without invalidating existing passwords).
    password_hash text        NOT NULL,
    roles         text[]      NOT NULL DEFAULT ARRAY['customer'],
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Opaque refresh tokens, stored only as SHA-256 hashes: a leaked table holds nothing usable.
-- A token is rotated on every use; its successors share its family, and presenting a token
-- that was already rotated (`used_at` set) revokes the whole family (RFC 6819 §5.2.2.3).
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    family_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- Signing keys generated in development (no JWT_SIGNING_KEY configured). Kept in the service's
-- own database so every instance signs with the same key and a restart does not invalidate
-- every token issued so far. Production configures its key from a secret instead.
CREATE TABLE signing_keys (
    kid        text        PRIMARY KEY,
    pkcs8      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
