//! Readiness follows what the gateway needs to answer; Redis is not one of those.

use crate::support;

use std::time::Duration;

use shop_auth::{Role, testing::TestIssuer};
use shop_testkit::eventually;
use support::{Echo, gateway};

/// Without Redis the gateway still answers: rate limits fall back to a local limiter and the
/// response cache is bypassed (ADR 0013). Taking every replica out of the load balancer for a
/// cache outage would turn it into a full outage, so Redis is reported in `/readyz`, not
/// required.
#[tokio::test]
async fn with_redis_cut_the_gateway_stays_ready_says_redis_is_down_and_still_serves() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let line = support::redis_line().await;
    let app = gateway(
        &echo.url,
        &issuer,
        [("REDIS_URL", format!("redis://{}", line.addr()))],
    )
    .await;
    // Everything up first (the broker is reported too), so the only thing down below is Redis.
    eventually(Duration::from_secs(15), || async {
        let Ok(response) = app.get("/readyz").await else {
            return false;
        };
        let readyz: serde_json::Value = response.json().await.unwrap_or_default();
        readyz["checks"]["amqp"] == "up" && readyz["checks"]["redis"] == "up"
    })
    .await
    .unwrap();
    assert_eq!(app.get("/api/v1/products/p1").await.unwrap().status(), 200);

    line.cut();
    let response = app.get("/readyz").await.unwrap();
    assert_eq!(response.status(), 200, "ready without Redis");
    let readyz: serde_json::Value = response.json().await.unwrap();
    assert_eq!(readyz["checks"]["redis"], "down", "{readyz}");
    assert!(
        readyz["optional"]
            .as_array()
            .unwrap()
            .contains(&"redis".into()),
        "{readyz}"
    );

    // Requests still work: a catalog read (its cache bypassed, so catalog answers it) and a
    // signed-in route (limited locally).
    let hits = echo.hits();
    let response = app.get("/api/v1/products/p1").await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-cache").is_none());
    assert_eq!(echo.hits(), hits + 1, "answered by catalog");
    let token = issuer.user_token(uuid::Uuid::new_v4(), &[Role::Customer]);
    let response = app
        .client
        .get(app.url("/api/v1/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("ratelimit"));
    assert_eq!(app.get("/healthz").await.unwrap().status(), 200);

    line.restore();
    eventually(Duration::from_secs(15), || async {
        let Ok(response) = app.get("/readyz").await else {
            return false;
        };
        let readyz: serde_json::Value = response.json().await.unwrap_or_default();
        readyz["checks"]["redis"] == "up"
    })
    .await
    .expect("reported up again once Redis is back");
}
