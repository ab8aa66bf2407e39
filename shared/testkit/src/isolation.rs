//! One fresh, private slice of each store per test.
//!
//! Names carry their creation time (`t<unix seconds>_<random>`). Dropping a database when a
//! test ends would need async work in `Drop`; instead, the first isolation request of each
//! test process sweeps away slices older than an hour, left behind by earlier runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;
use url::Url;

use crate::{BoxError, infra};

/// Slices older than this are considered abandoned and removed.
const STALE_AFTER: Duration = Duration::from_secs(3600);

fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("t{now}_{}", &random[..12])
}

fn is_stale(name: &str) -> bool {
    let Some(secs) = name
        .strip_prefix('t')
        .and_then(|rest| rest.split('_').next())
        .and_then(|secs| secs.parse::<u64>().ok())
    else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    now.saturating_sub(secs) > STALE_AFTER.as_secs()
}

/// A fresh PostgreSQL database owned by the test role; returns its URL.
pub async fn postgres_database() -> Result<String, BoxError> {
    let admin_url = infra::postgres_admin_url().await?;
    let mut admin = PgConnection::connect(&admin_url).await?;
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT
        .get_or_try_init(|| async {
            let names: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't%\\_%'")
                    .fetch_all(&mut admin)
                    .await?;
            for name in names.into_iter().filter(|name| is_stale(name)) {
                // A concurrent test process may sweep the same database: ignore failures.
                let _ = admin
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await;
            }
            Ok::<(), BoxError>(())
        })
        .await?;

    let name = unique_name();
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await?;
    let mut url = Url::parse(&admin_url)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// A fresh MongoDB database name on the shared server: (server URL, database name).
pub async fn mongo_database() -> Result<(String, String), BoxError> {
    let url = infra::mongodb_url().await?;
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT
        .get_or_try_init(|| async {
            let client = mongodb::Client::with_uri_str(&url).await?;
            for name in client.list_database_names().await? {
                if is_stale(&name) {
                    let _ = client.database(&name).drop().await;
                }
            }
            Ok::<(), BoxError>(())
        })
        .await?;
    Ok((url, unique_name()))
}

/// The shared Redis and a key prefix no other test uses: (URL, prefix).
pub async fn redis_prefix() -> Result<(String, String), BoxError> {
    Ok((infra::redis_url().await?, format!("{}:", unique_name())))
}

/// A fresh RabbitMQ vhost, with the kit's user allowed on it; returns its AMQP URL.
pub async fn rabbitmq_vhost() -> Result<String, BoxError> {
    let (amqp_url, api_url) = infra::rabbitmq_urls().await?;
    let api = ManagementApi::new(&api_url)?;
    let amqp = Url::parse(&amqp_url)?;
    let user = amqp.username().to_owned();

    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT
        .get_or_try_init(|| async {
            for vhost in api.vhosts().await? {
                if is_stale(&vhost) {
                    let _ = api.delete_vhost(&vhost).await;
                }
            }
            Ok::<(), BoxError>(())
        })
        .await?;

    let vhost = unique_name();
    api.create_vhost(&vhost, &user).await?;
    let mut url = amqp;
    url.set_path(&format!("/{vhost}"));
    Ok(url.to_string())
}

/// What the broker's management API says about `queue` in the vhost of `vhost_url` (a URL from
/// [`rabbitmq_vhost`]): its `arguments`, `type`, message counts, ...
pub async fn rabbitmq_queue(vhost_url: &str, queue: &str) -> Result<serde_json::Value, BoxError> {
    let (_, api_url) = infra::rabbitmq_urls().await?;
    let api = ManagementApi::new(&api_url)?;
    let vhost = Url::parse(vhost_url)?
        .path()
        .trim_start_matches('/')
        .to_owned();
    let response = api
        .client
        .get(api.url(&format!("api/queues/{vhost}/{queue}"))?)
        .basic_auth(&api.user, Some(&api.password))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

/// The few calls of RabbitMQ's management HTTP API the kit needs.
#[derive(Debug)]
struct ManagementApi {
    base: Url,
    user: String,
    password: String,
    client: reqwest::Client,
}

impl ManagementApi {
    fn new(url: &str) -> Result<Self, BoxError> {
        shop_runtime::install_crypto_provider();
        let mut base = Url::parse(url)?;
        let user = base.username().to_owned();
        let password = base.password().unwrap_or_default().to_owned();
        base.set_username("").map_err(|()| "bad management URL")?;
        base.set_password(None).map_err(|()| "bad management URL")?;
        Ok(Self {
            base,
            user,
            password,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    fn url(&self, path: &str) -> Result<Url, BoxError> {
        Ok(self.base.join(path)?)
    }

    async fn vhosts(&self) -> Result<Vec<String>, BoxError> {
        let body: serde_json::Value = self
            .client
            .get(self.url("api/vhosts")?)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|vhost| vhost["name"].as_str().map(str::to_owned))
            .collect())
    }

    async fn create_vhost(&self, vhost: &str, user: &str) -> Result<(), BoxError> {
        self.client
            .put(self.url(&format!("api/vhosts/{vhost}"))?)
            .basic_auth(&self.user, Some(&self.password))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .error_for_status()?;
        self.client
            .put(self.url(&format!("api/permissions/{vhost}/{user}"))?)
            .basic_auth(&self.user, Some(&self.password))
            .json(&serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn delete_vhost(&self, vhost: &str) -> Result<(), BoxError> {
        self.client
            .delete(self.url(&format!("api/vhosts/{vhost}"))?)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_age_out() {
        let a = unique_name();
        assert_ne!(a, unique_name());
        assert!(!is_stale(&a));
        assert!(is_stale("t1000_abcdef"));
        assert!(!is_stale("orders"));
    }
}
