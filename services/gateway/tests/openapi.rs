//! The OpenAPI document served by the gateway and the routes it serves agree, both ways; and
//! the committed document is what the services' code describes now.

use crate::support;

/// The generator of the committed document (`cargo run -p gateway --example openapi`).
#[path = "../examples/openapi.rs"]
#[allow(dead_code)]
mod generator;

#[test]
fn the_served_document_is_what_the_services_describe_now() {
    let generated = generator::document().expect("the services' documents merge");
    let committed: serde_json::Value =
        serde_json::from_str(gateway::openapi::DOCUMENT).expect("openapi.json is JSON");
    assert!(
        generated == committed,
        "services/gateway/openapi.json is out of date with the services' code; regenerate it \
         with `scripts/openapi-check.sh update` (which also refuses a breaking change)"
    );
}

use shop_auth::{Role, testing::TestIssuer};
use support::{Echo, gateway};

#[tokio::test]
async fn every_documented_operation_is_routed_and_every_route_is_documented() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(
        &echo.url,
        &issuer,
        [
            ("RATE_LIMIT_ADDRESS", "1000".to_owned()),
            ("RATE_LIMIT_AUTH", "1000".to_owned()),
        ],
    )
    .await;
    let admin = issuer.user_token(uuid::Uuid::new_v4(), &[Role::Customer, Role::Admin]);

    // The document is not among the operations it lists: its answer is not checked against it.
    let response = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .with_extension(shop_testkit::contract::Unchecked)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    // Documented → routed: each operation reaches the upstream (an admin token opens them all).
    for (method, path) in &operations {
        let concrete = path.replace("{id}", "x1").replace("{sku}", "SKU-1");
        let before = echo.hits();
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .bearer_auth(&admin)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method} {path}");
        assert!(
            echo.hits() > before || response.headers().contains_key("x-cache"),
            "{method} {path} was forwarded"
        );
    }
    // Routed → documented: the route table is exactly what the document lists.
    let mut routed: Vec<(String, String)> = gateway::routes::ROUTES
        .iter()
        .map(|route| (route.method.to_string(), route.path.to_owned()))
        .collect();
    routed.sort();
    operations.sort();
    assert_eq!(operations, routed);
}
