-- Failed sign-ins per account, for the per-account limit with backoff (src/login_limit.rs).
--
-- Keyed by the normalised email, not the user id: an email nobody registered is counted and
-- locked exactly like a real account, so the limit does not tell an attacker which emails
-- exist. Rows are forgotten after a successful sign-in, or swept a day after their last
-- failure (a few at a time, by the failures themselves).
CREATE TABLE login_failures (
    email           text        PRIMARY KEY,
    failures        integer     NOT NULL,
    last_failure_at timestamptz NOT NULL,
    locked_until    timestamptz
);
CREATE INDEX login_failures_last_failure ON login_failures (last_failure_at);
