//! The HTTP steps the user-service tests share: registering, signing in, refreshing.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part; a failed unwrap is a failed test

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_testkit::TestApp;
use uuid::Uuid;

/// Meets the password policy; every test account uses it.
pub const PASSWORD: &str = "correct horse battery";

pub async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn register(app: &TestApp, email: &str) -> reqwest::Response {
    post(
        app,
        "/api/v1/auth/register",
        json!({"email": email, "password": PASSWORD, "name": "Ann Lee"}),
    )
    .await
}

pub async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    post(
        app,
        "/api/v1/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

/// Registers and signs in a new customer; returns the token pair.
pub async fn signed_in(app: &TestApp) -> Value {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(register(app, &email).await.status(), StatusCode::CREATED);
    let response = login(app, &email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

pub async fn refresh(app: &TestApp, refresh_token: &Value) -> reqwest::Response {
    post(
        app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": refresh_token}),
    )
    .await
}
