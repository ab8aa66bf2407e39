//! Typed configuration from environment variables (12-factor), validated once at start.
//!
//! Why not `envy` or `config`? We want *every* bad or missing variable reported in one go,
//! each line naming the variable, what was wrong, and what a good value looks like — so an
//! operator fixes a broken deployment in one edit instead of one restart per mistake. That is
//! a few dozen lines on top of `FromStr`, so we write them.
//!
//! ```
//! use shop_runtime::config::{Env, ConfigError};
//! use std::net::SocketAddr;
//!
//! let mut env = Env::from_pairs([("HTTP_ADDR", "0.0.0.0:8080")]);
//! let addr = env.parse_or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 80)), "host:port");
//! let url = env.required::<String>("DATABASE_URL", "a postgres:// URL");
//! let err = env.finish().unwrap_err();
//! assert!(err.to_string().contains("DATABASE_URL: is not set"));
//! ```

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    str::FromStr,
    sync::Mutex,
    time::Duration,
};

/// One variable that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The environment variable, e.g. `DATABASE_URL`.
    pub variable: String,
    /// What is wrong and what would be right.
    pub problem: String,
}

/// Every configuration problem found at start, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for issue in &self.issues {
            write!(f, "\n  {}: {}", issue.variable, issue.problem)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(variable: &str, problem: String) -> Self {
        Self {
            issues: vec![ConfigIssue {
                variable: variable.to_owned(),
                problem,
            }],
        }
    }
}

/// A snapshot of the environment that records each problem as values are read.
///
/// Every getter returns a `Result` *and* remembers its error, so a constructor reads all
/// fields, calls [`Env::finish`] (which reports all problems at once), and only then uses `?`
/// on the individual results.
#[derive(Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    issues: Vec<ConfigIssue>,
    /// Every variable name looked up, set or not (see [`Env::read_variables`]).
    read: Mutex<BTreeSet<String>>,
}

impl Env {
    /// The variables of this process.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// Explicit variables, for tests and for services started in-process.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            issues: Vec::new(),
            read: Mutex::default(),
        }
    }

    /// Sets or replaces a variable (used by the test kit to point a service at test stores).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    /// The raw value, treating an empty string as unset.
    pub fn raw(&self, key: &str) -> Option<&str> {
        if let Ok(mut read) = self.read.lock() {
            read.insert(key.to_owned());
        }
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A variable that must be present and parse as `T`; `expected` describes a good value.
    pub fn required<T: FromStr>(&mut self, key: &str, expected: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => self.fail(key, format!("is not set (expected {expected})")),
            Some(raw) => self.parse_raw(key, raw.to_owned(), expected),
        }
    }

    /// An optional variable; `Ok(None)` when unset.
    pub fn optional<T: FromStr>(
        &mut self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => Ok(None),
            Some(raw) => self.parse_raw(key, raw.to_owned(), expected).map(Some),
        }
    }

    /// A variable with a default used when it is unset.
    pub fn parse_or<T: FromStr>(
        &mut self,
        key: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        Ok(self.optional(key, expected)?.unwrap_or(default))
    }

    /// A duration given in whole seconds, e.g. `SHUTDOWN_GRACE_SECONDS=25`.
    pub fn seconds_or(&mut self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        let secs: Option<u64> = self.optional(key, "a whole number of seconds")?;
        Ok(secs.map_or(default, Duration::from_secs))
    }

    /// A duration given in whole milliseconds, at least 1, e.g. `ORDER_CALL_TIMEOUT_MS=2000`.
    pub fn millis_or(&mut self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: Option<u64> = self.optional(key, "a whole number of milliseconds")?;
        match ms {
            None => Ok(default),
            Some(0) => self.fail(key, "must be at least 1".to_owned()),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    /// An `http://` or `https://` URL, e.g. another service's address.
    ///
    /// # Panics
    /// When `default` is not a URL: defaults are constants of the code, checked by its tests.
    pub fn http_url_or(&mut self, key: &str, default: &str) -> Result<url::Url, ConfigError> {
        #[allow(clippy::expect_used)]
        let default = url::Url::parse(default).expect("defaults are URLs");
        let url = self.parse_or(key, default, "an http(s) URL")?;
        match url.scheme() {
            "http" | "https" => Ok(url),
            other => self.fail(key, format!("has scheme '{other}', expected http or https")),
        }
    }

    /// The names of every variable looked up so far, sorted, whether it was set or not.
    ///
    /// Every getter goes through [`Env::raw`], so after a service's configuration is loaded
    /// this is the list of variables that service reads. The deployment checks compare it with
    /// what docker-compose.yml and the Helm chart set (deploy/check), so the two cannot drift
    /// from the code.
    pub fn read_variables(&self) -> Vec<String> {
        self.read
            .lock()
            .map(|read| read.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Reports every problem recorded so far, or `Ok(())` when there were none.
    pub fn finish(&mut self) -> Result<(), ConfigError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                issues: std::mem::take(&mut self.issues),
            })
        }
    }

    fn parse_raw<T: FromStr>(
        &mut self,
        key: &str,
        raw: String,
        expected: &str,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        raw.trim().parse::<T>().or_else(|err| {
            // Values may be secrets (URLs with passwords): never echo them back.
            self.fail(key, format!("could not be parsed as {expected}: {err}"))
        })
    }

    /// Records a value that parsed but breaks a rule (wrong URL scheme, out of range, ...).
    pub fn invalid<T>(&mut self, key: &str, problem: String) -> Result<T, ConfigError> {
        self.fail(key, problem)
    }

    fn fail<T>(&mut self, key: &str, problem: String) -> Result<T, ConfigError> {
        let err = ConfigError::single(key, problem);
        self.issues.extend(err.issues.iter().cloned());
        Err(err)
    }
}

