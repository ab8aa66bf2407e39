//! order-service's own settings (the shared ones — addresses, `DATABASE_URL`, ... — are read by
//! the runtime; `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` by [`shop_auth::AuthConfig`]).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CATALOG_GRPC_URL` | `http://127.0.0.1:50052` | catalog-service (prices); `https://` required with `SHOP_ENV=production` |
//! | `INVENTORY_GRPC_URL` | `http://127.0.0.1:50053` | inventory-service (reservations); same |
//! | `PAYMENT_GRPC_URL` | `http://127.0.0.1:50055` | payment-service (card data); same |
//! | `GRPC_TLS_CA_FILE` | unset (required in production) | PEM: the CA that signed those services' gRPC certificates ([`shop_runtime::grpc::ClientTls`], ADR 0017) |
//! | `GRPC_RESOLVE_INTERVAL_SECONDS` | `15` | how often each participant's host name is resolved again: calls are balanced over every address it has ([`shop_runtime::grpc::peers`]) |
//! | `SERVICE_TOKEN_URL` | `http://127.0.0.1:8081/internal/v1/service-token` | where service tokens come from (https required with `SHOP_ENV=production`) |
//! | `SERVICE_SECRET` | required | this service's secret in user-service's `SERVICE_CLIENTS` (as `order-service`) |
//! | `ORDER_CARD_KEY` | development key (warned; refused with `SHOP_ENV=production`) | 32 bytes, base64: encrypts card data kept until authorization |
//! | `ORDER_CALL_TIMEOUT_MS` | `2000` | deadline of one gRPC call |
//! | `ORDER_SAGA_TIMEOUT_SECONDS` | `60` | a saga not past its pivot by then is compensated (`timeout`) |
//! | `ORDER_SAGA_LEASE_MS` | `15000` | how long an instance owns a saga it drives; taken over after that |
//! | `ORDER_SWEEP_INTERVAL_MS` | `1000` | how often to look for sagas to resume or retry |
//! | `ORDER_RETRY_MAX_MS` | `10000` | longest back-off between two attempts of a step |
//! | `ORDER_LATE_AUTHORIZATION_SECONDS` | `60` | how long a void keeps looking for an authorization still in flight |
//! | `ORDER_BREAKER_FAILURES` | `5` | consecutive failures that open a downstream's breaker |
//! | `ORDER_BREAKER_COOLDOWN_MS` | `5000` | how long it stays open before one probe |
//! | `ORDER_MAX_IN_FLIGHT` | `256` | sagas one instance drives at once; `POST /orders` beyond that answers 503 with `Retry-After` |
//! | `ORDER_PARK_AFTER_ATTEMPTS` | `20` | a step past the pivot (or a compensation) that failed this many times in a row is parked for an operator |
//! | `ORDER_CRASH_AFTER_STEP` | unset | **test-only fault injection**: abort the process right after persisting this step; refused by release builds and with `SHOP_ENV=production` |
//! | `ORDER_CRASH_BEFORE_RECORDING` | unset | **test-only**: abort after this step's participant answered, before the answer is persisted (same refusals) |
//! | `ORDER_STALL_BEFORE_RECORDING` | unset | **test-only**: once, sleep for twice the lease after this step's participant answered, before persisting, as a paused process would (same refusals) |
//!
//! Every variable is read and checked at start, and every bad one is named in one error, so a
//! misconfigured instance refuses to boot instead of failing on its first order. Values that
//! only make sense together are checked together: the lease must be at least four call
//! deadlines, so the instance driving a saga always hears the answer of its call before
//! another instance may take the saga over (ADR 0009).
//!
//! Why these knobs and not others: each one bounds a failure the saga has to live with. The
//! call deadline bounds how long one participant may keep a step waiting; the saga timeout
//! bounds how long stock stays reserved for an order that cannot pay; the lease bounds how
//! long a dead instance's sagas wait before another instance resumes them; the breaker
//! settings bound how much a dead participant costs; the parking threshold bounds how long a
//! step past the pivot is retried before a person is asked. The three fault-injection
//! variables exist so `tests/crash.rs` can kill the real binary, and `tests/saga.rs` pause an
//! instance, at the moments a crash must be survivable.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use shop_auth::{AuthConfig, client::ServiceCredentials};
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env, Secret},
    grpc::{self, Peers},
    mode::Mode,
};

use crate::saga::Step;

/// The development card key: known to everyone who reads this file, so only for local use.
///
/// The default of `ORDER_CARD_KEY`, so a local stack needs no secret to place an order;
/// [`crate::OrderService`] warns at start when it is in use, and `SHOP_ENV=production`
/// refuses it even when it is given explicitly.
pub const DEV_CARD_KEY: [u8; 32] = *b"order-service-dev-card-key-32-by";

