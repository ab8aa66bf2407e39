//! The saga's world for tests: user-service (tokens), catalog, inventory and payment started
//! in-process against their own real stores, plus helpers to seed products and stock, place
//! orders and wait (bounded) for them to end.

#![allow(dead_code)] // each test binary uses part of it

use std::time::Duration;

use catalog_service::CatalogService;
use inventory_service::InventoryService;
use order_service::OrderService;
use payment_service::PaymentService;
use serde_json::{Value, json};
use shop_testkit::{TestApp, spawn_with};
use user_service::UserService;

pub const SECRET: &str = "order-service-test-secret-0123456789abcdef";
pub const APPROVES: &str = "4242424242424242";
pub const DECLINES: &str = "4000000000000002";
pub const INSUFFICIENT: &str = "4000000000009995";
pub const SLOW: &str = "4000000000000259";
/// The provider never answers and does nothing (see payment-service's README).
pub const PROVIDER_TIMES_OUT: &str = "4000000000000119";
/// The provider approves, then the answer is lost on the way back.
pub const ANSWER_LOST: &str = "4000000000000127";
/// Approved, but the provider refuses the capture (the authorization expired).
pub const CAPTURE_REFUSED: &str = "4000000000000069";

/// How long any wait in these tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(45);

#[derive(Debug)]
pub struct World {
    pub user: TestApp,
    pub catalog: TestApp,
    pub inventory: TestApp,
    pub payment: TestApp,
    pub admin: String,
    /// Checks each answer against its service's OpenAPI document ([`shop_testkit::contract`]).
    pub http: shop_testkit::contract::Client,
}

/// What the participants need to verify tokens.
fn auth(user: &TestApp) -> Vec<(String, String)> {
    vec![("AUTH_JWKS_URL".into(), user.url("/.well-known/jwks.json"))]
}

