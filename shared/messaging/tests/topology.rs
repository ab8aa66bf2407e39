//! The topology is declared by every publisher, so no start order loses events: a producer that
//! starts alone on a brand-new broker keeps its events for consumers that start later, two
//! services declaring the same topology agree with each other and with the consumers, and an
//! event whose queue disappeared is kept in the outbox instead of being confirmed and dropped.

use crate::support;

use std::{collections::BTreeSet, time::Duration};

use lapin::{
    Connection, ConnectionProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_messaging::{
    Consumer, Envelope, Event, HandlerError, Received,
    consumer::{Settings, postgres::Handle},
    topology::{self, ConsumerQueues, SUBSCRIPTIONS},
};
use shop_testkit::BoxError;
use support::{Stack, eventually};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(20);

/// `user.user.registered`, as notification-service reads it (any payload will do here).
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct Registered(serde_json::Value);

impl Event for Registered {
    const SOURCE: &'static str = "user-service";
    const ROUTING_KEY: &'static str = "user.user.registered";
}

/// Records the event id in the test's `effects` table.
struct Effect;

impl Handle<Registered> for Effect {
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        event: Received<Registered>,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(event.id())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// An event as its producer would enqueue it under `routing_key` (type: the key without its
/// service word).
fn event_for(routing_key: &str) -> Envelope {
    let (service, kind) = routing_key.split_once('.').expect("a routing key");
    Envelope::new(
        format!("{service}-service"),
        kind,
        &json!({ "key": routing_key }),
    )
    .expect("a JSON value")
}

/// Commits `event` through the outbox under `routing_key`, waking this process's relay.
async fn commit(stack: &Stack, routing_key: &str, event: &Envelope) -> Result<(), BoxError> {
    let mut tx = stack.pool.begin().await?;
    shop_messaging::outbox::postgres::enqueue(&mut tx, routing_key, event).await?;
    shop_messaging::outbox::postgres::commit(tx).await?;
    Ok(())
}

/// Waits until the relay has settled every outbox row, then checks it parked none: every
/// event was published and confirmed.
async fn all_published(stack: &Stack) -> Result<(), BoxError> {
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM messaging.outbox_parked")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(
        parked, 0,
        "the relay parked events instead of publishing them"
    );
    Ok(())
}

/// How many messages `queue` holds, asked passively (an error when it does not exist).
async fn messages_in(url: &str, queue: &str) -> Result<u32, BoxError> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// Every routing key some consumer of the topology subscribes to, once.
fn subscribed_keys() -> BTreeSet<&'static str> {
    SUBSCRIPTIONS
        .iter()
        .flat_map(|sub| sub.routing_keys.iter().copied())
        .collect()
}

#[tokio::test]
async fn events_a_producer_publishes_before_any_consumer_exists_reach_every_consumer_later()
-> Result<(), BoxError> {
    // A brand-new vhost, nothing declared, no consumer: a producer's relay alone.
    let stack = Stack::new().await?;
    let mut registered = None;
    for key in subscribed_keys() {
        let event = event_for(key);
        if key == Registered::ROUTING_KEY {
            registered = Some(event.id);
        }
        commit(&stack, key, &event).await?;
    }
    let registered: Uuid = registered.expect("someone subscribes to user.user.registered");
    stack.relay();
    all_published(&stack).await?;

    // Each consumer's queue exists and holds one event per key it subscribes to.
    for sub in SUBSCRIPTIONS {
        let queue = format!("{}.events", sub.consumer);
        assert_eq!(
            messages_in(&stack.direct_url, &queue).await?,
            u32::try_from(sub.routing_keys.len())?,
            "{queue}"
        );
    }

    // The consumer starts only now, declares its queue with its own settings (accepted), and
    // gets what was published before it existed.
    let status = stack
        .start(Consumer::postgres("notification", stack.pool.clone()).on::<Registered>(Effect))
        .await?;
    let others = topology::subscription("notification").map_or(0, |sub| sub.routing_keys.len() - 1);
    eventually(PATIENCE, || async {
        stack.effects(registered).await.unwrap_or(0) == 1
            && status.settled("unhandled") == u64::try_from(others).unwrap_or(u64::MAX)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn every_service_declaring_the_topology_agrees_with_the_others_and_with_each_consumer()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    // Two services, each on its own connection, declare the whole topology in turn.
    for _ in 0..2 {
        let connection =
            Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
        let refused = topology::declare_topology(&connection).await?;
        assert!(refused.is_empty(), "refused: {refused:?}");
    }
    // Then each consumer declares its queues as it does when it attaches, with the default
    // settings and with notification-service's own delays: no PRECONDITION_FAILED.
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    let notification_delays = [1, 5, 30, 120, 600, 1800].map(Duration::from_secs);
    for sub in SUBSCRIPTIONS {
        for delays in [&Settings::default().retry_delays[..], &notification_delays] {
            let channel = connection.create_channel().await?;
            let bindings: Vec<String> = sub.routing_keys.iter().map(|k| (*k).to_owned()).collect();
            topology::declare_consumer(
                &channel,
                &ConsumerQueues::new(sub.consumer, delays),
                &bindings,
                topology::DELIVERY_LIMIT,
            )
            .await
            .map_err(|err| format!("{}: {err}", sub.consumer))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_event_whose_queue_was_deleted_is_kept_and_delivered_once_the_queue_is_back()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    stack.relay();
    // Only notification subscribes to it. (The broker returns an event only when *no* queue
    // took it: a deleted queue among several subscribers' goes unnoticed until the next
    // channel declares the topology again; docs/messaging.md.)
    let key = Registered::ROUTING_KEY;
    commit(&stack, key, &event_for(key)).await?;
    all_published(&stack).await?;

    // An operator deletes notification's queue while the relay's channel stays open.
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    connection
        .create_channel()
        .await?
        .queue_delete("notification.events".into(), QueueDeleteOptions::default())
        .await?;

    // The broker returns the next event: it stays in the outbox, the topology is declared
    // again, and it is published again, into the queue declared anew.
    commit(&stack, key, &event_for(key)).await?;
    all_published(&stack).await?;
    assert_eq!(
        messages_in(&stack.direct_url, "notification.events").await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn an_event_no_consumer_subscribes_to_is_published_not_kept() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    stack.relay();
    // Nobody subscribes to the tests' own routing key, and no consumer runs.
    assert!(!topology::is_subscribed(support::ROUTING_KEY));
    commit(
        &stack,
        support::ROUTING_KEY,
        &support::event(json!({ "n": 1 })),
    )
    .await?;
    all_published(&stack).await
}

#[tokio::test]
async fn a_queue_the_broker_refuses_to_declare_holds_up_no_other_consumers_events()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    // gateway.events from an older topology: a classic queue without the arguments the
    // topology declares it with.
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    connection
        .create_channel()
        .await?
        .queue_declare(
            "gateway.events".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    assert_eq!(
        topology::declare_topology(&connection).await?,
        ["gateway"],
        "the old queue is refused"
    );

    stack.relay();
    let key = Registered::ROUTING_KEY;
    commit(&stack, key, &event_for(key)).await?;
    all_published(&stack).await?;
    assert_eq!(
        messages_in(&stack.direct_url, "notification.events").await?,
        1
    );
    Ok(())
}
