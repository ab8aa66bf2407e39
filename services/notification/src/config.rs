//! notification-service's own settings (the shared ones — addresses, `MONGODB_URL`, `AMQP_URL`,
//! ... — are read by the runtime; `AUTH_JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE` by
//! [`shop_auth::AuthConfig`]).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SMTP_HOST` | `127.0.0.1` | the mail server (the local stack's mail catcher) |
//! | `SMTP_PORT` | `1025` | its SMTP port (plain SMTP, no TLS: see `docs/adr/0012-notifications.md`) |
//! | `SMTP_FROM` | `Shop <no-reply@shop.example>` | the sender of every email; its domain names the Message-IDs |
//! | `SMTP_TIMEOUT_MS` | `10000` | one SMTP conversation, connect to the server's reply to the message |
//! | `NOTIFY_ADMIN_EMAILS` | `admin@example.com` | comma-separated: who gets the stock alerts |
//! | `USER_GRPC_URL` | `http://127.0.0.1:50051` | user-service (`GetUser`, for events without an address) |
//! | `SERVICE_TOKEN_URL` | `http://127.0.0.1:8081/internal/v1/service-token` | where service tokens come from (https required with `SHOP_ENV=production`) |
//! | `SERVICE_SECRET` | required | this service's secret in user-service's `SERVICE_CLIENTS` (as `notification-service`) |
//! | `NOTIFY_CALL_TIMEOUT_MS` | `2000` | deadline of one `GetUser` call |
//! | `NOTIFY_RETRY_DELAYS_MS` | `1000,5000,30000,120000,600000,1800000` | the consumer's delay queues (an event that cannot be recorded yet, e.g. user-service down); parked after the last |
//! | `NOTIFY_SEND_BACKOFF_MAX_MS` | `300000` | longest wait between two SMTP attempts of one email |
//! | `NOTIFY_SEND_MAX_ATTEMPTS` | `100` | SMTP attempts before an email is given up (`failed`); about 8 hours at the default ceiling |
//! | `NOTIFY_POLL_MS` | `1000` | how often the sender looks for due emails besides being woken by new ones |
//! | `NOTIFICATION_RETENTION_DAYS` | `90` | how long a notification (a rendered email: personal data) is kept; a TTL index on MongoDB, an hourly delete where the server has none (FerretDB v1) |

use std::time::Duration;

use lettre::message::Mailbox;
use shop_auth::{AuthConfig, client::ServiceCredentials};
use shop_runtime::{
    FromEnv,
    config::{ConfigError, Env},
};

/// The settings above.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    pub auth: AuthConfig,
    pub smtp: SmtpConfig,
    pub admins: Vec<Mailbox>,
    pub user_url: url::Url,
    /// How notification-service gets its service tokens (`SERVICE_TOKEN_URL`, `SERVICE_SECRET`).
    pub credentials: ServiceCredentials,
    pub call_timeout: Duration,
    pub retry_delays: Vec<Duration>,
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
        let admins = match mailboxes(
            env.raw("NOTIFY_ADMIN_EMAILS")
                .unwrap_or("admin@example.com"),
        ) {
            Ok(admins) => Ok(admins),
            Err(problem) => env.invalid("NOTIFY_ADMIN_EMAILS", problem),
        };
        let user_url = env.http_url_or("USER_GRPC_URL", "http://127.0.0.1:50051");
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
        Ok(Self {
            auth: auth?,
            smtp: SmtpConfig {
                host: host?,
                port: port?,
                from: from?,
                timeout,
            },
            admins: admins?,
            user_url: user_url?,
            credentials: credentials?,
            call_timeout: call_timeout?,
            retry_delays: retry_delays?,
            delivery: DeliveryConfig {
                backoff_max: backoff_max?,
                max_attempts: max_attempts?,
                poll: poll?,
                lease: timeout.saturating_mul(3),
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
        ])
        .unwrap_err();
        for expected in [
            "SMTP_PORT",
            "SMTP_FROM",
            "NOTIFY_ADMIN_EMAILS: 'not-an-address' is not an email address",
            "NOTIFY_RETRY_DELAYS_MS: '0' is not a positive number",
            "USER_GRPC_URL: has scheme 'ftp'",
            "NOTIFICATION_RETENTION_DAYS: must be from 1 to 36500 days",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
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
