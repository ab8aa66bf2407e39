//! API composition through the gateway, against the real order-service and catalog-service:
//! one catalog call names every product of an order, ownership stays order-service's, and the
//! order is still answered while catalog is down.
//!
//! The world is the lightest honest one: user-service (tokens, order-service's credentials),
//! catalog (its REST API for the gateway, its gRPC for order-service's pricing) and
//! order-service, each against its own store. Inventory and payment are not started: the
//! orders' sagas wait at their first step, which reading an order does not need. Between the
//! gateway and catalog sit a [`Recorder`] (to count the gateway's calls) and a [`TcpProxy`]
//! (to cut catalog off).

use crate::support;

use std::time::Duration;

use catalog_service::CatalogService;
use gateway::Gateway;
use order_service::OrderService;
use serde_json::{Value, json};
use shop_testkit::{TestApp, eventually, proxy::TcpProxy, spawn_with};
use support::Recorder;
use user_service::UserService;

const SECRET: &str = "order-service-test-secret-0123456789abcdef";

async fn token(app: &TestApp, email: &str, password: &str) -> String {
    let body: Value = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login request")
        .json()
        .await
        .expect("login body");
    body["access_token"]
        .as_str()
        .expect("access_token in login body")
        .to_owned()
}

async fn customer(users: &TestApp) -> String {
    let email = format!("c-{}@example.com", uuid::Uuid::new_v4().simple());
    let response = users
        .client
        .post(users.url("/api/v1/auth/register"))
        .json(&json!({ "email": email, "password": "a long enough password", "name": "C" }))
        .send()
        .await
        .expect("register request");
    assert_eq!(response.status(), 201);
    token(users, &email, "a long enough password").await
}

/// Creates a product in catalog directly (not through the recorder); returns its id.
async fn product(catalog: &TestApp, admin: &str, name: &str) -> String {
    let sku = format!("SKU-{}", uuid::Uuid::new_v4().simple());
    let response = catalog
        .client
        .post(catalog.url("/api/v1/products"))
        .bearer_auth(admin)
        .json(&json!({
            "sku": sku, "name": name, "category": "tests",
            "price": { "amount": 1250, "currency": "EUR" },
        }))
        .send()
        .await
        .expect("create product request");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("product body");
    body["id"].as_str().expect("product id").to_owned()
}

/// Places an order through the gateway; returns its id.
async fn place(gateway: &TestApp, token: &str, products: &[&str]) -> String {
    let items: Vec<Value> = products
        .iter()
        .map(|id| json!({ "product_id": id, "quantity": 1 }))
        .collect();
    let response = gateway
        .client
        .post(gateway.url("/api/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "items": items,
            "payment": { "card_number": "4242424242424242", "expiry": "12/30", "cvc": "123" },
            "shipping_address": { "name": "Ada", "line1": "1 Main St", "city": "Berlin",
                                  "postal_code": "10115", "country": "DE" },
        }))
        .send()
        .await
        .expect("place order request");
    let status = response.status();
    let body: Value = response.json().await.expect("order body");
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("order id").to_owned()
}

