//! catalog-service and inventory-service on one broker: what each learns from the other's
//! events. A product created through catalog's admin API gets its stock row in inventory (from
//! `ProductCreated`), and stock set in inventory shows as `in_stock` in catalog (from
//! `StockReplenished`). Each service's own tests cover the redelivery and ordering cases; this
//! proves the two sides are wired to each other.
//!
//! Not a journey: it talks to the two services directly, so it always runs in-process (with
//! `.local/test.env` sourced), also when `E2E_BASE_URL` points the journeys (`tests/journeys/`)
//! at a running stack.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use std::time::Duration;

use serde_json::{Value, json};
use shop_testkit::{TestApp, eventually, isolation, spawn, spawn_with};

async fn admin_token(http: &reqwest::Client, user: &TestApp) -> String {
    let login: Value = http
        .post(user.url("/api/v1/auth/login"))
        .json(&json!({ "email": "admin@example.com", "password": "change-me-admin" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["access_token"].as_str().unwrap().to_owned()
}

async fn consuming(app: &TestApp, queue: &str) {
    let http = reqwest::Client::new();
    let probe = format!("consumer:{queue}");
    eventually(Duration::from_secs(20), || async {
        let Ok(response) = http.get(app.url("/readyz")).send().await else {
            return false;
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["checks"][&probe] == "up"
    })
    .await
    .unwrap_or_else(|err| panic!("{queue} is not consumed: {err}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_created_in_catalog_gets_stock_in_inventory_and_stock_shows_in_catalog() {
    let user = spawn::<user_service::UserService>().await.unwrap();
    // One vhost for both: the events must cross from one service to the other.
    let broker = isolation::rabbitmq_vhost().await.unwrap();
    let env = || {
        [
            ("AUTH_JWKS_URL", user.url("/.well-known/jwks.json")),
            ("AMQP_URL", broker.clone()),
        ]
    };
    let catalog = spawn_with::<catalog_service::CatalogService>(env())
        .await
        .unwrap();
    let inventory = spawn_with::<inventory_service::InventoryService>(env())
        .await
        .unwrap();
    // Queues exist once their consumers attached; events published before would match none.
    consuming(&inventory, "inventory.events").await;
    consuming(&catalog, "catalog.events").await;

    let http = reqwest::Client::new();
    let admin = admin_token(&http, &user).await;
    let created = http
        .post(catalog.url("/api/v1/products"))
        .bearer_auth(&admin)
        .json(&json!({
            "sku": "E2E-LAMP-1",
            "name": "Desk lamp",
            "description": "A lamp for a desk.",
            "category": "lighting",
            "price": { "amount": 2999, "currency": "EUR" },
            "attributes": { "colour": "black" },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let product: Value = created.json().await.unwrap();
    assert_eq!(product["in_stock"], false);
    let id = product["id"].as_str().unwrap().to_owned();

    let stock_url = inventory.url("/api/v1/inventory/E2E-LAMP-1");
    eventually(Duration::from_secs(20), || async {
        http.get(&stock_url)
            .bearer_auth(&admin)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await
    .expect("ProductCreated gave the product a stock row");
    let stock: Value = http
        .get(&stock_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stock["available"].as_i64(), stock["reserved"].as_i64()),
        (Some(0), Some(0))
    );

    let set = http
        .put(&stock_url)
        .bearer_auth(&admin)
        .json(&json!({ "available": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let product_url = catalog.url(&format!("/api/v1/products/{id}"));
    eventually(Duration::from_secs(20), || async {
        let Ok(response) = http.get(&product_url).send().await else {
            return false;
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["in_stock"] == true
    })
    .await
    .expect("StockReplenished made the product in stock in catalog");
}
