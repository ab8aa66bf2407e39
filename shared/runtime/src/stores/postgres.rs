//! PostgreSQL: a pooled connection and the service's migrations, applied at start.

use std::{str::FromStr, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::SecretUrl;
use crate::{BootError, health::Readiness};

/// Settings for the service's own database.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `DATABASE_URL`
    pub url: SecretUrl,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub max_connections: u32,
}

/// Opens the pool, waits (with backoff, up to `startup_timeout`) until the database answers,
/// applies pending migrations, and registers the `postgres` readiness probe.
///
/// Waiting instead of failing at once lets a whole stack start in any order: a service that
/// boots before its database simply becomes ready a little later.
pub async fn connect(
    config: &PostgresConfig,
    application_name: &str,
    migrations: Option<&'static Migrator>,
    startup_timeout: Duration,
    readiness: &Readiness,
) -> Result<PgPool, BootError> {
    let options = PgConnectOptions::from_str(config.url.expose())
        .map_err(|err| BootError::store("postgres", err))?
        .application_name(application_name);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        // Fail a request fast when the pool is exhausted or the database gone, rather than
        // queueing it behind a 30 s default.
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);

    (|| async { pool.acquire().await.map(drop) })
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_max_delay(Duration::from_secs(5))
                .with_total_delay(Some(startup_timeout))
                .without_max_times(),
        )
        .notify(|err, delay| tracing::warn!(error = %err, ?delay, "database not reachable yet, retrying"))
        .await
        .map_err(|err| BootError::store("postgres", err))?;

    if let Some(migrator) = migrations {
        migrator
            .run(&pool)
            .await
            .map_err(|err| BootError::store("postgres migrations", err))?;
    }

    let probe_pool = pool.clone();
    readiness.add("postgres", move || {
        let pool = probe_pool.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        }
    });
    Ok(pool)
}
