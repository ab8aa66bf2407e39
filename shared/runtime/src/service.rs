//! The service contract and the one function that boots any service.
//!
//! A service crate implements [`Service`]: its name and ports ([`ServiceSpec`]), its own
//! settings ([`FromEnv`]) and a `build` function that turns a [`Context`] (connected stores,
//! readiness, shutdown) into [`Endpoints`] (HTTP routes, gRPC services). Everything else —
//! config loading, telemetry, servers, health, metrics, shutdown — happens here, the same way
//! for all seven services. `main.rs` is one line: `shop_runtime::run::<MyService>()`, which
//! also gives every binary its `migrate` subcommand ([`run_with`]). Tests call [`start`]
//! instead, which boots the same code in-process on random ports, and [`migrate`].

use std::{future::Future, net::SocketAddr, process::ExitCode, time::Duration};

use axum::Router;
use mongodb::Database;
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{server::NamedService, service::Routes};

use crate::{
    BootError, RuntimeConfig,
    config::{ConfigError, Env},
    grpc,
    health::Readiness,
    http, metrics, shutdown,
    stores::{
        self,
        amqp::Amqp,
        postgres::{Applied, PostgresConfig},
        redis::Redis,
    },
    telemetry::{self, LogFormat, TelemetryConfig},
};

/// The stores and broker a service owns; the runtime connects exactly these.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub postgres: bool,
    pub mongo: bool,
    pub redis: bool,
    /// Redis is reported in `/readyz` but not required (see [`ServiceSpec::redis_optional`]).
    pub redis_optional: bool,
    pub amqp: bool,
}

/// What the runtime needs to know about a service before it starts it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// The binary's name, used in logs, traces, metrics and connection names.
    pub name: &'static str,
    /// Default HTTP port (overridden by `HTTP_ADDR`).
    pub http_port: u16,
    /// Default gRPC port (overridden by `GRPC_ADDR`).
    pub grpc_port: u16,
    pub needs: Needs,
    /// The service's PostgreSQL migrations, applied at start and by `<binary> migrate`.
    pub migrations: Option<&'static Migrator>,
}

impl ServiceSpec {
    /// A service owning nothing yet; add its stores with the methods below, e.g.
    /// `ServiceSpec::new("order-service", 8084, 50054).postgres(&MIGRATIONS).amqp()`.
    pub const fn new(name: &'static str, http_port: u16, grpc_port: u16) -> Self {
        Self {
            name,
            http_port,
            grpc_port,
            needs: Needs {
                postgres: false,
                mongo: false,
                redis: false,
                redis_optional: false,
                amqp: false,
            },
            migrations: None,
        }
    }

    /// Owns a PostgreSQL database, with these migrations applied at start.
    pub const fn postgres(mut self, migrations: &'static Migrator) -> Self {
        self.needs.postgres = true;
        self.migrations = Some(migrations);
        self
    }

    /// Owns a PostgreSQL database whose schema it does not manage with migrations (yet).
    pub const fn postgres_without_migrations(mut self) -> Self {
        self.needs.postgres = true;
        self
    }

    /// Owns a MongoDB database.
    pub const fn mongo(mut self) -> Self {
        self.needs.mongo = true;
        self
    }

    /// Uses Redis.
    pub const fn redis(mut self) -> Self {
        self.needs.redis = true;
        self
    }

    /// Uses Redis but can answer requests without it (the gateway: rate limits go on with each
    /// instance's own counts, the cache is bypassed): Redis is *reported* in `/readyz`, not required,
    /// so a Redis outage does not take every replica out of the load balancer.
    pub const fn redis_optional(mut self) -> Self {
        self.needs.redis = true;
        self.needs.redis_optional = true;
        self
    }

    /// Publishes or consumes events on RabbitMQ.
    pub const fn amqp(mut self) -> Self {
        self.needs.amqp = true;
        self
    }
}

