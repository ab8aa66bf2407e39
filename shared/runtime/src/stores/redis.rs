//! Redis: a multiplexed, self-reconnecting connection and a key prefix.

use std::{sync::Arc, time::Duration};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::SecretUrl;
use crate::{BootError, health::Readiness};

/// Settings for Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`
    pub url: SecretUrl,
    /// `REDIS_KEY_PREFIX` (default `<service>:`): every key this service writes starts with it,
    /// so services (and parallel tests) sharing one Redis never see each other's keys.
    pub key_prefix: String,
}

/// A handle to Redis. Clone it freely: all clones share one multiplexed connection.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    manager: Arc<OnceCell<ConnectionManager>>,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// The shared connection, established on first use. `ConnectionManager` reconnects by
    /// itself after a failure; only the *first* connect can fail here.
    pub async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let client = self.client.clone();
        self.manager
            .get_or_try_init(|| async move {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                ConnectionManager::new_with_config(client, config).await
            })
            .await
            .cloned()
    }

    /// `key` with this service's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Creates the handle (without connecting, so a Redis outage at boot does not stop the
/// service from starting and reporting itself unready) and registers the `redis` probe:
/// required for readiness when `required`, otherwise only reported.
pub fn connect(
    config: &RedisConfig,
    readiness: &Readiness,
    required: bool,
) -> Result<Redis, BootError> {
    let client =
        redis::Client::open(config.url.expose()).map_err(|err| BootError::store("redis", err))?;
    let handle = Redis {
        client,
        manager: Arc::new(OnceCell::new()),
        prefix: config.key_prefix.clone().into(),
    };
    let probe = handle.clone();
    let ping = move || {
        let redis = probe.clone();
        async move {
            let mut conn = redis.connection().await.map_err(|err| err.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        }
    };
    if required {
        readiness.add("redis", ping);
    } else {
        readiness.report("redis", ping);
    }
    Ok(handle)
}
