//! user-service as a **provider**: every contract naming it is replayed against the real
//! service — today notification-service's:
//!
//! * the `UserRegistered` event, produced by a real registration through the HTTP API and
//!   taken from the broker as the relay published it;
//! * `GetUser` over gRPC, with provider state `a user exists` (parameter `id`), called on the
//!   service's real gRPC listener with a service token for notification-service, the one
//!   caller its access table allows (who may call is tested in `identity.rs` and
//!   `hardening.rs`; the contract is about the messages);
//!
//! and the gateway's: register, login, refresh and `me` over HTTP, on the service's real HTTP
//! listener. Every HTTP request carries the access token of a customer this test registers and
//! signs in first ("the signed-in customer"); the states `a user exists with a password`
//! (`email`, `password`: registered through the API) and `a refresh token was issued`
//! (`refresh_token`: stored, as the service stores them, for the signed-in customer) set up
//! the rest.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use shop_auth::client::ServiceTokens;
use shop_contract::{Message, Provider, State};
use shop_events::user::UserRegistered;
use shop_messaging::Event;
use shop_messaging::testing::Tap;
use shop_testkit::{TestApp, spawn_with};
use sqlx::PgPool;
use user_service::UserService;
use uuid::Uuid;

const NOTIFICATION_SECRET: &str = "notification-service-secret-0123456789";

/// The message the running service publishes under `routing_key` after `write` ran: body,
/// content type and routing key as they travel on the broker.
async fn published(
    amqp_url: &str,
    routing_key: &str,
    write: impl AsyncFnOnce() -> Result<(), String>,
) -> Result<Message, String> {
    let tap = Tap::bind(amqp_url, [routing_key])
        .await
        .map_err(|e| e.to_string())?;
    write().await?;
    let delivery = tap
        .next(Duration::from_secs(15))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("nothing published on {routing_key} within 15 s"))?;
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(ToString::to_string);
    Ok(Message::published(
        delivery.data,
        delivery.routing_key.as_str(),
        content_type.as_deref(),
    ))
}

/// A registration through the real HTTP API, with an address of its own.
async fn register(app: &TestApp) -> Result<(), String> {
    let email = format!("ada-{}@example.com", Uuid::new_v4().simple());
    let response = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": email, "password": "correct horse battery", "name": "Ada Lovelace"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("registration answered {}", response.status()))
    }
}

/// A string parameter of a provider state.
fn text<'a>(state: &'a State, key: &str) -> Result<&'a str, String> {
    state
        .params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("'{}' needs a `{key}` parameter", state.name))
}

/// Sets up one provider state through the service's API or in its own database; `customer` is
/// the signed-in customer whose token every HTTP request carries.
async fn set_up(app: &TestApp, pool: &PgPool, customer: Uuid, state: &State) -> Result<(), String> {
    match state.name.as_str() {
        "a customer is signed in" => Ok(()),
        "a user exists with a password" => {
            let response = app
                .client
                .post(app.url("/api/v1/auth/register"))
                .json(&json!({
                    "email": text(state, "email")?,
                    "password": text(state, "password")?,
                    "name": "Ada Lovelace",
                }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match response.status().as_u16() {
                201 | 409 => Ok(()),
                other => Err(format!("registration answered {other}")),
            }
        }
        "a refresh token was issued" => {
            // As the service keeps them: only the SHA-256, in a family (one sign-in).
            let token = text(state, "refresh_token")?;
            let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let family = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO refresh_families (id, user_id, expires_at) \
                 VALUES ($1, $2, now() + interval '1 day')",
            )
            .bind(family)
            .bind(customer)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) \
                 VALUES ($1, $2, $3, now() + interval '1 day') ON CONFLICT DO NOTHING",
            )
            .bind(hash.as_ref())
            .bind(family)
            .bind(customer)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        "a user exists" => {
            let id = state
                .params
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or("'a user exists' needs an `id` parameter (a UUID)")?;
            // GetUser reads id, email and name; the account cannot sign in (no password
            // hash matches "!"), which this contract does not need.
            sqlx::query(
                "INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, '!') \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(format!("user-{}@example.com", id.simple()))
            .bind("Ada Lovelace")
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        other => Err(format!("unknown provider state '{other}'")),
    }
}

#[tokio::test]
async fn user_honours_the_contracts_of_its_consumers() {
    let clients = format!("notification-service={NOTIFICATION_SECRET}");
    let app = std::sync::Arc::new(
        spawn_with::<UserService>([("SERVICE_CLIENTS", clients.as_str())])
            .await
            .unwrap(),
    );
    // The token notification-service gets, the way it gets it.
    let token = ServiceTokens::new(
        app.url("/internal/v1/service-token").parse().unwrap(),
        "notification-service",
        NOTIFICATION_SECRET,
    )
    .unwrap()
    .bearer()
    .await
    .unwrap();
    let pool = PgPool::connect(&app.env["DATABASE_URL"]).await.unwrap();
    // The signed-in customer of the gateway's contract, signed in the way customers are.
    let (customer, access) = sign_in(&app).await;

    let (producer, states) = (app.clone(), app.clone());
    let verification = Provider::new("user-service")
        // Every consumer with a contract here; a missing file fails the verification.
        .consumers(["gateway", "notification-service"])
        .http(app.http_addr)
        .http_header("Authorization", format!("Bearer {access}"))
        .grpc(app.grpc_addr)
        .grpc_metadata("authorization", format!("Bearer {token}"))
        .state(move |state| {
            let (app, pool) = (states.clone(), pool.clone());
            async move { set_up(&app, &pool, customer, &state).await }
        })
        .message("a user.registered event", move || {
            let app = producer.clone();
            async move {
                published(
                    &app.env["AMQP_URL"],
                    UserRegistered::ROUTING_KEY,
                    async || register(&app).await,
                )
                .await
            }
        })
        .run()
        .await
        .unwrap();
    assert!(verification.passed, "{}", verification.report);
    // notification-service's contract is in the repository: a verification that found
    // nothing to check must not pass silently.
    for file in [
        "notification-service-user-service.json",
        "gateway-user-service.json",
    ] {
        assert!(
            verification.pacts.iter().any(|pact| pact.ends_with(file)),
            "{file} not verified: {:?}",
            verification.pacts
        );
    }
}

/// Registers and signs in a customer through the API: (user id, access token).
async fn sign_in(app: &TestApp) -> (Uuid, String) {
    let email = format!("customer-{}@example.com", Uuid::new_v4().simple());
    let password = "correct horse battery";
    let created: Value = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": email, "password": password, "name": "Ada Lovelace"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens: Value = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        Uuid::parse_str(created["id"].as_str().unwrap()).unwrap(),
        tokens["access_token"].as_str().unwrap().to_owned(),
    )
}
