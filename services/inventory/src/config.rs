//! inventory-service's own settings (the shared ones — addresses, `DATABASE_URL`, `AMQP_URL`,
//! ... — are read by the runtime).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RESERVATION_TTL_SECONDS` | `900` | how long a reservation holds stock if the saga neither commits nor releases it |
//! | `EXPIRY_INTERVAL_SECONDS` | `5` | how often the expiry job looks for lapsed reservations |
//! | `LOW_STOCK_THRESHOLD` | `5` | the low-stock threshold of stock rows created from `ProductCreated` |
//! | `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` | see `shop_auth::config` | verifying admin and service tokens |
//!
//! Every variable is checked at start and all problems are reported together (the test
//! `names_every_bad_variable` below), so a misconfigured instance refuses to boot with one
//! message listing every bad value, instead of failing on the first or, worse, running with
//! a value that makes no sense (with a TTL of zero the expiry job would release every
//! reservation at its next round).

use std::time::Duration;

use shop_auth::AuthConfig;
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
};

/// inventory-service's settings, read once at start; the module's table names each variable.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// How admin and service tokens are verified (key set URL, issuer, audience).
    pub auth: AuthConfig,
    /// How long a reservation holds stock without Commit or Release. It must outlast the
    /// saga's worst case (payment timeouts included): a saga slower than this finds its stock
    /// given back and its Commit refused, so the order is cancelled, never oversold (ADR 0007).
    /// At least one second.
    pub reservation_ttl: Duration,
    /// How often [`crate::expiry::run`] looks for lapsed reservations; it bounds how long
    /// stock stays held past its `expires_at`. At least one second (a zero period would make
    /// `tokio::time::interval` panic).
    pub expiry_interval: Duration,
    /// The low-stock threshold given to rows created from `ProductCreated` and to rows a PUT
    /// creates without naming one. Zero or more.
    pub low_stock_threshold: i64,
}

impl FromEnv for InventoryConfig {
    /// Reads every variable first and only then combines the results, so one bad value does
    /// not hide the next: each problem is recorded in `env`, which reports them together.
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env(env);
        let reservation_ttl = env.seconds_or("RESERVATION_TTL_SECONDS", Duration::from_secs(900));
        let expiry_interval = env.seconds_or("EXPIRY_INTERVAL_SECONDS", Duration::from_secs(5));
        let low_stock_threshold = env.parse_or("LOW_STOCK_THRESHOLD", 5i64, "a whole number");
        let reservation_ttl =
            reservation_ttl.and_then(|ttl| at_least_a_second(env, "RESERVATION_TTL_SECONDS", ttl));
        let expiry_interval = expiry_interval
            .and_then(|every| at_least_a_second(env, "EXPIRY_INTERVAL_SECONDS", every));
        let low_stock_threshold = low_stock_threshold.and_then(|threshold| {
            if threshold < 0 {
                env.invalid("LOW_STOCK_THRESHOLD", "must be 0 or more".to_owned())
            } else {
                Ok(threshold)
            }
        });
        Ok(Self {
            auth: auth?,
            reservation_ttl: reservation_ttl?,
            expiry_interval: expiry_interval?,
            low_stock_threshold: low_stock_threshold?,
        })
    }
}

/// Refuses a zero duration for `key`: both durations here mean "every so often" or "for so
/// long", and zero is neither.
fn at_least_a_second(env: &mut Env, key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        env.invalid(key, "must be at least 1 second".to_owned())
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<InventoryConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let config = InventoryConfig::from_env(&mut env);
        env.finish().map_err(|err| err.to_string())?;
        config.map_err(|err| err.to_string())
    }

    /// With nothing set the service boots with the table's defaults: a local stack needs no
    /// inventory variable at all.
    #[test]
    fn defaults_suit_a_local_stack() {
        let config = load(&[]).expect("defaults are valid");
        assert_eq!(config.reservation_ttl, Duration::from_secs(900));
        assert_eq!(config.expiry_interval, Duration::from_secs(5));
        assert_eq!(config.low_stock_threshold, 5);
    }

    /// Three bad values give one error naming all three, each with what is wrong with it.
    #[test]
    fn names_every_bad_variable() {
        let err = load(&[
            ("RESERVATION_TTL_SECONDS", "0"),
            ("EXPIRY_INTERVAL_SECONDS", "soon"),
            ("LOW_STOCK_THRESHOLD", "-1"),
        ])
        .expect_err("all three are bad");
        for expected in [
            "RESERVATION_TTL_SECONDS: must be at least 1 second",
            "EXPIRY_INTERVAL_SECONDS: could not be parsed",
            "LOW_STOCK_THRESHOLD: must be 0 or more",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
    }
}
