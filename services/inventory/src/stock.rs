//! Stock and reservations: every state change of the service, each in one transaction with the
//! events it publishes (ADR 0007).
//!
//! Two rules keep this correct under any concurrency:
//!
//! * **Never oversell.** A reservation locks the stock rows it needs (`SELECT ... FOR UPDATE`),
//!   checks them, and changes them in the same transaction; the `CHECK (available >= 0)` of the
//!   schema turns any bug that would oversell into a failed transaction.
//! * **Never deadlock.** Every transaction that locks more than one stock row locks them in one
//!   statement ordered by sku (`ORDER BY sku FOR UPDATE`), and locks its reservation row, if
//!   any, before them. Two orders wanting the same skus in opposite order therefore queue on
//!   the first sku instead of each holding what the other needs.
//!
//! (These two rules are pattern BEY-19 of `docs/patterns.md`; the tests that hold them are
//! `orders_reserving_two_skus_in_opposite_order_neither_deadlock_nor_oversell` and
//! `fifty_concurrent_reservations_of_ten_units_let_exactly_ten_through_and_repeats_change_nothing`
//! in `tests/reservations.rs`.)
//!
//! The order id is the idempotency key: [`reserve`], [`commit`] and [`release`] look at the
//! order's reservation first, and a repeated call answers from it without changing anything.
//!
//! ## The life of a reservation
//!
//! ```text
//! (none) --reserve--> reserved --commit--> committed
//!    |                   |  \--release--> released
//!    |                   \----expire_due--> expired
//!    \--release--> released (no lines: a tombstone)
//! ```
//!
//! Only `reserved` holds stock; the three other states are final, and each step refuses to
//! leave one of them (a Commit after a Release, a Release after a Commit, a Reserve after a
//! Release). The saga relies on those refusals: a refused Commit proves nothing was
//! committed, so it may still compensate (ADR 0009).
//!
//! ## Why everything is in this one file
//!
//! The gRPC handlers ([`crate::grpc`]), the admin API ([`crate::api`]), the consumer
//! ([`crate::products`]) and the expiry job ([`crate::expiry`]) only translate their input and
//! call a function here. The locking order, the idempotency checks and the events are
//! therefore written once, and the tests in `tests/reservations.rs` exercise the same code
//! every caller runs.
//!
//! ## Events and errors
//!
//! Each function writes its events with [`enqueue_event`] on its own transaction, so a change
//! and its announcement commit or vanish together; nothing is published from here directly
//! (the transactional outbox, pattern BEY-01). Committing through [`outbox::commit`] rather
//! than the transaction's own `commit` also wakes this process's relay at once (ADR 0015), so
//! an event does not wait for the relay's next poll.
//! Errors are [`ApiError`]s whose kind says what the caller should do: a validation error
//! (422 / `INVALID_ARGUMENT`) names the fields, "not possible in this state" is a conflict
//! (409 / `FAILED_PRECONDITION`), and a database that is down or busy becomes a retryable
//! 503 / `UNAVAILABLE` through the shared conversion of `sqlx` errors.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use shop_events::inventory::{
    OutOfStock, StockLevel, StockLow, StockReleased, StockReplenished, StockReserved,
};
use shop_messaging::outbox::postgres::{self as outbox, enqueue_event};
use shop_runtime::{ApiError, FieldError};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// At most this many lines per reservation (an order is far smaller; this bounds the work).
///
/// One Reserve locks one row per line, so the limit also bounds how many rows one call holds
/// locked at a time.
pub const MAX_LINES: usize = 100;
/// The longest sku accepted anywhere: in reservations, in availability queries, in the admin
/// API and in `ProductCreated`, all through [`check_sku`].
pub const MAX_SKU_CHARS: usize = 64;
/// The largest stock figure accepted (keeps sums far from `i64` overflow).
pub const MAX_UNITS: i64 = 1_000_000_000;

/// One line of a reservation: `quantity` units of `sku`.
///
/// Callers may pass the same sku twice; [`normalise`] merges them before anything is locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The product's sku, as catalog announced it.
    pub sku: String,
    /// Units wanted, `1..=MAX_UNITS` (`i64`, like the stock columns).
    pub quantity: i64,
}

