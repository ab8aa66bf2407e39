//! Checking one access token.

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind as JwtErrorKind};
use shop_runtime::{ApiError, ErrorKind};

use crate::{
    Claims, Principal, ServicePrincipal,
    jwks::{HttpJwks, JwksSource, KeyCache, KeyError},
    unauthorized,
};

/// The only algorithms a token may be signed with: asymmetric ones.
///
/// Naming them is the defense against the two classic JWT attacks: `alg: none` (no signature
/// at all) and "HMAC with the public key" (an attacker signs with HS256 using our *public* key
/// as the shared secret, and a library that lets the header pick the algorithm accepts it).
/// On top of the list, the algorithm must also be the one the key set publishes for that `kid`.
pub const ALLOWED_ALGORITHMS: [Algorithm; 2] = [Algorithm::EdDSA, Algorithm::RS256];

/// Tokens longer than this are refused before any parsing (ours are ~400 bytes).
const MAX_TOKEN_LENGTH: usize = 8 * 1024;

/// What a token must say to be accepted here.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Expected `iss`: the issuer's identifier (user-service's `JWT_ISSUER`).
    pub issuer: String,
    /// Expected `aud`: this system (`JWT_AUDIENCE`); tokens for other audiences are refused.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`. Small (seconds): it exists for unsynchronised
    /// clocks, not to extend a token's life.
    pub leeway: Duration,
    /// At most one key-set refresh per this interval, however many unknown `kid`s arrive.
    pub min_refresh_interval: Duration,
    /// The key set is refreshed when older than this, so a withdrawn key stops verifying.
    pub max_age: Duration,
    /// While refreshes fail, the keys we have are used for at most this long after they were
    /// fetched; then tokens cannot be checked (503) until a refresh succeeds (see
    /// [`crate::jwks`]). Bounds how long a withdrawn key keeps verifying when the issuer cannot
    /// be reached.
    pub max_stale: Duration,
}

impl VerifierConfig {
    /// Defaults: 30 s leeway, at most one refresh per 30 s, keys re-read every 10 minutes and
    /// used for at most an hour without a successful refresh.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            max_stale: Duration::from_secs(3600),
        }
    }
}

/// Verifies access tokens against one issuer's key set. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: KeyCache,
    /// One prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
}

impl Verifier {
    pub fn new(config: &VerifierConfig, source: impl JwksSource) -> Self {
        let validations = ALLOWED_ALGORITHMS
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.algorithms = vec![algorithm];
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(&[&config.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.leeway = config.leeway.as_secs();
                validation.validate_exp = true;
                validation.validate_nbf = true;
                (algorithm, validation)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                keys: KeyCache::new(
                    source,
                    config.min_refresh_interval,
                    config.max_age,
                    config.max_stale,
                ),
                validations,
            }),
        }
    }

    /// A verifier that reads the key set from a JWKS URL (user-service's
    /// `/.well-known/jwks.json`).
    pub fn remote(config: &VerifierConfig, jwks_url: url::Url) -> Result<Self, reqwest::Error> {
        Ok(Self::new(config, HttpJwks::new(jwks_url)?))
    }

    /// Checks `token` and returns its claims, or a 401 error — or 503 while the key set cannot
    /// be used (never loaded, or too stale: [`VerifierConfig::max_stale`]).
    pub async fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        if token.len() > MAX_TOKEN_LENGTH {
            return Err(refused("longer than any token we issue"));
        }
        // `alg: none` fails here already: it is not an algorithm `jsonwebtoken` knows.
        let header = jsonwebtoken::decode_header(token).map_err(refused)?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(refused(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let kid = header.kid.ok_or_else(|| refused("no kid"))?;
        let key = match self.inner.keys.get(&kid).await {
            Ok(key) => key,
            Err(KeyError::Unknown) => return Err(refused(format!("unknown kid {kid}"))),
            // Not the token's fault: ours. 503, so the client retries instead of signing in again.
            Err(KeyError::Unavailable) => {
                return Err(ApiError::unavailable(
                    "Access tokens cannot be checked right now; retry later.",
                ));
            }
        };
        if key.algorithm != header.alg {
            return Err(refused(format!(
                "header says {:?}, key {kid} is {:?}",
                header.alg, key.algorithm
            )));
        }
        let validation = self
            .inner
            .validations
            .iter()
            .find_map(|(algorithm, validation)| (*algorithm == key.algorithm).then_some(validation))
            .ok_or_else(|| refused("no validation for the key's algorithm"))?;
        match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
            Ok(data) => Ok(data.claims),
            Err(err) if *err.kind() == JwtErrorKind::ExpiredSignature => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "The access token has expired; refresh it.",
            )),
            Err(err) => Err(refused(err)),
        }
    }

    /// Verifies a user's token and returns who they are.
    pub async fn principal(&self, token: &str) -> Result<Principal, ApiError> {
        Principal::from_claims(&self.verify(token).await?)
    }

    /// Verifies a service token and returns which service is calling.
    pub async fn service(&self, token: &str) -> Result<ServicePrincipal, ApiError> {
        ServicePrincipal::from_claims(&self.verify(token).await?)
    }
}

/// A 401 whose reason is logged (at debug: refused tokens are routine, and an attacker
/// could otherwise fill the log) and not shown.
fn refused(reason: impl std::fmt::Display) -> ApiError {
    tracing::debug!(%reason, "access token refused");
    unauthorized()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 for a request without credentials.
pub(crate) fn missing() -> ApiError {
    ApiError::new(
        ErrorKind::Unauthorized,
        "Send an access token: Authorization: Bearer <token>.",
    )
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn reads_bearer_tokens_only() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
