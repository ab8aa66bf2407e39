//! notification-service's own settings (the shared ones — addresses, `MONGODB_URL`, `AMQP_URL`,
//! ... — are read by the runtime; `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` by
//! [`shop_auth::AuthConfig`]).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SMTP_HOST` | `127.0.0.1` | the mail server (the local stack's mail catcher) |
//! | `SMTP_PORT` | `1025` | its SMTP port (e.g. 587 for STARTTLS, 465 for implicit TLS) |
//! | `SMTP_TLS` | `none` (refused with `SHOP_ENV=production`) | `none`: plain SMTP, for the local mail catcher; `starttls`: STARTTLS, required (a server that does not offer it is an error, never a plaintext fallback); `tls`: implicit TLS from the first byte. The server's certificate is checked against the public web's roots (ADR 0017) |
//! | `SMTP_TLS_CA_FILE` | unset | a PEM file of extra CA certificates the relay's certificate may chain to, besides the public web's roots (a private relay with its own CA); read and checked at start (a file that cannot be read or holds no certificate is reported by name); refused with `SMTP_TLS=none` |
//! | `SMTP_USERNAME`, `SMTP_PASSWORD` | unset (required with `SHOP_ENV=production`) | the relay's credentials, both or neither; never with `SMTP_TLS=none` (the password would cross the network readable) |
//! | `SMTP_FROM` | `Shop <no-reply@shop.example>` | the sender of every email; its domain names the Message-IDs |
//! | `SMTP_TIMEOUT_MS` | `10000` | one SMTP conversation, connect to the server's reply to the message |
//! | `NOTIFY_ADMIN_EMAILS` | `admin@example.com` | comma-separated: who gets the stock alerts |
//! | `USER_GRPC_URL` | `http://127.0.0.1:50051` | user-service (`GetUser`, for events without an address); `https://` required with `SHOP_ENV=production` |
//! | `GRPC_TLS_CA_FILE` | unset (required in production) | PEM: the CA that signed user-service's gRPC certificate ([`shop_runtime::grpc::ClientTls`], ADR 0017) |
//! | `GRPC_RESOLVE_INTERVAL_SECONDS` | `15` | how often user-service's host name is resolved again: calls are balanced over every address it has ([`shop_runtime::grpc::peers`]) |
//! | `SERVICE_TOKEN_URL` | `http://127.0.0.1:8081/internal/v1/service-token` | where service tokens come from (https required with `SHOP_ENV=production`) |
//! | `SERVICE_SECRET` | required | this service's secret in user-service's `SERVICE_CLIENTS` (as `notification-service`) |
//! | `NOTIFY_CALL_TIMEOUT_MS` | `2000` | deadline of one `GetUser` call |
//! | `NOTIFY_CONSUME_CONCURRENCY` | `4` | events one instance handles at the same time (1–64; the messaging default). 16 delivered no more in `make bench` scenario 7, which is CPU-bound on two cores (`bench/findings.md`) |
//! | `NOTIFY_RETRY_DELAYS_MS` | `1000,5000,30000,120000,600000,1800000` | the consumer's delay queues (an event that cannot be recorded yet, e.g. user-service down); parked after the last |
//! | `NOTIFY_SEND_BACKOFF_MAX_MS` | `300000` | longest wait between two SMTP attempts of one email |
//! | `NOTIFY_SEND_MAX_ATTEMPTS` | `100` | SMTP attempts before an email is given up (`failed`); about 8 hours at the default ceiling |
//! | `NOTIFY_SEND_CONCURRENCY` | `8` | emails one instance sends at the same time (1–64; lettre's connection pool holds up to 10 SMTP connections) |
//! | `NOTIFY_POLL_MS` | `1000` | how often the sender looks for due emails besides being woken by new ones |
//! | `NOTIFICATION_RETENTION_DAYS` | `90` | how long a notification (a rendered email: personal data) is kept; a TTL index on MongoDB, an hourly delete where the server has none (FerretDB v1) |

use std::time::Duration;

use lettre::message::Mailbox;
use shop_auth::{AuthConfig, client::ServiceCredentials};
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env, Secret},
    grpc::{self, Peers},
    mode::Mode,
};

