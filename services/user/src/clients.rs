//! Service credentials: how another service of this system gets a *service token* for its gRPC
//! calls (OAuth 2.0 client credentials, RFC 6749 §4.4, reduced to what we use).
//!
//! Each calling service has a name and a secret, configured here as
//! `SERVICE_CLIENTS=order-service=<secret>,gateway=<secret>` and in the caller as its own secret.
//! The caller posts them (HTTP Basic) to `POST /internal/v1/service-token` and gets a short-lived
//! JWT with `sub` = `service:<name>` and role `service`, which every service verifies locally
//! like any other token ([`shop_auth::grpc::RequireService`]). The caller caches it until shortly
//! before it expires ([`shop_auth::client::ServiceTokens`]), so this is one call per caller
//! per token lifetime, not per request.

use std::collections::HashMap;

use axum::{
    extract::State,
    http::{HeaderMap, header},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Serialize;
use shop_auth::{Role, ServicePrincipal};
use shop_runtime::{ApiError, ErrorKind};

use crate::api::{AppState, NoStore};

/// Secrets shorter than this are refused at start: they are machine-generated, so there is no
/// reason for them to be guessable (`openssl rand -base64 32`).
pub const MIN_SECRET_CHARS: usize = 32;

/// The configured callers, by name, each with the SHA-256 of its secret.
#[derive(Clone, Default)]
pub struct ServiceClients {
    digests: HashMap<String, Vec<u8>>,
    /// The callers whose secret is a development one published in this repository
    /// (refused in production, see [`crate::config`]).
    published: Vec<String>,
}

impl std::fmt::Debug for ServiceClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.digests.keys().collect();
        names.sort();
        f.debug_struct("ServiceClients")
            .field("names", &names)
            .finish()
    }
}

impl std::str::FromStr for ServiceClients {
    type Err = String;

    /// `name=secret,name=secret`. The error never quotes a secret.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut digests = HashMap::new();
        let mut published = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, secret) = entry
                .split_once('=')
                .ok_or("each entry must be <service-name>=<secret>")?;
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!("'{name}' is not a service name (a-z, 0-9, -)"));
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(format!(
                    "the secret of {name} is shorter than {MIN_SECRET_CHARS} characters"
                ));
            }
            if digests.insert(name.to_owned(), digest(secret)).is_some() {
                return Err(format!("{name} is listed twice"));
            }
            if shop_runtime::mode::is_published_secret(secret) {
                published.push(name.to_owned());
            }
        }
        Ok(Self { digests, published })
    }
}

impl ServiceClients {
    /// The callers configured with a development secret published in this repository.
    pub fn with_published_secrets(&self) -> &[String] {
        &self.published
    }

    /// The caller's name when `secret` is its secret.
    ///
    /// Secrets are compared as SHA-256 digests: the comparison may stop at the first differing
    /// byte, but that reveals something about the *digest*, from which nothing about the secret
    /// can be worked out. An unknown name costs the same digest as a known one.
    fn authenticate(&self, name: &str, secret: &str) -> Option<String> {
        let presented = digest(secret);
        let expected = self.digests.get(name)?;
        (*expected == presented).then(|| name.to_owned())
    }
}

fn digest(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// The body of `POST /internal/v1/service-token`.
#[derive(Serialize)]
pub struct ServiceToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// Never prints the token.
impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Issues a service token to a caller presenting its credentials as HTTP Basic.
pub async fn issue(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<NoStore<ServiceToken>, ApiError> {
    let refused = || {
        ApiError::new(
            ErrorKind::Unauthorized,
            "Send valid service credentials: Authorization: Basic base64(<name>:<secret>).",
        )
    };
    let (name, secret) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(basic)
        .ok_or_else(refused)?;
    let name = state
        .clients
        .authenticate(&name, &secret)
        .ok_or_else(refused)?;
    let access_token = state.tokens.access_token(
        ServicePrincipal::subject(&name),
        vec![Role::Service.as_str().to_owned()],
    )?;
    metrics::counter!("user_service_tokens_issued_total", "client" => name).increment(1);
    Ok(NoStore(ServiceToken {
        access_token,
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl.as_secs(),
    }))
}

/// `Basic base64(name:secret)` → (name, secret).
fn basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (name, secret) = decoded.split_once(':')?;
    Some((name.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_names_and_secrets_and_refuses_weak_ones() {
        let clients: ServiceClients = format!("order-service={SECRET}, gateway={SECRET}x")
            .parse()
            .unwrap();
        assert_eq!(
            clients.authenticate("order-service", SECRET),
            Some("order-service".into())
        );
        assert_eq!(clients.authenticate("order-service", "wrong"), None);
        assert_eq!(clients.authenticate("nobody", SECRET), None);
        assert!("".parse::<ServiceClients>().unwrap().digests.is_empty());

        let short = "gateway=short".parse::<ServiceClients>().unwrap_err();
        assert!(short.contains("shorter than 32"), "{short}");
        assert!(!short.contains("=short"), "{short}");
        assert!(
            format!("Bad_Name={SECRET}")
                .parse::<ServiceClients>()
                .is_err()
        );
        assert!("no-secret".parse::<ServiceClients>().is_err());
        assert!(
            format!("a={SECRET},a={SECRET}")
                .parse::<ServiceClients>()
                .is_err()
        );
    }

    #[test]
    fn reads_basic_credentials() {
        let header = format!("Basic {}", STANDARD.encode("gateway:s3cr:et"));
        assert_eq!(basic(&header), Some(("gateway".into(), "s3cr:et".into())));
        assert_eq!(basic("Bearer abc"), None);
        assert_eq!(basic("Basic !!!"), None);
    }
}
