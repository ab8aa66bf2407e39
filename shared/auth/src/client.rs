//! The calling side of service authentication: get a service token, keep it, attach it.
//!
//! ```ignore
//! let tokens = ServiceTokens::new(token_url, "order-service", secret)?;   // once, at start
//! let mut request = tonic::Request::new(GetUserRequest { id });
//! tokens.authorize(&mut request).await?;                                   // per call
//! users.get_user(request).await?;
//! ```
//!
//! The token is fetched on first use and reused until a minute before it expires, so a busy
//! caller asks user-service once per token lifetime. Concurrent calls during a renewal wait for
//! the one renewal instead of each starting their own.

use std::time::{Duration, Instant};

use serde::Deserialize;
use shop_runtime::{
    ApiError, ErrorKind,
    config::{ConfigError, Env, Secret},
    mode::Mode,
};
use tonic::metadata::MetadataValue;

/// Renew this long before expiry, so a token never expires in flight (clock skew included).
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// The default `SERVICE_TOKEN_URL`: user-service on the native stack.
pub const DEFAULT_TOKEN_URL: &str = "http://127.0.0.1:8081/internal/v1/service-token";

/// How a calling service proves who it is, read the same way by every caller:
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `SERVICE_TOKEN_URL` | [`DEFAULT_TOKEN_URL`] | user-service's token endpoint |
/// | `SERVICE_SECRET` | required | this service's secret in user-service's `SERVICE_CLIENTS` |
///
/// With `SHOP_ENV=production` the token URL must be `https://`: the secret travels as HTTP
/// Basic credentials and would otherwise cross the network in clear text. Production also
/// refuses the development secrets compose and the native stack publish
/// ([`shop_runtime::mode::is_published_secret`]).
#[derive(Debug, Clone)]
pub struct ServiceCredentials {
    /// The calling service's name, its entry in `SERVICE_CLIENTS` (`order-service`).
    pub name: &'static str,
    pub token_url: url::Url,
    pub secret: Secret<String>,
}

impl ServiceCredentials {
    /// Reads the variables above for the service `name`; problems are recorded in `env`.
    pub fn from_env(env: &mut Env, name: &'static str) -> Result<Self, ConfigError> {
        let token_url = env.http_url_or("SERVICE_TOKEN_URL", DEFAULT_TOKEN_URL);
        let mode = Mode::of(env);
        let token_url = token_url.and_then(|url| match url.scheme() {
            "http" => mode.refuse_in_production(
                env,
                "SERVICE_TOKEN_URL",
                url,
                "is plain http and would send the service secret in clear text; use https",
            ),
            _ => Ok(url),
        });
        let secret = env
            .required::<String>(
                "SERVICE_SECRET",
                &format!("{name}'s secret in user-service's SERVICE_CLIENTS"),
            )
            .and_then(|secret| {
                mode.refuse_published_secret(env, "SERVICE_SECRET", &secret)?;
                Ok(secret)
            });
        Ok(Self {
            name,
            token_url: token_url?,
            secret: Secret(secret?),
        })
    }

    /// The token cache these credentials feed.
    pub fn tokens(&self) -> Result<ServiceTokens, reqwest::Error> {
        ServiceTokens::new(self.token_url.clone(), self.name, self.secret.0.clone())
    }
}

/// A cached service token for one calling service.
pub struct ServiceTokens {
    url: url::Url,
    name: String,
    secret: String,
    client: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// Never prints the secret or the token.
impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens")
            .field("url", &self.url.as_str())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl ServiceTokens {
    /// `url` is user-service's `/internal/v1/service-token`; `name` and `secret` are this
    /// service's entry in user-service's `SERVICE_CLIENTS`.
    pub fn new(
        url: url::Url,
        name: impl Into<String>,
        secret: impl Into<String>,
    ) -> Result<Self, reqwest::Error> {
        shop_runtime::install_crypto_provider();
        Ok(Self {
            url,
            name: name.into(),
            secret: secret.into(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            cached: tokio::sync::Mutex::default(),
        })
    }

    /// A valid service token, fetched only when the cached one is missing or about to expire.
    pub async fn bearer(&self) -> Result<String, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let response = self
            .client
            .post(self.url.clone())
            .basic_auth(&self.name, Some(&self.secret))
            .send()
            .await
            .map_err(|err| {
                ApiError::unavailable("The identity service is unreachable.").with_source(err)
            })?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            // Our own credentials are wrong: a configuration error, not the caller's fault.
            return Err(ApiError::internal(std::io::Error::other(format!(
                "user-service refused the credentials of {}",
                self.name
            ))));
        }
        let body: TokenResponse = response
            .error_for_status()
            .map_err(|err| {
                ApiError::unavailable("The identity service is unavailable.").with_source(err)
            })?
            .json()
            .await
            .map_err(ApiError::internal)?;
        let lifetime = Duration::from_secs(body.expires_in);
        let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE);
        *cached = Some((body.access_token.clone(), renew_at));
        Ok(body.access_token)
    }

    /// Adds `authorization: Bearer <service token>` to an outgoing gRPC request.
    pub async fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ApiError> {
        let value: MetadataValue<_> = format!("Bearer {}", self.bearer().await?)
            .parse()
            .map_err(|_| ApiError::new(ErrorKind::Internal, "A token is not valid metadata."))?;
        request.metadata_mut().insert("authorization", value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_to_send_the_secret_over_plain_http() {
        let mut env = Env::from_pairs([("SHOP_ENV", "production"), ("SERVICE_SECRET", "s3cr3t")]);
        assert!(ServiceCredentials::from_env(&mut env, "order-service").is_err());
        let text = env.finish().unwrap_err().to_string();
        assert!(text.contains("SERVICE_TOKEN_URL"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");

        let mut env = Env::from_pairs([("SHOP_ENV", "development")]);
        assert!(ServiceCredentials::from_env(&mut env, "order-service").is_err());
        let text = env.finish().unwrap_err().to_string();
        assert!(
            text.contains("SERVICE_SECRET: is not set (expected order-service's secret"),
            "{text}"
        );

        let mut env = Env::from_pairs([("SERVICE_SECRET", "s3cr3t")]);
        let credentials = ServiceCredentials::from_env(&mut env, "order-service").unwrap();
        assert_eq!(credentials.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert!(!format!("{credentials:?}").contains("s3cr3t"));
    }

    #[test]
    fn production_refuses_the_published_development_secret() {
        let published = "dev-only-order-service-secret-0000000000";
        let https = "https://users.example.com/internal/v1/service-token";
        let mut env = Env::from_pairs([
            ("SHOP_ENV", "production"),
            ("SERVICE_TOKEN_URL", https),
            ("SERVICE_SECRET", published),
        ]);
        assert!(ServiceCredentials::from_env(&mut env, "order-service").is_err());
        let text = env.finish().unwrap_err().to_string();
        assert!(
            text.contains("SERVICE_SECRET: is a development secret published"),
            "{text}"
        );
        assert!(!text.contains(published), "{text}");

        let mut env = Env::from_pairs([("SERVICE_SECRET", published)]);
        assert!(ServiceCredentials::from_env(&mut env, "order-service").is_ok());
        let mut env = Env::from_pairs([
            ("SHOP_ENV", "production"),
            ("SERVICE_TOKEN_URL", https),
            ("SERVICE_SECRET", "q8Zr1v0b2m3A9sLx7nQ4eT6yU5iO0pKj"),
        ]);
        assert!(ServiceCredentials::from_env(&mut env, "order-service").is_ok());
    }
}
