//! End to end over the real PostgreSQL and RabbitMQ, with faults injected: an event committed
//! through the outbox has its effect exactly once, whatever breaks in between.

use crate::support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use shop_messaging::{
    Consumer, HandlerError, Publisher, Received,
    consumer::postgres::Handle,
    topology,
    topology::{ATTEMPTS_HEADER, REASON_HEADER, ROUTING_KEY_HEADER},
    trace::header_str,
};
use shop_testkit::BoxError;
use support::{PARKING, QUEUE, ROUTING_KEY, Recorder, Stack, Thing, event, eventually};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_event_committed_while_the_broker_is_down_is_delivered_once_it_returns()
-> Result<(), BoxError> {
    let (stack, _recorder, _status) = Stack::consuming().await?;
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
    // Both sides reconnect by themselves, within their longest backoff.
    eventually(Duration::from_secs(10), || async {
        stack.effects(thing.id).await.unwrap_or(0) == 1
    })
    .await?;
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
async fn a_consumer_that_loses_its_connection_before_acking_gets_a_redelivery_but_one_effect()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let recorder = Recorder::new();
    let held = recorder.on_hold();
    let status = stack.consume(recorder.clone()).await?;
    stack.relay();

    let thing = event(json!({ "hold": true }));
    stack.commit(&thing).await?;
    tokio::time::timeout(PATIENCE, held).await??;
    // The handler has written its effect; the broker connection dies before the consumer
    // commits and acknowledges. The commit (PostgreSQL is not behind the proxy) succeeds, the
    // ack cannot reach the broker.
    stack.proxy.cut();
    recorder.release();
    eventually(PATIENCE, || async {
        stack.effects(thing.id).await.unwrap_or(0) == 1
    })
    .await?;
    stack.proxy.restore();

    // The broker redelivers; the inbox finds the event id and the handler is not called again.
    eventually(PATIENCE, || async { status.settled("duplicate") == 1 }).await?;
    assert_eq!(
        stack.effects(thing.id).await?,
        1,
        "redelivered, applied once"
    );
    assert_eq!(recorder.deliveries_of(thing.id), 1);
    Ok(())
}