/// order-service's settings, read once at start; the module's table names each variable.
#[derive(Debug, Clone)]
pub struct OrderConfig {
    /// How customer and admin tokens are verified: locally, against user-service's published
    /// key set, so once the keys are cached a placing request needs no call to user-service
    /// (ADR 0005).
    pub auth: AuthConfig,
    /// catalog-service's gRPC address (`CATALOG_GRPC_URL`).
    pub catalog_url: url::Url,
    /// inventory-service's gRPC address (`INVENTORY_GRPC_URL`).
    pub inventory_url: url::Url,
    /// payment-service's gRPC address (`PAYMENT_GRPC_URL`).
    pub payment_url: url::Url,
    /// How the participants are reached: the CA their certificates are checked against
    /// (`GRPC_TLS_CA_FILE`), how often their names are resolved again.
    pub grpc: Peers,
    /// How order-service gets its service tokens (`SERVICE_TOKEN_URL`, `SERVICE_SECRET`).
    pub credentials: ServiceCredentials,
    /// `ORDER_CARD_KEY`: 32 bytes for AES-256-GCM, wrapped in [`Secret`] so it never shows in
    /// a `Debug` print of the configuration.
    pub card_key: Secret<Vec<u8>>,
    /// How sagas are paced.
    pub saga: SagaConfig,
    /// Consecutive failures that open a downstream's breaker (`ORDER_BREAKER_FAILURES`). Only
    /// calls without an answer count: a refusal proves the participant is up.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one probe through
    /// (`ORDER_BREAKER_COOLDOWN_MS`). While it is open every step against that participant is
    /// an unknown outcome at once, rescheduled by the driver instead of waiting out a deadline.
    pub breaker_cooldown: Duration,
}

/// How sagas are paced.
///
/// Separate from [`OrderConfig`] because it is all the [`crate::driver::Driver`] needs of the
/// settings.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// The deadline of one gRPC call, sent to the participant and enforced here.
    pub call_timeout: Duration,
    /// The saga's time limit before its pivot; past it, the saga compensates with `timeout`.
    /// It should stay below inventory's `RESERVATION_TTL_SECONDS`, or a slow saga meets an
    /// expired reservation at `CommitStock` instead of compensating on its own terms (it is
    /// cancelled with `timeout` either way).
    pub saga_timeout: Duration,
    /// How long an instance owns a saga it drives; at least four call deadlines. Renewed with
    /// every attempt, so only a stalled or dead instance loses it, and it is also how long a
    /// crashed instance's sagas wait before another instance resumes them.
    pub lease: Duration,
    /// How often every instance sweeps for due sagas. It bounds how late a retry runs after
    /// its `next_attempt_at`, and also refreshes the saga gauges.
    pub sweep_interval: Duration,
    /// The longest back-off between two attempts of a step. A participant that comes back
    /// is noticed by each waiting saga within this, plus a sweep interval and, if its breaker
    /// opened, what is left of the cooldown.
    pub retry_max: Duration,
    /// How long a void that found no authorization keeps looking for a late one (only needed
    /// against a payment-service without tombstones).
    pub late_authorization: Duration,
    /// Sagas one instance drives at once; placing beyond that answers 503. It bounds the
    /// database connections and participant calls one instance can have waiting, so a burst
    /// is refused at the door instead of piling up inside.
    pub max_in_flight: usize,
    /// Attempts in a row after which a step that cannot turn back is parked. Steps before the
    /// pivot never park: the saga's time limit already ends them.
    pub park_after: u32,
    /// Test-only fault injection; all off by default.
    pub faults: Faults,
}

/// Test-only fault injection (refused by release builds and in production).
///
/// The two points it can hit are the two that matter for "persist, call, persist": after a
/// transition committed, and between a participant's answer and its recording. A test that
/// kills the process at each proves the saga resumes from either without a second effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Abort right after the transition out of this step committed (`ORDER_CRASH_AFTER_STEP`).
    pub crash_after: Option<Step>,
    /// Abort after this step's participant answered, before the answer is persisted
    /// (`ORDER_CRASH_BEFORE_RECORDING`): the participant acted, the saga row does not say so.
    pub crash_before_recording: Option<Step>,
    /// Once per process, stall (twice the lease) after this step's participant answered,
    /// before persisting: another instance takes the saga over meanwhile.
    pub stall_before_recording: Option<Step>,
}

