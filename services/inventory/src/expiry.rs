//! The expiry job: releases reservations whose saga died and never came back.
//!
//! Every instance runs it. They share the work without coordination: each reservation is
//! taken with `FOR UPDATE SKIP LOCKED` in its own transaction ([`stock::expire_due`]), so two
//! instances never release the same one and never wait for each other. The same tick refreshes
//! the low-stock gauges.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::stock;

/// Reservations released per round before the loop checks for shutdown again.
const BATCH: usize = 100;

/// Runs until `shutdown`, every `interval`.
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