#[tokio::test]
async fn shutdown_finishes_and_acknowledges_the_current_message() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let recorder = Recorder::new();
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
    let (stack, recorder, _status) = Stack::consuming().await?;
    stack.relay();

    let ghost = event(json!({ "n": 0 }));
    let mut tx = stack.pool.begin().await?;
    shop_messaging::outbox::postgres::enqueue(&mut tx, ROUTING_KEY, &ghost).await?;
    tx.rollback().await?;

    // The relay publishes in commit order: once a later event arrived, the ghost never will.
    let marker = event(json!({ "n": 1 }));
    stack.commit(&marker).await?;
    eventually(PATIENCE, || async {
        stack.effects(marker.id).await.unwrap_or(0) == 1
    })
    .await?;
    assert_eq!(recorder.ids(), vec![marker.id]);
    // The relay deletes the marker's row once the broker confirmed it, which can come after
    // the consumer already handled the message; the ghost left no row at all.
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.is_ok_and(|rows| rows == 0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_poison_message_is_parked_with_its_reason_and_the_queue_keeps_flowing()
-> Result<(), BoxError> {
    let (stack, recorder, _status) = Stack::consuming().await?;
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
    let (stack, recorder, _status) = Stack::consuming().await?;

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
    let (stack, recorder, _status) = Stack::consuming().await?;
    stack.relay();

    let request = tracing::info_span!("request");
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

#[tokio::test]
async fn a_retry_copy_the_broker_returns_is_not_lost() -> Result<(), BoxError> {
    let (stack, recorder, status) = Stack::consuming().await?;
    // The first delay queue disappears (deleted by hand, say): the broker returns the retry
    // copy, and the original must not be acknowledged.
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(
            "test.events.retry.100ms".into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await?;
    stack.relay();
    let poison = event(json!({ "poison": true }));
    stack.commit(&poison).await?;
    eventually(PATIENCE, || async { status.settled("requeued") >= 1 }).await?;
    assert_eq!(status.settled("retry"), 0);

    // Once the queue is back, the message goes through its retries and is parked.
    let queues = topology::ConsumerQueues::new(
        support::CONSUMER,
        &[Duration::from_millis(100), Duration::from_millis(300)],
    );
    topology::declare_consumer(
        &channel,
        &queues,
        &[ROUTING_KEY.to_owned()],
        topology::DELIVERY_LIMIT,
    )
    .await?;
    let parked = support::parked(&stack.direct_url, 1, PATIENCE).await?;
    assert_eq!(
        shop_messaging::Envelope::from_slice(&parked[0].data)?.id,
        poison.id
    );
    assert!(recorder.deliveries_of(poison.id) >= 3);
    Ok(())
}

#[tokio::test]
async fn a_handler_that_panics_or_hangs_is_retried_then_parked_and_its_effect_rolled_back()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let recorder = Recorder::new();
    stack
        .start(
            stack
                .consumer(recorder.clone())
                .handler_timeout(Duration::from_millis(300)),
        )
        .await?;
    stack.relay();
    let panics = event(json!({ "panic": true }));
    let hangs = event(json!({ "hang": true }));
    stack.commit(&panics).await?;
    stack.commit(&hangs).await?;

    let parked = support::parked(&stack.direct_url, 2, PATIENCE).await?;
    for delivery in &parked {
        let id = shop_messaging::Envelope::from_slice(&delivery.data)?.id;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason = header_str(&headers, REASON_HEADER).unwrap_or_default();
        if id == panics.id {
            assert_eq!(reason, "gave up after 3 attempts: the handler panicked");
        } else {
            assert_eq!(id, hangs.id);
            assert_eq!(
                reason,
                "gave up after 3 attempts: the handler did not finish within 300ms"
            );
        }
    }
    assert_eq!(recorder.deliveries_of(hangs.id), 3);
    assert_eq!(
        stack.effects(hangs.id).await?,
        0,
        "an abandoned handler's writes roll back"
    );
    Ok(())
}

#[tokio::test]
async fn a_message_never_settled_is_parked_by_the_broker_after_the_delivery_limit()
-> Result<(), BoxError> {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};

    let stack = Stack::new().await?;
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    let queues = topology::ConsumerQueues::new(support::CONSUMER, &[]);
    topology::declare_consumer(&setup, &queues, &[ROUTING_KEY.to_owned()], 2).await?;
    let thing = event(json!({ "n": 1 }));
    setup
        .basic_publish(
            topology::EXCHANGE.into(),
            ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &thing.to_vec(),
            lapin::BasicProperties::default(),
        )
        .await?;

    // A consumer process that dies holding the message: taken, never settled, channel gone.
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline && deliveries < 10 {
        let channel = connection.create_channel().await?;
        if channel
            .basic_get(QUEUE.into(), BasicGetOptions::default())
            .await?
            .is_some()
        {
            deliveries += 1;
        } else if deliveries > 0 {
            break; // gone from the queue
        }
        channel.close(200, "crash".into()).await?;
    }
    assert_eq!(
        deliveries, 3,
        "delivered once, redelivered up to the limit of 2, then parked"
    );

    let parked = support::take(&stack.direct_url, PARKING, 1, PATIENCE).await?;
    assert_eq!(
        shop_messaging::Envelope::from_slice(&parked[0].data)?.id,
        thing.id
    );
    let headers = parked[0].properties.headers().clone().unwrap_or_default();
    // The broker's own record of why it moved the message: `x-death[0].reason`.
    let reason = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
            Some(AMQPValue::FieldTable(death)) => header_str(death, "reason").map(str::to_owned),
            _ => None,
        },
        _ => None,
    };
    assert_eq!(reason.as_deref(), Some("delivery_limit"));
    Ok(())
}

#[tokio::test]
async fn every_queue_that_dead_letters_does_so_at_least_once() -> Result<(), BoxError> {
    let (stack, _recorder, _status) = Stack::consuming().await?;
    for queue in [QUEUE, "test.events.retry.100ms", "test.events.retry.300ms"] {
        let info = shop_testkit::isolation::rabbitmq_queue(&stack.direct_url, queue).await?;
        assert_eq!(info["type"], "quorum", "{queue}: {info}");
        let arguments = &info["arguments"];
        assert_eq!(
            arguments["x-dead-letter-strategy"], "at-least-once",
            "{queue}"
        );
        assert_eq!(arguments["x-overflow"], "reject-publish", "{queue}");
    }
    let parking = shop_testkit::isolation::rabbitmq_queue(&stack.direct_url, PARKING).await?;
    assert_eq!(parking["type"], "quorum");
    Ok(())
}