/// Where a reservation is in its life. Only `Reserved` holds stock.
///
/// The module documentation draws the transitions; every state but `Reserved` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Holds its units in `stock.reserved` until a Commit, a Release or the expiry job.
    Reserved,
    /// The units left the warehouse: they were taken out of `reserved` for good.
    Committed,
    /// The saga gave the units back (or released before it ever reserved: a tombstone).
    Released,
    /// The expiry job gave the units back because the saga never came back in time.
    Expired,
}

impl Status {
    /// Reads `reservations.status`. The schema's `CHECK` admits only the four values, so the
    /// fallback arm is never taken for a row this service wrote.
    fn parse(value: &str) -> Self {
        match value {
            "committed" => Self::Committed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => Self::Reserved,
        }
    }

    /// The value of `reservations.status`: text rather than a PostgreSQL enum, so adding a
    /// state is a code change without a type migration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

/// An order's reservation, as [`reserve`] answers it and [`find`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The reservation's own id (UUIDv7), returned to the saga; a replayed Reserve answers the
    /// same one, which is how a retry can tell it got the original.
    pub id: Uuid,
    /// The order it belongs to: the primary key, hence one reservation per order.
    pub order_id: Uuid,
    /// Where it is in its life.
    pub status: Status,
    /// When the expiry job may release it, written with the database's clock.
    pub expires_at: DateTime<Utc>,
}

/// Whether a call changed something or answered a repetition from what was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This call made the change (and wrote its event).
    Applied,
    /// The change was already there (a retry after a lost answer): same answer, no second
    /// effect and no second event.
    Replayed,
}

/// A stock row.
///
/// `available + reserved` is what is still on the shelf (committed units have left it); both
/// are kept at zero or above by the schema's `CHECK`s, whatever the code does.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stock {
    /// The product's sku, the row's key.
    pub sku: String,
    /// Units that a Reserve may still take.
    pub available: i64,
    /// Units held by live reservations; a Commit removes them, a Release or expiry moves them
    /// back to `available`.
    pub reserved: i64,
    /// Incremented by every change of the row, so events can be ordered by their consumers.
    pub version: i64,
    /// `StockLow` is published when `available` falls across this figure.
    pub low_stock_threshold: i64,
}

impl Stock {
    /// The row as the events publish it: `version` lets a consumer drop a level older than
    /// one it already applied, since events may arrive out of order.
    pub fn level(&self) -> StockLevel {
        StockLevel {
            sku: self.sku.clone(),
            available: self.available,
            reserved: self.reserved,
            version: self.version,
        }
    }
}

/// The columns of [`Stock`], written once so every query reads the row the same way.
const STOCK_COLUMNS: &str = "sku, available, reserved, version, low_stock_threshold";

/// The message of a refused reservation lists the skus, so the caller (order-service, which
/// cancels with `out_of_stock`) and its logs can say which.
pub const OUT_OF_STOCK_PREFIX: &str = "Not enough stock for: ";

/// Checks a sku taken from a request: what the field error says when it is not one.
///
/// One rule for every way a sku enters the service (gRPC, admin API, `ProductCreated`), so a
/// sku accepted in one place is never refused in another. Whitespace and control characters
/// are refused because a sku ends up in paths, logs and error messages.
pub fn check_sku(sku: &str) -> Result<(), &'static str> {
    if sku.is_empty() {
        Err("must not be empty")
    } else if sku.chars().count() > MAX_SKU_CHARS {
        Err("must be at most 64 characters")
    } else if sku.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must not contain spaces or control characters")
    } else {
        Ok(())
    }
}

/// Validates the lines and merges repeated skus, sorted by sku (the lock order).
///
/// Every problem is reported at once as a field error naming the line (`lines[1].quantity`),
/// so a caller fixes its request in one round. Merging matters for correctness, not just
/// tidiness: one `UPDATE ... FROM UNNEST` with the same sku twice would change the row once,
/// while the shortage check had compared each line on its own. The sort is the lock order the
/// module documentation relies on.
pub fn normalise(lines: Vec<Line>) -> Result<Vec<Line>, ApiError> {
    let mut fields = Vec::new();
    if lines.is_empty() {
        fields.push(FieldError::new("lines", "must contain at least one line"));
    }
    if lines.len() > MAX_LINES {
        fields.push(FieldError::new("lines", "must contain at most 100 lines"));
    }
    let mut merged: BTreeMap<String, i64> = BTreeMap::new();
    for (i, line) in lines.into_iter().enumerate() {
        if let Err(problem) = check_sku(&line.sku) {
            fields.push(FieldError::new(format!("lines[{i}].sku"), problem));
        }
        if !(1..=MAX_UNITS).contains(&line.quantity) {
            fields.push(FieldError::new(
                format!("lines[{i}].quantity"),
                "must be between 1 and 1000000000",
            ));
        }
        let total = merged.entry(line.sku).or_default();
        *total = total.saturating_add(line.quantity);
    }
    if !fields.is_empty() {
        return Err(ApiError::validation(fields));
    }
    Ok(merged
        .into_iter()
        .map(|(sku, quantity)| Line { sku, quantity })
        .collect())
}

