//! user-service's own settings (the shared ones — addresses, `DATABASE_URL`, ... — are read by
//! the runtime).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `JWT_ISSUER` | `urn:shop:user-service` | `iss` of issued tokens; verifiers expect the same |
//! | `JWT_AUDIENCE` | `shop` | `aud` of issued tokens |
//! | `ACCESS_TOKEN_TTL_SECONDS` | `900` | access token lifetime |
//! | `REFRESH_TOKEN_TTL_SECONDS` | `2592000` (30 days) | refresh token lifetime (each rotation starts a new one) |
//! | `SESSION_LIFETIME_SECONDS` | `7776000` (90 days) | absolute lifetime of a sign-in: no refresh extends a session beyond it |
//! | `PASSWORD_HASHING_QUEUE` | `32` | password checks that may wait for a hashing slot; beyond, 503 + `Retry-After` |
//! | `JWT_SIGNING_KEY` / `JWT_SIGNING_KEY_FILE` | unset | Ed25519 private key, PKCS#8 PEM (text or path); unset = development key kept in the database (refused in production) |
//! | `JWT_PREVIOUS_SIGNING_KEY` / `JWT_PREVIOUS_SIGNING_KEY_FILE` | unset | the key before the last rotation; only its public half is published |
//! | `SERVICE_CLIENTS` | empty | `name=secret,...`: the services that may get service tokens |
//! | `ADMIN_EMAIL`, `ADMIN_PASSWORD` | `admin@example.com`, `change-me-admin` | the administrator, created at start when missing; a changed `ADMIN_PASSWORD` is applied at the next start (the default is refused in production) |
//!
//! `SHOP_ENV` ([`shop_runtime::mode::Mode`]) decides which defaults are acceptable: in
//! production a missing signing key, the default admin password, an admin password weaker than
//! a customer's may be (`validate::password_problems`) and the development service secrets of
//! compose and the native stack in `SERVICE_CLIENTS` are configuration errors.

use std::{path::PathBuf, time::Duration};

use shop_auth::config::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
    mode::Mode,
};

use crate::{clients::ServiceClients, keys::SigningKey};

/// Development defaults for the seeded administrator; the README shows them.
pub const DEV_ADMIN_EMAIL: &str = "admin@example.com";
pub const DEV_ADMIN_PASSWORD: &str = "change-me-admin";

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub mode: Mode,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// A refresh-token family (one sign-in) ends this long after the sign-in, however often
    /// it is refreshed: a stolen refresh token cannot be kept alive forever.
    pub session_lifetime: Duration,
    /// How many password hashes may wait for a hashing slot.
    pub hashing_queue: usize,
    /// `None`: development mode, the key is generated once and kept in the database.
    pub signing_key: Option<SigningKey>,
    pub previous_key: Option<SigningKey>,
    pub admin: AdminSeed,
    pub clients: ServiceClients,
}

/// The administrator account created at start if it does not exist yet.
#[derive(Clone)]
pub struct AdminSeed {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for AdminSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSeed")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl FromEnv for UserConfig {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        // The same variables and defaults as every verifier's (`shop_auth::AuthConfig`).
        let issuer = env.parse_or("JWT_ISSUER", DEFAULT_ISSUER.to_owned(), "an issuer name");
        let audience = env.parse_or(
            "JWT_AUDIENCE",
            DEFAULT_AUDIENCE.to_owned(),
            "an audience name",
        );
        let access_ttl = env.seconds_or("ACCESS_TOKEN_TTL_SECONDS", Duration::from_secs(900));
        let refresh_ttl = env.seconds_or(
            "REFRESH_TOKEN_TTL_SECONDS",
            Duration::from_secs(30 * 86_400),
        );
        let session_lifetime =
            env.seconds_or("SESSION_LIFETIME_SECONDS", Duration::from_secs(90 * 86_400));
        let hashing_queue = env.parse_or("PASSWORD_HASHING_QUEUE", 32usize, "a number");
        let signing_key = key(env, "JWT_SIGNING_KEY");
        let previous_key = key(env, "JWT_PREVIOUS_SIGNING_KEY");
        let clients = env.parse_or(
            "SERVICE_CLIENTS",
            ServiceClients::default(),
            "<service-name>=<secret>,... with secrets of at least 32 characters",
        );
        let admin_email = env.parse_or("ADMIN_EMAIL", DEV_ADMIN_EMAIL.to_owned(), "an email");
        let admin_password = env.parse_or(
            "ADMIN_PASSWORD",
            DEV_ADMIN_PASSWORD.to_owned(),
            "a password",
        );
        let admin_email = admin_email.and_then(|email| {
            crate::validate::normalise_email(&email).map_or_else(
                || env.invalid("ADMIN_EMAIL", "is not an email address".to_owned()),
                Ok,
            )
        });
        let access_ttl = access_ttl.and_then(|ttl| positive(env, "ACCESS_TOKEN_TTL_SECONDS", ttl));
        let refresh_ttl =
            refresh_ttl.and_then(|ttl| positive(env, "REFRESH_TOKEN_TTL_SECONDS", ttl));
        let session_lifetime =
            session_lifetime.and_then(|ttl| positive(env, "SESSION_LIFETIME_SECONDS", ttl));