impl FromEnv for OrderConfig {
    /// Reads every variable before combining any result, so each bad one is recorded in `env`
    /// and reported together; the lease is checked against the call deadline only when both
    /// parsed.
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env(env);
        let catalog_url = grpc::url_or(env, "CATALOG_GRPC_URL", "http://127.0.0.1:50052");
        let inventory_url = grpc::url_or(env, "INVENTORY_GRPC_URL", "http://127.0.0.1:50053");
        let payment_url = grpc::url_or(env, "PAYMENT_GRPC_URL", "http://127.0.0.1:50055");
        let grpc = Peers::from_env(env);
        let credentials = ServiceCredentials::from_env(env, crate::SERVICE_NAME);
        let mode = Mode::of(env);
        let card_key = match env.raw("ORDER_CARD_KEY").map(str::to_owned) {
            None => mode.refuse_in_production(
                env,
                "ORDER_CARD_KEY",
                DEV_CARD_KEY.to_vec(),
                "is not set, and the development key is public",
            ),
            Some(raw) => match STANDARD.decode(raw.trim()) {
                Ok(key) if key == DEV_CARD_KEY => mode.refuse_in_production(
                    env,
                    "ORDER_CARD_KEY",
                    key,
                    "is the development key, published in this repository",
                ),
                Ok(key) if key.len() == 32 => Ok(key),
                // Never echo the value: it is a secret.
                _ => env.invalid(
                    "ORDER_CARD_KEY",
                    "is not 32 bytes in base64 (openssl rand -base64 32)".to_owned(),
                ),
            },
        };
        let call_timeout = env.millis_or("ORDER_CALL_TIMEOUT_MS", Duration::from_millis(2000));
        let saga_timeout = env.seconds_or("ORDER_SAGA_TIMEOUT_SECONDS", Duration::from_secs(60));
        let lease = env.millis_or("ORDER_SAGA_LEASE_MS", Duration::from_millis(15_000));
        let sweep_interval = env.millis_or("ORDER_SWEEP_INTERVAL_MS", Duration::from_millis(1000));
        let retry_max = env.millis_or("ORDER_RETRY_MAX_MS", Duration::from_millis(10_000));
        let late_authorization = env.seconds_or(
            "ORDER_LATE_AUTHORIZATION_SECONDS",
            crate::saga::LATE_AUTHORIZATION,
        );
        let breaker_failures = env.parse_or("ORDER_BREAKER_FAILURES", 5u32, "a positive number");
        let breaker_cooldown =
            env.millis_or("ORDER_BREAKER_COOLDOWN_MS", Duration::from_millis(5000));
        let max_in_flight = env.parse_or("ORDER_MAX_IN_FLIGHT", 256usize, "a positive number");
        let max_in_flight = max_in_flight.and_then(|n| {
            if n == 0 {
                env.invalid("ORDER_MAX_IN_FLIGHT", "must be at least 1".to_owned())
            } else {
                Ok(n)
            }
        });
        let park_after = env.parse_or("ORDER_PARK_AFTER_ATTEMPTS", 20u32, "a positive number");
        let park_after = park_after.and_then(|n| {
            if n == 0 {
                env.invalid("ORDER_PARK_AFTER_ATTEMPTS", "must be at least 1".to_owned())
            } else {
                Ok(n)
            }
        });
        let crash_after = test_only_step(env, mode, "ORDER_CRASH_AFTER_STEP");
        let crash_before_recording = test_only_step(env, mode, "ORDER_CRASH_BEFORE_RECORDING");
        let stall_before_recording = test_only_step(env, mode, "ORDER_STALL_BEFORE_RECORDING");
        // A lease must outlive one call with its quick retries, or two instances could call
        // for the same saga at once (harmless, every call is idempotent, but not "one driver").
        let lease = match (&lease, &call_timeout) {
            (Ok(lease), Ok(call)) if *lease < call.saturating_mul(4) => env.invalid(
                "ORDER_SAGA_LEASE_MS",
                "must be at least 4 times ORDER_CALL_TIMEOUT_MS".to_owned(),
            ),
            _ => lease,
        };

        Ok(Self {
            auth: auth?,
            catalog_url: catalog_url?,
            inventory_url: inventory_url?,
            payment_url: payment_url?,
            grpc: grpc?,
            credentials: credentials?,
            card_key: Secret(card_key?),
            saga: SagaConfig {
                call_timeout: call_timeout?,
                saga_timeout: saga_timeout?,
                lease: lease?,
                sweep_interval: sweep_interval?,
                retry_max: retry_max?,
                late_authorization: late_authorization?,
                max_in_flight: max_in_flight?,
                park_after: park_after?,
                faults: Faults {
                    crash_after: crash_after?,
                    crash_before_recording: crash_before_recording?,
                    stall_before_recording: stall_before_recording?,
                },
            },
            breaker_failures: breaker_failures?,
            breaker_cooldown: breaker_cooldown?,
        })
    }
}