/// Counts one call of `call` (a counter name) with its `outcome` label, so the metrics tell
/// replays and refusals apart from real changes.
fn record(call: &'static str, outcome: &'static str) {
    metrics::counter!(call, "outcome" => outcome).increment(1);
}

/// Reserves every line or none, for `order_id`, until `ttl` from now.
///
/// A repeated call with the same lines returns the same reservation and changes nothing;
/// with other lines, or after the order's reservation was released or expired, it is refused.
///
/// A shortage of any line refuses the whole call with a conflict whose message starts with
/// [`OUT_OF_STOCK_PREFIX`] and whose `skus` extension lists the short skus; nothing is held
/// and the order may try again later. On success the same transaction writes
/// `StockReserved` and, for each sku whose level crossed zero or its threshold, `OutOfStock`
/// or `StockLow`. The returned [`Outcome`] tells a first call from a replay; the gRPC answer
/// is the same for both.
pub async fn reserve(
    pool: &PgPool,
    order_id: Uuid,
    lines: Vec<Line>,
    ttl: Duration,
) -> Result<(Reservation, Outcome), ApiError> {
    let lines = normalise(lines)?;
    let mut tx = pool.begin().await?;
    // The reservation row first: it is the idempotency key. A concurrent Reserve of the same
    // order waits here for ours to commit or roll back, then finds it (or takes over).
    let created: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO reservations (order_id, id, status, expires_at)
         VALUES ($1, $2, 'reserved', now() + make_interval(secs => $3))
         ON CONFLICT (order_id) DO NOTHING
         RETURNING id, expires_at",
    )
    .bind(order_id)
    .bind(Uuid::now_v7())
    .bind(ttl.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, expires_at)) = created else {
        drop(tx);
        return replay_reserve(pool, order_id, &lines).await;
    };

    let skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
    let quantities: Vec<i64> = lines.iter().map(|line| line.quantity).collect();
    // Locked in sku order: see the module documentation.
    let before: Vec<Stock> = sqlx::query_as(&format!(
        "SELECT {STOCK_COLUMNS} FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE"
    ))
    .bind(&skus)
    .fetch_all(&mut *tx)
    .await?;
    let short: Vec<&str> = lines
        .iter()
        .filter(|line| {
            before
                .iter()
                .find(|row| row.sku == line.sku)
                .is_none_or(|row| row.available < line.quantity)
        })
        .map(|line| line.sku.as_str())
        .collect();
    if !short.is_empty() {
        // Nothing was changed; rolling back also forgets the reservation row, so the same
        // order may try again once stock was added.
        tx.rollback().await?;
        record("inventory_reservations_total", "out_of_stock");
        return Err(
            ApiError::conflict(format!("{OUT_OF_STOCK_PREFIX}{}", short.join(", ")))
                .with_extension("skus", serde_json::json!(short)),
        );
    }

    let after: Vec<Stock> = sqlx::query_as(&format!(
        "UPDATE stock s
            SET available = s.available - l.quantity, reserved = s.reserved + l.quantity,
                version = s.version + 1, updated_at = now()
           FROM UNNEST($1::text[], $2::bigint[]) AS l(sku, quantity)
          WHERE s.sku = l.sku
      RETURNING {}",
        prefixed("s")
    ))
    .bind(&skus)
    .bind(&quantities)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO reservation_lines (order_id, sku, quantity)
         SELECT $1, l.sku, l.quantity FROM UNNEST($2::text[], $3::bigint[]) AS l(sku, quantity)",
    )
    .bind(order_id)
    .bind(&skus)
    .bind(&quantities)
    .execute(&mut *tx)
    .await?;

    let after = sorted(after);
    let event = StockReserved {
        order_id,
        levels: after.iter().map(Stock::level).collect(),
    };
    enqueue_event(&mut tx, &event).await?;
    for row in &after {
        let was = before
            .iter()
            .find(|old| old.sku == row.sku)
            .map_or(0, |old| old.available);
        announce_fall(&mut tx, was, row).await?;
    }
    outbox::commit(tx).await?;
    record("inventory_reservations_total", "reserved");
    Ok((
        Reservation {
            id,
            order_id,
            status: Status::Reserved,
            expires_at,
        },
        Outcome::Applied,
    ))
}

