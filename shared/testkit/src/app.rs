//! Services started in-process, on random ports, against isolated stores.
//!
//! ```no_run
//! # async fn example() -> Result<(), shop_testkit::BoxError> {
//! # struct MyService; // any type implementing shop_runtime::Service
//! # /*
//! let app = shop_testkit::spawn::<MyService>().await?;
//! let response = app.get("/readyz").await?;
//! assert_eq!(response.status(), 200);
//! # */
//! # Ok(()) }
//! ```

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use shop_runtime::{Running, Service, config::Env};

use crate::{
    BoxError,
    contract::{self, Contract},
    isolation,
};

/// A service running inside the test process. Dropping it begins its shutdown.
#[derive(Debug)]
pub struct TestApp {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The environment the service was started with (store URLs included).
    pub env: BTreeMap<String, String>,
    /// Checks every answer against the service's OpenAPI document ([`crate::contract`]).
    pub client: contract::Client,
    running: Option<Running>,
}

impl TestApp {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// `http://127.0.0.1:<grpc port>`, for tonic clients.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub async fn get(&self, path: &str) -> reqwest_middleware::Result<reqwest::Response> {
        self.client.get(self.url(path)).send().await
    }

    /// Polls `/readyz` until it answers 200 or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BoxError> {
        crate::eventually(timeout, || async {
            self.get("/readyz")
                .await
                .is_ok_and(|response| response.status().is_success())
        })
        .await
        .map_err(|err| format!("{} not ready: {err}", self.http_addr).into())
    }

    /// Begins a graceful shutdown, as SIGTERM would, and waits until the service stopped.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        contract::unregister(self.http_addr);
        match self.running.take() {
            Some(running) => {
                running.shutdown();
                Ok(running.stopped().await?)
            }
            None => Ok(()),
        }
    }

    /// Hands over the running service, to be shut down by whatever cancels its token (a
    /// signal handler in the shutdown tests); the `TestApp` no longer stops it on drop.
    ///
    /// # Panics
    /// If called twice.
    pub fn begin_shutdown_on_signal(&mut self) -> Running {
        self.running
            .take()
            .expect("the service is still owned by this TestApp")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        contract::unregister(self.http_addr);
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}

/// Starts `S` with a fresh slice of every store it needs.
pub async fn spawn<S: Service>() -> Result<TestApp, BoxError> {
    spawn_with::<S>(std::iter::empty::<(String, String)>()).await
}

/// Starts `S` with these variables set on top of the defaults. A store whose URL variable is
/// given here is not provisioned (point it at a [`crate::proxy::TcpProxy`], for instance), but
/// the slice of it the service uses still is: a MongoDB database or Redis key prefix of its
/// own, unless given too (the server behind such a proxy is the shared one).
pub async fn spawn_with<S: Service>(
    overrides: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
) -> Result<TestApp, BoxError> {
    shop_runtime::install_crypto_provider();
    let overrides: BTreeMap<String, String> = overrides
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let needs = S::spec().needs;
    let mut env = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        env.insert(key.to_owned(), value);
    };
    set("HTTP_ADDR", "127.0.0.1:0".into());
    set("GRPC_ADDR", "127.0.0.1:0".into());
    set("LOG_FORMAT", "pretty".into());
    set(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    set("SHUTDOWN_GRACE_SECONDS", "10".into());
    set("STARTUP_TIMEOUT_SECONDS", "15".into());

    if needs.postgres && !overrides.contains_key("DATABASE_URL") {
        set("DATABASE_URL", isolation::postgres_database().await?);
    }
    if needs.mongo {
        // A test that reaches MongoDB through a proxy of its own (MONGODB_URL) still gets its
        // own database: the server behind the proxy is the shared one.
        let (url, database) = isolation::mongo_database().await?;
        if !overrides.contains_key("MONGODB_URL") {
            set("MONGODB_URL", url);
        }
        if !overrides.contains_key("MONGODB_DATABASE") {
            set("MONGODB_DATABASE", database);
        }
    }
    if needs.redis {
        // Likewise a test that routes Redis through its own proxy gets its own key prefix.
        let (url, prefix) = isolation::redis_prefix().await?;
        if !overrides.contains_key("REDIS_URL") {
            set("REDIS_URL", url);
        }
        if !overrides.contains_key("REDIS_KEY_PREFIX") {
            set("REDIS_KEY_PREFIX", prefix);
        }
    }
    if needs.amqp && !overrides.contains_key("AMQP_URL") {
        set("AMQP_URL", isolation::rabbitmq_vhost().await?);
    }
    env.extend(overrides);

    let running = shop_runtime::start::<S>(Env::from_pairs(env.clone())).await?;
    if let Some(document) = S::openapi() {
        contract::register(running.http_addr, Contract::new(document));
    }
    Ok(TestApp {
        http_addr: running.http_addr,
        grpc_addr: running.grpc_addr,
        env,
        client: contract::http_client(Duration::from_secs(30)),
        running: Some(running),
    })
}
