//! catalog's `ProductCreated`, consumed from the real broker: every product gets its stock row
//! exactly once, however often the event is delivered.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use crate::support;

use std::time::Duration;

use lapin::{BasicProperties, options::BasicPublishOptions};
use serde_json::Value;
use shop_events::{Money, catalog::ProductCreated, inventory::StockReplenished};
use shop_messaging::{Envelope, Event, envelope::CONTENT_TYPE, topology};
use support::{Stack, eventually, next_event};

fn product(sku: &str, initial_stock: Option<i64>) -> ProductCreated {
    ProductCreated {
        product_id: format!("p-{sku}"),
        sku: sku.to_owned(),
        name: "Desk lamp".into(),
        category: "lighting".into(),
        price: Money {
            amount: 2499,
            currency: "EUR".into(),
        },
        version: 1,
        initial_stock,
    }
}

async fn publish(channel: &lapin::Channel, event: &Envelope) {
    channel
        .basic_publish(
            topology::EXCHANGE.into(),
            ProductCreated::ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(event).unwrap(),
            BasicProperties::default()
                .with_content_type(CONTENT_TYPE.into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_product_gets_one_stock_row_even_when_its_event_is_redelivered() {
    let stack = Stack::start(&[]).await;
    // The consumer declares its queue once attached; events published before would be lost.
    eventually(
        Duration::from_secs(15),
        "the consumer is attached",
        || async {
            let ready: Value = stack
                .inventory
                .get("/readyz")
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (ready["checks"]["consumer:inventory.events"] == "up").then_some(())
        },
    )
    .await;
    let (_connection, channel) = stack.amqp().await;
    let replenished = stack.tap(&[StockReplenished::ROUTING_KEY]).await;

    // The same event twice (the broker redelivering it, or catalog's relay publishing it again
    // after a lost confirm), then another product's without initial stock.
    let lamp = product("lamp-1", Some(12)).envelope().unwrap();
    publish(&channel, &lamp).await;
    publish(&channel, &lamp).await;
    publish(&channel, &product("shade-1", None).envelope().unwrap()).await;

    // The consumer handles up to four messages at once, so the two products' events may come
    // out in either order, and the copy of the first may still be in flight after both:
    // compare them by sku, and wait until the consumer has settled that copy as a duplicate
    // (counted once acknowledged) before looking at what it left behind.
    let (_, first) = next_event(&replenished).await;
    let (_, second) = next_event(&replenished).await;
    let mut levels =
        [first, second].map(|event| event.data_as::<StockReplenished>().unwrap().level);
    levels.sort_by(|a, b| a.sku.cmp(&b.sku));
    let [lamp_level, shade_level] = levels;
    assert_eq!(
        (
            lamp_level.sku.as_str(),
            lamp_level.available,
            lamp_level.version
        ),
        ("lamp-1", 12, 1)
    );
    assert_eq!(
        (
            shade_level.sku.as_str(),
            shade_level.available,
            shade_level.version
        ),
        ("shade-1", 0, 1)
    );
    eventually(
        Duration::from_secs(15),
        "the redelivered event is settled as a duplicate",
        || async {
            let metrics = stack
                .inventory
                .get("/metrics")
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|line| {
                    line.starts_with("messaging_consumed_total{")
                        && line.contains(r#"queue="inventory.events""#)
                        && line.contains(r#"outcome="duplicate""#)
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(stack.stock("lamp-1").await, (12, 0));
    assert_eq!(stack.stock("shade-1").await, (0, 0));

    let db = stack.database().await;
    let (rows, version): (i64, i64) =
        sqlx::query_as("SELECT count(*), max(version) FROM stock WHERE sku = 'lamp-1'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((rows, version), (1, 1), "one row, never touched again");
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messaging.inbox WHERE consumer = 'inventory' AND event_id = $1",
    )
    .bind(lamp.id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(claimed, 1);
    // No second StockReplenished for the redelivered event.
    let extra = replenished.next(Duration::from_millis(300)).await.unwrap();
    assert!(extra.is_none(), "the duplicate published an event");
}