/// Settings a service reads from the environment in addition to the runtime's.
pub trait FromEnv: Sized {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError>;
}

/// A service without settings of its own.
impl FromEnv for () {
    fn from_env(_: &mut Env) -> Result<Self, ConfigError> {
        Ok(())
    }
}

/// Implemented once per service crate.
pub trait Service: 'static {
    type Config: FromEnv + Send + 'static;

    fn spec() -> ServiceSpec;

    /// The service's public REST API as an OpenAPI 3.1 document (JSON), when it has one: what
    /// it promises to answer. Not served here; tests check every answer they receive against
    /// it (`shop_testkit::contract`), so the document and the code cannot drift apart.
    fn openapi() -> Option<serde_json::Value> {
        None
    }

    /// Builds the service's endpoints from its connected dependencies.
    fn build(
        ctx: &Context,
        config: Self::Config,
    ) -> impl Future<Output = Result<Endpoints, BootError>> + Send;
}

/// What `build` gets: the service's connections and lifecycle handles.
#[derive(Debug, Clone)]
pub struct Context {
    pub name: &'static str,
    postgres: Option<PgPool>,
    mongo: Option<Database>,
    redis: Option<Redis>,
    amqp: Option<Amqp>,
    /// Add probes for anything else readiness depends on (e.g. a consumer being attached).
    pub readiness: Readiness,
    /// Cancelled when shutdown begins; background loops select on it.
    pub shutdown: CancellationToken,
    /// Background tasks spawned here are awaited (up to the grace period) before exit.
    pub tasks: TaskTracker,
}

impl Context {
    pub fn postgres(&self) -> Result<&PgPool, BootError> {
        self.postgres
            .as_ref()
            .ok_or(BootError::Undeclared("postgres"))
    }

    pub fn mongo(&self) -> Result<&Database, BootError> {
        self.mongo.as_ref().ok_or(BootError::Undeclared("mongo"))
    }

    pub fn redis(&self) -> Result<&Redis, BootError> {
        self.redis.as_ref().ok_or(BootError::Undeclared("redis"))
    }

    pub fn amqp(&self) -> Result<&Amqp, BootError> {
        self.amqp.as_ref().ok_or(BootError::Undeclared("amqp"))
    }
}

/// The HTTP routes and gRPC services a service exposes.
#[derive(Debug, Default)]
pub struct Endpoints {
    http: Router,
    grpc: Routes,
    grpc_names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
}

impl Endpoints {
    pub fn new(http: Router) -> Self {
        Self {
            http,
            ..Self::default()
        }
    }

    /// Adds a gRPC service; it is reported by the health service under its full name.
    pub fn grpc<S>(mut self, service: S) -> Self
    where
        S: tower::Service<::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc = self.grpc.add_service(service);
        self.grpc_names.push(S::NAME);
        self
    }

    /// Registers an encoded `FileDescriptorSet` for server reflection.
    pub fn reflect(mut self, descriptor_set: &'static [u8]) -> Self {
        self.descriptor_sets.push(descriptor_set);
        self
    }
}

/// A service running in this process.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` answer: `OPS_ADDR`'s port, else `http_addr`.
    pub ops_addr: SocketAddr,
    shutdown: CancellationToken,
    grace: Duration,
    servers: tokio::task::JoinSet<Result<(), BootError>>,
    tasks: TaskTracker,
}

impl Running {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The token whose cancellation shuts the service down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the service has stopped: servers drained, background tasks finished.
    /// Gives up after the grace period and reports it.
    pub async fn stopped(mut self) -> Result<(), BootError> {
        let drain = async {
            let mut outcome = Ok(());
            while let Some(joined) = self.servers.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        // One server failing takes the whole service down: no half-alive processes.
                        self.shutdown.cancel();
                        outcome = Err(err);
                    }
                    Err(join_err) => {
                        self.shutdown.cancel();
                        outcome = Err(BootError::Other(format!("server task failed: {join_err}")));
                    }
                }
            }
            self.tasks.close();
            self.tasks.wait().await;
            outcome
        };
        // The grace period starts when shutdown begins, not now: wait for that first.
        let shutdown = self.shutdown.clone();
        let grace = self.grace;
        tokio::pin!(drain);
        tokio::select! {
            result = &mut drain => return result,
            () = shutdown.cancelled() => {}
        }
        match tokio::time::timeout(grace, drain).await {
            Ok(result) => result,
            Err(_) => Err(BootError::Other(format!(
                "did not stop within the grace period of {grace:?}"
            ))),
        }
    }
}

