//! The environment mode: `SHOP_ENV=development|production`, development when unset.
//!
//! One switch for the whole system, so that "safe for production" is not a list of variables
//! an operator has to remember. In **development** (the default, what `make run` and the tests
//! use) a service may take conveniences that make a laptop setup work without configuration: a
//! signing key generated and kept in the database, the well-known seeded admin password, plain
//! HTTP to the identity service's key set. In **production** each of those is a configuration
//! error at start, named like every other one ([`crate::config::Env`]): a service refuses to
//! start rather than run with a default an attacker can read in this repository.
//!
//! Production also refuses every secret this repository publishes for development (the service
//! secrets of compose and the native stack, the seeded admin's password, the stores' passwords):
//! [`Mode::refuse_published_secret`] and [`Mode::refuse_published_password_in`] for URLs. A
//! deployment that copied a development value fails at start, naming the variable, instead of
//! running with a secret anyone can read here. `deploy/check` feeds every secret value of
//! compose, `deploy/local/stack.sh` and the Helm chart's development secrets to each service with
//! `SHOP_ENV=production` and requires each one refused, so a new development secret cannot
//! slip past this list.
//!
//! The runtime reads the mode with its other settings ([`crate::RuntimeConfig::mode`]), so a
//! bad value is reported once. A service's own `FromEnv` asks [`Mode::of`] to decide what it
//! requires; each service logs the conveniences it actually takes with
//! [`Mode::announce_conveniences`], once, so a development instance says so in its log.

use std::str::FromStr;

use crate::config::{ConfigError, Env};

/// Secret values published in this repository for development and tests, refused in production
/// ([`is_published_secret`]). Besides these, every value containing `dev-only` or `change-me`
/// counts: the marks development secrets here carry, so that a new one is refused without
/// being listed.
pub const PUBLISHED_SECRETS: &[&str] = &[
    // store and broker passwords of compose, the native stack and the test kit
    "postgres", "root", "guest", "testkit", "admin", "password", "secret",
];

/// Whether `value` is a secret this repository publishes (see [`PUBLISHED_SECRETS`]).
pub fn is_published_secret(value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    value.contains("dev-only")
        || value.contains("change-me")
        || PUBLISHED_SECRETS.contains(&value.as_str())
}

/// How strict the system is about its own configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Conveniences allowed (and logged once at start).
    #[default]
    Development,
    /// Every convenience is a configuration error.
    Production,
}

impl Mode {
    /// The variable that selects the mode.
    pub const VARIABLE: &'static str = "SHOP_ENV";
    const EXPECTED: &'static str = "development or production";

