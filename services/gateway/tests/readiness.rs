//! Readiness follows the gateway's dependencies; liveness does not.

use std::time::Duration;

use gateway::Gateway;
use shop_testkit::{eventually, infra, proxy::TcpProxy, spawn_with};

#[tokio::test]
async fn readyz_is_503_while_redis_is_unreachable_and_healthz_stays_200() {
    let redis = url::Url::parse(&infra::redis_url().await.unwrap()).unwrap();
    let upstream = format!(
        "{}:{}",
        redis.host_str().unwrap(),
        redis.port().unwrap_or(6379)
    );
    let proxy = TcpProxy::start(&upstream).await.unwrap();
    let app = spawn_with::<Gateway>([("REDIS_URL", format!("redis://{}", proxy.addr()))])
        .await
        .unwrap();
    app.wait_ready(Duration::from_secs(15)).await.unwrap();
    // The broker is reported but not required for readiness: wait until it is up too, so the
    // only thing down below is what this test cuts.
    eventually(Duration::from_secs(15), || async {
        let readyz: serde_json::Value = app.get("/readyz").await.unwrap().json().await.unwrap();
        readyz["checks"]["amqp"] == "up"
    })
    .await
    .unwrap();

    proxy.cut();
    let response = app.get("/readyz").await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["checks"]["redis"], "down");
    assert_eq!(problem["checks"]["amqp"], "up");
    assert!(problem["detail"].as_str().unwrap().contains("redis"));
    assert_eq!(app.get("/healthz").await.unwrap().status(), 200);

    proxy.restore();
    app.wait_ready(Duration::from_secs(15))
        .await
        .expect("ready again once Redis is back");
}