impl World {
    /// Starts the participants; `payment_env` tunes payment-service (slow card delay).
    pub async fn start(payment_env: &[(&str, &str)]) -> Self {
        let user = spawn_with::<UserService>([(
            "SERVICE_CLIENTS".to_owned(),
            format!("order-service={SECRET}"),
        )])
        .await
        .expect("user-service starts");
        let catalog = spawn_with::<CatalogService>(auth(&user))
            .await
            .expect("catalog-service starts");
        let inventory = spawn_with::<InventoryService>(auth(&user))
            .await
            .expect("inventory-service starts");
        let mut env = auth(&user);
        env.extend(
            payment_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let payment = spawn_with::<PaymentService>(env)
            .await
            .expect("payment-service starts");
        let http = shop_testkit::http_client(Duration::from_secs(20));
        let admin = login(&http, &user, "admin@example.com", "change-me-admin").await;
        Self {
            user,
            catalog,
            inventory,
            payment,
            admin,
            http,
        }
    }

    /// order-service's variables for this world: fast deadlines, short leases, quick sweeps.
    pub fn order_env(&self) -> Vec<(String, String)> {
        self.order_env_with(&self.inventory.grpc_url(), &self.payment.grpc_url())
    }

    pub fn order_env_with(&self, inventory: &str, payment: &str) -> Vec<(String, String)> {
        [
            ("AUTH_JWKS_URL", self.user.url("/.well-known/jwks.json")),
            (
                "SERVICE_TOKEN_URL",
                self.user.url("/internal/v1/service-token"),
            ),
            ("SERVICE_SECRET", SECRET.to_owned()),
            ("CATALOG_GRPC_URL", self.catalog.grpc_url()),
            ("INVENTORY_GRPC_URL", inventory.to_owned()),
            ("PAYMENT_GRPC_URL", payment.to_owned()),
            ("ORDER_CALL_TIMEOUT_MS", "1000".to_owned()),
            ("ORDER_SAGA_TIMEOUT_SECONDS", "6".to_owned()),
            ("ORDER_SAGA_LEASE_MS", "4000".to_owned()),
            ("ORDER_SWEEP_INTERVAL_MS", "200".to_owned()),
            ("ORDER_RETRY_MAX_MS", "1000".to_owned()),
            ("ORDER_LATE_AUTHORIZATION_SECONDS", "8".to_owned()),
            ("ORDER_BREAKER_FAILURES", "3".to_owned()),
            ("ORDER_BREAKER_COOLDOWN_MS", "500".to_owned()),
            ("ORDER_PARK_AFTER_ATTEMPTS", "30".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub async fn order_service(&self) -> TestApp {
        spawn_with::<OrderService>(self.order_env())
            .await
            .expect("order-service starts")
    }

    /// A new customer's access token.
    pub async fn customer(&self) -> String {
        let email = format!("c-{}@example.com", uuid_like());
        let response = self
            .http
            .post(self.user.url("/api/v1/auth/register"))
            .json(&json!({ "email": email, "password": "a long enough password", "name": "C" }))
            .send()
            .await
            .expect("register");
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
        login(&self.http, &self.user, &email, "a long enough password").await
    }

    /// Creates a product priced `amount` EUR cents with `stock` units; returns (id, sku).
    pub async fn product(&self, amount: i64, stock: i64) -> (String, String) {
        let sku = format!("SKU-{}", uuid_like().to_uppercase());
        let response = self
            .http
            .post(self.catalog.url("/api/v1/products"))
            .bearer_auth(&self.admin)
            .json(&json!({
                "sku": sku, "name": format!("Product {sku}"), "description": "for the saga tests",
                "category": "tests", "price": { "amount": amount, "currency": "EUR" },
                "attributes": {},
            }))
            .send()
            .await
            .expect("create product");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "{body}");
        self.set_stock(&sku, stock).await;
        (body["id"].as_str().expect("an id").to_owned(), sku)
    }

    pub async fn set_stock(&self, sku: &str, available: i64) {
        let response = self
            .http
            .put(self.inventory.url(&format!("/api/v1/inventory/{sku}")))
            .bearer_auth(&self.admin)
            .json(&json!({ "available": available }))
            .send()
            .await
            .expect("set stock");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }

    /// (available, reserved) of a sku.
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let body: Value = self
            .http
            .get(self.inventory.url(&format!("/api/v1/inventory/{sku}")))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("get stock")
            .json()
            .await
            .expect("json");
        (
            body["available"].as_i64().expect("available"),
            body["reserved"].as_i64().expect("reserved"),
        )
    }

    /// The customer's payments for an order, as payment-service shows them. Fails the test
    /// unless payment-service answered 200 with a list: an error must never read as "no
    /// payments" (that made checks over the result vacuous).
    pub async fn payments(&self, token: &str, order_id: &str) -> Vec<Value> {
        let response = self
            .http
            .get(
                self.payment
                    .url(&format!("/api/v1/payments?order_id={order_id}")),
            )
            .bearer_auth(token)
            .send()
            .await
            .expect("payments");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            status, 200,
            "GET /api/v1/payments answered {status}: {body}"
        );
        body["items"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no items in {body}"))
    }

    /// The one payment of an order (fails unless there is exactly one).
    pub async fn payment(&self, token: &str, order_id: &str) -> Value {
        let mut payments = self.payments(token, order_id).await;
        assert_eq!(
            payments.len(),
            1,
            "one payment for {order_id}: {payments:?}"
        );
        payments.remove(0)
    }
}

pub async fn login(
    http: &shop_testkit::contract::Client,
    user: &TestApp,
    email: &str,
    password: &str,
) -> String {
    let body: Value = http
        .post(user.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {body}"))
        .to_owned()
}

pub fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

pub fn order_body(items: &[(&str, u32)], card: &str) -> Value {
    json!({
        "items": items.iter().map(|(id, q)| json!({ "product_id": id, "quantity": q })).collect::<Vec<_>>(),
        "payment": { "card_number": card, "expiry": "12/30", "cvc": "123" },
        "shipping_address": { "name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin",
                              "postal_code": "10115", "country": "DE" },
    })
}

/// `POST /api/v1/orders`: (status, body).
pub async fn place(
    http: &shop_testkit::contract::Client,
    base: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let response = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("place");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls the order until it is no longer PENDING (bounded by [`PATIENCE`]).
pub async fn settled(
    http: &shop_testkit::contract::Client,
    base: &str,
    token: &str,
    id: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(response) = http
            .get(format!("{base}/api/v1/orders/{id}"))
            .bearer_auth(token)
            .send()
            .await
            && response.status() == 200
        {
            let order: Value = response.json().await.expect("json");
            if order["status"] != "PENDING" {
                return order;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {id} still PENDING after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The order as its customer reads it.
pub async fn order_of(
    http: &shop_testkit::contract::Client,
    base: &str,
    token: &str,
    order_id: &str,
) -> Value {
    http.get(format!("{base}/api/v1/orders/{order_id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET the order")
        .json()
        .await
        .expect("json")
}

/// Polls `check` until it returns `Some` (bounded by [`PATIENCE`]).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
