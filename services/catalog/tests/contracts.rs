//! Contracts (`make contracts SERVICE=catalog-service`):
//!
//! * as a **consumer** of inventory's stock events, the real `in_stock` handler runs on each
//!   example and the pact `contracts/catalog-service-inventory-service.json` is written;
//! * as a **provider**, every contract naming catalog-service is verified: gRPC calls against
//!   the service's real gRPC listener (with order-service's token), events with messages taken from the broker after the real
//!   service wrote them through its outbox, and the gateway's HTTP requests against the real
//!   HTTP listener (with an administrator's token, which the admin writes need and the public
//!   reads ignore).
//!
//! Provider state `products exist`: `ids` (each stored with sku `sku`, or its id in capitals),
//! optional `name`, `category`, `price`, `currency`.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::time::Duration;

use catalog_service::{product, stock::StockLevels, store::Store};
use mongodb::bson::doc;
use serde_json::{Value, json};
use shop_contract::{Message, pact_consumer::builders::MessageInteractionBuilder, prelude::*};
use shop_events::inventory::{
    OutOfStock, StockLow, StockReleased, StockReplenished, StockReserved,
};
use shop_messaging::testing::Tap;
use shop_messaging::{Envelope, Event, Received, consumer::mongo::Handle, envelope::CONTENT_TYPE};
use shop_runtime::stores::mongo::Server;
use support::{Issuer, admin, catalog};

const SKU: &str = "SKU-1";

async fn store() -> Store {
    let (url, name) = shop_testkit::isolation::mongo_database().await.unwrap();
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database(&name);
    let server = Server::detect(&db).await.unwrap();
    let store = Store::new(&db, server);
    store.ensure_indexes().await.unwrap();
    let content = product::new_product(&json!({
        "sku": SKU, "name": "Coffee", "category": "coffee",
        "price": {"amount": 1999, "currency": "EUR"},
    }))
    .unwrap();
    store.create(&content, None).await.unwrap();
    store
}

/// An inventory event as catalog relies on it: the envelope, its type, and the stock levels.
fn stock_event(
    kind: &str,
    data: JsonPattern,
) -> impl FnOnce(MessageInteractionBuilder) -> MessageInteractionBuilder {
    let routing_key = format!("inventory.{kind}");
    EventEnvelope {
        source: "inventory-service",
        kind,
        version: 1,
        routing_key: &routing_key,
        content_type: CONTENT_TYPE,
    }
    .declare(data)
}

fn level(available: i64, version: i64) -> JsonPattern {
    json_pattern!({
        "sku": like!(SKU),
        "available": like!(available),
        "reserved": like!(1),
        "version": like!(version),
    })
}

/// Runs the service's real handler on the example and checks the read model moved to it.
async fn handled<E: Event>(
    store: &Store,
    message: &Message,
    expect_in_stock: bool,
) -> Result<(), String>
where
    StockLevels: Handle<E>,
{
    let envelope = Envelope::from_slice(&message.body).map_err(|e| e.to_string())?;
    if !E::matches(&envelope) {
        return Err(format!("not a {} v{}", E::kind(), E::VERSION));
    }
    let payload: E = envelope.data_as().map_err(|e| e.to_string())?;
    let handler = StockLevels {
        store: store.clone(),
    };
    handler
        .handle(Received { payload, envelope })
        .await
        .map_err(|e| e.to_string())?;
    let product = store
        .get_by_sku(SKU)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no product")?;
    if product.in_stock == expect_in_stock {
        Ok(())
    } else {
        Err(format!("in_stock is {} after the event", product.in_stock))
    }
}

#[tokio::test]
async fn catalog_keeps_in_stock_from_inventorys_stock_events() {
    let store = &store().await;
    let pact = Contract::new("catalog-service", "inventory-service");
    // Each example carries a newer version than the one before, as inventory's would.
    pact.message(
        "an inventory.stock.replenished event",
        stock_event(
            "stock.replenished",
            json_pattern!({ "level": level(10, 1) }),
        ),
        |m| async move { handled::<StockReplenished>(store, &m, true).await },
    )
    .await
    .unwrap();
    pact.message(
        "an inventory.stock.reserved event",
        stock_event("stock.reserved", json_pattern!({ "orderId": like!("0193e1c2-0000-7000-8000-000000000001"), "levels": each_like!(level(0, 2)) })),
        |m| async move { handled::<StockReserved>(store, &m, false).await },
    )
    .await
    .unwrap();
    pact.message(
        "an inventory.stock.released event",
        stock_event("stock.released", json_pattern!({ "orderId": like!("0193e1c2-0000-7000-8000-000000000001"), "reason": like!("cancelled"), "levels": each_like!(level(4, 3)) })),
        |m| async move { handled::<StockReleased>(store, &m, true).await },
    )
    .await
    .unwrap();
    pact.message(
        "an inventory.stock.low event",
        stock_event(
            "stock.low",
            json_pattern!({ "level": level(2, 4), "threshold": like!(5) }),
        ),
        |m| async move { handled::<StockLow>(store, &m, true).await },
    )
    .await
    .unwrap();
    pact.message(
        "an inventory.stock.out_of_stock event",
        stock_event(
            "stock.out_of_stock",
            json_pattern!({ "level": level(0, 5) }),
        ),
        |m| async move { handled::<OutOfStock>(store, &m, false).await },
    )
    .await
    .unwrap();
}