/// `s.sku, s.available, ...`: the stock columns of a table alias, for `RETURNING`.
/// (An `UPDATE ... FROM` needs qualified names: both sides have a `sku` column.)
fn prefixed(alias: &str) -> String {
    STOCK_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows in sku order: `RETURNING` promises no order, and events list levels sorted so that
/// the same change always publishes the same payload.
fn sorted(mut rows: Vec<Stock>) -> Vec<Stock> {
    rows.sort_by(|a, b| a.sku.cmp(&b.sku));
    rows
}

/// Answers a Reserve for an order that already has a reservation.
///
/// Runs after the insert found the order's row (its transaction is dropped), on plain reads:
/// nothing is changed, so nothing needs locking. A reservation that is still held or already
/// committed answers with itself when the lines are the same (a retry after a lost answer); other
/// lines are refused, since one order id cannot mean two baskets. A released or expired one is
/// refused, which is what stops a late retry from holding stock for an order the saga has already
/// compensated. Should this second read not find the row, the caller is told to retry (503) rather
/// than guessing.
async fn replay_reserve(
    pool: &PgPool,
    order_id: Uuid,
    lines: &[Line],
) -> Result<(Reservation, Outcome), ApiError> {
    let reservation = find(pool, order_id)
        .await?
        .ok_or_else(|| ApiError::unavailable("The reservation changed meanwhile; retry."))?;
    match reservation.status {
        Status::Released | Status::Expired => {
            record("inventory_reservations_total", "refused");
            return Err(ApiError::conflict(format!(
                "The reservation of order {order_id} was {}; the order cannot reserve again.",
                reservation.status.as_str()
            )));
        }
        Status::Reserved | Status::Committed => {}
    }
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    let same = stored.len() == lines.len()
        && stored
            .iter()
            .zip(lines)
            .all(|((sku, quantity), line)| *sku == line.sku && *quantity == line.quantity);
    if !same {
        record("inventory_reservations_total", "refused");
        return Err(ApiError::conflict(format!(
            "Order {order_id} already holds a reservation with other lines."
        )));
    }
    record("inventory_reservations_total", "replayed");
    Ok((reservation, Outcome::Replayed))
}

/// The reservation of `order_id`, if it has one.
///
/// A plain read without a lock: good for answers and tests, not for deciding a change (the
/// changing functions lock the row first).
pub async fn find(pool: &PgPool, order_id: Uuid) -> Result<Option<Reservation>, ApiError> {
    let row: Option<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, status, expires_at FROM reservations WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, status, expires_at)| Reservation {
        id,
        order_id,
        status: Status::parse(&status),
        expires_at,
    }))
}

/// Locks the order's reservation row and returns its status.
///
/// In Commit and Release it is the first lock taken, before any stock row (the expiry job takes the
/// same row lock first too): part of the deadlock rule of this module. Concurrent Commit, Release
/// and expiry of the same order therefore run one after the other, each seeing the status the
/// previous one left.
async fn lock_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Status>, ApiError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(status.as_deref().map(Status::parse))
}

/// Locks the stock rows of the order's lines, in sku order, and returns them as they are.
///
/// One statement for all rows, so the locks are taken in the `ORDER BY` order rather than in
/// whatever order a loop happened to visit them.
async fn lock_lines(conn: &mut PgConnection, order_id: Uuid) -> Result<Vec<Stock>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {STOCK_COLUMNS} FROM stock
          WHERE sku IN (SELECT sku FROM reservation_lines WHERE order_id = $1)
          ORDER BY sku FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// Turns the order's reservation into a permanent decrement: the reserved units leave.