/// A configuration value that is never printed: `Debug` shows `Secret(..)`, so a config struct
/// can derive `Debug` (and be logged at start) without leaking keys or passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn reports_every_bad_variable_by_name_at_once() {
        let mut env = Env::from_pairs([("HTTP_ADDR", "not-an-address"), ("PORT_COUNT", "12")]);
        let addr: Result<SocketAddr, _> = env.required("HTTP_ADDR", "host:port");
        let url: Result<String, _> = env.required("DATABASE_URL", "a postgres:// URL");
        let count: Result<u8, _> = env.required("PORT_COUNT", "a number");

        let err = env.finish().unwrap_err();
        assert!(addr.is_err() && url.is_err());
        assert_eq!(count.ok(), Some(12));
        assert_eq!(err.issues.len(), 2);
        let text = err.to_string();
        assert!(
            text.contains("HTTP_ADDR: could not be parsed as host:port"),
            "{text}"
        );
        assert!(text.contains("DATABASE_URL: is not set"), "{text}");
    }

    #[test]
    fn does_not_echo_the_bad_value() {
        let mut env = Env::from_pairs([("SECRET_PORT", "hunter2")]);
        let _ = env.required::<u16>("SECRET_PORT", "a port");
        let text = env.finish().unwrap_err().to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn milliseconds_and_urls_are_checked_and_named() {
        let mut env = Env::from_pairs([
            ("CALL_MS", "0"),
            ("PEER_URL", "ftp://peer"),
            ("OK_MS", "250"),
            ("KEY", "hunter2-secret"),
        ]);
        assert!(env.millis_or("CALL_MS", Duration::from_secs(1)).is_err());
        assert_eq!(
            env.millis_or("OK_MS", Duration::from_secs(1)),
            Ok(Duration::from_millis(250))
        );
        assert!(env.http_url_or("PEER_URL", "http://127.0.0.1:1").is_err());
        assert_eq!(
            env.http_url_or("UNSET_URL", "http://127.0.0.1:1")
                .map(|url| url.to_string()),
            Ok("http://127.0.0.1:1/".to_owned())
        );
        let secret = Secret(env.raw("KEY").unwrap_or_default().to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        let text = env.finish().unwrap_err().to_string();
        assert!(text.contains("CALL_MS: must be at least 1"), "{text}");
        assert!(text.contains("PEER_URL: has scheme 'ftp'"), "{text}");
    }

    #[test]
    fn remembers_every_variable_it_was_asked_for() {
        let mut env = Env::from_pairs([("SET", "1"), ("NEVER_ASKED", "2")]);
        let _ = env.parse_or("SET", 0u8, "a number");
        let _ = env.optional::<u8>("UNSET", "a number");
        assert_eq!(env.read_variables(), ["SET", "UNSET"]);
    }

    #[test]
    fn empty_means_unset_and_defaults_apply() {
        let mut env = Env::from_pairs([("GRACE", " ")]);
        assert_eq!(
            env.seconds_or("GRACE", Duration::from_secs(7)),
            Ok(Duration::from_secs(7))
        );
        assert!(env.finish().is_ok());
    }
}