async fn get_order(gateway: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let response = gateway
        .client
        .get(gateway.url(&format!("/api/v1/orders/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("get order request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `product.name` of each line, in line order (`None` for a line without `product`).
fn composed_names(order: &Value) -> Vec<Option<String>> {
    order["items"]
        .as_array()
        .expect("order items")
        .iter()
        .map(|line| line["product"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn an_order_is_composed_with_one_catalog_call_and_still_answered_while_catalog_is_down() {
    let users = spawn_with::<UserService>([("SERVICE_CLIENTS", format!("order-service={SECRET}"))])
        .await
        .expect("user-service starts");
    let jwks = users.url("/.well-known/jwks.json");
    let catalog = spawn_with::<CatalogService>([("AUTH_JWKS_URL", jwks.clone())])
        .await
        .expect("catalog-service starts");
    let nowhere = "http://127.0.0.1:9".to_owned();
    let orders = spawn_with::<OrderService>([
        ("AUTH_JWKS_URL", jwks.clone()),
        ("SERVICE_TOKEN_URL", users.url("/internal/v1/service-token")),
        ("SERVICE_SECRET", SECRET.to_owned()),
        ("CATALOG_GRPC_URL", catalog.grpc_url()),
        ("INVENTORY_GRPC_URL", nowhere.clone()),
        ("PAYMENT_GRPC_URL", nowhere.clone()),
    ])
    .await
    .expect("order-service starts");
    let recorder = Recorder::start(&catalog.url("")).await;
    let line = TcpProxy::start(recorder.url.trim_start_matches("http://"))
        .await
        .expect("proxy starts");
    let mut env = support::all_upstreams(&nowhere);
    env.retain(|(key, _)| {
        ![
            "USER_SERVICE_URL",
            "CATALOG_SERVICE_URL",
            "ORDER_SERVICE_URL",
        ]
        .contains(&key.as_str())
    });
    env.extend([
        ("USER_SERVICE_URL".to_owned(), users.url("")),
        (
            "CATALOG_SERVICE_URL".to_owned(),
            format!("http://{}", line.addr()),
        ),
        ("ORDER_SERVICE_URL".to_owned(), orders.url("")),
        ("AUTH_JWKS_URL".to_owned(), jwks),
        // Every composition asks catalog (nothing is fresh in the cache), so each call counts
        // and the stale copy is what remains when catalog is cut off.
        ("CACHE_FRESH_SECONDS".to_owned(), "0".to_owned()),
    ]);
    let gateway = spawn_with::<Gateway>(env).await.expect("gateway starts");

    let admin = token(&users, "admin@example.com", "change-me-admin").await;
    let names = ["Espresso beans", "Grinder", "Kettle"];
    let mut ids = Vec::new();
    for name in names {
        ids.push(product(&catalog, &admin, name).await);
    }
    let ada = customer(&users).await;
    // Three lines (order-service keeps one line per product): one catalog call for all.
    let order = place(&gateway, &ada, &[&ids[0], &ids[1], &ids[2]]).await;
    recorder.take();

    let (status, body) = get_order(&gateway, &ada, &order).await;
    assert_eq!(status, 200, "{body}");
    let mut distinct = ids.clone();
    distinct.sort();
    assert_eq!(
        recorder.take(),
        [format!("GET /api/v1/products?ids={}", distinct.join(","))],
        "one catalog call for every line"
    );
    let expected = names.map(|n| Some(n.to_owned()));
    assert_eq!(composed_names(&body), expected);
    let lines = body["items"].as_array().expect("order items");
    assert!(
        lines
            .iter()
            .all(|line| line["product"]["in_stock"].is_boolean())
    );
    assert_eq!(
        lines[0]["sku"].as_str().map(|s| s.starts_with("SKU-")),
        Some(true),
        "order-service's fields are kept"
    );
    assert_eq!(body["status"], "PENDING");

    // Ownership is order-service's: another customer gets its 404, and catalog is not asked.
    let eve = customer(&users).await;
    let (status, _) = get_order(&gateway, &eve, &order).await;
    assert_eq!(status, 404);
    assert!(
        recorder.take().is_empty(),
        "no composition for a refused read"
    );

    // catalog is cut off. The order seen before is named from the cached (stale) answer; an
    // order whose products were never asked for is answered without `product`, its lines
    // still carrying the names order-service recorded. (order-service prices new orders over
    // its own gRPC connection to catalog, which is not cut.)
    let other = place(&gateway, &ada, &[&ids[1]]).await;
    line.cut();
    let (status, body) = get_order(&gateway, &ada, &order).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(composed_names(&body), expected, "names from the cache");
    let (status, body) = get_order(&gateway, &ada, &other).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(composed_names(&body), [None], "degraded, not failed");
    assert_eq!(body["items"][0]["name"], names[1]);

    line.restore();
    eventually(Duration::from_secs(20), || async {
        composed_names(&get_order(&gateway, &ada, &other).await.1) == [Some(names[1].to_owned())]
    })
    .await
    .expect("composition is complete again once catalog is back");
}
