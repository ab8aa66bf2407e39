//! A per-account limit on failed sign-ins, with backoff.
//!
//! The gateway limits sign-ins per client *address* (`RATE_LIMIT_AUTH`), which stops one
//! machine guessing. It does not stop many machines guessing one account's password (each
//! address gets its own budget), nor anyone who reaches user-service without the gateway. So
//! the account itself keeps count here, in PostgreSQL (shared by every instance):
//!
//! * [`FREE_FAILURES`] wrong passwords in a row cost nothing more than a 401;
//! * each further one (still a 401) locks the account's sign-in for [`BASE_LOCK`], doubling per
//!   failure up to [`MAX_LOCK`]; while locked, every attempt — the right password too, or the lock would
//!   tell the attacker when they guessed — is answered 429 with `Retry-After`, before any
//!   password is hashed;
//! * a success forgets the count; so does [`FORGET_AFTER`] without a failure.
//!
//! An email nobody registered is counted the same way (the count is keyed by the normalised
//! email), so the answers do not reveal which accounts exist. The price of any per-account
//! limit: someone who knows your email can keep your sign-in locked. Backoff instead of a
//! permanent lock keeps that to [`MAX_LOCK`] at a time, and a signed-in session (refresh
//! tokens) is not affected.

use std::time::Duration;

use sqlx::PgPool;

/// Wrong passwords in a row before the account's sign-in is locked.
pub const FREE_FAILURES: i32 = 5;
/// The first lock; doubled by each further failure (5 s, 10 s, 20 s, ...): a person who
/// mistyped six times waits a moment, a guesser gets a few dozen tries an hour.
pub const BASE_LOCK: Duration = Duration::from_secs(5);
/// The longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// A count with no failure for this long starts again from zero.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Seconds the account's sign-in is still locked for, if it is.
pub async fn locked_for(pool: &PgPool, email: &str) -> Result<Option<u64>, sqlx::Error> {
    let left: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM locked_until - now())::float8 FROM login_failures
         WHERE email = $1 AND locked_until > now()",
    )
    .bind(email)
    .fetch_optional(pool)
    .await?;
    Ok(left.map(|secs| (secs.ceil() as u64).max(1)))
}

/// Counts a wrong password for `email`, in one statement (concurrent failures are each
/// counted), locking it past [`FREE_FAILURES`]; sweeps a few counts older than a day.
pub async fn failed(pool: &PgPool, email: &str) -> Result<(), sqlx::Error> {
    // Every SET expression reads the row as it was: `restart` is whether the old count is
    // forgotten, and the new count is 1 or the old one plus 1.
    sqlx::query(
        "INSERT INTO login_failures AS f (email, failures, last_failure_at)
         VALUES ($1, 1, now())
         ON CONFLICT (email) DO UPDATE SET
           failures = CASE WHEN f.last_failure_at < now() - make_interval(secs => $2)
                           THEN 1 ELSE f.failures + 1 END,
           last_failure_at = now(),
           locked_until = CASE
             WHEN f.last_failure_at >= now() - make_interval(secs => $2)
                  AND f.failures + 1 > $3
             THEN now() + make_interval(secs => least($5, $4 * power(2, f.failures - $3)))
             ELSE NULL END",
    )
    .bind(email)
    .bind(FORGET_AFTER.as_secs_f64())
    .bind(FREE_FAILURES)
    .bind(BASE_LOCK.as_secs_f64())
    .bind(MAX_LOCK.as_secs_f64())
    .execute(pool)
    .await?;
    sqlx::query(
        "DELETE FROM login_failures WHERE email IN (
           SELECT email FROM login_failures WHERE last_failure_at < now() - interval '1 day'
           LIMIT 10)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets the count of `email` after a successful sign-in.
pub async fn succeeded(pool: &PgPool, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM login_failures WHERE email = $1")
        .bind(email)
        .execute(pool)
        .await?;
    Ok(())
}
