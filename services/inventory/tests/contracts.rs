//! inventory-service's contracts.
//!
//! * As a **consumer** of catalog-service's `ProductCreated`: the test runs the real handler on
//!   the example, against a real database, and writes
//!   `contracts/inventory-service-catalog-service.json`.
//! * As a **provider**: every contract naming inventory-service is replayed against the real
//!   service — order-service's gRPC calls (Reserve, Commit, Release, with the provider states
//!   they name, called with order-service's token) and catalog-service's and
//!   notification-service's stock events, each produced by a real stock change and taken from
//!   the broker as the relay published it.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::time::Duration;

use inventory_service::{MIGRATIONS, products::CreateStockRow, stock};
use lapin::options::BasicGetOptions;
use shop_contract::{Message, pact_consumer::builders::MessageInteractionBuilder, prelude::*};
use shop_events::{
    catalog::ProductCreated,
    inventory::{OutOfStock, StockLow, StockReleased, StockReplenished, StockReserved},
};
use shop_messaging::{Envelope, Event, envelope::CONTENT_TYPE};
use sqlx::PgPool;
use support::{Stack, watch};
use uuid::Uuid;

/// Runs the real `ProductCreated` handler on `message` in a transaction on `pool`, and checks
/// the stock row it promised exists.
async fn create_stock_row(pool: &PgPool, message: &Message) -> Result<(), String> {
    let envelope = Envelope::from_slice(&message.body).map_err(|err| err.to_string())?;
    if !ProductCreated::matches(&envelope) {
        return Err(format!(
            "not a {} v{}",
            ProductCreated::kind(),
            ProductCreated::VERSION
        ));
    }
    let product: ProductCreated = envelope.data_as().map_err(|err| err.to_string())?;
    let mut tx = pool.begin().await.map_err(|err| err.to_string())?;
    CreateStockRow {
        low_stock_threshold: 5,
    }
    .apply(&mut tx, &product)
    .await
    .map_err(|err| err.to_string())?;
    tx.commit().await.map_err(|err| err.to_string())?;
    let row = stock::get(pool, &product.sku)
        .await
        .map_err(|err| err.to_string())?
        .ok_or("no stock row")?;
    if row.available == product.initial_stock.unwrap_or(0) {
        Ok(())
    } else {
        Err(format!("the row has {} available", row.available))
    }
}

fn product_created(
    data: JsonPattern,
) -> impl FnOnce(MessageInteractionBuilder) -> MessageInteractionBuilder {
    EventEnvelope {
        source: "catalog-service",
        kind: "product.created",
        version: 1,
        routing_key: ProductCreated::ROUTING_KEY,
        content_type: CONTENT_TYPE,
    }
    .declare(data)
}

#[tokio::test]
async fn inventory_creates_stock_rows_from_catalogs_product_created() {
    let pool = PgPool::connect(&shop_testkit::isolation::postgres_database().await.unwrap())
        .await
        .unwrap();
    MIGRATIONS.run(&pool).await.unwrap();
    shop_messaging::outbox::postgres::install(&pool)
        .await
        .unwrap();

    // What the handler reads: the sku and, from the demo seed, the initial stock. The other
    // fields are required by the shared struct, so they are part of what inventory relies on.
    let contract = Contract::new("inventory-service", "catalog-service");
    let fields = |sku: &str| {
        json_pattern!({
            "productId": like!("p-1"),
            "sku": like!(sku),
            "name": like!("Coffee"),
            "category": like!("coffee"),
            "price": { "amount": like!(1999), "currency": like!("EUR") },
            "version": like!(1),
        })
    };
    let mut seeded = fields("SKU-SEEDED");
    if let JsonPattern::Object(map) = &mut seeded {
        map.insert("initialStock".into(), like!(12).into());
    }
    contract
        .message(
            "a catalog.product.created event with initial stock",
            product_created(seeded),
            |message| {
                let pool = pool.clone();
                async move { create_stock_row(&pool, &message).await }
            },
        )
        .await
        .unwrap();
    contract
        .message(
            "a catalog.product.created event",
            product_created(fields("SKU-ADMIN")),
            |message| async move { create_stock_row(&pool, &message).await },
        )
        .await
        .unwrap();
}