/// The settings above.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    pub auth: AuthConfig,
    pub smtp: SmtpConfig,
    pub admins: Vec<Mailbox>,
    pub user_url: url::Url,
    /// How user-service is reached: the CA its certificate is checked against
    /// (`GRPC_TLS_CA_FILE`), how often its name is resolved again.
    pub grpc: Peers,
    /// How notification-service gets its service tokens (`SERVICE_TOKEN_URL`, `SERVICE_SECRET`).
    pub credentials: ServiceCredentials,
    pub call_timeout: Duration,
    pub retry_delays: Vec<Duration>,
    /// Events handled at once (`NOTIFY_CONSUME_CONCURRENCY`).
    pub consume_concurrency: usize,
    pub delivery: DeliveryConfig,
    /// How long notifications are kept (`NOTIFICATION_RETENTION_DAYS`).
    pub retention: Duration,
}

/// Where and as whom mail is sent.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub from: Mailbox,
    pub timeout: Duration,
    /// How the connection is encrypted (`SMTP_TLS`).
    pub tls: SmtpTls,
    /// Extra roots for the relay's certificate (`SMTP_TLS_CA_FILE`): PEM, checked at start.
    pub ca: Option<Vec<u8>>,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`, when the relay wants them.
    pub credentials: Option<SmtpCredentials>,
}

/// `SMTP_TLS`: how the connection to the mail server is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP: the local mail catcher (MailDev, Mailpit) speaks nothing else.
    #[default]
    None,
    /// Plain connection upgraded by STARTTLS before anything else is sent; a server that does
    /// not offer STARTTLS fails the send (lettre's `Tls::Required`), never falling back.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465; lettre's `Tls::Wrapper`).
    Tls,
}

impl std::str::FromStr for SmtpTls {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            _ => Err("expected none, starttls or tls".to_owned()),
        }
    }
}

/// The relay's user and password.
#[derive(Debug, Clone)]
pub struct SmtpCredentials {
    pub username: String,
    pub password: Secret<String>,
}

/// What [`smtp_security`] reads: the TLS mode, the relay's credentials, extra roots.
type SmtpSecurity = (SmtpTls, Option<SmtpCredentials>, Option<Vec<u8>>);

/// `SMTP_TLS`, `SMTP_TLS_CA_FILE`, `SMTP_USERNAME`, `SMTP_PASSWORD`: in production, encrypted and
/// authenticated; in any mode, no password over plain SMTP.
fn smtp_security(env: &mut Env) -> Result<SmtpSecurity, ConfigError> {
    let mode = Mode::of(env);
    let tls = env.optional::<SmtpTls>("SMTP_TLS", "none, starttls or tls");
    let ca_file = env.optional::<String>(
        "SMTP_TLS_CA_FILE",
        "the path of a PEM file of CA certificates",
    );
    let username = env.optional::<String>("SMTP_USERNAME", "the mail relay's user name");
    let password = env.optional::<String>("SMTP_PASSWORD", "the mail relay's password");
    let tls = match tls? {
        Some(SmtpTls::None) => mode.refuse_in_production(
            env,
            "SMTP_TLS",
            SmtpTls::None,
            "is none: mail (names, addresses, orders) and the relay's password would cross the \
             network readable; use starttls or tls",
        ),
        Some(tls) => Ok(tls),
        None => mode.refuse_in_production(
            env,
            "SMTP_TLS",
            SmtpTls::None,
            "is not set, which means plain SMTP; use starttls or tls",
        ),
    };
    let credentials = match (username?, password?) {
        (Some(username), Some(password)) => {
            mode.refuse_published_secret(env, "SMTP_PASSWORD", &password)?;
            Ok(Some(SmtpCredentials {
                username,
                password: Secret(password),
            }))
        }
        (None, None) => {
            let problem = "is not set: production sends through a relay that knows this \
                           service, not an open one";
            let username = mode.refuse_in_production(env, "SMTP_USERNAME", (), problem);
            let password = mode.refuse_in_production(env, "SMTP_PASSWORD", (), problem);
            username.and(password).map(|()| None)
        }
        (Some(_), None) => env.invalid(
            "SMTP_PASSWORD",
            "is not set, but SMTP_USERNAME is: give both or neither".to_owned(),
        ),
        (None, Some(_)) => env.invalid(
            "SMTP_USERNAME",
            "is not set, but SMTP_PASSWORD is: give both or neither".to_owned(),
        ),
    };
    let (tls, credentials, ca_file) = (tls?, credentials?, ca_file?);
    if tls == SmtpTls::None && credentials.is_some() {
        return env.invalid(
            "SMTP_PASSWORD",
            "is set, but SMTP_TLS is none: the password would cross the network readable"
                .to_owned(),
        );
    }
    let ca = match ca_file {
        None => None,
        Some(_) if tls == SmtpTls::None => {
            return env.invalid(
                "SMTP_TLS_CA_FILE",
                "is set, but SMTP_TLS is none: plain SMTP checks no certificate".to_owned(),
            );
        }
        Some(path) => Some(grpc::certificates_file(env, "SMTP_TLS_CA_FILE", &path)?),
    };
    Ok((tls, credentials, ca))
}

/// How the sender paces its attempts.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub backoff_max: Duration,
    pub max_attempts: u32,
    pub poll: Duration,
    /// How long a claimed email is reserved for the instance sending it: longer than one SMTP
    /// conversation can take, so no second instance picks it up while the first is still
    /// talking to the server.
    pub lease: Duration,
    /// Emails in flight at once. One at a time, every email waits for the store's round trips
    /// and the SMTP conversation of the one before it: a few dozen a second at best, far
    /// below a burst of confirmed orders.
    pub concurrency: usize,
}

/// How many things to do at once: `key`, from 1 to 64, or `default`.
fn at_once(env: &mut Env, key: &str, default: usize) -> Result<usize, ConfigError> {
    env.parse_or(key, default, "a number from 1 to 64")
        .and_then(|n| {
            if (1..=64).contains(&n) {
                Ok(n)
            } else {
                env.invalid(key, "must be from 1 to 64".to_owned())
            }
        })
}

/// `a@x, B <b@y>` → mailboxes; the error names the entry that is not an address.
fn mailboxes(raw: &str) -> Result<Vec<Mailbox>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<Mailbox>()
                .map_err(|err| format!("'{entry}' is not an email address ({err})"))
        })
        .collect()
}

fn delays(raw: &str) -> Result<Vec<Duration>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!(
                "'{entry}' is not a positive number of milliseconds"
            )),
            Ok(ms) => Ok(Duration::from_millis(ms)),
        })
        .collect()
}

impl FromEnv for NotificationConfig {
    fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env(env);
        let host = env.parse_or("SMTP_HOST", "127.0.0.1".to_owned(), "a host name");
        let port = env.parse_or("SMTP_PORT", 1025u16, "a port number");
        let from = env.parse_or(
            "SMTP_FROM",
            "Shop <no-reply@shop.example>"
                .parse::<Mailbox>()
                .expect("the default sender is an address"),
            "a mailbox such as Shop <no-reply@shop.example>",
        );
        let timeout = env.millis_or("SMTP_TIMEOUT_MS", Duration::from_millis(10_000));
        let smtp_security = smtp_security(env);
        let admins = match mailboxes(
            env.raw("NOTIFY_ADMIN_EMAILS")
                .unwrap_or("admin@example.com"),
        ) {
            Ok(admins) => Ok(admins),
            Err(problem) => env.invalid("NOTIFY_ADMIN_EMAILS", problem),
        };
        let user_url = grpc::url_or(env, "USER_GRPC_URL", "http://127.0.0.1:50051");
        let grpc = Peers::from_env(env);
        let credentials = ServiceCredentials::from_env(env, crate::users::SERVICE_NAME);
        let call_timeout = env.millis_or("NOTIFY_CALL_TIMEOUT_MS", Duration::from_millis(2000));
        let retry_delays = match delays(
            env.raw("NOTIFY_RETRY_DELAYS_MS")
                .unwrap_or("1000,5000,30000,120000,600000,1800000"),
        ) {
            Ok(delays) if !delays.is_empty() => Ok(delays),
            Ok(_) => env.invalid(
                "NOTIFY_RETRY_DELAYS_MS",
                "must list at least one delay".to_owned(),
            ),
            Err(problem) => env.invalid("NOTIFY_RETRY_DELAYS_MS", problem),
        };
        let backoff_max =
            env.millis_or("NOTIFY_SEND_BACKOFF_MAX_MS", Duration::from_millis(300_000));
        let max_attempts = env.parse_or("NOTIFY_SEND_MAX_ATTEMPTS", 100u32, "a positive number");
        let max_attempts = max_attempts.and_then(|n| {
            if n == 0 {
                env.invalid("NOTIFY_SEND_MAX_ATTEMPTS", "must be at least 1".to_owned())
            } else {
                Ok(n)
            }
        });
        let poll = env.millis_or("NOTIFY_POLL_MS", Duration::from_millis(1000));
        let concurrency = at_once(env, "NOTIFY_SEND_CONCURRENCY", 8);
        let consume_concurrency = at_once(env, "NOTIFY_CONSUME_CONCURRENCY", 4);
        let retention_days = env
            .parse_or(
                "NOTIFICATION_RETENTION_DAYS",
                90u32,
                "a number of days from 1 to 36500",
            )
            .and_then(|days| {
                if (1..=36_500).contains(&days) {
                    Ok(days)
                } else {
                    env.invalid(
                        "NOTIFICATION_RETENTION_DAYS",
                        "must be from 1 to 36500 days".to_owned(),
                    )
                }
            });

        let timeout = timeout?;
        let (tls, smtp_credentials, ca) = smtp_security?;
        Ok(Self {
            auth: auth?,
            smtp: SmtpConfig {
                host: host?,
                port: port?,
                from: from?,
                timeout,
                tls,
                ca,
                credentials: smtp_credentials,
            },
            admins: admins?,
            user_url: user_url?,
            grpc: grpc?,
            credentials: credentials?,
            call_timeout: call_timeout?,
            retry_delays: retry_delays?,
            consume_concurrency: consume_concurrency?,
            delivery: DeliveryConfig {
                backoff_max: backoff_max?,
                max_attempts: max_attempts?,
                poll: poll?,
                lease: timeout.saturating_mul(3),
                concurrency: concurrency?,
            },
            retention: Duration::from_secs(u64::from(retention_days?) * 86_400),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<NotificationConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let config = NotificationConfig::from_env(&mut env);
        env.finish().map_err(|err| err.to_string())?;
        config.map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_fit_the_local_stack_and_only_the_secret_is_required() {
        let err = load(&[]).unwrap_err();
        assert!(err.contains("SERVICE_SECRET: is not set"), "{err}");

        let config = load(&[("SERVICE_SECRET", "s")]).unwrap();
        assert_eq!(
            (config.smtp.host.as_str(), config.smtp.port),
            ("127.0.0.1", 1025)
        );
        assert_eq!(config.admins.len(), 1);
        assert_eq!(config.admins[0].email.to_string(), "admin@example.com");
        assert_eq!(config.retry_delays.len(), 6);
        assert!(config.delivery.lease > config.smtp.timeout);
        assert_eq!(config.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(
            (config.consume_concurrency, config.delivery.concurrency),
            (4, 8)
        );
        assert!(!format!("{config:?}").contains("\"s\""));
    }

    #[test]
    fn names_every_bad_setting() {
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SMTP_PORT", "70000"),
            ("SMTP_FROM", "nobody"),
            ("NOTIFY_ADMIN_EMAILS", "ops@example.com, not-an-address"),
            ("NOTIFY_RETRY_DELAYS_MS", "100,0"),
            ("USER_GRPC_URL", "ftp://users"),
            ("NOTIFICATION_RETENTION_DAYS", "0"),
            ("NOTIFY_CONSUME_CONCURRENCY", "65"),
            ("NOTIFY_SEND_CONCURRENCY", "0"),
        ])
        .unwrap_err();
        for expected in [
            "SMTP_PORT",
            "SMTP_FROM",
            "NOTIFY_ADMIN_EMAILS: 'not-an-address' is not an email address",
            "NOTIFY_RETRY_DELAYS_MS: '0' is not a positive number",
            "USER_GRPC_URL: has scheme 'ftp'",
            "NOTIFICATION_RETENTION_DAYS: must be from 1 to 36500 days",
            "NOTIFY_CONSUME_CONCURRENCY: must be from 1 to 64",
            "NOTIFY_SEND_CONCURRENCY: must be from 1 to 64",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
    }

    /// The variables `pairs` is refused for, in order.
    fn refused(pairs: &[(&str, &str)]) -> Vec<String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let _ = NotificationConfig::from_env(&mut env);
        env.finish()
            .err()
            .map(|err| err.issues.into_iter().map(|issue| issue.variable).collect())
            .unwrap_or_default()
    }

    #[test]
    fn production_refuses_plain_smtp_a_relay_without_credentials_and_plaintext_grpc() {
        let production = [("SERVICE_SECRET", "s"), ("SHOP_ENV", "production")];
        let refused_here = refused(&production);
        for variable in [
            "SMTP_TLS",
            "SMTP_USERNAME",
            "SMTP_PASSWORD",
            "USER_GRPC_URL",
            "GRPC_TLS_CA_FILE",
        ] {
            assert!(
                refused_here.iter().any(|v| v == variable),
                "{variable} in {refused_here:?}"
            );
        }
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SHOP_ENV", "production"),
            ("SMTP_TLS", "none"),
        ])
        .unwrap_err();
        assert!(err.contains("SMTP_TLS: is none"), "{err}");

        // STARTTLS or implicit TLS with credentials, and https to user-service: nothing about
        // mail or gRPC URLs is refused (GRPC_TLS_CA_FILE names a file this test does not have).
        for tls in ["starttls", "tls"] {
            let refused_here = refused(&[
                ("SERVICE_SECRET", "s"),
                ("SHOP_ENV", "production"),
                ("SMTP_TLS", tls),
                ("SMTP_USERNAME", "shop"),
                ("SMTP_PASSWORD", "q8Zr1v0b2m3A9sLx7nQ4eT6yU5iO0pKj"),
                ("USER_GRPC_URL", "https://user-service:50051"),
            ]);
            assert!(
                !refused_here
                    .iter()
                    .any(|v| v.starts_with("SMTP_") || v == "USER_GRPC_URL"),
                "{refused_here:?}"
            );
        }
        // A published password for the relay is refused too.
        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SHOP_ENV", "production"),
            ("SMTP_TLS", "starttls"),
            ("SMTP_USERNAME", "shop"),
            ("SMTP_PASSWORD", "change-me"),
        ])
        .unwrap_err();
        assert!(
            err.contains("SMTP_PASSWORD: is a development secret"),
            "{err}"
        );
    }

    #[test]
    fn development_keeps_plain_smtp_but_never_sends_a_password_over_it() {
        let config = load(&[("SERVICE_SECRET", "s")]).unwrap();
        assert_eq!(config.smtp.tls, SmtpTls::None);
        assert!(config.smtp.credentials.is_none());

        let err = load(&[
            ("SERVICE_SECRET", "s"),
            ("SMTP_USERNAME", "shop"),
            ("SMTP_PASSWORD", "hunter2-relay"),
        ])
        .unwrap_err();
        assert!(
            err.contains("SMTP_PASSWORD: is set, but SMTP_TLS is none"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");

        let err = load(&[("SERVICE_SECRET", "s"), ("SMTP_USERNAME", "shop")]).unwrap_err();
        assert!(err.contains("SMTP_PASSWORD: is not set, but"), "{err}");
        let err = load(&[("SERVICE_SECRET", "s"), ("SMTP_TLS", "ssl")]).unwrap_err();
        assert!(err.contains("SMTP_TLS: could not be parsed"), "{err}");

        let config = load(&[
            ("SERVICE_SECRET", "s"),
            ("SMTP_TLS", "STARTTLS"),
            ("SMTP_USERNAME", "shop"),
            ("SMTP_PASSWORD", "hunter2-relay"),
        ])
        .unwrap();
        assert_eq!(config.smtp.tls, SmtpTls::StartTls);
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    /// `SMTP_TLS_CA_FILE` is read at start: a missing file or one with no certificate is
    /// reported by name, and it is refused with plain SMTP, where it would check nothing.
    /// (`tests/smtp_tls.rs` proves a good one is what makes a private relay trusted.)
    #[test]
    fn the_relay_ca_file_is_read_at_start_and_a_bad_one_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir
            .path()
            .join("missing.pem")
            .to_string_lossy()
            .into_owned();
        let starttls = [("SERVICE_SECRET", "s"), ("SMTP_TLS", "starttls")];
        let err = load(&[&starttls[..], &[("SMTP_TLS_CA_FILE", &missing)]].concat()).unwrap_err();
        assert!(
            err.contains(&format!("SMTP_TLS_CA_FILE: cannot read {missing}")),
            "{err}"
        );

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let not_pem = not_pem.to_string_lossy().into_owned();
        let err = load(&[&starttls[..], &[("SMTP_TLS_CA_FILE", &not_pem)]].concat()).unwrap_err();
        assert!(
            err.contains(&format!(
                "SMTP_TLS_CA_FILE: {not_pem} holds no PEM certificate"
            )),
            "{err}"
        );

        let err = load(&[("SERVICE_SECRET", "s"), ("SMTP_TLS_CA_FILE", &missing)]).unwrap_err();
        assert!(
            err.contains("SMTP_TLS_CA_FILE: is set, but SMTP_TLS is none"),
            "{err}"
        );
        assert!(load(&starttls).unwrap().smtp.ca.is_none());
    }

    #[test]
    fn reads_admin_lists_and_delays() {
        let config = load(&[
            ("SERVICE_SECRET", "s"),
            (
                "NOTIFY_ADMIN_EMAILS",
                "Ops <ops@example.com>, stock@example.com",
            ),
            ("NOTIFY_RETRY_DELAYS_MS", "200, 500"),
        ])
        .unwrap();
        assert_eq!(config.admins.len(), 2);
        assert_eq!(config.admins[0].name.as_deref(), Some("Ops"));
        assert_eq!(
            config.retry_delays,
            [Duration::from_millis(200), Duration::from_millis(500)]
        );
    }
}
