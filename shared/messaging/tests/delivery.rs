//! End to end over the real PostgreSQL and RabbitMQ, with faults injected: an event committed
//! through the outbox has its effect exactly once, whatever breaks in between.

mod support;

use std::time::{Duration, Instant};

use lapin::{
    Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use shop_messaging::{
    Publisher,
    topology::{ATTEMPTS_HEADER, REASON_HEADER, ROUTING_KEY_HEADER},
    trace::header_str,
};
use shop_testkit::BoxError;
use support::{ROUTING_KEY, Recorder, Stack, event, eventually};

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_event_committed_while_the_broker_is_down_is_delivered_once_it_returns()
-> Result<(), BoxError> {
    let (stack, _recorder) = Stack::consuming().await?;
    stack.relay();
    assert_eq!(stack.readiness_of("consumer:test.events").await, Some("up"));

    stack.proxy.cut();
    let thing = event(json!({ "n": 1 }));
    stack.commit(&thing).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.effects(thing.id).await?, 0);
    assert_eq!(
        stack.outbox_rows().await?,
        1,
        "the event waits in the outbox"
    );
    assert_eq!(
        stack.readiness_of("consumer:test.events").await,
        Some("down"),
        "a detached consumer is reported"
    );

    stack.proxy.restore();
    let restored = Instant::now();
    eventually(PATIENCE, || async {
        stack.effects(thing.id).await.unwrap_or(0) == 1
    })
    .await?;
    let recovery = restored.elapsed();
    assert!(
        recovery < Duration::from_secs(10),
        "took {recovery:?} to resume"
    );
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    assert_eq!(stack.readiness_of("consumer:test.events").await, Some("up"));

    // And once more, now that both sides reconnected by themselves.
    let after = event(json!({ "n": 2 }));
    stack.commit(&after).await?;
    eventually(PATIENCE, || async {
        stack.effects(after.id).await.unwrap_or(0) == 1
    })
    .await?;
    assert_eq!(stack.effects(thing.id).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_relay_that_dies_after_the_confirm_causes_a_duplicate_but_one_effect()
-> Result<(), BoxError> {
    let (stack, recorder) = Stack::consuming().await?;

    let thing = event(json!({ "n": 1 }));
    stack.commit(&thing).await?;
    // What a relay does before it deletes the row: publish, get the confirm. Then it "dies".
    let publisher = Publisher::new(stack.amqp.clone());
    let published = publisher
        .publish_events(&[(ROUTING_KEY.to_owned(), thing.clone())])
        .await;
    assert!(published.iter().all(Result::is_ok), "{published:?}");
    assert_eq!(stack.outbox_rows().await?, 1, "not marked sent");

    stack.relay(); // the next relay instance publishes it again
    eventually(PATIENCE, || async { recorder.deliveries_of(thing.id) == 2 }).await?;
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    assert_eq!(
        stack.effects(thing.id).await?,
        1,
        "the inbox absorbed the duplicate"
    );
    Ok(())
}

#[tokio::test]
async fn a_consumer_that_dies_before_acking_gets_a_redelivery_but_one_effect()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let recorder = Recorder::new(&stack.pool);
    let held = recorder.on_hold();
    stack.consume(recorder.clone()).await?;
    stack.relay();

    let thing = event(json!({ "hold": true }));
    stack.commit(&thing).await?;
    tokio::time::timeout(PATIENCE, held).await??;
    // The effect is committed, the ack not sent: now the consumer's connection dies.
    assert_eq!(stack.effects(thing.id).await?, 1);
    stack.proxy.cut();
    recorder.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.proxy.restore();

    eventually(PATIENCE, || async { recorder.deliveries_of(thing.id) == 2 }).await?;
    let settled = event(json!({ "n": 2 }));
    stack.commit(&settled).await?;
    eventually(PATIENCE, || async {
        stack.effects(settled.id).await.unwrap_or(0) == 1
    })
    .await?;
    assert_eq!(
        stack.effects(thing.id).await?,
        1,
        "redelivered, applied once"
    );
    assert_eq!(recorder.deliveries_of(thing.id), 2);
    Ok(())
}

#[tokio::test]
async fn shutdown_finishes_and_acknowledges_the_current_message() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let recorder = Recorder::new(&stack.pool);
    let held = recorder.on_hold();
    stack.consume(recorder.clone()).await?;
    stack.relay();

    let thing = event(json!({ "hold": true }));
    stack.commit(&thing).await?;
    tokio::time::timeout(PATIENCE, held).await??;
    stack.shutdown.cancel(); // SIGTERM while the handler is busy
    tokio::time::sleep(Duration::from_millis(300)).await;
    recorder.release();
    stack.tasks.close();
    tokio::time::timeout(PATIENCE, stack.tasks.wait()).await?;

    // Acknowledged, not handed back to the queue for a redelivery.
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            support::QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    assert_eq!(queue.message_count(), 0);
    assert_eq!(stack.effects(thing.id).await?, 1);
    assert_eq!(recorder.deliveries_of(thing.id), 1);
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() -> Result<(), BoxError> {
    let (stack, recorder) = Stack::consuming().await?;
    stack.relay();

    let ghost = event(json!({ "n": 0 }));
    let mut tx = stack.pool.begin().await?;
    shop_messaging::postgres::enqueue(&mut tx, ROUTING_KEY, &ghost).await?;
    tx.rollback().await?;

    // The relay publishes in commit order: once a later event arrived, the ghost never will.
    let marker = event(json!({ "n": 1 }));
    stack.commit(&marker).await?;
    eventually(PATIENCE, || async {
        stack.effects(marker.id).await.unwrap_or(0) == 1
    })
    .await?;
    assert_eq!(recorder.ids(), vec![marker.id]);
    assert_eq!(stack.outbox_rows().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_poison_message_is_parked_with_its_reason_and_the_queue_keeps_flowing()
-> Result<(), BoxError> {
    let (stack, recorder) = Stack::consuming().await?;
    stack.relay();

    let poison = event(json!({ "poison": true }));
    let invalid = event(json!({ "invalid": true }));
    stack.commit(&poison).await?;
    stack.commit(&invalid).await?;
    let behind: Vec<_> = (0..3).map(|n| event(json!({ "n": n }))).collect();
    for thing in &behind {
        stack.commit(thing).await?;
    }
    for thing in &behind {
        eventually(PATIENCE, || async {
            stack.effects(thing.id).await.unwrap_or(0) == 1
        })
        .await?;
    }

    // Retried through the two delay queues, then parked: three attempts in all.
    let parked = support::parked(&stack.direct_url, 2, PATIENCE).await?;
    assert_eq!(recorder.deliveries_of(poison.id), 3);
    assert_eq!(
        recorder.deliveries_of(invalid.id),
        1,
        "permanent errors are not retried"
    );

    for delivery in &parked {
        let body = shop_messaging::Envelope::from_slice(&delivery.data)?;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason = header_str(&headers, REASON_HEADER)
            .unwrap_or_default()
            .to_owned();
        let attempts = headers.inner().get(ATTEMPTS_HEADER).cloned();
        assert_eq!(header_str(&headers, ROUTING_KEY_HEADER), Some(ROUTING_KEY));
        if body.id == poison.id {
            assert!(
                reason.contains("gave up after 3 attempts: poisoned"),
                "{reason}"
            );
            assert_eq!(attempts, Some(AMQPValue::LongLongInt(3)));
        } else {
            assert_eq!(body.id, invalid.id);
            assert_eq!(reason, "not a thing we know");
            assert_eq!(attempts, Some(AMQPValue::LongLongInt(1)));
        }
    }
    assert_eq!(stack.effects(poison.id).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_message_that_is_not_an_envelope_is_parked_at_once() -> Result<(), BoxError> {
    let (stack, recorder) = Stack::consuming().await?;

    let publisher = Publisher::new(stack.amqp.clone());
    publisher
        .publish_to_queue(
            support::QUEUE,
            b"{not json",
            lapin::BasicProperties::default(),
        )
        .await?;

    let parked = support::parked(&stack.direct_url, 1, PATIENCE).await?;
    let headers = parked[0].properties.headers().clone().unwrap_or_default();
    let reason = header_str(&headers, REASON_HEADER).map(str::to_owned);
    assert!(
        reason
            .unwrap_or_default()
            .starts_with("not an event envelope")
    );
    assert!(recorder.ids().is_empty(), "the handler never saw it");
    Ok(())
}

#[tokio::test]
async fn producer_and_consumer_spans_share_one_trace_id() -> Result<(), BoxError> {
    let _ = shop_runtime::telemetry::init(&shop_runtime::telemetry::TelemetryConfig {
        service_name: "messaging-test".into(),
        log_format: shop_runtime::telemetry::LogFormat::Pretty,
        log_filter: "warn".into(),
        otlp_endpoint: None,
    })
    .map(std::mem::forget);
    let (stack, recorder) = Stack::consuming().await?;
    stack.relay();

    let request = tracing::info_span!("request", trace_id = tracing::field::Empty);
    let (thing, producer_trace) = {
        let _entered = request.enter();
        (
            event(json!({ "n": 1 })),
            shop_runtime::telemetry::current_trace_id(),
        )
    };
    let producer_trace = producer_trace.ok_or("telemetry is installed, so spans have trace ids")?;
    assert!(
        thing
            .traceparent
            .as_deref()
            .is_some_and(|tp| tp.contains(&producer_trace)),
        "the envelope records the producing span: {:?}",
        thing.traceparent
    );
    stack.commit(&thing).await?;

    eventually(PATIENCE, || async {
        stack.effects(thing.id).await.unwrap_or(0) == 1
    })
    .await?;
    let consumer_trace = recorder
        .deliveries
        .lock()
        .expect("lock")
        .iter()
        .find(|(id, _)| *id == thing.id)
        .and_then(|(_, trace)| trace.clone());
    assert_eq!(consumer_trace, Some(producer_trace));
    Ok(())
}
