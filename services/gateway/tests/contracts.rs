//! The gateway as a **consumer** of every service's REST API (`make contracts SERVICE=gateway`).
//!
//! Each test starts the real gateway with the Pact mock server of one service as that
//! service's upstream, calls the *public* route as a client would, and checks what the client
//! gets back; the mock server checks that the gateway sent exactly the declared requests, and
//! only then is `contracts/gateway-<service>.json` written. Each service's own
//! `tests/contracts.rs` replays it against the real service, with the provider states named
//! here.
//!
//! The contracts pin what the gateway publishes (the shapes of BRIEF §3) and what it relies on
//! itself: the token it forwards, the `ETag` and `Location` it passes on, the fields its
//! composition reads. Credentials are not part of a contract: requests say
//! `Authorization: Bearer <token>` as a pattern, and each provider test supplies a token its
//! service accepts (`Provider::http_header`), for the customer or administrator its provider
//! states create data for ("the signed-in customer").

mod support;

use gateway::{cache::ResponseCache, events::Invalidate};
use serde_json::{Value, json};
use shop_auth::{Role, testing::TestIssuer};
use shop_contract::{
    Message, MockServer, pact_consumer::builders::MessageInteractionBuilder, prelude::*,
};
use shop_events::catalog::{PriceChanged, ProductCreated, ProductUpdated};
use shop_messaging::{
    Envelope, Event, Received, consumer::stateless::Handle, envelope::CONTENT_TYPE,
};
use shop_testkit::TestApp;
use uuid::Uuid;

const CONSUMER: &str = "gateway";

/// The order the composition contract reads, and the two products on it.
const ORDER_ID: &str = "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c70";
const TEA: &str = "gw-tea-1";
const MATCHA: &str = "gw-tea-2";

fn bearer() -> StringPattern {
    term!("^Bearer .+$", "Bearer an-access-token").into()
}

fn money(amount: i64) -> JsonPattern {
    json_pattern!({ "amount": like!(amount), "currency": like!("EUR") })
}

fn timestamp() -> JsonPattern {
    like!("2026-01-01T12:00:00Z").into()
}

fn product(id: &str, sku: &str, name: &str) -> JsonPattern {
    json_pattern!({
        "id": id,
        "sku": sku,
        "name": like!(name),
        "description": like!("Green tea"),
        "category": "tea",
        "price": money(1250),
        "attributes": like!({}),
        "in_stock": like!(true),
    })
}