/// Reads the runtime's and the service's configuration from `env`, reporting every problem.
pub fn load<S: Service>(env: &mut Env) -> Result<(RuntimeConfig, S::Config), ConfigError> {
    let runtime = RuntimeConfig::from_env(&S::spec(), env);
    let own = S::Config::from_env(env);
    env.finish()?;
    Ok((runtime?, own?))
}

/// Connects the service's dependencies, builds it, and starts its HTTP and gRPC servers.
/// Returns once both listeners are bound.
pub async fn launch<S: Service>(
    runtime: RuntimeConfig,
    config: S::Config,
    shutdown: CancellationToken,
) -> Result<Running, BootError> {
    let spec = S::spec();
    let readiness = Readiness::default();
    let tasks = TaskTracker::new();
    let metrics = metrics::handle();

    let postgres = match &runtime.postgres {
        Some(pg) => Some(
            stores::postgres::connect(
                pg,
                spec.name,
                spec.migrations,
                runtime.startup_timeout,
                &readiness,
            )
            .await?,
        ),
        None => None,
    };
    let mongo = match &runtime.mongo {
        Some(mongo) => Some(stores::mongo::connect(mongo, spec.name, &readiness).await?),
        None => None,
    };
    let redis = match &runtime.redis {
        Some(redis) => Some(stores::redis::connect(
            redis,
            &readiness,
            !spec.needs.redis_optional,
        )?),
        None => None,
    };
    let amqp = runtime
        .amqp
        .as_ref()
        .map(|amqp| stores::amqp::connect(amqp, spec.name, &readiness, shutdown.clone(), &tasks));

    let ctx = Context {
        name: spec.name,
        postgres,
        mongo,
        redis,
        amqp,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    };
    let endpoints = S::build(&ctx, config).await?;

    let http_listener = grpc::bind(runtime.http_addr).await?;
    let grpc_listener = grpc::bind(runtime.grpc_addr).await?;
    let ops_listener = match runtime.ops_addr {
        Some(addr) => Some(grpc::bind(addr).await?),
        None => None,
    };
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| BootError::Bind {
            addr: runtime.http_addr,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| BootError::Bind {
            addr: runtime.grpc_addr,
            source,
        })?;

    // Readiness turns red the moment shutdown begins, before the listeners close, so load
    // balancers stop routing new work here while in-flight work completes.
    let draining = readiness.clone();
    let drain_signal = shutdown.clone();
    tasks.spawn(async move {
        drain_signal.cancelled().await;
        draining.start_draining();
    });

    let mut servers = tokio::task::JoinSet::new();
    let operational = http::operational_routes(readiness.clone(), metrics.clone());
    let ops_addr = match ops_listener {
        // The operational endpoints on a port of their own; the HTTP port does not have them.
        Some(listener) => {
            let addr = listener.local_addr().map_err(|source| BootError::Bind {
                addr: runtime.ops_addr.unwrap_or(runtime.http_addr),
                source,
            })?;
            servers.spawn(http::serve(
                listener,
                http::ops_router(readiness.clone(), metrics),
                runtime.http_header_read_timeout,
                runtime.http_body_read_timeout,
                shutdown.clone(),
            ));
            Some(addr)
        }
        None => None,
    };
    let app = http::router(endpoints.http, ops_addr.is_none().then_some(operational));
    // Handlers may read the peer address (`ConnectInfo<SocketAddr>`): the gateway rate-limits
    // anonymous clients by it. Slow clients get a header and a body deadline (http::serve).
    servers.spawn(http::serve(
        http_listener,
        app,
        runtime.http_header_read_timeout,
        runtime.http_body_read_timeout,
        shutdown.clone(),
    ));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    tasks.spawn(grpc::mirror_readiness(
        reporter,
        endpoints.grpc_names.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    servers.spawn(grpc::serve(
        grpc_listener,
        endpoints.grpc,
        endpoints.grpc_names.clone(),
        endpoints.descriptor_sets,
        health_service,
        runtime.grpc_tls.clone(),
        shutdown.clone(),
    ));

    let ops_addr = ops_addr.unwrap_or(http_addr);
    tracing::info!(%http_addr, %grpc_addr, %ops_addr, "serving");
    Ok(Running {
        http_addr,
        grpc_addr,
        ops_addr,
        shutdown,
        grace: runtime.shutdown_grace,
        servers,
        tasks,
    })
}

/// Starts `S` in this process from explicit variables, as a test would, with its own
/// shutdown token. Telemetry is installed once per process.
pub async fn start<S: Service>(mut env: Env) -> Result<Running, BootError> {
    crate::install_crypto_provider();
    let (runtime, config) = load::<S>(&mut env)?;
    let _ = telemetry::init(&runtime.telemetry).map(std::mem::forget);
    launch::<S>(runtime, config, CancellationToken::new()).await
}

/// The whole life of a service process: what `main` calls, with the process's arguments and
/// variables ([`run_with`] says what the arguments mean).
pub fn run<S: Service>() -> ExitCode {
    run_with::<S>(std::env::args().skip(1), Env::from_process())
}

/// A service binary's command line:
///
/// - no argument: run the service until SIGTERM or SIGINT;
/// - `migrate`: apply the service's database migrations and exit ([`migrate`]), as an init
///   container or a Job does before the service's pods start.
///
/// Exit codes: 0 after a clean shutdown (or migration), 2 for invalid configuration or
/// arguments, 1 for anything else.
pub fn run_with<S: Service>(args: impl IntoIterator<Item = String>, env: Env) -> ExitCode {
    let name = S::spec().name;
    let args: Vec<String> = args.into_iter().collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve::<S>(env),
        ["migrate"] => migrate_command::<S>(env),
        _ => {
            eprintln!(
                "{name}: unexpected arguments {args:?}\n\
                 usage: {name}            run the service\n       \
                 {name} migrate    apply its database migrations (DATABASE_URL) and exit"
            );
            ExitCode::from(2)
        }
    }
}

/// A multi-threaded Tokio runtime, or the reason on stderr.
fn tokio_runtime(name: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(tokio) => Some(tokio),
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            None
        }
    }
}

