//! payment-service's own settings (the shared ones — addresses, `DATABASE_URL`, `AMQP_URL`,
//! ... — are read by the runtime).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` | see [`shop_auth::AuthConfig`] | verifying user and service tokens |
//! | `PROVIDER_TIMEOUT_MS` | `10000` | how long a provider call may take before the attempt is abandoned (the caller gets `UNAVAILABLE` and retries) |
//! | `SIMULATED_SLOW_CARD_DELAY_MS` | `5000` | how long the simulated provider takes to approve the slow test card |

use std::time::Duration;

use shop_auth::AuthConfig;
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
};

#[derive(Debug, Clone)]
pub struct PaymentConfig {
    pub auth: AuthConfig,
    pub provider_timeout: Duration,
    pub slow_card_delay: Duration,
}

impl FromEnv for PaymentConfig {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env(env);
        let timeout = env.parse_or("PROVIDER_TIMEOUT_MS", 10_000u64, "a number of milliseconds");
        let slow = env.parse_or(
            "SIMULATED_SLOW_CARD_DELAY_MS",
            5_000u64,
            "a number of milliseconds",
        );
        let timeout = timeout.and_then(|ms| {
            if ms == 0 {
                env.invalid("PROVIDER_TIMEOUT_MS", "must be at least 1".to_owned())
            } else {
                Ok(Duration::from_millis(ms))
            }
        });
        Ok(Self {
            auth: auth?,
            provider_timeout: timeout?,
            slow_card_delay: Duration::from_millis(slow?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values_named() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        let config = PaymentConfig::from_env(&mut env).unwrap();
        assert!(env.finish().is_ok());
        assert_eq!(config.provider_timeout, Duration::from_secs(10));
        assert_eq!(config.slow_card_delay, Duration::from_secs(5));

        let mut env = Env::from_pairs([
            ("PROVIDER_TIMEOUT_MS", "0"),
            ("SIMULATED_SLOW_CARD_DELAY_MS", "soon"),
        ]);
        let _ = PaymentConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("PROVIDER_TIMEOUT_MS: must be at least 1"),
            "{err}"
        );
        assert!(
            err.contains("SIMULATED_SLOW_CARD_DELAY_MS: could not be parsed"),
            "{err}"
        );
    }
}