        // Production refuses what only a laptop may use. Each is reported like any other
        // configuration problem, all at once.
        let mode = Mode::of(env);
        let signing_key = signing_key.and_then(|key| match key {
            None => mode.refuse_in_production(
                env,
                "JWT_SIGNING_KEY",
                None,
                "is not set (nor JWT_SIGNING_KEY_FILE); production signs with a key from a \
                 secret, never with one generated into the database",
            ),
            key => Ok(key),
        });
        let admin_password = admin_password.and_then(|password| {
            if password == DEV_ADMIN_PASSWORD {
                return mode.refuse_in_production(
                    env,
                    "ADMIN_PASSWORD",
                    password,
                    "is the development default published in this repository",
                );
            }
            mode.refuse_published_secret(env, "ADMIN_PASSWORD", &password)?;
            // The administrator obeys the rule every customer's password does, at least.
            let email = admin_email.as_deref().unwrap_or_default();
            match crate::validate::password_problems(&password, email).first() {
                Some(problem) => mode.refuse_in_production(
                    env,
                    "ADMIN_PASSWORD",
                    password,
                    &format!("is weak: it {problem}"),
                ),
                None => Ok(password),
            }
        });
        let clients = clients.and_then(|clients| {
            if clients.with_published_secrets().is_empty() {
                return Ok(clients);
            }
            let names = clients.with_published_secrets().join(", ");
            mode.refuse_in_production(
                env,
                "SERVICE_CLIENTS",
                clients,
                &format!("gives {names} a development secret published in this repository"),
            )
        });
        let previous_key = previous_key.and_then(|previous| match (&signing_key, previous) {
            (Ok(None), Some(_)) => env.invalid(
                "JWT_PREVIOUS_SIGNING_KEY",
                "is set but JWT_SIGNING_KEY is not (a previous key needs a current one)".to_owned(),
            ),
            (_, previous) => Ok(previous),
        });

        Ok(Self {
            mode,
            issuer: issuer?,
            audience: audience?,
            access_ttl: access_ttl?,
            refresh_ttl: refresh_ttl?,
            session_lifetime: session_lifetime?,
            hashing_queue: hashing_queue?,
            signing_key: signing_key?,
            previous_key: previous_key?,
            admin: AdminSeed {
                email: admin_email?,
                password: admin_password?,
            },
            clients: clients?,
        })
    }
}

fn positive(env: &mut Env, key: &str, ttl: Duration) -> Result<Duration, ConfigError> {
    if ttl.is_zero() {
        env.invalid(key, "must be at least 1 second".to_owned())
    } else {
        Ok(ttl)
    }
}

