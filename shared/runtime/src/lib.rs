//! The shared runtime: the one way every service in this system boots and behaves.
//!
//! | module | what lives there |
//! |---|---|
//! | [`backoff`] | the retry schedule of loops that run until shutdown |
//! | [`config`] | typed, validated configuration from environment variables |
//! | [`mode`] | `SHOP_ENV`: development conveniences, or production strictness |
//! | [`telemetry`] | JSON logs with trace ids, OpenTelemetry traces, W3C propagation |
//! | [`metrics`] | the Prometheus recorder and request metrics for HTTP and gRPC |
//! | [`health`] | `/healthz`, `/readyz` and readiness probes |
//! | [`error`] | [`ApiError`]: RFC 9457 problem+json over HTTP, status codes over gRPC |
//! | [`pagination`] | `?limit=&cursor=` with opaque cursors, the one way list endpoints page |
//! | [`openapi`] | what every service's OpenAPI description shares: problem responses, paging, security |
//! | [`http`], [`grpc`] | the servers and their middleware |
//! | [`stores`] | PostgreSQL, MongoDB, Redis and RabbitMQ connections |
//! | [`shutdown`] | SIGTERM/SIGINT handling |
//! | [`service`] | the [`Service`] trait, [`run`] for `main` and [`start`] for tests |

pub mod backoff;
pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod mode;
pub mod openapi;
pub mod pagination;
pub mod service;
pub mod shutdown;
pub mod stores;
pub mod telemetry;

use std::{net::SocketAddr, time::Duration};

pub use error::{ApiError, ErrorKind, FieldError};
pub use service::{
    Context, Endpoints, FromEnv, MigrateConfig, Migrated, Needs, Running, Service, ServiceSpec,
    launch, load, migrate, run, run_with, start,
};

use config::{ConfigError, Env};
use stores::{
    SecretUrl, amqp::AmqpConfig, mongo::MongoConfig, postgres::PostgresConfig, redis::RedisConfig,
};
use telemetry::{LogFormat, TelemetryConfig};

/// Makes `ring` the process-wide TLS crypto provider, once.
///
/// Several crates here speak TLS through rustls (the MongoDB driver, reqwest in the OTLP
/// exporter and the tests). When any crate in a build enables rustls without choosing a
/// provider (Cargo unifies features across the workspace, and the Pact crates do exactly that),
/// rustls refuses to guess and panics on first use. Installing one explicitly at start removes
/// that trap; it is a no-op when a provider is already installed.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{store}: {message}")]
    Store {
        store: &'static str,
        message: String,
    },
    #[error("the service uses {0} but its spec does not declare it")]
    Undeclared(&'static str),
    #[error("{0}")]
    Other(String),
}

impl BootError {
    pub fn store(store: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Store {
            store,
            message: err.to_string(),
        }
    }
}

