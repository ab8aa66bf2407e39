//! Message (event) round trip: the consumer's handler accepts the example event, the contract
//! is written, and the provider's producer code is verified to publish an event that fits.

use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_contract::{ContractError, Verification, prelude::*};

const ORDER_PLACED: &str = "an order.placed event";

/// The event envelope as the consumer reads it (it ignores fields it does not need).
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    data: OrderPlaced,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced {
    order_id: String,
    total_cents: i64,
}

/// The consumer's real handler: would send an e-mail; here it validates what it relies on.
fn handle(message: &Message) -> Result<String, String> {
    let envelope: Envelope = message.json_body().map_err(|err| err.to_string())?;
    if envelope.kind != "order.placed" || envelope.data.total_cents < 0 {
        return Err(format!("cannot handle {envelope:?}"));
    }
    Ok(format!("Thank you for order {}", envelope.data.order_id))
}

async fn write_contract(dir: &std::path::Path) -> Result<(), ContractError> {
    Contract::new("mailer", "orders")
        .in_dir(dir)
        .message(
            ORDER_PLACED,
            |mut i| {
                i.json_body(json_pattern!({
                    "type": "order.placed",
                    "id": like!("0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a"),
                    "data": { "orderId": like!("o-1"), "totalCents": like!(2598) },
                }));
                i.metadata("contentType", "application/json");
                i.metadata("routingKey", "order.placed");
                i
            },
            |message| async move {
                assert_eq!(message.metadata["routingKey"], "order.placed");
                handle(&message).map(drop)
            },
        )
        .await
}

/// The provider's producer: builds the event from its domain type, as it would publish it.
#[derive(Serialize)]
struct Event<T> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    data: T,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Placed {
    order_id: String,
    total_cents: i64,
    customer_id: String,
}

fn order_placed_event(routing_key: &str) -> Message {
    let event = Event {
        kind: "order.placed",
        id: "0193e1c2-0000-7000-8000-000000000001".into(),
        data: Placed {
            order_id: "o-42".into(),
            total_cents: 1999,
            customer_id: "u-7".into(),
        },
    };
    Message::json(&event).with_metadata("routingKey", routing_key)
}

/// Writes the consumer's contract into a fresh folder, then verifies it against a producer
/// that publishes the event with `routing_key`.
async fn verify_producer_publishing_to(routing_key: &'static str) -> Verification {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path())
        .await
        .expect("the consumer handles the example");
    Provider::new("orders")
        .pacts_in(dir.path())
        .message(ORDER_PLACED, move || async move {
            Ok::<_, String>(order_placed_event(routing_key))
        })
        .run()
        .await
        .expect("verification ran")
}

#[tokio::test]
async fn message_contract_is_verified_against_the_producer() {
    let verification = verify_producer_publishing_to("order.placed").await;
    assert!(verification.passed, "{}", verification.report);
}

#[tokio::test]
async fn a_producer_that_publishes_differently_fails_verification() {
    let verification = verify_producer_publishing_to("orders.placed").await;
    assert!(!verification.passed, "{}", verification.report);
    assert!(
        verification.report.contains("routingKey"),
        "{}",
        verification.report
    );
}

#[tokio::test]
async fn a_message_without_a_producer_fails_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path())
        .await
        .expect("the consumer handles the example");

    let verification = Provider::new("orders")
        .pacts_in(dir.path())
        .message("some other event", || async {
            Ok::<_, String>(Message::json(&json!({})))
        })
        .run()
        .await
        .expect("verification ran");
    assert!(!verification.passed);
    assert!(
        verification
            .report
            .contains("no message producer for 'an order.placed event'"),
        "{}",
        verification.report
    );
}

#[tokio::test]
async fn an_example_the_consumer_cannot_handle_is_not_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = Contract::new("mailer", "orders")
        .in_dir(dir.path())
        .message(
            ORDER_PLACED,
            |mut i| {
                i.json_body(
                    json_pattern!({ "type": "order.placed", "data": { "orderId": "o-1" } }),
                );
                i
            },
            |message| async move { handle(&message).map(drop) },
        )
        .await
        .expect_err("totalCents is missing");
    assert!(matches!(err, ContractError::Handler { .. }), "{err}");
    assert!(!dir.path().join("mailer-orders.json").exists());
}
