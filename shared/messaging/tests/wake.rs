//! The PostgreSQL relay is woken by `outbox::postgres::commit` in its own process, and the
//! producer's transaction sends no `NOTIFY` any more (it used to serialise every producer's
//! commit: ADR 0015).

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use shop_messaging::{
    HandlerError, Publisher, Received, consumer::postgres::Handle, outbox::postgres::enqueue_event,
};
use shop_testkit::BoxError;
use sqlx::postgres::PgListener;
use support::{ROUTING_KEY, Stack, Thing, event, eventually};

const PATIENCE: Duration = Duration::from_secs(20);

/// The channel `enqueue` used to notify on.
const OLD_CHANNEL: &str = "messaging_outbox";

#[tokio::test]
async fn an_event_committed_through_the_outbox_commit_is_published_without_waiting_for_the_poll()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let published = stack.watch().await?;
    // A poll far beyond the test's patience: only a wake can publish within it. (No consumer
    // here: its commits would wake the relay too.)
    stack
        .relay_past_its_first_batch(Duration::from_secs(3600), &published)
        .await?;
    let second = event(json!({ "n": 2 }));
    stack.commit(&second).await?;
    published.wait_for(second.id).await?;
    Ok(())
}

/// A handler that reacts to a `{"forward": true}` thing by enqueuing another thing in its
/// transaction, and remembers the id of what it enqueued.
#[derive(Clone, Default)]
struct Forwarder {
    enqueued: Arc<Mutex<Option<uuid::Uuid>>>,
}

impl Handle<Thing> for Forwarder {
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        event: Received<Thing>,
    ) -> Result<(), HandlerError> {
        if event.payload.0["forward"] == true {
            let reaction = Thing(json!({ "reaction_to": event.id() }));
            let envelope = enqueue_event(tx, &reaction).await?;
            *self.enqueued.lock().expect("lock") = Some(envelope.id);
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_event_a_consumer_handler_enqueues_is_published_without_waiting_for_the_poll()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let published = stack.watch().await?;
    stack
        .relay_past_its_first_batch(Duration::from_secs(3600), &published)
        .await?;

    let forwarder = Forwarder::default();
    stack
        .start(
            shop_messaging::Consumer::postgres("forwarder", stack.pool.clone())
                .on::<Thing>(forwarder.clone()),
        )
        .await?;
    // The trigger goes straight to the broker, with the crate's own publisher (confirmed), not
    // through the outbox: no commit of the test's wakes the relay.
    let trigger = event(json!({ "forward": true }));
    let results = Publisher::new(stack.amqp.clone())
        .publish_events(&[(ROUTING_KEY.to_owned(), trigger)])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // Only the consumer's commit, through the outbox, can wake the relay within the patience.
    eventually(PATIENCE, || async {
        let Some(reaction) = *forwarder.enqueued.lock().expect("lock") else {
            return false;
        };
        published.includes(reaction).await.unwrap_or(false)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn enqueue_sends_no_notification() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let mut listener = PgListener::connect(&stack.database_url).await?;
    listener.listen(OLD_CHANNEL).await?;

    stack.commit(&event(json!({ "n": 1 }))).await?;
    // A notification of our own, from a transaction that commits after the event's: PostgreSQL
    // delivers the notifications of different transactions in commit order, so anything the
    // event's transaction had sent would arrive before this one. (The database is this test's
    // own: nothing else notifies in it.)
    sqlx::query("SELECT pg_notify($1, 'after')")
        .bind(OLD_CHANNEL)
        .execute(&stack.pool)
        .await?;
    let received = tokio::time::timeout(PATIENCE, listener.recv()).await??;
    assert_eq!(received.payload(), "after");
    Ok(())
}