/// Settings every service shares, read from the environment.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `HTTP_ADDR` | `0.0.0.0:<spec port>` | HTTP listen address |
/// | `GRPC_ADDR` | `0.0.0.0:<spec port>` | gRPC listen address |
/// | `GRPC_TLS_CERT_FILE`, `GRPC_TLS_KEY_FILE` | unset: plaintext (required in production) | the gRPC server's certificate chain and key, PEM files ([`grpc::ServerTls`], ADR 0017) |
/// | `OPS_ADDR` | unset (required in production) | listen address of `/healthz`, `/readyz`, `/metrics`; unset, they answer on the HTTP port ([`http`]) |
/// | `RUST_LOG` | `info` | log filter |
/// | `LOG_FORMAT` | `json` | `json` or `pretty` |
/// | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset | OTLP/HTTP collector; traces are exported only when set |
/// | `OTEL_SERVICE_NAME` | the service name | service name in traces |
/// | `SHUTDOWN_GRACE_SECONDS` | `25` | how long in-flight work may take after SIGTERM |
/// | `STARTUP_TIMEOUT_SECONDS` | `60` | how long to wait for the database at boot |
/// | `HTTP_HEADER_READ_TIMEOUT_SECONDS` | `30` | a connection must deliver a request's headers within this, and is closed after this long idle ([`http::serve`]) |
/// | `HTTP_BODY_READ_TIMEOUT_SECONDS` | `30` | a request's whole body must arrive within this after its headers; later, 400 and the connection is closed ([`http::serve`]) |
/// | `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS` | required / `10` | PostgreSQL (services that own one) |
/// | `MONGODB_URL`, `MONGODB_DATABASE` | required | MongoDB (services that own one) |
/// | `REDIS_URL`, `REDIS_KEY_PREFIX` | required / `<service>:` | Redis (the gateway) |
/// | `AMQP_URL` | required | RabbitMQ (services that publish or consume) |
/// | `SHOP_ENV` | `development` | `production` refuses development conveniences and the store passwords published here ([`mode`]) |
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The gRPC server's certificate and key; `None`: plaintext (development only).
    pub grpc_tls: Option<grpc::ServerTls>,
    /// Where `/healthz`, `/readyz` and `/metrics` answer; `None`: on the HTTP port.
    pub ops_addr: Option<SocketAddr>,
    pub telemetry: TelemetryConfig,
    pub shutdown_grace: Duration,
    pub startup_timeout: Duration,
    /// How long a client may take to send a request's headers (or keep a connection idle).
    pub http_header_read_timeout: Duration,
    /// How long a client may take to send a request's body, from when its headers arrived.
    pub http_body_read_timeout: Duration,
    pub postgres: Option<PostgresConfig>,
    pub mongo: Option<MongoConfig>,
    pub redis: Option<RedisConfig>,
    pub amqp: Option<AmqpConfig>,
    pub mode: mode::Mode,
}

