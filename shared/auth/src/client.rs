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
use shop_runtime::{ApiError, ErrorKind};
use tonic::metadata::MetadataValue;

/// Renew this long before expiry, so a token never expires in flight (clock skew included).
const RENEW_BEFORE: Duration = Duration::from_secs(60);

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