/// A gateway with `upstreams` (variable, mock server) and every other upstream nowhere, so a
/// request the test did not mean to send fails loudly.
async fn gateway(issuer: &TestIssuer, upstreams: &[(&str, &MockServer)]) -> TestApp {
    let mut env = support::all_upstreams("http://127.0.0.1:9");
    for (key, server) in upstreams {
        env.retain(|(k, _)| k != key);
        env.push(((*key).to_owned(), server.base_url()));
    }
    env.push(("AUTH_JWKS_URL".into(), issuer.jwks_url().to_owned()));
    let app = shop_testkit::spawn_with::<gateway::Gateway>(env)
        .await
        .expect("the gateway starts");
    // Pact's mock servers answer what each consumer test asks for, partial by design.
    support::answers_from_partial_stand_ins(&app);
    app
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET path` through the gateway with `token`: (status, body).
async fn get_json(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    json(
        app.client
            .get(app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("the gateway answers"),
    )
    .await
}

#[tokio::test]
async fn user_service_registers_signs_in_refreshes_and_shows_the_account() {
    let issuer = TestIssuer::start().await;
    let tokens = || {
        json_pattern!({
            "access_token": like!("eyJhbGciOiJFZERTQSJ9.e30.c2ln"),
            "refresh_token": like!("a-refresh-token"),
            "token_type": "Bearer",
            "expires_in": like!(900),
        })
    };
    let server = Contract::new(CONSUMER, "user-service").mock_server(|pact| {
        pact.interaction("a registration", "", |mut i| {
            i.request
                .post()
                .path("/api/v1/auth/register")
                .header("Content-Type", "application/json")
                .json_body(json_pattern!({
                    "email": "grace@example.com",
                    "password": "correct horse battery",
                    "name": "Grace Hopper",
                }));
            i.response.created().json_body(json_pattern!({
                "id": like!("0192f0c8-0000-7000-8000-000000000002"),
                "email": "grace@example.com",
                "name": "Grace Hopper",
                "roles": each_like!("customer"),
            }));
            i
        });
        pact.interaction("a sign-in", "", |mut i| {
            i.given_with_params(
                "a user exists with a password",
                &json!({ "email": "ada@example.com", "password": "correct horse battery" }),
            );
            i.request
                .post()
                .path("/api/v1/auth/login")
                .header("Content-Type", "application/json")
                .json_body(json_pattern!({
                    "email": "ada@example.com",
                    "password": "correct horse battery",
                }));
            i.response.ok().json_body(tokens());
            i
        });
        pact.interaction("a token refresh", "", |mut i| {
            i.given_with_params(
                "a refresh token was issued",
                &json!({ "refresh_token": "contract-refresh-token-0001" }),
            );
            i.request
                .post()
                .path("/api/v1/auth/refresh")
                .header("Content-Type", "application/json")
                .json_body(json_pattern!({ "refresh_token": "contract-refresh-token-0001" }));
            i.response.ok().json_body(tokens());
            i
        });
        pact.interaction("the signed-in customer's account", "", |mut i| {
            i.given("a customer is signed in");
            i.request
                .get()
                .path("/api/v1/users/me")
                .header("Authorization", bearer());
            i.response.ok().json_body(json_pattern!({
                "id": like!("0192f0c8-0000-7000-8000-000000000001"),
                "email": like!("ada@example.com"),
                "name": like!("Ada Lovelace"),
                "roles": each_like!("customer"),
            }));
            i
        });
    });
    let app = gateway(&issuer, &[("USER_SERVICE_URL", &server)]).await;
    let post = |path: &str, body: Value| app.client.post(app.url(path)).json(&body).send();

    let (status, user) = json(
        post(
            "/api/v1/auth/register",
            json!({ "email": "grace@example.com", "password": "correct horse battery", "name": "Grace Hopper" }),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, &user["email"]), (201, &json!("grace@example.com")));

    let response = post(
        "/api/v1/auth/login",
        json!({ "email": "ada@example.com", "password": "correct horse battery" }),
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, pair) = json(response).await;
    assert_eq!((status, &pair["token_type"]), (200, &json!("Bearer")));

    let response = post(
        "/api/v1/auth/refresh",
        json!({ "refresh_token": "contract-refresh-token-0001" }),
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.status(), 200);

    let customer = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);
    let (status, me) = get_json(&app, "/api/v1/users/me", &customer).await;
    assert_eq!(status, 200);
    assert!(me["roles"].is_array(), "{me}");
    drop(server);
}

#[tokio::test]
async fn catalog_service_lists_shows_and_creates_products() {
    let issuer = TestIssuer::start().await;
    let tea = || json!({ "ids": [TEA], "category": "tea", "name": "Sencha" });
    let server = Contract::new(CONSUMER, "catalog-service").mock_server(|pact| {
        pact.interaction("a page of a category", "", |mut i| {
            i.given_with_params("products exist", &tea());
            i.request
                .get()
                .path("/api/v1/products")
                .query_param("category", "tea")
                .query_param("limit", "10");
            i.response.ok().json_body(json_pattern!({
                "items": each_like!(product(TEA, "GW-TEA-1", "Sencha")),
                "next_cursor": null,
            }));
            i
        });
        pact.interaction("a product", "", |mut i| {
            i.given_with_params("products exist", &tea());
            i.request.get().path(format!("/api/v1/products/{TEA}"));
            i.response
                .ok()
                .header("ETag", term!("^\".+\"$", "\"1-in\""))
                .json_body(product(TEA, "GW-TEA-1", "Sencha"));
            i
        });
        pact.interaction("a product created by an administrator", "", |mut i| {
            i.request
                .post()
                .path("/api/v1/products")
                .header("Authorization", bearer())
                .header("Content-Type", "application/json")
                .json_body(json_pattern!({
                    "sku": "GW-TEA-9",
                    "name": "Genmaicha",
                    "description": "Roasted rice tea",
                    "category": "tea",
                    "price": { "amount": 899, "currency": "EUR" },
                    "attributes": { "origin": "Japan" },
                }));
            i.response
                .created()
                .header(
                    "Location",
                    term!("^/api/v1/products/.+$", "/api/v1/products/gw-tea-9"),
                )
                .header("ETag", term!("^\".+\"$", "\"1-out\""))
                .json_body(json_pattern!({
                    "id": like!("gw-tea-9"),
                    "sku": "GW-TEA-9",
                    "name": "Genmaicha",
                    "category": "tea",
                    "price": { "amount": 899, "currency": "EUR" },
                    "attributes": { "origin": "Japan" },
                    "in_stock": like!(false),
                }));
            i
        });
    });
    let app = gateway(&issuer, &[("CATALOG_SERVICE_URL", &server)]).await;

    // Reads, the second of each from the gateway's cache (the mock server would refuse a
    // second request it was not told about).
    for path in [
        "/api/v1/products?category=tea&limit=10",
        "/api/v1/products/gw-tea-1",
    ] {
        let response = app.get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(!response.headers().contains_key("x-cache"));
        let again = app.get(path).await.unwrap();
        assert_eq!(again.headers()["x-cache"], "HIT", "{path}");
    }
    let response = app.get("/api/v1/products/gw-tea-1").await.unwrap();
    assert!(response.headers().contains_key("etag"), "the ETag is kept");

    let admin = issuer.user_token(Uuid::new_v4(), &[Role::Customer, Role::Admin]);
    let response = app
        .client
        .post(app.url("/api/v1/products"))
        .bearer_auth(&admin)
        .json(&json!({
            "sku": "GW-TEA-9", "name": "Genmaicha", "description": "Roasted rice tea",
            "category": "tea", "price": { "amount": 899, "currency": "EUR" },
            "attributes": { "origin": "Japan" },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(response.headers().contains_key("location"));
    drop(server);
}

#[tokio::test]
async fn inventory_service_shows_and_sets_stock_for_administrators() {
    let issuer = TestIssuer::start().await;
    let server = Contract::new(CONSUMER, "inventory-service").mock_server(|pact| {
        pact.interaction("the stock of a sku", "", |mut i| {
            i.given_with_params(
                "stock exists",
                &json!({ "sku": "GW-SKU-1", "available": 5 }),
            );
            i.request
                .get()
                .path("/api/v1/inventory/GW-SKU-1")
                .header("Authorization", bearer());
            i.response.ok().json_body(json_pattern!({
                "sku": "GW-SKU-1",
                "available": like!(5),
                "reserved": like!(0),
            }));
            i
        });
        pact.interaction("a stock level set by an administrator", "", |mut i| {
            i.given_with_params(
                "stock exists",
                &json!({ "sku": "GW-SKU-2", "available": 1 }),
            );
            i.request
                .put()
                .path("/api/v1/inventory/GW-SKU-2")
                .header("Authorization", bearer())
                .header("Content-Type", "application/json")
                .json_body(json_pattern!({ "available": 7 }));
            i.response.ok().json_body(json_pattern!({
                "sku": "GW-SKU-2",
                "available": 7,
                "reserved": like!(0),
            }));
            i
        });
    });
    let app = gateway(&issuer, &[("INVENTORY_SERVICE_URL", &server)]).await;
    let admin = issuer.user_token(Uuid::new_v4(), &[Role::Customer, Role::Admin]);

    let (status, stock) = get_json(&app, "/api/v1/inventory/GW-SKU-1", &admin).await;
    assert_eq!((status, &stock["sku"]), (200, &json!("GW-SKU-1")));
    let (status, stock) = json(
        app.client
            .put(app.url("/api/v1/inventory/GW-SKU-2"))
            .bearer_auth(&admin)
            .json(&json!({ "available": 7 }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &stock["available"]), (200, &json!(7)));
    drop(server);
}

#[tokio::test]
async fn order_service_places_and_lists_the_customers_orders() {
    let issuer = TestIssuer::start().await;
    let body = json!({
        "items": [{ "product_id": TEA, "quantity": 2 }],
        "payment": { "card_number": "4242424242424242", "expiry": "12/30", "cvc": "123" },
        "shipping_address": { "name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin",
                              "postal_code": "10115", "country": "DE" },
    });
    let server = Contract::new(CONSUMER, "order-service").mock_server(|pact| {
        pact.interaction("an order placed by a customer", "", |mut i| {
            i.given_with_params("products exist", &json!({ "ids": [TEA], "price": 1250 }));
            i.request
                .post()
                .path("/api/v1/orders")
                .header("Authorization", bearer())
                .header("Idempotency-Key", term!("^.{1,255}$", "0192f0c8-key-0001"))
                .header("Content-Type", "application/json")
                .json_body(body.clone());
            i.response
                .status(202)
                .header(
                    "Location",
                    term!(
                        "^/api/v1/orders/[0-9a-f-]{36}$",
                        "/api/v1/orders/0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c71"
                    ),
                )
                .json_body(json_pattern!({
                    "id": like!("0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c71"),
                    "status": "PENDING",
                    "items": [{
                        "product_id": TEA,
                        "quantity": 2,
                        "unit_price": money(1250),
                        "line_total": money(2500),
                    }],
                    "total": money(2500),
                    "created_at": timestamp(),
                }));
            i
        });
        pact.interaction("the signed-in customer's orders", "", |mut i| {
            i.given_with_params(
                "an order exists",
                &json!({ "id": ORDER_ID, "productIds": [TEA, MATCHA] }),
            );
            i.request
                .get()
                .path("/api/v1/orders")
                .query_param("limit", "10")
                .header("Authorization", bearer());
            i.response.ok().json_body(json_pattern!({
                "items": each_like!({
                    "id": like!(ORDER_ID),
                    "status": like!("CONFIRMED"),
                    "total": money(2500),
                    "created_at": timestamp(),
                }),
            }));
            i
        });
    });
    let app = gateway(&issuer, &[("ORDER_SERVICE_URL", &server)]).await;
    let customer = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);

    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&customer)
        .header("idempotency-key", "0192f0c8-key-0001")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("location"));
    let (status, order) = json(response).await;
    assert_eq!((status, &order["status"]), (202, &json!("PENDING")));

    let (status, page) = get_json(&app, "/api/v1/orders?limit=10", &customer).await;
    assert_eq!(status, 200);
    assert!(page["items"].is_array(), "{page}");
    drop(server);
}

/// The composed `GET /api/v1/orders/{id}`: the order from order-service, and one batched read
/// of its products from catalog. Both contracts come from the one request the client makes.
#[tokio::test]
async fn an_order_and_its_products_in_one_catalog_call() {
    let issuer = TestIssuer::start().await;
    let line = |product: &str, quantity: i64| {
        json_pattern!({
            "product_id": product,
            "sku": like!("GW-TEA-1"),
            "name": like!("Sencha"),
            "quantity": like!(quantity),
            "unit_price": money(1250),
            "line_total": money(1250 * quantity),
        })
    };
    let orders = Contract::new(CONSUMER, "order-service").mock_server(|pact| {
        pact.interaction("an order of the signed-in customer", "", |mut i| {
            i.given_with_params(
                "an order exists",
                &json!({ "id": ORDER_ID, "productIds": [TEA, MATCHA] }),
            );
            i.request
                .get()
                .path(format!("/api/v1/orders/{ORDER_ID}"))
                .header("Authorization", bearer());
            i.response.ok().json_body(json_pattern!({
                "id": ORDER_ID,
                "status": like!("CONFIRMED"),
                "items": [line(TEA, 1), line(MATCHA, 1)],
                "total": money(2500),
                "created_at": timestamp(),
                "updated_at": timestamp(),
            }));
            i
        });
    });
    let catalog = Contract::new(CONSUMER, "catalog-service").mock_server(|pact| {
        pact.interaction("the products of an order, in one call", "", |mut i| {
            i.given_with_params(
                "products exist",
                &json!({ "ids": [TEA, MATCHA], "category": "tea", "name": "Sencha" }),
            );
            i.request
                .get()
                .path("/api/v1/products")
                .query_param("ids", format!("{TEA},{MATCHA}"));
            i.response.ok().json_body(json_pattern!({
                "items": [
                    { "id": TEA, "name": like!("Sencha"), "in_stock": like!(true) },
                    { "id": MATCHA, "name": like!("Sencha"), "in_stock": like!(true) },
                ],
            }));
            i
        });
    });
    let app = gateway(
        &issuer,
        &[
            ("ORDER_SERVICE_URL", &orders),
            ("CATALOG_SERVICE_URL", &catalog),
        ],
    )
    .await;
    let customer = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);
    let (status, order) = get_json(&app, &format!("/api/v1/orders/{ORDER_ID}"), &customer).await;
    assert_eq!(status, 200, "{order}");
    for line in order["items"].as_array().unwrap() {
        assert_eq!(line["product"]["name"], "Sencha", "{order}");
        assert_eq!(line["product"]["in_stock"], true, "{order}");
    }
    drop(orders);
    drop(catalog);
}

#[tokio::test]
async fn payment_service_lists_the_customers_payments() {
    let issuer = TestIssuer::start().await;
    let server = Contract::new(CONSUMER, "payment-service").mock_server(|pact| {
        pact.interaction(
            "the signed-in customer's payments for an order",
            "",
            |mut i| {
                i.given_with_params(
                    "an authorized payment for order",
                    &json!({ "orderId": ORDER_ID, "amount": 2500 }),
                );
                i.request
                    .get()
                    .path("/api/v1/payments")
                    .query_param("order_id", ORDER_ID)
                    .header("Authorization", bearer());
                i.response.ok().json_body(json_pattern!({
                    "items": each_like!({
                        "id": like!("0192f0c8-0000-7000-8000-0000000000aa"),
                        "order_id": ORDER_ID,
                        "state": like!("authorized"),
                        "amount": money(2500),
                        "card": { "brand": like!("visa"), "last4": like!("4242") },
                        "created_at": timestamp(),
                    }),
                }));
                i
            },
        );
    });
    let app = gateway(&issuer, &[("PAYMENT_SERVICE_URL", &server)]).await;
    let customer = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);
    let (status, page) = get_json(
        &app,
        &format!("/api/v1/payments?order_id={ORDER_ID}"),
        &customer,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["card"]["last4"], "4242", "{page}");
    drop(server);
}

#[tokio::test]
async fn notification_service_lists_the_customers_notifications() {
    let issuer = TestIssuer::start().await;
    let server = Contract::new(CONSUMER, "notification-service").mock_server(|pact| {
        pact.interaction("the signed-in customer's notifications", "", |mut i| {
            i.given("a notification was sent to the signed-in customer");
            i.request
                .get()
                .path("/api/v1/notifications")
                .header("Authorization", bearer());
            i.response.ok().json_body(json_pattern!({
                "items": each_like!({
                    "id": like!("0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a"),
                    "channel": "email",
                    "template": like!("welcome"),
                    "subject": like!("Welcome to the shop"),
                    "status": like!("sent"),
                    "created_at": timestamp(),
                }),
            }));
            i
        });
    });
    let app = gateway(&issuer, &[("NOTIFICATION_SERVICE_URL", &server)]).await;
    let customer = issuer.user_token(Uuid::new_v4(), &[Role::Customer]);
    let (status, page) = get_json(&app, "/api/v1/notifications", &customer).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["channel"], "email", "{page}");
    drop(server);
}

/// Catalog's change events as the gateway's cache invalidation consumes them: the envelope,
/// the routing key it is bound by, and in `data` only what the consumer needs besides the
/// fields the shared event type requires.
fn catalog_event(
    kind: &'static str,
    routing_key: &'static str,
    data: JsonPattern,
) -> impl FnOnce(MessageInteractionBuilder) -> MessageInteractionBuilder {
    EventEnvelope {
        source: "catalog-service",
        kind,
        version: 1,
        routing_key,
        content_type: CONTENT_TYPE,
    }
    .declare(data)
}

/// Runs the gateway's real invalidation handler on `message` against a real Redis that holds a
/// cached product and a cached listing, and checks that both are gone afterwards: what the
/// gateway relies on the event for.
async fn invalidates<E>(message: Message) -> Result<(), String>
where
    E: Event,
    Invalidate: Handle<E>,
{
    let (url, prefix) = shop_testkit::isolation::redis_prefix()
        .await
        .map_err(|e| e.to_string())?;
    let config = shop_runtime::stores::redis::RedisConfig {
        url: url.parse().map_err(|_| "redis url")?,
        key_prefix: prefix,
    };
    let redis = shop_runtime::stores::redis::connect(
        &config,
        &shop_runtime::health::Readiness::default(),
        true,
    )
    .map_err(|e| e.to_string())?;
    let cache = ResponseCache::new(redis, std::time::Duration::from_secs(300));

    let envelope = Envelope::from_slice(&message.body).map_err(|e| e.to_string())?;
    if !E::matches(&envelope) {
        return Err(format!("not a {} v{}", E::kind(), E::VERSION));
    }
    let payload: E = envelope.data_as().map_err(|e| e.to_string())?;
    let product_id = envelope.data["productId"]
        .as_str()
        .ok_or("no productId")?
        .to_owned();

    let (parts, ()) = http::Response::builder()
        .header("content-type", "application/json")
        .body(())
        .map_err(|e| e.to_string())?
        .into_parts();
    let cached = [
        format!("/api/v1/products/{product_id}"),
        "/api/v1/products?category=coffee".to_owned(),
    ];
    for path in &cached {
        let lookup = cache.fresh(path).await;
        cache
            .store(
                path,
                lookup.generation,
                &parts,
                &bytes::Bytes::from_static(b"{}"),
            )
            .await;
        if cache.fresh(path).await.hit.is_none() {
            return Err(format!("{path} was not cached to begin with"));
        }
    }

    Invalidate {
        cache: cache.clone(),
    }
    .handle(Received { payload, envelope })
    .await
    .map_err(|e| e.to_string())?;
    for path in &cached {
        if cache.fresh(path).await.hit.is_some() {
            return Err(format!("{path} is still cached after the event"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_cache_forgets_what_catalogs_change_events_name() {
    let contract = Contract::new(CONSUMER, "catalog-service");
    let product = || {
        json_pattern!({
            "productId": like!("p-1"),
            "sku": like!("SKU-1"),
            "name": like!("Coffee"),
            "category": like!("coffee"),
            "price": { "amount": like!(1999), "currency": like!("EUR") },
            "version": like!(1),
        })
    };
    contract
        .message(
            "a catalog.product.created event",
            catalog_event("product.created", ProductCreated::ROUTING_KEY, product()),
            invalidates::<ProductCreated>,
        )
        .await
        .unwrap();
    contract
        .message(
            "a catalog.product.updated event",
            catalog_event("product.updated", ProductUpdated::ROUTING_KEY, product()),
            invalidates::<ProductUpdated>,
        )
        .await
        .unwrap();
    contract
        .message(
            "a catalog.product.price_changed event",
            catalog_event(
                "product.price_changed",
                PriceChanged::ROUTING_KEY,
                json_pattern!({
                    "productId": like!("p-1"),
                    "sku": like!("SKU-1"),
                    "oldPrice": { "amount": like!(1999), "currency": like!("EUR") },
                    "newPrice": { "amount": like!(1799), "currency": like!("EUR") },
                    "version": like!(2),
                }),
            ),
            invalidates::<PriceChanged>,
        )
        .await
        .unwrap();
}
