//! payment-service's own settings (the shared ones — addresses, `DATABASE_URL`, `AMQP_URL`,
//! ... — are read by the runtime).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` | see [`shop_auth::AuthConfig`] | verifying user and service tokens |
//! | `PROVIDER_TIMEOUT_MS` | `10000` | how long a provider call may take before the attempt is abandoned (the caller gets `UNAVAILABLE` and retries; an authorization is queued for reconciliation) |
//! | `SIMULATED_SLOW_CARD_DELAY_MS` | `5000` | how long the simulated provider takes to approve the slow test card |
//! | `SIMULATED_FAULT_RATE` | `0` | 0.0 to 1.0: the share of the approving card's authorizations (per idempotency key) whose answer is lost or never comes, for load tests |
//! | `SIMULATED_FAULT_SEED` | `0` | which keys those are (a hash of seed and key): the same seed gives the same faults |
//! | `RECONCILE_INTERVAL_MS` | `5000` | how often the reconciler looks for payments whose provider outcome is unsettled |
//! | `RECONCILE_ALERT_AFTER_SECONDS` | `300` | a payment unsettled for longer counts in the `payment_unsettled_authorizations` gauge |
//! | `PAYMENT_CRASH_AFTER_PROVIDER` | unset | **test-only fault injection**: `authorize`, `capture`, `void` or `refund`; the process aborts right after the provider answered that operation, before recording it. Refused by release builds and with `SHOP_ENV=production` |
//!
//! Every variable is checked at start and all bad values are named together
//! (`defaults_and_bad_values_named` below), so a misconfigured instance refuses to boot with one
//! message rather than running with, say, a provider timeout of zero.
//!
//! Why these settings: the provider timeout is the one number the whole uncertainty design
//! hangs on (it bounds a call, sets the lease, and so decides when a crashed attempt may be
//! taken over and when the reconciler may conclude that the provider never got a request);
//! the reconciler's pace and alert age decide how long an unsettled hold can go unnoticed;
//! the simulated provider's settings exist so tests and load runs can reach each failure mode
//! on purpose (pattern RES-10) without a real provider.

use std::time::Duration;

use shop_auth::AuthConfig;
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
    mode::Mode,
};

use crate::{ledger::Operation, provider::FaultRate};

/// payment-service's settings, read once at start; the module's table names each variable.
#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// How user and service tokens are verified: customers' tokens for the HTTP API, the
    /// order saga's service token for the gRPC API.
    pub auth: AuthConfig,
    /// The bound on one provider call (`PROVIDER_TIMEOUT_MS`, at least 1 ms). It also sets
    /// the lease of an attempt (this plus 10 s, see [`crate::payments::Payments::new`]), so
    /// it decides how long a duplicate waits and when a crashed attempt can be taken over.
    pub provider_timeout: Duration,
    /// How long the simulated provider deliberates on the slow test card. Set it above
    /// order-service's call deadline to see an authorization outlive its caller.
    pub slow_card_delay: Duration,
    /// Faults the simulated provider injects into approving authorizations, for load tests;
    /// none by default.
    pub faults: FaultRate,
    /// How often the reconciler looks at its queue (at least 1 ms); also the delay of its
    /// "look again soon".
    pub reconcile_interval: Duration,
    /// Age after which an unsettled payment counts in the `payment_unsettled_authorizations`
    /// gauge: the point where a person should look at the provider's side.
    pub reconcile_alert_after: Duration,
    /// Test-only: abort the process after the provider answered this operation, before the
    /// answer is recorded: the one moment where the provider has acted and this service does
    /// not know it. `tests/restart.rs` restarts the service after it and checks the outcome.
    pub crash_after: Option<Operation>,
}

impl FromEnv for PaymentConfig {
    /// Reads every variable before combining any result, so `env` collects every problem and
    /// reports them together.
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env(env);
        let timeout = env.millis_or("PROVIDER_TIMEOUT_MS", Duration::from_millis(10_000));
        let slow = env.parse_or(
            "SIMULATED_SLOW_CARD_DELAY_MS",
            5_000u64,
            "a number of milliseconds",
        );
        let rate = env
            .parse_or("SIMULATED_FAULT_RATE", 0.0f64, "a number from 0.0 to 1.0")
            .and_then(|rate| {
                if (0.0..=1.0).contains(&rate) {
                    Ok(rate)
                } else {
                    env.invalid(
                        "SIMULATED_FAULT_RATE",
                        "must be between 0.0 and 1.0".to_owned(),
                    )
                }
            });
        let seed = env.parse_or("SIMULATED_FAULT_SEED", 0u64, "a whole number");
        let interval = env.millis_or("RECONCILE_INTERVAL_MS", Duration::from_millis(5_000));
        let alert_after = env.seconds_or("RECONCILE_ALERT_AFTER_SECONDS", Duration::from_secs(300));
        let crash_after = crash_after(env);
        Ok(Self {
            auth: auth?,
            provider_timeout: timeout?,
            slow_card_delay: Duration::from_millis(slow?),
            faults: FaultRate {
                rate: rate?,
                seed: seed?,
            },
            reconcile_interval: interval?,
            reconcile_alert_after: alert_after?,
            crash_after: crash_after?,
        })
    }
}

