//! The transactional outbox on PostgreSQL, its relay, and the crate's tables.
//!
//! # Schema
//!
//! The tables live in their own schema, `messaging`, created by [`install`] (idempotently, under
//! an advisory lock so instances starting together do not race). They are not in the service's
//! migrations: sqlx keeps one migration history per database, which belongs to the service,
//! and this crate's tables must be the same in every service. Changes to them are additive
//! (`ADD COLUMN IF NOT EXISTS`), appended to [`SCHEMA`].
//!
//! # Relay
//!
//! [`Relay`] loops: lock a batch of rows (`FOR UPDATE SKIP LOCKED`, so several instances share
//! the work without ever taking the same row), publish them with confirms, delete the confirmed
//! rows, commit. If the process dies anywhere in between, the transaction rolls back and the
//! rows are published again later: a duplicate, never a loss.
//!
//! # Waking the relay
//!
//! A producer that commits with [`commit`] wakes the relays of its own process right after
//! the commit, so its events leave at once. Everything else is found by the relay's poll
//! ([`RelayConfig::poll_interval`]): a transaction committed with a plain `tx.commit()`, or by
//! another process (the `outbox-relay` binary only ever polls). Slower, never lost.
//!
//! The wake used to be a `NOTIFY` sent inside the producer's transaction and delivered at
//! commit. PostgreSQL serialises the commits of transactions that sent a notification (a
//! database-wide lock held until the commit record is flushed), so every event-producing
//! transaction lost group commit: with 16 clients, 3.3x fewer commits per second than the
//! same insert without it (`bench/findings.md`, run 7; ADR 0015). A wake in process memory
//! after the commit costs the database nothing.
//!
//! A failure is either the broker's (unreachable, no confirm in time): every row waits and the
//! relay backs off; or the row's (the broker refused this message, the row is not an event):
//! only that row waits, for a growing pause (`available_at`), while the rows behind it are
//! published. A row that is not an event, or that the broker refused
//! [`RelayConfig::max_attempts`] times, is moved to `messaging.outbox_parked` with the reason,
//! logged once and counted in `messaging_outbox_parked_total`.