/// A key given either inline (`<NAME>`, the PEM text) or as a file (`<NAME>_FILE`, e.g. a
/// mounted Kubernetes secret) — not both.
fn key(env: &mut Env, name: &str) -> Result<Option<SigningKey>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let expected = "an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519)";
    let pem = match (env.raw(name).map(str::to_owned), env.raw(&file_var)) {
        (Some(_), Some(_)) => {
            return env.invalid(&file_var, format!("is set together with {name}; set one"));
        }
        (Some(pem), None) => (name.to_owned(), pem),
        (None, Some(_)) => {
            let path: PathBuf = env.required(&file_var, "a file path")?;
            match std::fs::read_to_string(&path) {
                Ok(pem) => (file_var, pem),
                Err(err) => {
                    return env
                        .invalid(&file_var, format!("cannot read {}: {err}", path.display()));
                }
            }
        }
        (None, None) => return Ok(None),
    };
    let (variable, pem) = pem;
    match SigningKey::from_pem(&pem) {
        Ok(key) => Ok(Some(key)),
        // The reason never quotes the value: it is a secret.
        Err(reason) => env.invalid(&variable, format!("is not {expected}: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_A_KEY: &str = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";

    fn load(pairs: &[(&str, &str)]) -> Result<UserConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let config = UserConfig::from_env(&mut env);
        env.finish().map_err(|err| err.to_string())?;
        config.map_err(|err| err.to_string())
    }

    #[test]
    fn every_setting_has_a_development_default() {
        let config = load(&[]).unwrap();
        assert_eq!(config.issuer, "urn:shop:user-service");
        assert_eq!(config.audience, "shop");
        assert_eq!(config.access_ttl, Duration::from_secs(900));
        assert!(config.signing_key.is_none());
        assert_eq!(config.admin.email, DEV_ADMIN_EMAIL);
        assert_eq!(config.admin.password, DEV_ADMIN_PASSWORD);
    }

    #[test]
    fn production_refuses_the_development_key_and_admin_password() {
        let err = load(&[("SHOP_ENV", "production")]).unwrap_err();
        assert!(err.contains("JWT_SIGNING_KEY: is not set"), "{err}");
        assert!(
            err.contains("ADMIN_PASSWORD: is the development default"),
            "{err}"
        );
        assert!(!err.contains(DEV_ADMIN_PASSWORD), "{err}");

        let (pem, _) = pem();
        let config = load(&[
            ("SHOP_ENV", "production"),
            ("JWT_SIGNING_KEY", pem.as_str()),
            ("ADMIN_PASSWORD", "a long operator-chosen secret"),
        ])
        .unwrap();
        assert_eq!(config.mode, Mode::Production);
        assert!(config.signing_key.is_some());
        // Development keeps today's conveniences.
        assert_eq!(load(&[]).unwrap().mode, Mode::Development);
    }

    #[test]
    fn production_refuses_weak_admin_passwords_and_published_service_secrets() {
        let (pem, _) = pem();
        let published = "order-service=dev-only-order-service-secret-0000000000,\
                         payment-service=q8Zr1v0b2m3A9sLx7nQ4eT6yU5iO0pKj";
        for (password, problem) in [
            (
                "short-one",
                "ADMIN_PASSWORD: is weak: it must be at least 12 characters",
            ),
            (
                "zzzzzzzzzzzzzzzz",
                "ADMIN_PASSWORD: is weak: it must not repeat one character",
            ),
            (
                "ops@example.com-2026",
                "ADMIN_PASSWORD: is weak: it must not contain the email",
            ),
            (
                "change-me-in-prod-please",
                "ADMIN_PASSWORD: is a development secret published",
            ),
        ] {
            let err = load(&[
                ("SHOP_ENV", "production"),
                ("JWT_SIGNING_KEY", pem.as_str()),
                ("ADMIN_EMAIL", "ops@example.com"),
                ("ADMIN_PASSWORD", password),
                ("SERVICE_CLIENTS", published),
            ])
            .unwrap_err();
            assert!(err.contains(problem), "{password}: {err}");
            assert!(
                err.contains("SERVICE_CLIENTS: gives order-service a development secret"),
                "{err}"
            );
            assert!(
                !err.contains(password) && !err.contains("dev-only"),
                "{err}"
            );
            // Development takes them all (compose and the native stack use them).
            load(&[
                ("ADMIN_EMAIL", "ops@example.com"),
                ("ADMIN_PASSWORD", password),
                ("SERVICE_CLIENTS", published),
            ])
            .unwrap();
        }
    }

    #[test]
    fn sessions_end_after_90_days_unless_configured() {
        assert_eq!(
            load(&[]).unwrap().session_lifetime,
            Duration::from_secs(90 * 86_400)
        );
        let config = load(&[("SESSION_LIFETIME_SECONDS", "3600")]).unwrap();
        assert_eq!(config.session_lifetime, Duration::from_secs(3600));
        let err = load(&[("SESSION_LIFETIME_SECONDS", "0")]).unwrap_err();
        assert!(err.contains("SESSION_LIFETIME_SECONDS: must be at least 1 second"));
    }

    #[test]
    fn reports_bad_keys_and_settings_by_variable_without_echoing_them() {
        let err = load(&[
            ("JWT_SIGNING_KEY", NOT_A_KEY),
            ("JWT_SIGNING_KEY_FILE", "/no/such/file"),
            ("JWT_PREVIOUS_SIGNING_KEY_FILE", "/no/such/file"),
            ("ACCESS_TOKEN_TTL_SECONDS", "0"),
            ("ADMIN_EMAIL", "not-an-email"),
        ])
        .unwrap_err();
        for expected in [
            "JWT_SIGNING_KEY_FILE: is set together with JWT_SIGNING_KEY",
            "JWT_PREVIOUS_SIGNING_KEY_FILE: cannot read /no/such/file",
            "ACCESS_TOKEN_TTL_SECONDS: must be at least 1 second",
            "ADMIN_EMAIL: is not an email address",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        assert!(!err.contains("aGVsbG8"), "{err}");

        let err = load(&[("JWT_SIGNING_KEY", NOT_A_KEY)]).unwrap_err();
        assert!(
            err.contains("JWT_SIGNING_KEY: is not an Ed25519 private key"),
            "{err}"
        );
    }

    fn pem() -> (String, SigningKey) {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let (key, der) = SigningKey::generate().unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der)
        );
        (pem, key)
    }

    #[test]
    fn reads_configured_keys() {
        let (current, current_key) = pem();
        let (previous, previous_key) = pem();
        let config = load(&[
            ("JWT_SIGNING_KEY", current.as_str()),
            ("JWT_PREVIOUS_SIGNING_KEY", previous.as_str()),
        ])
        .unwrap();
        assert_eq!(config.signing_key.unwrap().kid(), current_key.kid());
        assert_eq!(config.previous_key.unwrap().kid(), previous_key.kid());
    }

    #[test]
    fn a_previous_key_needs_a_current_one() {
        let (previous, _) = pem();
        let err = load(&[("JWT_PREVIOUS_SIGNING_KEY", previous.as_str())]).unwrap_err();
        assert!(
            err.contains("JWT_PREVIOUS_SIGNING_KEY: is set but JWT_SIGNING_KEY is not"),
            "{err}"
        );
    }
}
