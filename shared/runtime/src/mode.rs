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
//! The runtime reads the mode with its other settings ([`crate::RuntimeConfig::mode`]), so a
//! bad value is reported once. A service's own `FromEnv` asks [`Mode::of`] to decide what it
//! requires; each service logs the conveniences it actually takes with
//! [`Mode::announce_conveniences`], once, so a development instance says so in its log.

use std::str::FromStr;

use crate::config::{ConfigError, Env};

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
