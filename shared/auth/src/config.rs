//! How a service that verifies tokens is configured: the same three variables everywhere.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AUTH_JWKS_URL` | `http://127.0.0.1:8081/.well-known/jwks.json` | user-service's key set |
//! | `JWT_ISSUER` | `urn:shop:user-service` | expected `iss` |
//! | `JWT_AUDIENCE` | `shop` | expected `aud` |
//!
//! With `SHOP_ENV=production` the key set must be fetched over HTTPS: over plain HTTP anyone
//! on the path could publish their own key and sign any token they like. (The default URL is
//! plain HTTP to a local stack, so production sets `AUTH_JWKS_URL` explicitly.)
//!
//! A service embeds [`AuthConfig`] in its own `FromEnv` settings and builds its [`Verifier`]
//! once in `build`.

use shop_runtime::{
    BootError,
    config::{ConfigError, Env},
    mode::Mode,
};

use crate::{Verifier, VerifierConfig};

/// Defaults shared with user-service's own settings, so a local stack needs no configuration.
pub const DEFAULT_ISSUER: &str = "urn:shop:user-service";
pub const DEFAULT_AUDIENCE: &str = "shop";
pub const DEFAULT_JWKS_URL: &str = "http://127.0.0.1:8081/.well-known/jwks.json";

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwks_url: url::Url,
    pub verifier: VerifierConfig,
}

impl AuthConfig {
    /// Reads the variables above; problems are recorded in `env` like every other setting.
    pub fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let jwks_url = env
            .optional::<url::Url>("AUTH_JWKS_URL", "an http(s) URL")
            .map(|url| {
                url.unwrap_or_else(|| {
                    url::Url::parse(DEFAULT_JWKS_URL).expect("the default JWKS URL is a URL")
                })
            });
        let issuer = env.parse_or("JWT_ISSUER", DEFAULT_ISSUER.to_owned(), "an issuer name");
        let audience = env.parse_or(
            "JWT_AUDIENCE",
            DEFAULT_AUDIENCE.to_owned(),
            "an audience name",
        );
        let mode = Mode::of(env);
        let jwks_url = jwks_url.and_then(|url| match url.scheme() {
            "http" => mode.refuse_in_production(
                env,
                "AUTH_JWKS_URL",
                url,
                "must be an https:// URL: keys fetched over plain HTTP can be replaced on the way",
            ),
            "https" => Ok(url),
            other => env.invalid(
                "AUTH_JWKS_URL",
                format!("has scheme '{other}', expected http or https"),
            ),
        });
        Ok(Self {
            jwks_url: jwks_url?,
            verifier: VerifierConfig::new(issuer?, audience?),
        })
    }

    /// The verifier for this configuration. Nothing is fetched yet: the key set is loaded by
    /// the first verification, so a service starts even while user-service is down.
    pub fn verifier(&self) -> Result<Verifier, BootError> {
        Verifier::remote(&self.verifier, self.jwks_url.clone())
            .map_err(|err| BootError::Other(format!("cannot build the JWKS client: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_a_local_stack_and_bad_urls_are_named() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        let config = AuthConfig::from_env(&mut env).unwrap();
        assert!(env.finish().is_ok());
        assert_eq!(config.jwks_url.as_str(), DEFAULT_JWKS_URL);
        assert_eq!(config.verifier.issuer, DEFAULT_ISSUER);
        assert_eq!(config.verifier.audience, DEFAULT_AUDIENCE);

        let mut env = Env::from_pairs([("AUTH_JWKS_URL", "ftp://keys/jwks.json")]);
        let _ = AuthConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("AUTH_JWKS_URL: has scheme 'ftp'"), "{err}");
    }

    #[test]
    fn production_refuses_a_plain_http_key_set() {
        let mut env = Env::from_pairs([("SHOP_ENV", "production")]);
        let _ = AuthConfig::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(
            err.contains("AUTH_JWKS_URL: must be an https:// URL"),
            "the default http URL too: {err}"
        );

        let mut env = Env::from_pairs([
            ("SHOP_ENV", "production"),
            (
                "AUTH_JWKS_URL",
                "http://user-service:8081/.well-known/jwks.json",
            ),
        ]);
        let _ = AuthConfig::from_env(&mut env);
        assert!(env.finish().is_err());

        let mut env = Env::from_pairs([
            ("SHOP_ENV", "production"),
            (
                "AUTH_JWKS_URL",
                "https://user-service/.well-known/jwks.json",
            ),
        ]);
        let config = AuthConfig::from_env(&mut env).unwrap();
        assert!(env.finish().is_ok());
        assert_eq!(config.jwks_url.scheme(), "https");
    }
}
