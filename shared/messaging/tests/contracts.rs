//! A message contract (Pact V4) between a consumer's handler and the code that produces the
//! event: the consumer's test records what its handler relies on, and the producer's test
//! proves that the message its real code publishes fits.

mod support;

use serde::Deserialize;
use shop_contract::{Message, prelude::*};
use shop_messaging::{Envelope, envelope::CONTENT_TYPE, publisher::Outgoing};
use shop_testkit::BoxError;
use support::ROUTING_KEY;

const DESCRIPTION: &str = "a thing.happened event";

/// The consumer's view of the payload: only what it uses.
#[derive(Debug, Deserialize)]
struct ThingHappened {
    n: i64,
}

/// The consumer's handling code (what its `Handler` runs on the envelope).
fn handle(message: &Message) -> Result<i64, String> {
    let envelope = Envelope::from_slice(&message.body).map_err(|err| err.to_string())?;
    if envelope.kind != "thing.happened" || envelope.dataversion != 1 {
        return Err(format!(
            "cannot handle {} v{}",
            envelope.kind, envelope.dataversion
        ));
    }
    let thing: ThingHappened = envelope.data_as().map_err(|err| err.to_string())?;
    Ok(thing.n)
}

/// The producer's code that builds the event, and the message the relay makes of it.
fn produce() -> Message {
    produce_as("thing.happened")
}

fn produce_as(kind: &str) -> Message {
    let event = Envelope::new(
        "test-producer",
        kind,
        &serde_json::json!({ "n": 7, "extra": "consumers ignore this" }),
    )
    .expect("a JSON value");
    let outgoing = Outgoing::event(ROUTING_KEY, &event, &opentelemetry::Context::new());
    let mut message = Message::json(&serde_json::Value::Null);
    message.body = outgoing.body.into();
    message.content_type = outgoing
        .properties
        .content_type()
        .as_ref()
        .map(ToString::to_string);
    message
        .with_metadata("routingKey", outgoing.routing_key)
        .with_metadata("contentType", CONTENT_TYPE)
}

#[tokio::test]
async fn the_producer_publishes_what_the_consumers_handler_accepts() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    Contract::new("test-consumer", "test-producer")
        .in_dir(dir.path())
        .message(
            DESCRIPTION,
            |mut i| {
                let envelope = json_pattern!({
                    "specversion": "1.0",
                    "id": like!("0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a"),
                    "source": like!("test-producer"),
                    "type": "thing.happened",
                    "data": { "n": like!(1) },
                });
                // The matching rules of the pattern, with the envelope's real content type
                // (`json_body` alone would declare plain application/json).
                let example = envelope.to_example().to_string();
                i.json_body(envelope);
                i.body(example, Some(CONTENT_TYPE.into()));
                i.metadata("routingKey", ROUTING_KEY);
                i.metadata("contentType", CONTENT_TYPE);
                i
            },
            |message| async move { handle(&message).map(drop) },
        )
        .await?;

    let verification = Provider::new("test-producer")
        .pacts_in(dir.path())
        .message(DESCRIPTION, || async { Ok::<_, String>(produce()) })
        .run()
        .await?;
    assert!(verification.passed, "{}", verification.report);

    // The contract has teeth: a producer that renames the event breaks it.
    let broken = Provider::new("test-producer")
        .pacts_in(dir.path())
        .message(DESCRIPTION, || async {
            Ok::<_, String>(produce_as("thing.renamed"))
        })
        .run()
        .await?;
    assert!(!broken.passed, "{}", broken.report);
    assert!(broken.report.contains("thing.renamed"), "{}", broken.report);
    Ok(())
}
