//! The identity routes through the gateway, against the real user-service: the gateway's own
//! token checks use user-service's published keys, fetched once and cached.

use crate::support;

use gateway::Gateway;
use serde_json::json;
use shop_testkit::{spawn, spawn_with};
use user_service::UserService;

#[tokio::test]
async fn register_login_and_me_work_through_the_gateway_and_token_answers_are_not_stored() {
    let users = spawn::<UserService>().await.unwrap();
    let mut env = support::all_upstreams(&format!("http://{}", users.http_addr));
    env.push(("AUTH_JWKS_URL".into(), users.url("/.well-known/jwks.json")));
    let app = spawn_with::<Gateway>(env).await.unwrap();
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());

    let response = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": email, "password": "correct horse battery", "name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);

    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers().contains_key("ratelimit-policy"));
    let tokens: serde_json::Value = response.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();

    let response = app
        .client
        .get(app.url("/api/v1/users/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = response.json().await.unwrap();
    assert_eq!(me["email"], email.as_str());

    let response = app.get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(response.status(), 200);
    let jwks: serde_json::Value = response.json().await.unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());

    let response = app
        .client
        .post(app.url("/internal/v1/service-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "user-service's internal API is not published"
    );
}
