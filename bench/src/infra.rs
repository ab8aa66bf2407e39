//! The run's own slice of the shared infrastructure: fresh PostgreSQL databases, MongoDB
//! databases, a Redis key prefix and RabbitMQ vhosts, all named `t<unix seconds>_b<random>_…`.
//!
//! A benchmark must neither disturb nor be disturbed by a `make run` stack or tests using the
//! same servers, so it never touches the stack's databases, vhost or keys. The naming follows
//! `shop_testkit::isolation`, whose sweep removes slices older than an hour: a run that dies
//! half-way leaves nothing behind for long. A run that ends drops its slice itself.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use sqlx::{Connection, Executor, PgConnection};
use url::Url;

/// Where the shared servers are: the `TESTKIT_*` variables `.local/test.env` exports, or the
/// native stack's defaults.
#[derive(Debug, Clone)]
pub struct Infra {
    /// A role that may create databases (`testkit`).
    pub postgres: Url,
    pub mongodb: String,
    pub redis: String,
    /// AMQP as a user allowed on every vhost the run creates.
    pub amqp: Url,
    /// RabbitMQ's management API, with credentials.
    pub rabbitmq_api: Url,
}

fn var(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Infra {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            postgres: var(
                "TESTKIT_POSTGRES_URL",
                "postgres://testkit:testkit@127.0.0.1:5432/postgres",
            )
            .parse()
            .context("TESTKIT_POSTGRES_URL")?,
            mongodb: var("TESTKIT_MONGODB_URL", "mongodb://127.0.0.1:27017/"),
            redis: var("TESTKIT_REDIS_URL", "redis://127.0.0.1:6379"),
            amqp: var("TESTKIT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
                .parse()
                .context("TESTKIT_AMQP_URL")?,
            rabbitmq_api: var("TESTKIT_RABBITMQ_API", "http://guest:guest@127.0.0.1:15672")
                .parse()
                .context("TESTKIT_RABBITMQ_API")?,
        })
    }
}

/// Everything this run created, to be dropped at the end.
#[derive(Debug)]
pub struct Slice {
    pub infra: Infra,
    base: String,
    databases: Vec<String>,
    mongo_databases: Vec<String>,
    vhosts: Vec<String>,
    http: reqwest::Client,
}

impl Slice {
    pub fn new(infra: Infra) -> Self {
        // The workspace's test builds unify reqwest's `rustls-no-provider` feature (Pact's
        // verifier asks for it), so a client built before a provider is installed panics.
        shop_runtime::install_crypto_provider();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            infra,
            base: format!("t{now}_b{}", &random[..8]),
            databases: Vec::new(),
            mongo_databases: Vec::new(),
            vhosts: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    pub fn name(&self, purpose: &str) -> String {
        format!("{}_{purpose}", self.base)
    }

    async fn admin(&self) -> Result<PgConnection> {
        PgConnection::connect(self.infra.postgres.as_str())
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {}",
                    redact(&self.infra.postgres)
                )
            })
    }

    /// A fresh database; returns its URL (as the testkit role, its owner).
    pub async fn postgres(&mut self, purpose: &str) -> Result<Url> {
        let name = self.name(purpose);
        let mut admin = self.admin().await?;
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        self.databases.push(name.clone());
        let mut url = self.infra.postgres.clone();
        url.set_path(&format!("/{name}"));
        Ok(url)
    }

    /// The databases created so far.
    pub fn databases(&self) -> &[String] {
        &self.databases
    }

    /// A fresh MongoDB database name (created by its first write).
    pub fn mongo(&mut self, purpose: &str) -> String {
        let name = self.name(purpose);
        self.mongo_databases.push(name.clone());
        name
    }

    /// A Redis key prefix no one else uses.
    pub fn redis_prefix(&self, purpose: &str) -> String {
        format!("{}:", self.name(purpose))
    }

    fn api(&self, path: &str) -> Result<(Url, String, String)> {
        let mut base = self.infra.rabbitmq_api.clone();
        let user = base.username().to_owned();
        let password = base.password().unwrap_or_default().to_owned();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Ok((base.join(path)?, user, password))
    }

    /// A fresh vhost with the AMQP user allowed on it; returns its AMQP URL.
    pub async fn vhost(&mut self, purpose: &str) -> Result<Url> {
        let name = self.name(purpose);
        let (url, user, password) = self.api(&format!("api/vhosts/{name}"))?;
        self.http
            .put(url)
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("creating vhost {name}"))?;
        self.vhosts.push(name.clone());
        let amqp_user = self.infra.amqp.username().to_owned();
        let (url, ..) = self.api(&format!("api/permissions/{name}/{amqp_user}"))?;
        self.http
            .put(url)
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("granting {amqp_user} on vhost {name}"))?;
        let mut amqp = self.infra.amqp.clone();
        amqp.set_path(&format!("/{name}"));
        Ok(amqp)
    }

    /// Sum of `xact_commit` per database of this run (from `pg_stat_database`).
    pub async fn commits(&self) -> Result<Vec<(String, i64)>> {
        let mut admin = self.admin().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT datname::text, xact_commit FROM pg_stat_database WHERE datname = ANY($1) ORDER BY datname",
        )
        .bind(&self.databases)
        .fetch_all(&mut admin)
        .await?;
        Ok(rows)
    }

    /// Drops everything the run created (databases even with connections left open).
    pub async fn drop_all(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        if let Ok(mut admin) = self.admin().await {
            for name in self.databases.drain(..) {
                if let Err(err) = admin
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await
                {
                    failures.push(format!("database {name}: {err}"));
                }
            }
        }
        for name in std::mem::take(&mut self.vhosts) {
            let (url, user, password) = self.api(&format!("api/vhosts/{name}"))?;
            let deleted = self
                .http
                .delete(url)
                .basic_auth(&user, Some(&password))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(err) = deleted {
                failures.push(format!("vhost {name}: {err}"));
            }
        }
        if !self.mongo_databases.is_empty() {
            match mongodb::Client::with_uri_str(&self.infra.mongodb).await {
                Ok(client) => {
                    for name in self.mongo_databases.drain(..) {
                        if let Err(err) = client.database(&name).drop().await {
                            failures.push(format!("mongo database {name}: {err}"));
                        }
                    }
                }
                Err(err) => failures.push(format!("mongodb: {err}")),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("could not drop: {}", failures.join("; "))
        }
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}