    /// Reads `SHOP_ENV`, recording a bad value in `env` like any other setting.
    pub fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        env.parse_or(Self::VARIABLE, Self::Development, Self::EXPECTED)
    }

    /// The mode, for a service's own settings: which of them are required depends on it.
    ///
    /// It records nothing (the runtime reports a bad value, once). A value that does not parse
    /// counts as production: the checks fail closed, and the start fails anyway.
    pub fn of(env: &Env) -> Self {
        env.raw(Self::VARIABLE).map_or(Self::Development, |raw| {
            raw.parse().unwrap_or(Self::Production)
        })
    }

    pub fn is_production(self) -> bool {
        self == Self::Production
    }

    /// Records `problem` against `variable` in production; in development returns `value`.
    ///
    /// For a setting whose default is only acceptable on a laptop:
    /// `mode.refuse_in_production(env, "ADMIN_PASSWORD", password, "is the development default")`.
    pub fn refuse_in_production<T>(
        self,
        env: &mut Env,
        variable: &str,
        value: T,
        problem: &str,
    ) -> Result<T, ConfigError> {
        if self.is_production() {
            env.invalid(variable, format!("{problem} (SHOP_ENV=production)"))
        } else {
            Ok(value)
        }
    }

    /// Records `variable` in production when `secret` is published in this repository
    /// ([`is_published_secret`]); the problem never quotes the value.
    pub fn refuse_published_secret(
        self,
        env: &mut Env,
        variable: &str,
        secret: &str,
    ) -> Result<(), ConfigError> {
        if is_published_secret(secret) {
            self.refuse_in_production(
                env,
                variable,
                (),
                "is a development secret published in this repository",
            )
        } else {
            Ok(())
        }
    }

    /// Records `variable` in production when the password in `url` is published, or is the
    /// user name again (every store account of the development setups is `name:name`).
    pub fn refuse_published_password_in(
        self,
        env: &mut Env,
        variable: &str,
        url: &url::Url,
    ) -> Result<(), ConfigError> {
        let Some(password) = url.password() else {
            return Ok(());
        };
        // The URL keeps its userinfo percent-encoded.
        let password = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
        if is_published_secret(&password) || password == url.username() {
            self.refuse_in_production(
                env,
                variable,
                (),
                "carries a password published in this repository (or the user name again)",
            )
        } else {
            Ok(())
        }
    }

    /// Logs, once per process, that this instance runs in development with `conveniences`
    /// (e.g. "signing key kept in the database"). Nothing in production.
    pub fn announce_conveniences(self, service: &str, conveniences: &[&str]) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        if self.is_production() || conveniences.is_empty() {
            return;
        }
        ONCE.call_once(|| {
            tracing::warn!(
                service,
                conveniences = %conveniences.join("; "),
                "SHOP_ENV=development: development conveniences are on; set SHOP_ENV=production to refuse them"
            );
        });
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "development" => Ok(Self::Development),
            "production" => Ok(Self::Production),
            _ => Err(format!("expected {}", Self::EXPECTED)),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Development => "development",
            Self::Production => "production",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_by_default_and_a_bad_value_is_a_named_error() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        assert_eq!(Mode::from_env(&mut env).unwrap(), Mode::Development);
        assert_eq!(Mode::of(&env), Mode::Development);

        let mut env = Env::from_pairs([("SHOP_ENV", "Production")]);
        assert_eq!(Mode::from_env(&mut env).unwrap(), Mode::Production);

        let mut env = Env::from_pairs([("SHOP_ENV", "prod")]);
        assert_eq!(Mode::of(&env), Mode::Production, "fails closed");
        let _ = Mode::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("SHOP_ENV") && err.contains("development or production"),
            "{err}"
        );
    }

    #[test]
    fn published_secrets_and_store_passwords_are_refused_in_production_only() {
        let url = |text: &str| url::Url::parse(text).unwrap();
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        for mode in [Mode::Development, Mode::Production] {
            let _ = mode.refuse_published_secret(
                &mut env,
                "SERVICE_SECRET",
                "dev-only-order-service-secret-0000000000",
            );
            let _ = mode.refuse_published_secret(&mut env, "ADMIN_PASSWORD", " Change-Me-Admin");
            let _ = mode.refuse_published_password_in(
                &mut env,
                "DATABASE_URL",
                &url("postgres://order_service:order_service@db/orders"),
            );
            let _ = mode.refuse_published_password_in(
                &mut env,
                "AMQP_URL",
                &url("amqp://guest:guest@mq:5672/%2f"),
            );
            let _ = mode.refuse_published_password_in(
                &mut env,
                "MONGODB_URL",
                &url("mongodb://app:ro%6Ft@mongo/x"),
            );
            // Not published: a generated secret, a URL without a password.
            let _ = mode.refuse_published_secret(&mut env, "X", "q8Zr1v0b2m3A9sLx7nQ4eT6yU5iO0pKj");
            let _ = mode.refuse_published_password_in(
                &mut env,
                "REDIS_URL",
                &url("redis://cache:6379"),
            );
            let _ = mode.refuse_published_password_in(
                &mut env,
                "Y",
                &url("postgres://app:q8Zr1v0b2m3A9sLx@db/x"),
            );
            let result = env.finish();
            if mode == Mode::Development {
                assert!(result.is_ok(), "{result:?}");
                continue;
            }
            let err = result.unwrap_err();
            let refused: Vec<&str> = err.issues.iter().map(|i| i.variable.as_str()).collect();
            assert_eq!(
                refused,
                [
                    "SERVICE_SECRET",
                    "ADMIN_PASSWORD",
                    "DATABASE_URL",
                    "AMQP_URL",
                    "MONGODB_URL"
                ]
            );
            let text = err.to_string();
            assert!(
                !text.contains("dev-only") && !text.contains("guest"),
                "{text}"
            );
        }
    }

    #[test]
    fn conveniences_are_refused_in_production_only() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        assert_eq!(
            Mode::Development
                .refuse_in_production(&mut env, "X", 1, "is a default")
                .unwrap(),
            1
        );
        assert!(env.finish().is_ok());
        let _ = Mode::Production.refuse_in_production(&mut env, "X", 1, "is a default");
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("X: is a default (SHOP_ENV=production)"),
            "{err}"
        );
    }
}