/// The message the running service publishes under `routing_key` for the product with `sku`
/// after `write` ran: body, content type and routing key as they travel on the broker.
///
/// Events of other products on the same routing key are skipped: an earlier interaction's
/// product (or the service's own seed) may still be on its way through the outbox, and taking
/// it would verify the wrong example — a product created by the API, say, against the
/// interaction that expects the seed's `initialStock`.
async fn published(
    amqp_url: &str,
    routing_key: &str,
    sku: &str,
    write: impl AsyncFnOnce(),
) -> Result<Message, String> {
    let tap = Tap::bind(amqp_url, [routing_key])
        .await
        .map_err(|e| e.to_string())?;
    write().await;
    // Catalog keeps skus in capitals, whatever case they were written in.
    let of_this_product = |envelope: &Envelope| {
        envelope.data["sku"]
            .as_str()
            .is_some_and(|published| published.eq_ignore_ascii_case(sku))
    };
    let delivery = tap
        .next_where(Duration::from_secs(10), of_this_product)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("nothing published on {routing_key} for sku {sku}"))?;
    Ok(as_message(delivery))
}

/// The delivery as the contract kit compares it.
fn as_message(delivery: lapin::message::Delivery) -> Message {
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(ToString::to_string);
    Message::published(
        delivery.data,
        delivery.routing_key.as_str(),
        content_type.as_deref(),
    )
}

/// A message interaction of a contract naming catalog-service: its description, the routing
/// key it is published under, and whether it is the seed's flavour (with `initialStock`).
struct Expected {
    description: String,
    routing_key: String,
    seeded: bool,
}

/// Every message interaction in the contracts naming catalog-service, so whatever a consumer
/// calls an event, the producer for its routing key answers.
fn message_interactions() -> Vec<Expected> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(shop_contract::contracts_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with("-catalog-service.json") {
            continue;
        }
        let pact: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for interaction in pact["interactions"].as_array().into_iter().flatten() {
            if interaction["type"] != "Asynchronous/Messages" {
                continue;
            }
            let content = &interaction["contents"]["content"];
            // The routing key from the metadata, or else from the event type it carries.
            let routing_key = interaction["metadata"]["routingKey"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!("catalog.{}", content["type"].as_str().unwrap_or_default())
                });
            found.push(Expected {
                description: interaction["description"].as_str().unwrap().to_owned(),
                routing_key,
                seeded: content["data"].get("initialStock").is_some(),
            });
        }
    }
    found
}

#[tokio::test]
async fn catalog_honours_the_contracts_of_its_consumers() {
    // Events: the real service, its admin API, its outbox and relay.
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let token = admin(&issuer);

    // gRPC: the service's real listener, access table included, called as order-service
    // calls it (who may call what is tested in tests/grpc.rs).
    let db = support::database(&app).await;
    let order_token = issuer.service_token("order-service");

    let states_db = db.clone();
    let mut provider = Provider::new("catalog-service")
        // Every consumer with a contract here; a missing file fails the verification.
        .consumers(["gateway", "inventory-service", "order-service"])
        .grpc(app.grpc_addr)
        .grpc_metadata("authorization", format!("Bearer {order_token}"))
        .http(app.http_addr)
        .http_header("Authorization", format!("Bearer {token}"))
        .state(move |state| {
            let products = states_db.collection::<mongodb::bson::Document>("products");
            async move {
                match state.name.as_str() {
                    "products exist" => {
                        // Optional parameters may be absent (indexing a missing key panics).
                        let p = |key: &str| state.params.get(key).cloned().unwrap_or(Value::Null);
                        for id in p("ids").as_array().into_iter().flatten() {
                            let id = id.as_str().unwrap_or_default();
                            let sku = p("sku").as_str().map_or_else(|| id.to_uppercase(), str::to_owned);
                            let document = doc! {
                                "_id": id,
                                "sku": sku,
                                "name": p("name").as_str().unwrap_or("Coffee"), "description": "",
                                "category": p("category").as_str().unwrap_or("coffee"),
                                "price": { "amount": p("price").as_i64().unwrap_or(1999), "currency": p("currency").as_str().unwrap_or("EUR") },
                                "attributes": {}, "in_stock": true, "version": 1_i64, "search_terms": ["coffee"],
                            };
                            products.replace_one(doc! { "_id": id }, document).upsert(true).await.map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    }
                    other => Err(format!("unknown provider state '{other}'")),
                }
            }
        });
    for expected in message_interactions() {
        let (url, amqp, token, db) = (
            app.url(""),
            app.env["AMQP_URL"].clone(),
            token.clone(),
            db.clone(),
        );
        let Expected {
            description,
            routing_key,
            seeded,
        } = expected;
        provider = provider.message(description, move || {
            let (url, amqp, token, db, routing_key) = (
                url.clone(),
                amqp.clone(),
                token.clone(),
                db.clone(),
                routing_key.clone(),
            );
            async move {
                let body = support::product("Contract Coffee", "coffee", 1999);
                let sku = body["sku"].as_str().unwrap().to_owned();
                published(&amqp, &routing_key, &sku, async || {
                    if seeded {
                        // What the demo seed does for each of its products.
                        let content = product::new_product(&body).unwrap();
                        Store::new(&db, Server::detect(&db).await.unwrap())
                            .create(&content, Some(12))
                            .await
                            .unwrap();
                        return;
                    }
                    let client = shop_testkit::http_client(Duration::from_secs(30));
                    let product: Value = client
                        .post(format!("{url}/api/v1/products"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let id = product["id"].as_str().unwrap();
                    // An update and a price change too, for consumers of those events.
                    client
                        .patch(format!("{url}/api/v1/products/{id}"))
                        .bearer_auth(&token)
                        .json(&json!({"price": {"amount": 1799, "currency": "EUR"}}))
                        .send()
                        .await
                        .unwrap();
                })
                .await
            }
        });
    }
    provider.verify().await;
}