#[tokio::test]
async fn concurrent_claims_of_one_event_id_have_one_effect() -> Result<(), BoxError> {
    use shop_messaging::inbox;

    let stack = Stack::new().await?;
    let thing = event(json!({ "n": 1 }));
    let mut first = stack.pool.begin().await?;
    assert!(inbox::postgres::claim(&mut first, support::CONSUMER, thing.id).await?);
    sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
        .bind(thing.id)
        .execute(&mut *first)
        .await?;

    // A second instance claims the same event while the first has not committed.
    let pool = stack.pool.clone();
    let id = thing.id;
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        let claimed = inbox::postgres::claim(&mut tx, support::CONSUMER, id).await?;
        if claimed {
            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, BoxError>(claimed)
    });
    // It waits on the first one's uncommitted row...
    eventually(PATIENCE, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&stack.pool)
        .await
        .is_ok_and(|waiting| waiting == 1)
    })
    .await?;
    first.commit().await?;
    // ...and finds it claimed once the first commits.
    assert!(!second.await??, "the second claim loses");
    assert_eq!(stack.effects(thing.id).await?, 1);
    Ok(())
}

#[tokio::test]
async fn the_postgres_inbox_is_pruned_on_a_schedule() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let status = stack
        .start(
            stack
                .consumer(Recorder::new())
                .inbox_retention(Duration::ZERO, Duration::from_millis(200)),
        )
        .await?;
    stack.relay();
    let thing = event(json!({ "n": 1 }));
    stack.commit(&thing).await?;
    eventually(PATIENCE, || async { status.settled("handled") == 1 }).await?;
    eventually(PATIENCE, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messaging.inbox")
            .fetch_one(&stack.pool)
            .await
            .is_ok_and(|records| records == 0)
    })
    .await?;
    assert_eq!(stack.effects(thing.id).await?, 1);
    Ok(())
}

/// A handler that writes its effect and then waits until the test opens the gate, counting how
/// many of its calls are in flight at once and recording the order it was called in.
#[derive(Clone)]
struct Gate {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    order: Arc<Mutex<Vec<u64>>>,
    open: watch::Sender<bool>,
}

impl Handle<Thing> for Gate {
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        event: Received<Thing>,
    ) -> Result<(), HandlerError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let Thing(data) = &event.payload;
        self.order
            .lock()
            .expect("lock")
            .push(data["n"].as_u64().unwrap_or(u64::MAX));
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(event.id())
            .execute(&mut *tx)
            .await?;
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Commits eight events, one after the other, to a consumer with `concurrency`; checks that
/// exactly that many handlers run at once while they are held, then lets them all finish.
/// Returns the most that ran at once and the order the handler saw them in.
async fn handled_at_once(concurrency: usize) -> Result<(usize, Vec<u64>), BoxError> {
    let stack = Stack::new().await?;
    let gate = Gate {
        in_flight: Arc::default(),
        most: Arc::default(),
        order: Arc::default(),
        open: watch::Sender::new(false),
    };
    let status = stack
        .start(
            Consumer::postgres(support::CONSUMER, stack.pool.clone())
                .on::<Thing>(gate.clone())
                .concurrency(concurrency)
                .handler_timeout(Duration::from_secs(30)),
        )
        .await?;
    stack.relay();
    let things: Vec<_> = (0..8).map(|n| event(json!({ "n": n }))).collect();
    for thing in &things {
        stack.commit(thing).await?;
    }
    eventually(PATIENCE, || async {
        gate.in_flight.load(Ordering::SeqCst) == concurrency
    })
    .await?;
    // Held for a while: no further message is taken while `concurrency` are being handled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gate.in_flight.load(Ordering::SeqCst), concurrency);
    assert_eq!(status.settled("handled"), 0);

    gate.open.send_replace(true);
    eventually(PATIENCE, || async { status.settled("handled") == 8 }).await?;
    for thing in &things {
        assert_eq!(stack.effects(thing.id).await?, 1);
    }
    let order = gate.order.lock().expect("lock").clone();
    Ok((gate.most.load(Ordering::SeqCst), order))
}

#[tokio::test]
async fn a_consumer_handles_as_many_messages_at_once_as_its_concurrency_and_no_more()
-> Result<(), BoxError> {
    let (most, _order) = handled_at_once(4).await?;
    assert_eq!(most, 4);
    Ok(())
}

#[tokio::test]
async fn a_consumer_with_concurrency_one_handles_one_message_at_a_time_in_queue_order()
-> Result<(), BoxError> {
    let (most, order) = handled_at_once(1).await?;
    assert_eq!(most, 1);
    // Committed one after the other, relayed by one relay: queue order is commit order.
    assert_eq!(order, (0..8).collect::<Vec<u64>>());
    Ok(())
}
