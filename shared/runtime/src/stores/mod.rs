//! Connections to the stores and the broker, created once per process and shared by handle.
//!
//! Each helper does the same three things: connect with the settings every service should
//! use (timeouts, pool sizes, application names), register a readiness probe, and return a
//! cheap-to-clone handle.

pub mod amqp;
pub mod mongo;
pub mod postgres;
pub mod redis;

use std::fmt;

/// A connection URL whose `Debug`/`Display` hide the password, so configs can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    /// The full URL, password included: pass it to drivers, never to logs.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = url::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        url::Url::parse(s).map(Self)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut redacted = self.0.clone();
        if redacted.password().is_some() {
            let _ = redacted.set_password(Some("***"));
        }
        write!(f, "{redacted}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_urls_hide_their_password() {
        let url: SecretUrl = "postgres://app:hunter2@db:5432/orders".parse().unwrap();
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/orders");
        assert!(url.expose().contains("hunter2"));
    }
}
