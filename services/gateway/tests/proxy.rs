//! Forwarding: what reaches the upstream, what comes back, and what never passes.

mod support;

use std::time::Duration;

use shop_auth::{Role, testing::TestIssuer};
use shop_testkit::contract::Unchecked;
use shop_testkit::{proxy::TcpProxy, spawn_with};
use support::{Echo, gateway};
use uuid::Uuid;

#[tokio::test]
async fn forwards_request_id_and_the_callers_trace_but_not_hop_by_hop_headers() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, []).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .client
        .get(app.url("/api/v1/products?q=lamp&limit=2"))
        .header("x-request-id", "req-123")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    assert_eq!(
        response.headers()["etag"],
        "\"v1\"",
        "end-to-end headers come back"
    );
    assert!(
        !response.headers().contains_key("connection"),
        "the upstream's hop-by-hop headers stay behind"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["uri"], "/api/v1/products?q=lamp&limit=2");
    assert_eq!(seen["headers"]["x-request-id"], "req-123");
    let traceparent = seen["headers"]["traceparent"].as_str().unwrap();
    assert!(
        traceparent.contains(trace_id),
        "the upstream continues the caller's trace: {traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "with the gateway's span as parent"
    );
    assert!(seen["headers"].get("x-hop").is_none(), "{seen}");
    assert_ne!(
        seen["headers"]["x-forwarded-for"], "6.6.6.6",
        "a client cannot name its own address"
    );
}

#[tokio::test]
async fn only_published_routes_are_reachable() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, []).await;

    for path in [
        "/internal/v1/service-token",
        "/api/v1/internal/anything",
        "/api/v1/products/../../internal/v1/service-token",
        "/api/v1/products/%2e%2e",
    ] {
        // unpublished on purpose: no document lists them
        let response = app
            .client
            .post(app.url(path))
            .with_extension(Unchecked)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let response = app
        .client
        .delete(app.url("/api/v1/products/p1"))
        .with_extension(Unchecked)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(echo.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn routes_need_the_right_token_and_forward_it() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, []).await;
    let customer = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);
    let admin = issuer.user_token(Uuid::new_v4(), &[Role::Customer, Role::Admin]);

    let response = app.get("/api/v1/orders").await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = app
        .client
        .get(app.url("/api/v1/orders"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .client
        .put(app.url("/api/v1/inventory/SKU-1"))
        .bearer_auth(&customer)
        .json(&serde_json::json!({"available": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = app
        .client
        .post(app.url("/api/v1/products"))
        .bearer_auth(&customer)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(echo.hits(), 0, "refused requests cost no upstream call");

    let response = app
        .client
        .get(app.url("/api/v1/orders"))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        seen["headers"]["authorization"],
        format!("Bearer {customer}"),
        "services verify it again"
    );

    let response = app
        .client
        .put(app.url("/api/v1/inventory/SKU-1"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"available": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app.get("/api/v1/products/p1").await.unwrap();
    assert_eq!(response.status(), 200, "product reads are public");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, [("MAX_BODY_BYTES", "1024".to_owned())]).await;

    let response = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "credential answers are never cached"
    );
    assert_eq!(echo.hits(), 1);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_a_slow_one_a_504_without_internals() {
    let echo = Echo::start_with(Duration::from_secs(5)).await;
    let issuer = TestIssuer::start().await;
    // A port nothing listens on: bind one, then drop it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut env = support::all_upstreams(&echo.url);
    env.retain(|(key, _)| key != "USER_SERVICE_URL");
    env.push(("USER_SERVICE_URL".into(), format!("http://{closed}")));
    env.push(("AUTH_JWKS_URL".into(), issuer.jwks_url().to_owned()));
    env.push(("UPSTREAM_TIMEOUT_MS".into(), "300".into()));
    let app = spawn_with::<gateway::Gateway>(env).await.unwrap();

    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(&closed.port().to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );

    let token = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);
    let response = app
        .client
        .get(app.url("/api/v1/notifications"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn idempotent_requests_are_retried_once_and_others_never() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let line = TcpProxy::start(echo.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let app = gateway(&format!("http://{}", line.addr()), &issuer, []).await;
    let token = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);

    line.cut();
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let response = app
        .client
        .get(app.url("/api/v1/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let failures = metric(
        &app,
        "gateway_upstream_attempts_total{upstream=\"order\",outcome=\"unreachable\"}",
    )
    .await;
    assert_eq!(failures, 3.0, "one attempt for the POST, two for the GET");
}

async fn metric(app: &shop_testkit::TestApp, series: &str) -> f64 {
    let response = app.get("/metrics").await.expect("metrics answer");
    let text = response.text().await.expect("a text body");
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Answers to signed-in requests are personal data: `no-store` unless the service chose a
/// `Cache-Control` itself; public catalog reads stay cacheable.
#[tokio::test]
async fn answers_to_signed_in_requests_are_no_store_unless_the_service_says_otherwise() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, []).await;
    let token = issuer.user_token(Uuid::new_v4(), &[Role::Customer, Role::Admin]);

    let signed_in: Vec<&gateway::routes::Route> = gateway::routes::ROUTES
        .iter()
        .filter(|route| route.access != gateway::routes::Access::Public)
        .collect();
    assert!(
        signed_in.len() >= 8,
        "users/me, orders, payments, notifications, admin"
    );
    for route in signed_in {
        let path = route.path.replace("{id}", "o1").replace("{sku}", "SKU-1");
        let request = || {
            app.client
                .request(route.method.clone(), app.url(&path))
                .bearer_auth(&token)
                .json(&serde_json::json!({}))
        };
        let response = request().send().await.unwrap();
        assert_eq!(response.status(), 200, "{} {path}", route.method);
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{} {path}",
            route.method
        );
        let response = request()
            .header("x-echo-cache-control", "private, max-age=10")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["cache-control"],
            "private, max-age=10",
            "{} {path}: the service's own directive is kept",
            route.method
        );
    }
    let product = app.get("/api/v1/products/p1").await.unwrap();
    assert!(product.headers().get("cache-control").is_none());
}
