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
//! The order id is the idempotency key: [`reserve`], [`commit`] and [`release`] look at the
//! order's reservation first, and a repeated call answers from it without changing anything.

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
pub const MAX_LINES: usize = 100;
/// The longest sku accepted anywhere.
pub const MAX_SKU_CHARS: usize = 64;
/// The largest stock figure accepted (keeps sums far from `i64` overflow).
pub const MAX_UNITS: i64 = 1_000_000_000;

/// One line of a reservation: `quantity` units of `sku`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
}

/// Where a reservation is in its life. Only `Reserved` holds stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Reserved,
    Committed,
    Released,
    Expired,
}

impl Status {
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

/// An order's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: Status,
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stock {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub version: i64,
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

const STOCK_COLUMNS: &str = "sku, available, reserved, version, low_stock_threshold";

/// The message of a refused reservation lists the skus, so the caller (order-service, which
/// cancels with `out_of_stock`) and its logs can say which.
pub const OUT_OF_STOCK_PREFIX: &str = "Not enough stock for: ";

/// Checks a sku taken from a request: what the field error says when it is not one.
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

fn record(call: &'static str, outcome: &'static str) {
    metrics::counter!(call, "outcome" => outcome).increment(1);
}

/// Reserves every line or none, for `order_id`, until `ttl` from now.
///
/// A repeated call with the same lines returns the same reservation and changes nothing;
/// with other lines, or after the order's reservation was released or expired, it is refused.
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
fn prefixed(alias: &str) -> String {
    STOCK_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sorted(mut rows: Vec<Stock>) -> Vec<Stock> {
    rows.sort_by(|a, b| a.sku.cmp(&b.sku));
    rows
}

/// Answers a Reserve for an order that already has a reservation.
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

/// Gives the order's reserved stock back.
///
/// An order without a reservation gets a `released` one with no lines: nothing is given back,
/// and a Reserve of that order arriving late is refused rather than holding stock for an
/// order that was already compensated.
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

    #[test]
    fn lines_are_merged_by_sku_and_sorted_in_lock_order() {
        let lines = normalise(vec![line("b", 1), line("a", 2), line("b", 3)]).unwrap();
        assert_eq!(lines, vec![line("a", 2), line("b", 4)]);
    }

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
