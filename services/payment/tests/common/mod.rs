//! What payment-service's tests share: a token issuer standing in for user-service (a real
//! Ed25519 key behind a real JWKS endpoint, so the service verifies tokens exactly as in
//! production), the service started against it, gRPC requests carrying a service token, and a
//! queue that collects the events the service publishes.

#![allow(dead_code)] // each test file uses its own part of this module
#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use payment_service::PaymentService;
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use serde_json::{Value, json};
use shop_auth::Claims;
use shop_messaging::{Envelope, testing::Tap};
use shop_proto::{
    common::v1::Money,
    payment::v1::{AuthorizeRequest, Card, payment_service_client::PaymentServiceClient},
};
use shop_testkit::{TestApp, spawn_with};
use sqlx::PgPool;
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;

pub const APPROVE: &str = "4242424242424242";
pub const DECLINE: &str = "4000000000000002";
pub const INSUFFICIENT_FUNDS: &str = "4000000000009995";
pub const SLOW: &str = "4000000000000259";
pub const TIMEOUT_BEFORE_ACTING: &str = "4000000000000119";
pub const ANSWER_LOST: &str = "4000000000000127";
pub const CAPTURE_REFUSED: &str = "4000000000000069";
pub const VOID_REFUSED_ONCE: &str = "4000000000000101";

/// Signs tokens as user-service would and serves the public key at a JWKS URL.
pub struct Issuer {
    pkcs8: Vec<u8>,
    pub jwks_url: String,
}

impl Issuer {
    pub async fn start() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": "test",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }]});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move { Json(jwks) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            pkcs8: pkcs8.as_ref().to_vec(),
            jwks_url: format!("http://{addr}/.well-known/jwks.json"),
        }
    }

    fn sign(&self, sub: &str, roles: &[&str]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            iss: "urn:shop:user-service".into(),
            aud: "shop".into(),
            sub: sub.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iat: now,
            exp: now + 600,
            nbf: None,
            jti: Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("test".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }

    /// A service token for `name` (`sub: service:<name>`, role `service`).
    pub fn service(&self, name: &str) -> String {
        self.sign(&format!("service:{name}"), &["service"])
    }

    /// A customer's access token.
    pub fn customer(&self, user_id: Uuid) -> String {
        self.sign(&user_id.to_string(), &["customer"])
    }
}

/// payment-service with its stores, trusting `issuer`, the slow card short.
pub async fn spawn_payments(issuer: &Issuer) -> TestApp {
    spawn_with::<PaymentService>([
        ("AUTH_JWKS_URL", issuer.jwks_url.as_str()),
        ("SIMULATED_SLOW_CARD_DELAY_MS", "400"),
    ])
    .await
    .unwrap()
}

/// payment-service like [`spawn_payments`], with `overrides` on top.
pub async fn spawn_payments_with(issuer: &Issuer, overrides: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("AUTH_JWKS_URL", issuer.jwks_url.as_str()),
        ("SIMULATED_SLOW_CARD_DELAY_MS", "400"),
    ];
    env.extend_from_slice(overrides);
    spawn_with::<PaymentService>(env).await.unwrap()
}

/// The payment id of `order_id`, if it has a payment.
pub async fn payment_of(pool: &PgPool, order_id: Uuid) -> Option<Uuid> {
    sqlx::query_scalar("SELECT id FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// What the simulated provider's own record says about the payment's authorization:
/// (status, reference), `None` when the provider never heard of it.
pub async fn provider_record(pool: &PgPool, payment_id: Uuid) -> Option<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT status, reference FROM simulated_provider.authorizations WHERE idempotency_key = $1",
    )
    .bind(format!("{payment_id}:authorize:"))
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Authorizations the provider holds money for, across all payments.
pub async fn provider_holds(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM simulated_provider.authorizations WHERE status = 'held'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Completed rows of `operation` for the payment: (outcome, requested_by, provider_reference).
pub async fn completed(
    pool: &PgPool,
    payment_id: Uuid,
    operation: &str,
) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT outcome, requested_by, provider_reference FROM payment_operations
         WHERE payment_id = $1 AND operation = $2 AND phase = 'completed' ORDER BY seq",
    )
    .bind(payment_id)
    .bind(operation)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Polls `condition` until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    shop_testkit::eventually(timeout, condition)
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"));
}

pub async fn client(app: &TestApp) -> PaymentServiceClient<GrpcChannel> {
    PaymentServiceClient::new(shop_testkit::ops::channel(app).await.unwrap())
}

/// `message` with `authorization: Bearer <token>` metadata.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn eur(amount: i64) -> Option<Money> {
    Some(Money {
        amount,
        currency: "EUR".into(),
    })
}

pub fn card(number: &str) -> Option<Card> {
    Some(Card {
        number: number.into(),
        expiry: "12/39".into(),
        cvc: "123".into(),
    })
}

pub fn authorize(order_id: Uuid, user_id: Uuid, amount: i64, number: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        amount: eur(amount),
        card: card(number),
    }
}

/// The service's own database, as the test reads it.
pub async fn database(app: &TestApp) -> PgPool {
    PgPool::connect(&app.env["DATABASE_URL"]).await.unwrap()
}

/// A queue bound to every payment event on the service's vhost, declared before the events
/// are published.
pub struct EventTap(Tap);

impl EventTap {
    pub async fn bind(app: &TestApp) -> Self {
        Self::bind_url(&app.env["AMQP_URL"]).await
    }

    pub async fn bind_url(amqp_url: &str) -> Self {
        Self(Tap::bind(amqp_url, ["payment.#"]).await.unwrap())
    }

    /// Every event published so far: waits (bounded) until the outbox is empty — the relay
    /// deletes a row only after the broker confirmed it, i.e. routed it to this queue — then
    /// takes everything from the queue, as (routing key, envelope).
    pub async fn drain(&self, pool: &PgPool) -> Vec<(String, Envelope)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM messaging.outbox")
                .fetch_one(pool)
                .await
                .unwrap();
            if pending == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pending} events still in the outbox after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Everything is in the queue by now: no need to wait for more.
        let mut events = Vec::new();
        while let Some(message) = self.0.next(Duration::ZERO).await.unwrap() {
            let key = message.routing_key.to_string();
            events.push((key, Envelope::from_slice(&message.data).unwrap()));
        }
        events
    }

    /// The next event published under `routing_key` for `order_id` (others are skipped),
    /// exactly as the broker delivered it: (routing key, body, content type). `None` after
    /// 15 s.
    pub async fn next_raw(
        &self,
        routing_key: &str,
        order_id: Uuid,
    ) -> Option<(String, Vec<u8>, Option<String>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let delivery = self.0.next(remaining).await.unwrap()?;
            let envelope = Envelope::from_slice(&delivery.data).unwrap();
            if delivery.routing_key.as_str() == routing_key
                && envelope.data["orderId"] == order_id.to_string()
            {
                let content_type = delivery
                    .properties
                    .content_type()
                    .as_ref()
                    .map(ToString::to_string);
                return Some((
                    delivery.routing_key.to_string(),
                    delivery.data,
                    content_type,
                ));
            }
        }
    }
}

/// The data of `events` as JSON, for comparisons.
pub fn data(events: &[(String, Envelope)]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|(key, envelope)| (key.clone(), envelope.data.clone()))
        .collect()
}
