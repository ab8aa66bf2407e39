//! The gateway's own settings, read with the runtime's (every problem reported at once).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `USER_SERVICE_URL` | `http://127.0.0.1:8081` | user-service's REST API (auth, users, JWKS) |
//! | `CATALOG_SERVICE_URL` | `http://127.0.0.1:8082` | catalog-service (products) |
//! | `INVENTORY_SERVICE_URL` | `http://127.0.0.1:8083` | inventory-service (stock, admin) |
//! | `ORDER_SERVICE_URL` | `http://127.0.0.1:8084` | order-service (orders) |
//! | `PAYMENT_SERVICE_URL` | `http://127.0.0.1:8085` | payment-service (payments) |
//! | `NOTIFICATION_SERVICE_URL` | `http://127.0.0.1:8086` | notification-service |
//! | `UPSTREAM_TIMEOUT_MS` | `5000` | one upstream attempt, connect to last byte; then 504 |
//! | `UPSTREAM_CONCURRENCY` | `512` | requests in flight per upstream (bulkhead); beyond it 503 |
//! | `MAX_BODY_BYTES` | `65536` | largest request body; beyond it 413 |
//! | `CORS_ALLOWED_ORIGINS` | unset (no cross-origin access) | comma-separated origins, e.g. `https://shop.example` |
//! | `RATE_LIMIT_WINDOW_SECONDS` | `60` | the window of every limit |
//! | `RATE_LIMIT_AUTH` | `10` | requests per window and client address on login/register/refresh |
//! | `RATE_LIMIT_USER` | `600` | requests per window and signed-in user |
//! | `RATE_LIMIT_ADDRESS` | `300` | requests per window and client address, anonymous routes |
//! | `CACHE_FRESH_SECONDS` | `300` | how long a cached catalog read is served without asking catalog (events invalidate sooner) |
//! | `TRUST_FORWARDED_FOR` | `false` | take the client address from `X-Forwarded-For` (only behind a proxy that sets it) |
//!
//! plus `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` ([`shop_auth::AuthConfig`]).

use std::time::Duration;

use shop_auth::AuthConfig;
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
};
use url::Url;

use crate::ratelimit::Limits;

/// Everything [`crate::Gateway`] reads from the environment besides the runtime's settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub upstreams: Upstreams,
    pub upstream_timeout: Duration,
    pub upstream_concurrency: usize,
    pub max_body_bytes: usize,
    pub cors_origins: Vec<String>,
    pub limits: Limits,
    pub trust_forwarded_for: bool,
    pub cache_fresh_for: Duration,
    pub auth: AuthConfig,
}

/// The base URL of each service's REST API.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub user: Url,
    pub catalog: Url,
    pub inventory: Url,
    pub order: Url,
    pub payment: Url,
    pub notification: Url,
}

fn upstream(env: &mut Env, key: &str, port: u16) -> Result<Url, ConfigError> {
    let default = Url::parse(&format!("http://127.0.0.1:{port}")).expect("a valid default URL");
    let url = env.parse_or(
        key,
        default,
        "an http URL such as http://catalog-service:8082",
    )?;
    // Plain HTTP only: TLS ends at the ingress, and inside the cluster the gateway's client
    // (crate::proxy::http_client) speaks HTTP/1.1 without TLS. Refused at start rather than
    // failing on every request.
    match url.scheme() {
        "http" if url.host().is_some() => Ok(url),
        other => env.invalid(
            key,
            format!("has scheme '{other}' or no host, expected an http:// URL"),
        ),
    }
}

impl FromEnv for GatewayConfig {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let user = upstream(env, "USER_SERVICE_URL", 8081);
        let catalog = upstream(env, "CATALOG_SERVICE_URL", 8082);
        let inventory = upstream(env, "INVENTORY_SERVICE_URL", 8083);
        let order = upstream(env, "ORDER_SERVICE_URL", 8084);
        let payment = upstream(env, "PAYMENT_SERVICE_URL", 8085);
        let notification = upstream(env, "NOTIFICATION_SERVICE_URL", 8086);
        let timeout_ms = env.parse_or("UPSTREAM_TIMEOUT_MS", 5000u64, "milliseconds");
        let concurrency = env.parse_or("UPSTREAM_CONCURRENCY", 512usize, "a positive number");
        let max_body = env.parse_or("MAX_BODY_BYTES", 64 * 1024usize, "a number of bytes");
        let origins = env.parse_or(
            "CORS_ALLOWED_ORIGINS",
            String::new(),
            "comma-separated origins",
        );
        let window = env.seconds_or("RATE_LIMIT_WINDOW_SECONDS", Duration::from_secs(60));
        let auth_limit = env.parse_or("RATE_LIMIT_AUTH", 10u64, "a positive number");
        let user_limit = env.parse_or("RATE_LIMIT_USER", 600u64, "a positive number");
        let address_limit = env.parse_or("RATE_LIMIT_ADDRESS", 300u64, "a positive number");
        let trust = env.parse_or("TRUST_FORWARDED_FOR", false, "true or false");
        let fresh = env.seconds_or("CACHE_FRESH_SECONDS", crate::cache::FRESH_FOR);
        let auth = AuthConfig::from_env(env);
        let window = window?;
        if window.is_zero() {
            env.invalid::<()>("RATE_LIMIT_WINDOW_SECONDS", "must be at least 1".into())?;
        }
        let concurrency = concurrency?;
        if concurrency == 0 {
            env.invalid::<()>("UPSTREAM_CONCURRENCY", "must be at least 1".into())?;
        }
        Ok(Self {
            upstreams: Upstreams {
                user: user?,
                catalog: catalog?,
                inventory: inventory?,
                order: order?,
                payment: payment?,
                notification: notification?,
            },
            upstream_timeout: Duration::from_millis(timeout_ms?),
            upstream_concurrency: concurrency,
            max_body_bytes: max_body?,
            cors_origins: origins?
                .split(',')
                .map(str::trim)
                .filter(|origin| !origin.is_empty())
                .map(str::to_owned)
                .collect(),
            limits: Limits {
                window,
                auth: auth_limit?,
                user: user_limit?,
                address: address_limit?,
            },
            trust_forwarded_for: trust?,
            cache_fresh_for: fresh?,
            auth: auth?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_local_stack_and_bad_values_are_named() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        let config = GatewayConfig::from_env(&mut env).unwrap();
        assert!(env.finish().is_ok());
        assert_eq!(config.upstreams.catalog.as_str(), "http://127.0.0.1:8082/");
        assert_eq!(config.limits.auth, 10);

        let mut env = Env::from_pairs([
            ("CATALOG_SERVICE_URL", "ftp://catalog"),
            ("UPSTREAM_TIMEOUT_MS", "soon"),
            ("RATE_LIMIT_WINDOW_SECONDS", "0"),
        ]);
        let _ = GatewayConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("CATALOG_SERVICE_URL"), "{err}");
        assert!(err.contains("UPSTREAM_TIMEOUT_MS"), "{err}");
        assert!(err.contains("RATE_LIMIT_WINDOW_SECONDS"), "{err}");
    }

    #[test]
    fn an_https_upstream_is_refused_at_start_since_the_client_speaks_plain_http() {
        let mut env = Env::from_pairs([("ORDER_SERVICE_URL", "https://order-service:8084")]);
        let _ = GatewayConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("ORDER_SERVICE_URL"), "{err}");
        assert!(err.contains("expected an http:// URL"), "{err}");
    }
}