///
/// The saga's pivot (ADR 0009): after this inventory has no way back. A Commit for an order
/// without a reservation is `NOT_FOUND`; one after a Release or expiry is a conflict, which
/// tells the saga that nothing was committed and it must compensate; a repeat after success
/// is a replay. Commit publishes no event: available stock does not change, and the order's
/// own `OrderConfirmed` announces the outcome. Hence the plain `commit()` of the transaction
/// rather than the outbox's.
pub async fn commit(pool: &PgPool, order_id: Uuid) -> Result<Outcome, ApiError> {
    let mut tx = pool.begin().await?;
    match lock_reservation(&mut tx, order_id).await? {
        None => {
            record("inventory_commits_total", "refused");
            return Err(ApiError::not_found(format!(
                "Order {order_id} has no reservation."
            )));
        }
        Some(Status::Committed) => {
            record("inventory_commits_total", "replayed");
            return Ok(Outcome::Replayed);
        }
        Some(status @ (Status::Released | Status::Expired)) => {
            record("inventory_commits_total", "refused");
            return Err(ApiError::conflict(format!(
                "The reservation of order {order_id} was {}; it cannot be committed.",
                status.as_str()
            )));
        }
        // Still held, even past `expires_at` if the expiry job has not taken it yet: the
        // status, not the clock, says whether the stock is still set aside.
        Some(Status::Reserved) => {}
    }
    lock_lines(&mut tx, order_id).await?;
    sqlx::query(
        "UPDATE stock s
            SET reserved = s.reserved - l.quantity, version = s.version + 1, updated_at = now()
           FROM reservation_lines l
          WHERE l.order_id = $1 AND s.sku = l.sku",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE reservations SET status = 'committed', updated_at = now() WHERE order_id = $1",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    record("inventory_commits_total", "committed");
    Ok(Outcome::Applied)
}

/// Gives the order's reserved stock back, with `reason` (blank: `released`) recorded on the
/// reservation and in `StockReleased`.
///
/// An order without a reservation gets a `released` one with no lines: nothing is given back,
/// and a Reserve of that order arriving late is refused rather than holding stock for an
/// order that was already compensated.
///
/// A repeat is a replay; a Release after a Commit is refused (conflict), because those units
/// have left. When the tombstone insert loses a race against a Reserve of the same order, the
/// loop goes round once more and releases what that Reserve took; a second lost race is
/// answered with a retryable 503 instead of looping.
pub async fn release(pool: &PgPool, order_id: Uuid, reason: &str) -> Result<Outcome, ApiError> {
    let reason = if reason.trim().is_empty() {
        "released"
    } else {
        reason.trim()
    };
    // Two rounds at most: the first may lose a race against a Reserve of the same order.
    for _ in 0..2 {
        let mut tx = pool.begin().await?;
        match lock_reservation(&mut tx, order_id).await? {
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO reservations (order_id, id, status, expires_at, release_reason)
                     VALUES ($1, $2, 'released', now(), $3)
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(Uuid::now_v7())
                .bind(reason)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    // A Reserve of this order committed meanwhile: release that.
                    continue;
                }
                tx.commit().await?;
                record("inventory_releases_total", "released");
                return Ok(Outcome::Applied);
            }
            Some(Status::Released | Status::Expired) => {
                record("inventory_releases_total", "replayed");
                return Ok(Outcome::Replayed);
            }
            Some(Status::Committed) => {
                record("inventory_releases_total", "refused");
                return Err(ApiError::conflict(format!(
                    "The reservation of order {order_id} was committed; it cannot be released."
                )));
            }
            Some(Status::Reserved) => {
                release_locked(&mut tx, order_id, Status::Released, reason).await?;
                outbox::commit(tx).await?;
                record("inventory_releases_total", "released");
                return Ok(Outcome::Applied);
            }
        }
    }
    Err(ApiError::unavailable(
        "The reservation kept changing meanwhile; retry.",
    ))
}