/// `PAYMENT_CRASH_AFTER_PROVIDER`: a way to kill the process at the worst moment, for the
/// restart tests. Refused where it could do harm, like order-service's `ORDER_CRASH_AFTER_STEP`.
fn crash_after(env: &mut Env) -> Result<Option<Operation>, ConfigError> {
    const VARIABLE: &str = "PAYMENT_CRASH_AFTER_PROVIDER";
    let mode = Mode::of(env);
    let operation = env.optional::<Operation>(VARIABLE, "an operation name")?;
    match operation {
        None => Ok(None),
        Some(_) if !cfg!(debug_assertions) => env.invalid(
            VARIABLE,
            "is a test-only fault injection; release builds refuse it".to_owned(),
        ),
        Some(operation) => mode.refuse_in_production(
            env,
            VARIABLE,
            Some(operation),
            "is a test-only fault injection",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the table's, and seven bad values are named in one error, each by its
    /// variable.
    #[test]
    fn defaults_and_bad_values_named() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        let config = PaymentConfig::from_env(&mut env).unwrap();
        assert!(env.finish().is_ok());
        assert_eq!(config.provider_timeout, Duration::from_secs(10));
        assert_eq!(config.slow_card_delay, Duration::from_secs(5));
        assert_eq!(config.faults, FaultRate::NONE);
        assert_eq!(config.reconcile_interval, Duration::from_secs(5));
        assert_eq!(config.reconcile_alert_after, Duration::from_secs(300));
        assert_eq!(config.crash_after, None);

        let mut env = Env::from_pairs([
            ("PROVIDER_TIMEOUT_MS", "0"),
            ("SIMULATED_SLOW_CARD_DELAY_MS", "soon"),
            ("SIMULATED_FAULT_RATE", "1.5"),
            ("SIMULATED_FAULT_SEED", "-1"),
            ("RECONCILE_INTERVAL_MS", "0"),
            ("RECONCILE_ALERT_AFTER_SECONDS", "5m"),
            ("PAYMENT_CRASH_AFTER_PROVIDER", "shipping"),
        ]);
        let _ = PaymentConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        for expected in [
            "PROVIDER_TIMEOUT_MS: must be at least 1",
            "SIMULATED_SLOW_CARD_DELAY_MS: could not be parsed",
            "SIMULATED_FAULT_RATE: must be between 0.0 and 1.0",
            "SIMULATED_FAULT_SEED: could not be parsed",
            "RECONCILE_INTERVAL_MS: must be at least 1",
            "RECONCILE_ALERT_AFTER_SECONDS: could not be parsed",
            "PAYMENT_CRASH_AFTER_PROVIDER: could not be parsed",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        let mut env = Env::from_pairs([("SIMULATED_FAULT_RATE", "zero")]);
        let _ = PaymentConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("SIMULATED_FAULT_RATE: could not be parsed"),
            "{err}"
        );
    }

    /// `PAYMENT_CRASH_AFTER_PROVIDER` is refused with `SHOP_ENV=production` and accepted in a
    /// development (debug) build, alongside the simulated provider's fault settings.
    #[test]
    fn fault_injection_is_refused_in_production() {
        let mut env = Env::from_pairs([
            ("SHOP_ENV", "production"),
            ("PAYMENT_CRASH_AFTER_PROVIDER", "void"),
        ]);
        let _ = PaymentConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("PAYMENT_CRASH_AFTER_PROVIDER: is a test-only fault injection"),
            "{err}"
        );

        let mut env = Env::from_pairs([
            ("PAYMENT_CRASH_AFTER_PROVIDER", "void"),
            ("SIMULATED_FAULT_RATE", "0.25"),
            ("SIMULATED_FAULT_SEED", "42"),
        ]);
        let config = PaymentConfig::from_env(&mut env).unwrap();
        assert!(env.finish().is_ok());
        assert_eq!(config.crash_after, Some(Operation::Void));
        assert_eq!(
            config.faults,
            FaultRate {
                rate: 0.25,
                seed: 42
            }
        );
    }
}
