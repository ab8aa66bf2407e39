//! Locating the shared test infrastructure.
//!
//! `make test` starts the native stack and exports its URLs; a developer can point tests at
//! any servers the same way. When a URL is missing, the matching server is started in a
//! container (needs a Docker engine) once per test process and shared by all its tests —
//! each test still isolates itself inside it (see [`crate::isolation`]).

use tokio::sync::OnceCell;

use crate::BoxError;

/// Admin URL of a PostgreSQL server where the test role may create databases.
pub const POSTGRES_URL: &str = "TESTKIT_POSTGRES_URL";
/// URL of a MongoDB (or FerretDB) server.
pub const MONGODB_URL: &str = "TESTKIT_MONGODB_URL";
/// URL of a Redis server.
pub const REDIS_URL: &str = "TESTKIT_REDIS_URL";
/// AMQP URL of a RabbitMQ server, as a user allowed to use any vhost the kit creates.
pub const AMQP_URL: &str = "TESTKIT_AMQP_URL";
/// Management API of that RabbitMQ server, with credentials (`http://guest:guest@host:15672`).
pub const RABBITMQ_API: &str = "TESTKIT_RABBITMQ_API";

fn from_env(key: &str) -> Option<String> {
    std::env::var(key)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Containers started by this process, kept alive until it exits.
mod containers {
    use testcontainers_modules::{
        mongo::Mongo,
        postgres::Postgres,
        rabbitmq::RabbitMq,
        redis::Redis,
        testcontainers::{ContainerAsync, runners::AsyncRunner},
    };
    use tokio::sync::OnceCell;

    use crate::BoxError;

    static POSTGRES: OnceCell<ContainerAsync<Postgres>> = OnceCell::const_new();
    static MONGO: OnceCell<ContainerAsync<Mongo>> = OnceCell::const_new();
    static REDIS: OnceCell<ContainerAsync<Redis>> = OnceCell::const_new();
    static RABBITMQ: OnceCell<ContainerAsync<RabbitMq>> = OnceCell::const_new();

    pub async fn postgres() -> Result<String, BoxError> {
        let container = POSTGRES
            .get_or_try_init(|| Postgres::default().start())
            .await?;
        let port = container.get_host_port_ipv4(5432).await?;
        Ok(format!(
            "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
        ))
    }

    pub async fn mongo() -> Result<String, BoxError> {
        let container = MONGO.get_or_try_init(|| Mongo::default().start()).await?;
        let port = container.get_host_port_ipv4(27017).await?;
        Ok(format!("mongodb://127.0.0.1:{port}/"))
    }

    pub async fn redis() -> Result<String, BoxError> {
        let container = REDIS.get_or_try_init(|| Redis::default().start()).await?;
        let port = container.get_host_port_ipv4(6379).await?;
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    /// (AMQP URL, management API URL) of the `rabbitmq:management` container.
    pub async fn rabbitmq() -> Result<(String, String), BoxError> {
        let container = RABBITMQ
            .get_or_try_init(|| RabbitMq::default().start())
            .await?;
        let amqp = container.get_host_port_ipv4(5672).await?;
        let api = container.get_host_port_ipv4(15672).await?;
        Ok((
            format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
            format!("http://guest:guest@127.0.0.1:{api}"),
        ))
    }
}

static RABBITMQ_URLS: OnceCell<(String, String)> = OnceCell::const_new();

pub async fn postgres_admin_url() -> Result<String, BoxError> {
    match from_env(POSTGRES_URL) {
        Some(url) => Ok(url),
        None => containers::postgres().await,
    }
}

pub async fn mongodb_url() -> Result<String, BoxError> {
    match from_env(MONGODB_URL) {
        Some(url) => Ok(url),
        None => containers::mongo().await,
    }
}

pub async fn redis_url() -> Result<String, BoxError> {
    match from_env(REDIS_URL) {
        Some(url) => Ok(url),
        None => containers::redis().await,
    }
}

/// (AMQP URL of the default vhost, management API URL).
pub async fn rabbitmq_urls() -> Result<(String, String), BoxError> {
    RABBITMQ_URLS
        .get_or_try_init(|| async {
            match (from_env(AMQP_URL), from_env(RABBITMQ_API)) {
                (Some(amqp), Some(api)) => Ok((amqp, api)),
                _ => containers::rabbitmq().await,
            }
        })
        .await
        .cloned()
}