/// Gives back the stock of a reservation whose row the caller has locked and found
/// `reserved`, marks it `to`, and writes the `StockReleased` event.
///
/// Shared by [`release`] (`to` = `Released`) and [`expire_due`] (`to` = `Expired`), so the saga's
/// compensation and the expiry job give stock back in exactly the same way. No low-stock event
/// here: stock only rises.
async fn release_locked(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: Status,
    reason: &str,
) -> Result<(), ApiError> {
    lock_lines(conn, order_id).await?;
    let after: Vec<Stock> = sqlx::query_as(&format!(
        "UPDATE stock s
            SET available = s.available + l.quantity, reserved = s.reserved - l.quantity,
                version = s.version + 1, updated_at = now()
           FROM reservation_lines l
          WHERE l.order_id = $1 AND s.sku = l.sku
      RETURNING {}",
        prefixed("s")
    ))
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE reservations SET status = $2, release_reason = $3, updated_at = now()
          WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(to.as_str())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    let event = StockReleased {
        order_id,
        reason: reason.to_owned(),
        levels: sorted(after).iter().map(Stock::level).collect(),
    };
    enqueue_event(conn, &event).await?;
    Ok(())
}

/// Releases up to `batch` reservations whose `expires_at` has passed: their saga died and
/// never came back. Returns how many it released.
///
/// Each runs in its own short transaction. `FOR UPDATE SKIP LOCKED` lets several instances
/// run this at once without waiting for each other or taking the same reservation twice, and
/// skips a reservation that a Commit or Release is changing right now (it re-checks the
/// status after the lock, so one that was just committed is not touched).
pub async fn expire_due(pool: &PgPool, batch: usize) -> Result<usize, ApiError> {
    let mut expired = 0;
    while expired < batch {
        let mut tx = pool.begin().await?;
        let due: Option<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM reservations
              WHERE status = 'reserved' AND expires_at <= now()
              ORDER BY expires_at
              LIMIT 1
              FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(order_id) = due else {
            break;
        };
        release_locked(&mut tx, order_id, Status::Expired, "expired").await?;
        outbox::commit(tx).await?;
        metrics::counter!("inventory_reservations_expired_total").increment(1);
        tracing::info!(%order_id, "reservation expired and released");
        expired += 1;
    }
    Ok(expired)
}

/// The stock of each sku asked for, in the order asked; a sku without a stock row has none.
///
/// A read without locks: the answer may be stale by the time the caller uses it, which is
/// fine because it only informs (a Reserve checks again under its locks). Unknown skus get a
/// zero row rather than an error so the caller can ask about a whole basket at once.
pub async fn availability(pool: &PgPool, skus: &[String]) -> Result<Vec<Stock>, ApiError> {
    let rows: Vec<Stock> = sqlx::query_as(&format!(
        "SELECT {STOCK_COLUMNS} FROM stock WHERE sku = ANY($1)"
    ))
    .bind(skus)
    .fetch_all(pool)
    .await?;
    Ok(skus
        .iter()
        .map(|sku| {
            rows.iter()
                .find(|row| &row.sku == sku)
                .cloned()
                .unwrap_or_else(|| Stock {
                    sku: sku.clone(),
                    available: 0,
                    reserved: 0,
                    version: 0,
                    low_stock_threshold: 0,
                })
        })
        .collect())
}

/// One sku's stock row, `None` for a sku inventory has never heard of (its product was never
/// created), which the API answers with 404 rather than "0 available".
pub async fn get(pool: &PgPool, sku: &str) -> Result<Option<Stock>, ApiError> {
    Ok(
        sqlx::query_as(&format!("SELECT {STOCK_COLUMNS} FROM stock WHERE sku = $1"))
            .bind(sku)
            .fetch_optional(pool)
            .await?,
    )
}

/// Sets a sku's available stock (an administrator counted the shelf), creating the row if
/// there is none. Reserved units are untouched: they belong to orders in flight.
///
/// Setting the values the row already has changes nothing (no new version, no event).
///
/// The row is locked first so a concurrent Reserve cannot slip between the read and the
/// write. A change that lowers or keeps `available` may publish `OutOfStock` or `StockLow`
/// (on a crossing); one that raises it, or creates the row, publishes `StockReplenished`,
/// which is what lets catalog show the product in stock again.
pub async fn set(
    pool: &PgPool,
    sku: &str,
    available: i64,
    threshold: Option<i64>,
    default_threshold: i64,
) -> Result<Stock, ApiError> {
    let mut tx = pool.begin().await?;
    let before: Option<Stock> = sqlx::query_as(&format!(
        "SELECT {STOCK_COLUMNS} FROM stock WHERE sku = $1 FOR UPDATE"
    ))
    .bind(sku)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(before) = &before
        && before.available == available
        && threshold.is_none_or(|threshold| threshold == before.low_stock_threshold)
    {
        return Ok(before.clone());
    }
    let after: Stock = sqlx::query_as(&format!(
        "INSERT INTO stock (sku, available, low_stock_threshold)
         VALUES ($1, $2, COALESCE($3, $4))
         ON CONFLICT (sku) DO UPDATE
            SET available = EXCLUDED.available,
                low_stock_threshold = COALESCE($3, stock.low_stock_threshold),
                version = stock.version + 1,
                updated_at = now()
         RETURNING {STOCK_COLUMNS}"
    ))
    .bind(sku)
    .bind(available)
    .bind(threshold)
    .bind(default_threshold)
    .fetch_one(&mut *tx)
    .await?;
    match &before {
        Some(before) if after.available <= before.available => {
            announce_fall(&mut tx, before.available, &after).await?;
        }
        _ => {
            let event = StockReplenished {
                level: after.level(),
            };
            enqueue_event(&mut tx, &event).await?;
        }
    }
    outbox::commit(tx).await?;
    Ok(after)
}