fn serve<S: Service>(mut env: Env) -> ExitCode {
    crate::install_crypto_provider();
    let (runtime, config) = match load::<S>(&mut env) {
        Ok(loaded) => loaded,
        Err(err) => {
            // Telemetry is not up yet (its settings may be what is wrong): plain stderr.
            eprintln!("{}: {err}", S::spec().name);
            return ExitCode::from(2);
        }
    };
    let Some(tokio) = tokio_runtime(S::spec().name) else {
        return ExitCode::FAILURE;
    };
    tokio.block_on(async move {
        let _telemetry = match telemetry::init(&runtime.telemetry) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("{}: cannot initialise telemetry: {err}", S::spec().name);
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        if let Err(err) = shutdown::cancel_on_signal(shutdown.clone()) {
            tracing::error!(error = %err, "cannot listen for SIGTERM/SIGINT");
            return ExitCode::FAILURE;
        }
        let outcome = match launch::<S>(runtime, config, shutdown).await {
            Ok(running) => running.stopped().await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(error = %err, "service failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// What `<service> migrate` reads, and nothing else: the database, how long to wait for it,
/// and how to log. Not the service's other settings — its secrets, peers, listen addresses —
/// so the process that migrates (an init container, a Job) needs the database's credentials
/// only, and a setting the service would refuse cannot stop its schema from being migrated.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `DATABASE_URL` | required | the database to migrate; in production not a password this repository publishes, as for the service |
/// | `STARTUP_TIMEOUT_SECONDS` | `60` | how long to wait for the database to answer |
/// | `RUST_LOG`, `LOG_FORMAT` | `info`, `json` | logging, as for the service |
/// | `SHOP_ENV` | `development` | `production` refuses published passwords in `DATABASE_URL` |
#[derive(Debug, Clone)]
pub struct MigrateConfig {
    pub postgres: PostgresConfig,
    pub startup_timeout: Duration,
    pub telemetry: TelemetryConfig,
}

impl MigrateConfig {
    /// Reads the variables above; `service` names the logs and the database session.
    pub fn from_env(service: &str, env: &mut Env) -> Result<Self, ConfigError> {
        let url = crate::postgres_url(env);
        let startup_timeout = env.seconds_or("STARTUP_TIMEOUT_SECONDS", Duration::from_secs(60));
        let log_filter = env.parse_or(
            "RUST_LOG",
            "info".to_owned(),
            "a log filter such as info,sqlx=warn",
        );
        let log_format = env.parse_or("LOG_FORMAT", LogFormat::Json, "json or pretty");
        let mode = crate::mode::Mode::from_env(env);
        env.finish()?;
        mode?;
        Ok(Self {
            postgres: PostgresConfig {
                url: url?,
                // The migrator holds one connection; nothing else runs.
                max_connections: 1,
            },
            startup_timeout: startup_timeout?,
            telemetry: TelemetryConfig {
                service_name: service.to_owned(),
                log_format: log_format?,
                log_filter: log_filter?,
                otlp_endpoint: None,
            },
        })
    }
}

/// What `<service> migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// The service keeps no schema of its own in PostgreSQL: nothing to do.
    NoMigrations,
    /// The migrations this run applied, in order; empty when the schema was already current.
    Applied(Vec<Applied>),
}

/// `<service> migrate` in this process: applies `S`'s migrations to the database `config`
/// names and returns what it applied. The same function the service runs at start
/// ([`stores::postgres::migrate`]), so applying them ahead of time changes nothing else.
pub async fn migrate<S: Service>(config: &MigrateConfig) -> Result<Migrated, BootError> {
    let Some(migrator) = S::spec().migrations else {
        return Ok(Migrated::NoMigrations);
    };
    let name = format!("{} migrate", S::spec().name);
    let pool = stores::postgres::open(&config.postgres, &name, config.startup_timeout).await?;
    let applied = stores::postgres::migrate(&pool, migrator).await;
    pool.close().await;
    applied.map(Migrated::Applied)
}

fn migrate_command<S: Service>(mut env: Env) -> ExitCode {
    let name = S::spec().name;
    if S::spec().migrations.is_none() {
        // Nothing read, nothing connected: a deployment may run `migrate` for every service.
        eprintln!("{name}: has no database migrations; nothing to do");
        return ExitCode::SUCCESS;
    }
    crate::install_crypto_provider();
    let config = match MigrateConfig::from_env(name, &mut env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{name} migrate: {err}");
            return ExitCode::from(2);
        }
    };
    let Some(tokio) = tokio_runtime(name) else {
        return ExitCode::FAILURE;
    };
    tokio.block_on(async move {
        let _telemetry = match telemetry::init(&config.telemetry) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("{name} migrate: cannot initialise telemetry: {err}");
                return ExitCode::FAILURE;
            }
        };
        match migrate::<S>(&config).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "migrations failed");
                eprintln!("{name} migrate: {err}");
                ExitCode::FAILURE
            }
        }
    })
}