/// Makes a real stock change with `change`, and returns the event it published, as the broker
/// delivered it.
async fn published<F, Fut>(
    amqp_url: String,
    routing_key: &'static str,
    change: F,
) -> Result<Message, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), shop_runtime::ApiError>>,
{
    let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .map_err(|err| err.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|err| err.to_string())?;
    let queue = watch(&channel, &[routing_key]).await;
    change().await.map_err(|err| err.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .map_err(|err| err.to_string())?
        {
            let delivery = message.delivery;
            let mut produced = Message::json(&serde_json::Value::Null);
            produced.body = delivery.data.into();
            produced.content_type = delivery
                .properties
                .content_type()
                .as_ref()
                .map(ToString::to_string);
            return Ok(produced
                .with_metadata("routingKey", delivery.routing_key.to_string())
                .with_metadata("contentType", CONTENT_TYPE));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no {routing_key} event within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sku of its own for each produced event.
fn fresh_sku() -> String {
    format!("SKU-{}", Uuid::new_v4().simple())
}

#[tokio::test]
async fn inventory_honours_the_contracts_of_its_consumers() {
    let stack = Stack::start(&[]).await;
    let pool = stack.database().await;
    // The service's real gRPC listener, access table included, called as order-service
    // calls it (who may call what is the reservation tests' business).
    let token = stack.issuer.service_token("order-service");
    let amqp = stack.inventory.env["AMQP_URL"].clone();
    let ttl = Duration::from_secs(900);

    let states = pool.clone();
    let mut provider = Provider::new("inventory-service")
        // Every consumer with a contract here; a missing file fails the verification.
        .consumers([
            "catalog-service",
            "gateway",
            "notification-service",
            "order-service",
        ])
        .grpc(stack.inventory.grpc_addr)
        .grpc_metadata("authorization", format!("Bearer {token}"))
        // The gateway's HTTP contract: the admin stock API, with an administrator's token.
        .http(stack.inventory.http_addr)
        .http_header("Authorization", format!("Bearer {}", stack.admin_token()))
        .state(move |state| {
            let pool = states.clone();
            async move {
                let text = |key: &str| {
                    state
                        .params
                        .get(key)
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                };
                let number = |key: &str| state.params.get(key).and_then(serde_json::Value::as_i64);
                let sku = text("sku").unwrap_or_else(|| "SKU-1".into());
                match state.name.as_str() {
                    "stock exists" => {
                        stock::set(&pool, &sku, number("available").unwrap_or(10), None, 5).await?;
                    }
                    name @ ("an order has reserved stock" | "an order's reservation expired") => {
                        let quantity = number("quantity").unwrap_or(1);
                        let order_id = text("orderId")
                            .and_then(|id| Uuid::parse_str(&id).ok())
                            .ok_or_else(|| shop_runtime::ApiError::not_found("orderId param"))?;
                        stock::set(&pool, &sku, quantity, None, 5).await?;
                        let line = stock::Line { sku, quantity };
                        // An expired one is reserved with no time to live, then expired as the
                        // expiry job would.
                        let expired = name == "an order's reservation expired";
                        let ttl = if expired { Duration::ZERO } else { ttl };
                        stock::reserve(&pool, order_id, vec![line], ttl).await?;
                        if expired {
                            stock::expire_due(&pool, 100).await?;
                        }
                    }
                    other => {
                        return Err(shop_runtime::ApiError::not_found(format!(
                            "unknown provider state '{other}'"
                        )));
                    }
                }
                Ok(())
            }
        });

    // The stock events, each from the real change that publishes it, under the description
    // each consumer gave it: catalog-service's "an inventory.stock.low event", and
    // notification-service's "a stock.low event" (its CloudEvents type).
    let producer = |key: &'static str, change: fn(PgPool, String) -> Change| {
        let (pool, amqp) = (pool.clone(), amqp.clone());
        move || {
            let (pool, amqp, sku) = (pool.clone(), amqp.clone(), fresh_sku());
            async move { published(amqp, key, move || change(pool, sku)).await }
        }
    };
    provider = provider
        .message(
            "an inventory.stock.replenished event",
            producer(StockReplenished::ROUTING_KEY, |pool, sku| {
                Box::pin(async move { stock::set(&pool, &sku, 10, None, 5).await.map(drop) })
            }),
        )
        .message(
            "an inventory.stock.reserved event",
            producer(StockReserved::ROUTING_KEY, |pool, sku| {
                Box::pin(async move { reserve(&pool, &sku, 10, 2).await.map(drop) })
            }),
        )
        .message(
            "an inventory.stock.released event",
            producer(StockReleased::ROUTING_KEY, |pool, sku| {
                Box::pin(async move {
                    let order_id = reserve(&pool, &sku, 10, 2).await?;
                    stock::release(&pool, order_id, "cancelled").await.map(drop)
                })
            }),
        );
    let low: fn(PgPool, String) -> Change =
        |pool, sku| Box::pin(async move { reserve(&pool, &sku, 10, 7).await.map(drop) });
    let out: fn(PgPool, String) -> Change =
        |pool, sku| Box::pin(async move { reserve(&pool, &sku, 2, 2).await.map(drop) });
    for description in ["an inventory.stock.low event", "a stock.low event"] {
        provider = provider.message(description, producer(StockLow::ROUTING_KEY, low));
    }
    for description in [
        "an inventory.stock.out_of_stock event",
        "a stock.out_of_stock event",
    ] {
        provider = provider.message(description, producer(OutOfStock::ROUTING_KEY, out));
    }
    let verification = provider.run().await.unwrap();
    assert!(verification.passed, "{}", verification.report);
    // The consumers' contracts are in the repository: a verification that did not find one
    // of them must not pass silently.
    for consumer in [
        "order-service",
        "catalog-service",
        "notification-service",
        "gateway",
    ] {
        let file = format!("{consumer}-inventory-service.json");
        assert!(
            verification.pacts.iter().any(|pact| pact.ends_with(&file)),
            "{file} not verified: {:?}",
            verification.pacts
        );
    }
}

type Change =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), shop_runtime::ApiError>> + Send>>;

/// Stocks `sku` with `available` units (threshold 5) and reserves `quantity` for a new order.
async fn reserve(
    pool: &PgPool,
    sku: &str,
    available: i64,
    quantity: i64,
) -> Result<Uuid, shop_runtime::ApiError> {
    stock::set(pool, sku, available, Some(5), 5).await?;
    let order_id = Uuid::new_v4();
    let line = stock::Line {
        sku: sku.to_owned(),
        quantity,
    };
    stock::reserve(pool, order_id, vec![line], Duration::from_secs(900)).await?;
    Ok(order_id)
}
