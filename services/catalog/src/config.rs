//! catalog-service's own settings (the shared ones — addresses, `MONGODB_URL`, ... — are read
//! by the runtime).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` | see [`shop_auth::config`] | how admin and service tokens are verified |
//! | `CATALOG_SEED_DEMO` | `false` | `true`: load the demo catalog at start (idempotent; the local stack sets it) |
//! | `OUTBOX_POLL_INTERVAL_MS` | `5000` | how often the relay looks for unpublished events besides being woken by each product write (the fallback for entries deferred after a refusal and for writes from another process) |

use std::time::Duration;

use shop_auth::AuthConfig;
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
};

#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub auth: AuthConfig,
    pub seed_demo: bool,
    pub outbox_poll_interval: Duration,
}

impl FromEnv for CatalogConfig {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env(env);
        let seed_demo = env.parse_or("CATALOG_SEED_DEMO", false, "true or false");
        let poll: Result<u64, _> = env.parse_or(
            "OUTBOX_POLL_INTERVAL_MS",
            5_000,
            "a whole number of milliseconds",
        );
        let poll = poll.and_then(|ms| {
            if (10..=60_000).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                env.invalid(
                    "OUTBOX_POLL_INTERVAL_MS",
                    "must be between 10 and 60000".to_owned(),
                )
            }
        });
        Ok(Self {
            auth: auth?,
            seed_demo: seed_demo?,
            outbox_poll_interval: poll?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<CatalogConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let config = CatalogConfig::from_env(&mut env);
        env.finish().map_err(|err| err.to_string())?;
        config.map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_and_bad_values_by_variable() {
        let config = load(&[]).unwrap();
        assert!(!config.seed_demo);
        assert_eq!(config.outbox_poll_interval, Duration::from_millis(5_000));
        assert!(load(&[("CATALOG_SEED_DEMO", "true")]).unwrap().seed_demo);

        let err = load(&[
            ("CATALOG_SEED_DEMO", "yes please"),
            ("OUTBOX_POLL_INTERVAL_MS", "0"),
        ])
        .unwrap_err();
        assert!(err.contains("CATALOG_SEED_DEMO"), "{err}");
        assert!(
            err.contains("OUTBOX_POLL_INTERVAL_MS: must be between 10 and 60000"),
            "{err}"
        );
    }
}
