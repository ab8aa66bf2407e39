-- One row per sign-in ("family" of rotated refresh tokens), so that revocation and rotation
-- take the same row lock and a session has an absolute end.
--
-- Why a row of its own: revoking by `UPDATE refresh_tokens ... WHERE family_id = $1` under
-- READ COMMITTED does not see a successor that a concurrent rotation inserted but has not yet
-- committed, so that successor survived the revocation. Now every path that changes a family
-- (rotate, reuse detected, logout) first locks its row in `refresh_families` (SELECT ... FOR
-- UPDATE), and a token is valid only while its family row says so: a revocation waits for a
-- rotation in flight, or the rotation waits for the revocation and then sees it.
CREATE TABLE refresh_families (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Absolute end of the session (SESSION_LIFETIME_SECONDS after sign-in); no refresh
    -- extends it.
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX refresh_families_user ON refresh_families (user_id);

-- Families of the tokens issued before this migration: their session starts now.
INSERT INTO refresh_families (id, user_id, created_at, expires_at, revoked_at)
SELECT family_id, min(user_id::text)::uuid, min(created_at), now() + interval '90 days',
       max(revoked_at)
FROM refresh_tokens
GROUP BY family_id;

ALTER TABLE refresh_tokens
    ADD CONSTRAINT refresh_tokens_family_fk
    FOREIGN KEY (family_id) REFERENCES refresh_families (id) ON DELETE CASCADE;

-- Revocation is recorded once, on the family.
ALTER TABLE refresh_tokens DROP COLUMN revoked_at;
