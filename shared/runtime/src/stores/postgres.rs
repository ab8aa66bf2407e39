//! PostgreSQL: a pooled connection and the service's migrations, applied at start.

use std::{collections::HashSet, str::FromStr, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use sqlx::{
    PgConnection, PgPool,
    migrate::{Migrate, MigrateError, Migrator},
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
    let pool = open(config, application_name, startup_timeout).await?;
    if let Some(migrator) = migrations {
        migrate(&pool, migrator).await?;
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

/// Opens the pool and waits (with backoff, up to `startup_timeout`) until the database answers.
pub async fn open(
    config: &PostgresConfig,
    application_name: &str,
    startup_timeout: Duration,
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
    Ok(pool)
}

/// A migration applied by [`migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The number its file name starts with (`0003_...sql` is 3).
    pub version: i64,
    /// The rest of the file name, words separated by spaces.
    pub description: String,
}

/// Applies `migrator`'s pending migrations and returns the ones this call applied, in order,
/// each also logged.
///
/// Under PostgreSQL's advisory lock of the migrator, held from before the applied migrations
/// are listed until after: replicas (or init containers) migrating at once apply each
/// migration once, and each reports only what it applied itself. A migration that fails is
/// rolled back (each runs in a transaction) and named in the error; nothing after it runs.
pub async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<Vec<Applied>, BootError> {
    let failed = |err: MigrateError| BootError::store("postgres migrations", err);
    let mut conn = pool
        .acquire()
        .await
        .map_err(|err| BootError::store("postgres", err))?;
    let result = async {
        // The lock is re-entrant: `run_direct` takes and releases it once more inside.
        conn.lock().await?;
        conn.ensure_migrations_table().await?;
        let before: HashSet<i64> = applied_versions(&mut conn).await?;
        migrator.run_direct(&mut *conn).await?;
        let after = applied_versions(&mut conn).await?;
        conn.unlock().await?;
        Ok::<_, MigrateError>(
            migrator
                .iter()
                .filter(|m| after.contains(&m.version) && !before.contains(&m.version))
                .map(|m| Applied {
                    version: m.version,
                    description: m.description.to_string(),
                })
                .collect::<Vec<_>>(),
        )
    }
    .await;
    let applied = match result {
        Ok(applied) => applied,
        Err(err) => {
            // Never hand a connection that may still hold the lock back to the pool.
            conn.close_on_drop();
            return Err(failed(err));
        }
    };
    for migration in &applied {
        tracing::info!(
            version = migration.version,
            description = %migration.description,
            "applied migration"
        );
    }
    let known = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count();
    tracing::info!(
        applied = applied.len(),
        already_applied = known.saturating_sub(applied.len()),
        "database schema up to date"
    );
    Ok(applied)
}

async fn applied_versions(conn: &mut PgConnection) -> Result<HashSet<i64>, MigrateError> {
    Ok(conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|m| m.version)
        .collect())
}
