//! Tokens for tests, from an issuer the test controls (feature `testing`).
//!
//! A service that verifies tokens is tested without starting user-service: the test starts a
//! [`TestIssuer`], points the service at its key set, and mints exactly the tokens it needs.
//!
//! ```ignore
//! let issuer = TestIssuer::start().await;
//! let app = spawn_with::<PaymentService>([("AUTH_JWKS_URL", issuer.jwks_url())]).await?;
//! let mut request = tonic::Request::new(AuthorizeRequest { .. });
//! issuer.authorize_as("order-service", &mut request);        // a service token for that caller
//! ```
//!
//! The tokens are real: Ed25519-signed, with the default issuer and audience (the ones
//! [`crate::AuthConfig`] expects when nothing is configured), verified by the same code as in
//! production. Only the key is the test's.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{Json, Router, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::JwkSet};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use uuid::Uuid;

use crate::{
    Claims, Role, ServicePrincipal, Verifier, VerifierConfig,
    config::{DEFAULT_AUDIENCE, DEFAULT_ISSUER},
    jwks::JwksSource,
};

/// An issuer with one Ed25519 key, its JWKS served on a loopback port.
#[derive(Debug)]
pub struct TestIssuer {
    kid: String,
    pkcs8: Vec<u8>,
    jwks: JwkSet,
    jwks_url: String,
}

impl TestIssuer {
    /// Generates a key and serves its JWKS at `http://127.0.0.1:<port>/.well-known/jwks.json`
    /// until the test's runtime ends.
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken test machine).
    pub async fn start() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("the system RNG works")
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("a key ring just generated");
        let kid = format!("test-{}", Uuid::new_v4().simple());
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }]}))
        .expect("a valid JWKS");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let served = jwks.clone();
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = served.clone();
                async move { Json(jwks) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            kid,
            pkcs8,
            jwks,
            jwks_url: format!("http://{addr}/.well-known/jwks.json"),
        }
    }

    /// The value for the service's `AUTH_JWKS_URL`.
    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// A verifier that knows this issuer's key without fetching it.
    pub fn verifier(&self) -> Verifier {
        Verifier::new(
            &VerifierConfig::new(DEFAULT_ISSUER, DEFAULT_AUDIENCE),
            StaticJwks(self.jwks.clone()),
        )
    }

    /// Signs `claims` with this issuer's key.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .expect("Ed25519 signing does not fail")
    }

    /// Claims valid for five minutes, with the default issuer and audience.
    pub fn claims(&self, sub: impl Into<String>, roles: &[Role]) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Claims {
            iss: DEFAULT_ISSUER.to_owned(),
            aud: DEFAULT_AUDIENCE.to_owned(),
            sub: sub.into(),
            roles: roles.iter().map(|role| role.as_str().to_owned()).collect(),
            iat: now,
            exp: now + 300,
            nbf: None,
            jti: Uuid::new_v4().to_string(),
        }
    }

    /// A service token for `caller` (e.g. `"order-service"`), as user-service would issue it.
    pub fn service_token(&self, caller: &str) -> String {
        self.sign(&self.claims(ServicePrincipal::subject(caller), &[Role::Service]))
    }

    /// A user's access token.
    pub fn user_token(&self, user_id: Uuid, roles: &[Role]) -> String {
        self.sign(&self.claims(user_id.to_string(), roles))
    }

    /// Adds `authorization: Bearer <service token of caller>` to a gRPC request.
    pub fn authorize_as<T>(&self, caller: &str, request: &mut tonic::Request<T>) {
        let value = format!("Bearer {}", self.service_token(caller))
            .parse()
            .expect("a JWT is valid metadata");
        request.metadata_mut().insert("authorization", value);
    }
}

/// A key set held in memory.
#[derive(Debug)]
struct StaticJwks(JwkSet);

impl JwksSource for StaticJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, String>> {
        let jwks = self.0.clone();
        Box::pin(async move { Ok(jwks) })
    }
}
