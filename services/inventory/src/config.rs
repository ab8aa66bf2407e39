//! inventory-service's own settings (the shared ones — addresses, `DATABASE_URL`, `AMQP_URL`,
//! ... — are read by the runtime).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RESERVATION_TTL_SECONDS` | `900` | how long a reservation holds stock if the saga neither commits nor releases it |
//! | `EXPIRY_INTERVAL_SECONDS` | `5` | how often the expiry job looks for lapsed reservations |
//! | `LOW_STOCK_THRESHOLD` | `5` | the low-stock threshold of stock rows created from `ProductCreated` |
//! | `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` | see `shop_auth::config` | verifying admin and service tokens |

use std::time::Duration;

use shop_auth::AuthConfig;
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
};

/// inventory-service's settings, read once at start; the module's table names each variable.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    pub auth: AuthConfig,
    pub reservation_ttl: Duration,
    pub expiry_interval: Duration,
    pub low_stock_threshold: i64,
}

impl FromEnv for InventoryConfig {
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

    #[test]
    fn defaults_suit_a_local_stack() {
        let config = load(&[]).expect("defaults are valid");
        assert_eq!(config.reservation_ttl, Duration::from_secs(900));
        assert_eq!(config.expiry_interval, Duration::from_secs(5));
        assert_eq!(config.low_stock_threshold, 5);
    }

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
