//! The expiry job: releases reservations whose saga died and never came back.
//!
//! Every instance runs it. They share the work without coordination: each reservation is
//! taken with `FOR UPDATE SKIP LOCKED` in its own transaction ([`stock::expire_due`]), so two
//! instances never release the same one and never wait for each other. The same tick refreshes
//! the low-stock gauges.
//!
//! Why a polling job and not a timer per reservation: a timer lives in one process and dies
//! with it, which is exactly the failure this job exists for. The table is the only place that
//! survives every crash, so the job asks the table. The cost is latency: stock stays held up to
//! one `EXPIRY_INTERVAL_SECONDS` past its `expires_at`. Until the job has taken a reservation a
//! late Commit still succeeds (the status, not the clock, decides), which
//! `commits_racing_the_expiry_of_their_reservations_each_end_exactly_one_way` in
//! `tests/reservations.rs` checks.
//!
//! This is pattern BEY-09 (reservation expiry) of `docs/patterns.md`. It is the one change of
//! stock that no request and no event asks for: the saga's Commit and Release come from
//! order-service, this job comes from the clock. What it releases is announced like a saga's Release
//! (`StockReleased`, reason `expired`), so catalog's `in_stock` follows either way.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::stock;

/// Reservations released per round before the loop checks for shutdown again.
///
/// Bounds how long a shutdown waits for the job after a backlog built up (say, after the
/// database was away): the loop finishes its round, then looks at the token.
const BATCH: usize = 100;

/// Runs until `shutdown`, every `interval`.
///
/// Never returns an error and never panics on one: a failed round (database down or busy) is
/// logged as a warning and the next tick tries again, since a lapsed reservation stays lapsed
/// and is found then. Missed ticks are delayed rather than fired in a burst, so a slow round
/// is not followed by several more at once. Spawned on the runtime's task tracker by
/// [`crate::InventoryService`], so shutdown waits (up to the grace period) for the current
/// round to end.
pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // A full batch means more may be due: go again at once instead of waiting a tick.
        loop {
            match stock::expire_due(&pool, BATCH).await {
                Ok(released) if released == BATCH && !shutdown.is_cancelled() => {}
                Ok(_) => break,
                Err(err) => {
                    // The database is unreachable or busy; the next tick tries again.
                    tracing::warn!(error = %err, "expiring reservations failed");
                    break;
                }
            }
        }
        if let Err(err) = stock::refresh_gauges(&pool).await {
            tracing::warn!(error = %err, "refreshing the stock gauges failed");
        }
    }
}
