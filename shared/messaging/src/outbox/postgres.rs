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
//! rows are published again later: a duplicate, never a loss. It wakes on `NOTIFY` from
//! [`enqueue`] (delivered at commit) and also polls, in case a notification was missed while
//! its listening connection was being re-established.

use std::time::{Duration, Instant};

use shop_runtime::{BootError, Context, stores::amqp::Amqp};
use sqlx::{Executor, PgConnection, PgPool, postgres::PgListener, types::Json};
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
";

/// The `NOTIFY` channel [`enqueue`] signals and the relay listens on.
pub const CHANNEL: &str = "messaging_outbox";

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
    // Delivered to listeners when (and only if) the transaction commits.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes a declared [`Event`] to the outbox on `conn` (inside the caller's transaction), in a
/// fresh envelope under its own routing key, and returns that envelope.
pub async fn enqueue_event<E: Event>(conn: &mut PgConnection, event: &E) -> Result<Envelope, Error> {
    let envelope = event.envelope()?;
    enqueue(conn, E::ROUTING_KEY, &envelope).await?;
    Ok(envelope)
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
    pub async fn run(pool: PgPool, amqp: Amqp, config: RelayConfig, shutdown: CancellationToken) {
        let publisher = Publisher::new(amqp);
        let new_backoff = || shop_runtime::backoff::forever(config.max_backoff);
        let mut backoff = new_backoff();
        let mut listener: Option<PgListener> = None;
        let mut last_report: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                listener = listen(&pool).await;
            }
            let outcome = relay_batch(&pool, &publisher, config.batch_size).await;
            if last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                report_backlog(&pool).await;
                last_report = Some(Instant::now());
            }
            let wait = match outcome {
                Ok(count) if count >= config.batch_size => {
                    backoff = new_backoff();
                    continue; // there may be more right away
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
            match (wait, listener.as_mut()) {
                (Some(delay), _) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                (None, Some(l)) => {
                    tokio::select! {
                        received = l.recv() => if let Err(err) = received {
                            tracing::warn!(error = %err, "outbox notifications lost; polling until re-listening");
                            listener = None;
                        },
                        () = tokio::time::sleep(config.poll_interval) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                (None, None) => {
                    tokio::select! {
                        () = tokio::time::sleep(config.poll_interval.min(Duration::from_secs(1))) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let attempt = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match attempt.await {
        Ok(listener) => Some(listener),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for outbox notifications; polling");
            None
        }
    }
}

/// Publishes one batch; returns how many rows it looked at. Errors once it has committed what
/// did succeed, so the caller backs off.
pub(crate) async fn relay_batch(
    pool: &PgPool,
    publisher: &Publisher,
    batch_size: i64,
) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, String, Json<serde_json::Value>)> = sqlx::query_as(
        "SELECT id, routing_key, envelope FROM messaging.outbox
         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch_size)
    .fetch_all(&mut *tx)
    .await?;
    let looked_at = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    if rows.is_empty() {
        return Ok(0);
    }

    let mut ids = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    let mut broken: Vec<(Uuid, String)> = Vec::new();
    for (id, routing_key, Json(envelope)) in rows {
        match serde_json::from_value::<Envelope>(envelope) {
            Ok(envelope) => {
                ids.push(id);
                events.push((routing_key, envelope));
            }
            // Only a hand-written row can get here; it stays, visible in the backlog metrics.
            Err(err) => broken.push((id, format!("not an envelope: {err}"))),
        }
    }
    let results = publisher.publish_events(&events).await;
    let mut failed: Vec<(Uuid, String)> = Vec::new();
    let mut first_error = None;
    let mut sent = Vec::with_capacity(ids.len());
    for (id, result) in ids.into_iter().zip(results) {
        match result {
            Ok(()) => sent.push(id),
            Err(err) => {
                failed.push((id, err.to_string()));
                first_error.get_or_insert(err);
            }
        }
    }

    sqlx::query("DELETE FROM messaging.outbox WHERE id = ANY($1)")
        .bind(&sent)
        .execute(&mut *tx)
        .await?;
    for (id, reason) in failed.iter().chain(&broken) {
        sqlx::query(
            "UPDATE messaging.outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    match first_error {
        None => Ok(looked_at),
        Some(err) => Err(err),
    }
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
