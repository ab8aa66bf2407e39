//! What the catalog's tests share: the service started against a test token issuer (its JWKS
//! served over HTTP, so tokens are verified exactly as in production), and small HTTP helpers.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part; a failed unwrap is a failed test

use std::time::Duration;

use catalog_service::CatalogService;
use serde_json::{Value, json};
use shop_testkit::{BoxError, TestApp, spawn_with};
use uuid::Uuid;

use shop_auth::Role;
pub use shop_auth::testing::TestIssuer as Issuer;

pub fn admin(issuer: &Issuer) -> String {
    issuer.user_token(Uuid::new_v4(), &[Role::Customer, Role::Admin])
}

pub fn customer(issuer: &Issuer) -> String {
    issuer.user_token(Uuid::new_v4(), &[Role::Customer])
}

/// The catalog, verifying tokens of `issuer`. Its relay's fallback poll is set to a minute,
/// longer than any test waits for an event: every event a test sees was published because the
/// write that stored it woke the relay (`outbox::mongo::written`), at each of the catalog's
/// three producing writes (create, update, a stock level that flips `in_stock`).
pub async fn catalog(issuer: &Issuer, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("AUTH_JWKS_URL", issuer.jwks_url()),
        ("OUTBOX_POLL_INTERVAL_MS", "60000"),
    ];
    env.extend_from_slice(extra);
    spawn_with::<CatalogService>(env).await.unwrap()
}

/// A valid product body with a fresh sku.
pub fn product(name: &str, category: &str, amount: i64) -> Value {
    json!({
        "sku": format!("T-{}", Uuid::new_v4().simple()),
        "name": name,
        "description": format!("A {name} for tests"),
        "category": category,
        "price": {"amount": amount, "currency": "EUR"},
        "attributes": {"color": "red", "weight_g": 250},
    })
}

pub async fn create(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/products"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Creates a product as `token` and returns its body.
pub async fn created(app: &TestApp, token: &str, body: &Value) -> Value {
    let response = create(app, token, body).await;
    assert_eq!(response.status(), 201, "{body}");
    response.json().await.unwrap()
}

pub async fn patch(
    app: &TestApp,
    token: &str,
    id: &str,
    if_match: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = app
        .client
        .patch(app.url(&format!("/api/v1/products/{id}")))
        .bearer_auth(token)
        .json(body);
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    request.send().await.unwrap()
}

pub async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// A problem document without its per-request trace id.
pub async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let mut body: Value = response.json().await.unwrap();
    body.as_object_mut().unwrap().remove("trace_id");
    (status, body)
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("condition not met within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The catalog's database, as the service under test uses it.
pub async fn database(app: &TestApp) -> mongodb::Database {
    mongodb::Client::with_uri_str(&app.env["MONGODB_URL"])
        .await
        .unwrap()
        .database(&app.env["MONGODB_DATABASE"])
}