/// Creates the stock row of a new product, once: a second call for the same sku (a
/// redelivered event, or a row an administrator created first) changes nothing. Runs on the
/// caller's connection, inside the consumer's transaction. Returns whether it created the row.
pub async fn create_for_product(
    conn: &mut PgConnection,
    sku: &str,
    initial: i64,
    threshold: i64,
) -> Result<bool, shop_messaging::Error> {
    let created: Option<Stock> = sqlx::query_as(&format!(
        "INSERT INTO stock (sku, available, low_stock_threshold) VALUES ($1, $2, $3)
         ON CONFLICT (sku) DO NOTHING
         RETURNING {STOCK_COLUMNS}"
    ))
    .bind(sku)
    .bind(initial)
    .bind(threshold)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = created else {
        return Ok(false);
    };
    enqueue_event(conn, &StockReplenished { level: row.level() }).await?;
    Ok(true)
}

/// Publishes `OutOfStock` or `StockLow` when a sku's available stock fell from `was` across
/// zero or across its threshold: once per crossing, not on every change below it.
///
/// At most one of the two per change: reaching zero is the stronger news and is the one sent.
/// Publishing on crossings keeps the event stream (and the emails it may trigger) quiet while
/// a popular sku is sold down unit by unit below its threshold.
async fn announce_fall(conn: &mut PgConnection, was: i64, row: &Stock) -> Result<(), ApiError> {
    if row.available == 0 && was > 0 {
        enqueue_event(conn, &OutOfStock { level: row.level() }).await?;
    } else if row.available > 0
        && row.available <= row.low_stock_threshold
        && was > row.low_stock_threshold
    {
        let event = StockLow {
            level: row.level(),
            threshold: row.low_stock_threshold,
        };
        enqueue_event(conn, &event).await?;
    }
    Ok(())
}

/// Sets the low-stock gauges from the table (called by the expiry loop on every tick, so
/// they are right whichever instance changed the stock).
pub async fn refresh_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    let (out, low): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE available = 0),
                count(*) FILTER (WHERE available > 0 AND available <= low_stock_threshold)
           FROM stock",
    )
    .fetch_one(pool)
    .await?;
    #[allow(clippy::cast_precision_loss)] // counts of skus, far below 2^52
    {
        metrics::gauge!("inventory_skus_out_of_stock").set(out as f64);
        metrics::gauge!("inventory_skus_low_stock").set(low as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64) -> Line {
        Line {
            sku: sku.into(),
            quantity,
        }
    }

    /// A sku named twice becomes one line with the sum, and the lines come out in sku order:
    /// the lock order [`reserve`] relies on.
    #[test]
    fn lines_are_merged_by_sku_and_sorted_in_lock_order() {
        let lines = normalise(vec![line("b", 1), line("a", 2), line("b", 3)]).unwrap();
        assert_eq!(lines, vec![line("a", 2), line("b", 4)]);
    }

    /// Every broken rule is its own field error, named by the line's index, in one answer.
    #[test]
    fn bad_lines_are_field_errors() {
        let err = normalise(vec![line("", 1), line("a b", 0)]).unwrap_err();
        let fields: Vec<&str> = err.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["lines[0].sku", "lines[1].sku", "lines[1].quantity"]
        );
        assert_eq!(normalise(vec![]).unwrap_err().fields()[0].field, "lines");
    }
}