/// A saga step named by a test-only fault-injection variable: refused by release builds (a
/// binary that can be told to abort must never ship) and with `SHOP_ENV=production`.
fn test_only_step(env: &mut Env, mode: Mode, name: &str) -> Result<Option<Step>, ConfigError> {
    let step = env.optional::<Step>(name, "a saga step name")?;
    if step.is_some() && !cfg!(debug_assertions) {
        env.invalid(
            name,
            "is a test-only fault injection; release builds refuse it".to_owned(),
        )
    } else if step.is_some() {
        mode.refuse_in_production(env, name, step, "is a test-only fault injection")
    } else {
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<OrderConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let config = OrderConfig::from_env(&mut env);
        env.finish().map_err(|err| err.to_string())?;
        config.map_err(|err| err.to_string())
    }

    /// A local stack needs only `SERVICE_SECRET`; everything else has a default that works
    /// against the native stack's ports.
    #[test]
    fn defaults_need_only_the_service_secret() {
        let err = load(&[]).unwrap_err();
        assert!(err.contains("SERVICE_SECRET: is not set"), "{err}");
        let config = load(&[("SERVICE_SECRET", "s")]).unwrap();
        assert_eq!(config.card_key.0, DEV_CARD_KEY);
        assert_eq!(config.saga.call_timeout, Duration::from_secs(2));
        assert_eq!(config.saga.faults, Faults::default());
        assert_eq!(config.saga.max_in_flight, 256);
    }

    /// Four bad values are named together, and the bad card key is described, never quoted.
    #[test]
    fn reports_bad_values_by_variable_without_echoing_secrets() {
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("ORDER_CARD_KEY", "c2hvcnQ="),
            ("CATALOG_GRPC_URL", "ftp://catalog"),
            ("ORDER_SAGA_LEASE_MS", "100"),
            ("ORDER_CRASH_AFTER_STEP", "shipping"),
        ])
        .unwrap_err();
        for expected in [
            "ORDER_CARD_KEY: is not 32 bytes",
            "CATALOG_GRPC_URL: has scheme 'ftp'",
            "ORDER_SAGA_LEASE_MS: must be at least 4 times",
            "ORDER_CRASH_AFTER_STEP: could not be parsed",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        assert!(!err.contains("c2hvcnQ"), "{err}");
    }

    /// `SHOP_ENV=production` turns the development conveniences into errors naming their
    /// variables: the card key (missing or the development one), plain-HTTP URLs, a missing
    /// CA, and the fault injection (pattern BEY-14).
    #[test]
    fn production_refuses_the_development_key_and_fault_injection() {
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SHOP_ENV", "production"),
            ("ORDER_CRASH_AFTER_STEP", "capture"),
            ("ORDER_STALL_BEFORE_RECORDING", "reserve"),
        ])
        .unwrap_err();
        assert!(err.contains("ORDER_CARD_KEY: is not set"), "{err}");
        assert!(err.contains("SERVICE_TOKEN_URL: is plain http"), "{err}");
        // The saga's gRPC calls (card data to payment) too, defaulted or not (ADR 0017).
        for variable in ["CATALOG_GRPC_URL", "INVENTORY_GRPC_URL", "PAYMENT_GRPC_URL"] {
            assert!(err.contains(&format!("{variable}: is plain http")), "{err}");
        }
        assert!(err.contains("GRPC_TLS_CA_FILE: is not set"), "{err}");
        assert!(
            err.contains("ORDER_CRASH_AFTER_STEP: is a test-only"),
            "{err}"
        );
        assert!(
            err.contains("ORDER_STALL_BEFORE_RECORDING: is a test-only"),
            "{err}"
        );
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SHOP_ENV", "production"),
            ("PAYMENT_GRPC_URL", "https://payment-service:50055"),
        ])
        .unwrap_err();
        assert!(!err.contains("PAYMENT_GRPC_URL"), "{err}");
        let config = load(&[
            ("SERVICE_SECRET", "s"),
            ("ORDER_CRASH_AFTER_STEP", "capture"),
        ])
        .unwrap();
        assert_eq!(config.saga.faults.crash_after, Some(Step::Capture));

        // The development key given explicitly is refused as well, without being echoed.
        let dev_key = STANDARD.encode(DEV_CARD_KEY);
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SHOP_ENV", "production"),
            ("ORDER_CARD_KEY", dev_key.as_str()),
        ])
        .unwrap_err();
        assert!(
            err.contains("ORDER_CARD_KEY: is the development key"),
            "{err}"
        );
        assert!(!err.contains(&dev_key), "{err}");
    }
}