use std::{
    pin::pin,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use shop_runtime::{BootError, Context, stores::amqp::Amqp};
use sqlx::{Executor, PgConnection, PgPool, Postgres, Transaction, types::Json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RelayConfig;
use crate::{Error, Event, Publisher, check_routing_key, envelope::Envelope};

/// The crate's tables. Applied by [`install`]; safe to apply any number of times.
pub const SCHEMA: &str = r"
CREATE SCHEMA IF NOT EXISTS messaging;

-- Events written in the producer's transaction, waiting for the relay. A row is deleted once
-- the broker confirmed it. `seq` gives the publishing order.
CREATE TABLE IF NOT EXISTS messaging.outbox (
    seq         bigserial   PRIMARY KEY,
    id          uuid        NOT NULL UNIQUE,
    routing_key text        NOT NULL,
    envelope    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text
);

-- Events a consumer has had its effect for, written in the consumer's transaction.
CREATE TABLE IF NOT EXISTS messaging.inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
-- Pruning deletes a consumer's oldest records.
CREATE INDEX IF NOT EXISTS inbox_processed_at ON messaging.inbox (consumer, processed_at);

-- A row whose publish the broker refused is retried after a growing pause instead of being
-- re-read at once: it must not stay at the head of the outbox and hold back the rows behind.
ALTER TABLE messaging.outbox ADD COLUMN IF NOT EXISTS available_at timestamptz NOT NULL DEFAULT now();

-- Rows the relay gave up on: not an event at all, or refused by the broker `max_attempts`
-- times. Kept, with the reason, until an operator moves them back (`requeue_parked`) or
-- deletes them.
CREATE TABLE IF NOT EXISTS messaging.outbox_parked (
    id          uuid        PRIMARY KEY,
    seq         bigint      NOT NULL,
    routing_key text        NOT NULL,
    envelope    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    attempts    integer     NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
";

/// An arbitrary constant: the advisory lock that serialises concurrent [`install`]s.
const INSTALL_LOCK: i64 = 0x5348_4f50_4d53_4700; // "SHOPMSG\0"

/// Creates the `messaging` schema and its tables if they do not exist.
pub async fn install(pool: &PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    // A plain `&str` runs as a simple query, which may hold several statements.
    (&mut *tx).execute(SCHEMA).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes `event` to the outbox on `conn`, which should be inside the caller's transaction
/// (pass `&mut tx`): the event is then published if and only if that transaction commits.
/// Commit that transaction with [`commit`] so that the relay publishes the event at once;
/// committed otherwise, it waits for the relay's next poll.
///
/// `routing_key` is `<service>.<aggregate>.<event>`, e.g. `user.user.registered`.
pub async fn enqueue(
    conn: &mut PgConnection,
    routing_key: &str,
    event: &Envelope,
) -> Result<(), Error> {
    check_routing_key(routing_key)?;
    sqlx::query("INSERT INTO messaging.outbox (id, routing_key, envelope) VALUES ($1, $2, $3)")
        .bind(event.id)
        .bind(routing_key)
        .bind(Json(event))
        .execute(&mut *conn)
        .await?;
    ENQUEUED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// How many events [`enqueue`] has written in this process, committed or not. Only compared
/// before and after a piece of work, to tell whether that work *may* have enqueued anything
/// ([`enqueued_since`]).
static ENQUEUED: AtomicU64 = AtomicU64::new(0);

/// A mark to pass to [`enqueued_since`].
pub(crate) fn enqueue_mark() -> u64 {
    ENQUEUED.load(Ordering::Relaxed)
}

/// Whether any [`enqueue`] ran in this process since `mark`. `false` means the work in between
/// certainly enqueued nothing; `true` that it may have (any task's enqueue counts): the
/// PostgreSQL consumer uses it to wake the relay only after a handler that may have produced
/// events, not after every message it handles.
pub(crate) fn enqueued_since(mark: u64) -> bool {
    ENQUEUED.load(Ordering::Relaxed) != mark
}

/// Writes a declared [`Event`] to the outbox on `conn` (inside the caller's transaction), in a
/// fresh envelope under its own routing key, and returns that envelope. As with [`enqueue`],
/// commit the transaction with [`commit`].
pub async fn enqueue_event<E: Event>(
    conn: &mut PgConnection,
    event: &E,
) -> Result<Envelope, Error> {
    let envelope = event.envelope()?;
    enqueue(conn, E::ROUTING_KEY, &envelope).await?;
    Ok(envelope)
}

/// Commits `tx` (a transaction that [`enqueue`]d events), then wakes the relays running in
/// this process so that they publish those events now instead of at their next poll.
///
/// The wake happens after the commit, outside the database: unlike a `NOTIFY` in the
/// transaction, it does not serialise the commits of concurrent producers (see the module
/// docs). It reaches every relay of the process, whatever database it serves: when several
/// services share one process (tests), a commit also wakes the others' relays, which costs
/// each of them one empty query. It reaches no relay in another process: those find the rows
/// at their next poll, as they do rows committed with a plain `tx.commit()`.
///
/// When the commit fails nothing is woken: either nothing was written, or (the connection was
/// lost after the server committed) the poll finds the rows.
pub async fn commit(tx: Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    // Wakes the relays registered right now and stores no permit for later ones. A relay
    // registers before each batch (see `Relay::run`), so one in the middle of a batch is
    // registered too; one in its backoff looks at the table when the backoff ends anyway.
    super::WAKE.notify_waiters();
    Ok(())
}

/// The outbox relay for PostgreSQL.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Installs the schema and starts the relay as one of the service's background tasks; it
    /// stops after its current batch when shutdown begins.
    pub async fn spawn(ctx: &Context, config: RelayConfig) -> Result<(), BootError> {
        let pool = ctx.postgres()?.clone();
        let amqp = ctx.amqp()?.clone();
        install(&pool).await?;
        ctx.tasks
            .spawn(Self::run(pool, amqp, config, ctx.shutdown.clone()));
        Ok(())
    }

    /// The relay loop, until `shutdown` is cancelled.
    ///
    /// Between batches it waits for a [`commit`] in this process or for the poll interval,
    /// whichever comes first; after a failure, for its backoff only (a stream of commits must
    /// not turn the backoff into a busy loop against a broker that is down).
    pub async fn run(pool: PgPool, amqp: Amqp, config: RelayConfig, shutdown: CancellationToken) {
        let publisher = Publisher::new(amqp);
        let new_backoff = || shop_runtime::backoff::forever(config.max_backoff);
        let mut backoff = new_backoff();
        let mut last_report: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            // Registered *before* the batch: a commit that lands while the batch runs (too
            // late for its SELECT) still ends the wait below. Registered after it, that wake
            // would be lost and the event would wait for the poll.
            let mut woken = pin!(super::WAKE.notified());
            woken.as_mut().enable();
            let outcome = relay_batch(&pool, &publisher, &config).await;
            if last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                report_backlog(&pool).await;
                last_report = Some(Instant::now());
            }
            let wait = match outcome {
                // A full batch, every row of it settled: there may be more right away. (Rows
                // that failed are now deferred or parked, so the next batch is a different one.)
                Ok(count) if count >= config.batch_size => {
                    backoff = new_backoff();
                    continue;
                }
                Ok(_) => {
                    backoff = new_backoff();
                    None
                }
                Err(err) => {
                    let delay = backoff.next().unwrap_or(config.max_backoff);
                    tracing::warn!(error = %err, ?delay, "outbox relay failed, retrying");
                    Some(delay)
                }
            };
            match wait {
                Some(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                None => {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep(config.poll_interval) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }
}

/// Publishes one batch; returns how many rows it settled (published, deferred or parked).
/// Errors, once it has committed what it did settle, when the broker failed (so the caller
/// backs off).
pub(crate) async fn relay_batch(
    pool: &PgPool,
    publisher: &Publisher,
    config: &RelayConfig,
) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, String, Json<serde_json::Value>, i32)> = sqlx::query_as(
        "SELECT id, routing_key, envelope, attempts FROM messaging.outbox
         WHERE available_at <= now()
         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(config.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }

    let mut ids = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    let mut parked: Vec<(Uuid, String)> = Vec::new();
    for (id, routing_key, Json(envelope), attempts) in rows {
        let parsed = check_routing_key(&routing_key)
            .and_then(|()| Ok(serde_json::from_value::<Envelope>(envelope)?));
        match parsed {
            Ok(envelope) => {
                ids.push((id, attempts));
                events.push((routing_key, envelope));
            }
            // Only a hand-written row can get here; retrying cannot fix it.
            Err(err) => parked.push((id, format!("not an event: {err}"))),
        }
    }
    let results = publisher.publish_events(&events).await;
    let mut sent = Vec::with_capacity(ids.len());
    let mut refused: Vec<(Uuid, String)> = Vec::new();
    let mut broker_error = None;
    for ((id, attempts), result) in ids.into_iter().zip(results) {
        match result {
            Ok(()) => sent.push(id),
            Err(err) if err.blames_the_message() => {
                if u32::try_from(attempts + 1).unwrap_or(u32::MAX) >= config.max_attempts {
                    parked.push((id, format!("refused {} times: {err}", attempts + 1)));
                } else {
                    refused.push((id, err.to_string()));
                }
            }
            Err(err) => {
                broker_error.get_or_insert(err);
            }
        }
    }

    sqlx::query("DELETE FROM messaging.outbox WHERE id = ANY($1)")
        .bind(&sent)
        .execute(&mut *tx)
        .await?;
    for (id, reason) in &refused {
        // 1 s, 2 s, 4 s, ... up to the relay's longest backoff.
        sqlx::query(
            "UPDATE messaging.outbox
             SET attempts = attempts + 1, last_error = $2,
                 available_at = now() + least(make_interval(secs => power(2, attempts)), make_interval(secs => $3))
             WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .bind(config.max_backoff.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    }
    for (id, reason) in &parked {
        sqlx::query(
            "WITH moved AS (DELETE FROM messaging.outbox WHERE id = $1 RETURNING *)
             INSERT INTO messaging.outbox_parked (id, seq, routing_key, envelope, created_at, attempts, reason)
             SELECT id, seq, routing_key, envelope, created_at, attempts + 1, $2 FROM moved",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    for (id, reason) in &parked {
        tracing::error!(event_id = %id, %reason, "outbox row parked in messaging.outbox_parked");
        metrics::counter!("messaging_outbox_parked_total", "store" => "postgres").increment(1);
    }
    match broker_error {
        None => Ok(i64::try_from(sent.len() + refused.len() + parked.len()).unwrap_or(i64::MAX)),
        Some(err) => Err(err),
    }
}

/// Moves every parked row back into the outbox (after the cause was fixed), with its attempts
/// reset; returns how many. They are published again in their original order among themselves.
pub async fn requeue_parked(pool: &PgPool) -> Result<u64, Error> {
    Ok(sqlx::query(
        "WITH moved AS (DELETE FROM messaging.outbox_parked RETURNING *)
         INSERT INTO messaging.outbox (id, routing_key, envelope, created_at)
         SELECT id, routing_key, envelope, created_at FROM moved ORDER BY seq",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Sets the backlog gauges: rows waiting and the age of the oldest.
async fn report_backlog(pool: &PgPool) {
    let row: Result<(i64, Option<f64>), _> = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM messaging.outbox",
    )
    .fetch_one(pool)
    .await;
    if let Ok((backlog, oldest)) = row {
        metrics::gauge!("messaging_outbox_backlog", "store" => "postgres").set(backlog as f64);
        metrics::gauge!("messaging_outbox_oldest_age_seconds", "store" => "postgres")
            .set(oldest.unwrap_or(0.0));
    }
}