impl RuntimeConfig {
    /// Reads the shared settings; problems are recorded in `env` (see [`Env::finish`]).
    pub fn from_env(spec: &ServiceSpec, env: &mut Env) -> Result<Self, ConfigError> {
        let any = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
        let http_addr = env.parse_or(
            "HTTP_ADDR",
            any(spec.http_port),
            "a socket address such as 0.0.0.0:8080",
        );
        let grpc_addr = env.parse_or(
            "GRPC_ADDR",
            any(spec.grpc_port),
            "a socket address such as 0.0.0.0:50051",
        );
        let grpc_tls = grpc::ServerTls::from_env(env);
        let ops_addr = env
            .optional::<SocketAddr>("OPS_ADDR", "a socket address such as 0.0.0.0:9080")
            .and_then(|addr| match addr {
                None => mode::Mode::of(env).refuse_in_production(
                    env,
                    "OPS_ADDR",
                    None,
                    "is not set: /metrics, /readyz and /healthz would answer on the HTTP port, \
                     to whoever reaches the API; give them a port of their own",
                ),
                some => Ok(some),
            });
        let log_filter = env.parse_or(
            "RUST_LOG",
            "info".to_owned(),
            "a log filter such as info,sqlx=warn",
        );
        let log_format = env.parse_or("LOG_FORMAT", LogFormat::Json, "json or pretty");
        let otlp_endpoint =
            env.optional::<url::Url>("OTEL_EXPORTER_OTLP_ENDPOINT", "an http(s) URL");
        let service_name = env.parse_or("OTEL_SERVICE_NAME", spec.name.to_owned(), "a name");
        let shutdown_grace = env.seconds_or("SHUTDOWN_GRACE_SECONDS", Duration::from_secs(25));
        let startup_timeout = env.seconds_or("STARTUP_TIMEOUT_SECONDS", Duration::from_secs(60));
        let header_read_timeout = env.seconds_or(
            "HTTP_HEADER_READ_TIMEOUT_SECONDS",
            http::HEADER_READ_TIMEOUT,
        );
        let header_read_timeout = match header_read_timeout {
            Ok(timeout) if timeout.is_zero() => env.invalid(
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                "must be at least 1: without a deadline a slow client holds its connection forever"
                    .to_owned(),
            ),
            other => other,
        };
        let body_read_timeout =
            env.seconds_or("HTTP_BODY_READ_TIMEOUT_SECONDS", http::BODY_READ_TIMEOUT);
        let body_read_timeout = match body_read_timeout {
            Ok(timeout) if timeout.is_zero() => env.invalid(
                "HTTP_BODY_READ_TIMEOUT_SECONDS",
                "must be at least 1: without a deadline a slow client holds its connection forever"
                    .to_owned(),
            ),
            other => other,
        };
        let mode = mode::Mode::from_env(env);

        let postgres = spec.needs.postgres.then(|| -> Result<_, ConfigError> {
            let url = postgres_url(env);
            let max_connections =
                env.parse_or("DATABASE_MAX_CONNECTIONS", 10u32, "a positive number");
            Ok(PostgresConfig {
                url: url?,
                max_connections: max_connections?,
            })
        });
        let mongo = spec.needs.mongo.then(|| -> Result<_, ConfigError> {
            let url = url_with_scheme(env, "MONGODB_URL", &["mongodb", "mongodb+srv"]);
            let database = env.required::<String>("MONGODB_DATABASE", "a database name");
            Ok(MongoConfig {
                url: url?,
                database: database?,
            })
        });
        let redis = spec.needs.redis.then(|| -> Result<_, ConfigError> {
            let url = url_with_scheme(env, "REDIS_URL", &["redis", "rediss"]);
            let key_prefix = env.parse_or(
                "REDIS_KEY_PREFIX",
                format!("{}:", spec.name),
                "a key prefix",
            );
            Ok(RedisConfig {
                url: url?,
                key_prefix: key_prefix?,
            })
        });
        let amqp = spec.needs.amqp.then(|| -> Result<_, ConfigError> {
            Ok(AmqpConfig {
                url: url_with_scheme(env, "AMQP_URL", &["amqp", "amqps"])?,
            })
        });

        Ok(Self {
            http_addr: http_addr?,
            grpc_addr: grpc_addr?,
            grpc_tls: grpc_tls?,
            ops_addr: ops_addr?,
            telemetry: TelemetryConfig {
                service_name: service_name?,
                log_format: log_format?,
                log_filter: log_filter?,
                otlp_endpoint: otlp_endpoint?,
            },
            shutdown_grace: shutdown_grace?,
            startup_timeout: startup_timeout?,
            http_header_read_timeout: header_read_timeout?,
            http_body_read_timeout: body_read_timeout?,
            postgres: postgres.transpose()?,
            mongo: mongo.transpose()?,
            redis: redis.transpose()?,
            amqp: amqp.transpose()?,
            mode: mode?,
        })
    }
}

/// `DATABASE_URL`: for the service and for `<service> migrate` ([`service::MigrateConfig`]).
fn postgres_url(env: &mut Env) -> Result<SecretUrl, ConfigError> {
    url_with_scheme(env, "DATABASE_URL", &["postgres", "postgresql"])
}

/// A required URL whose scheme must be one of `schemes`, and whose password (in production) is
/// not one this repository publishes ([`mode::Mode::refuse_published_password_in`]).
fn url_with_scheme(env: &mut Env, key: &str, schemes: &[&str]) -> Result<SecretUrl, ConfigError> {
    let expected = format!("a {}:// URL", schemes[0]);
    let url: SecretUrl = env.required(key, &expected)?;
    if schemes.contains(&url.url().scheme()) {
        mode::Mode::of(env).refuse_published_password_in(env, key, url.url())?;
        Ok(url)
    } else {
        env.invalid(
            key,
            format!("has scheme '{}', expected {expected}", url.url().scheme()),
        )
    }
}
