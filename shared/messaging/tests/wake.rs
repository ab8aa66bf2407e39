//! The PostgreSQL relay is woken by `outbox::postgres::commit` in its own process, and the
//! producer's transaction sends no `NOTIFY` any more (it used to serialise every producer's
//! commit: ADR 0015).

mod support;

use std::time::Duration;

use serde_json::json;
use shop_messaging::outbox::RelayConfig;
use shop_testkit::BoxError;
use sqlx::postgres::PgListener;
use support::{Stack, event, eventually};

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
    let first = event(json!({ "n": 1 }));
    stack.commit_unannounced(&first).await?;
    stack.relay_with(RelayConfig {
        poll_interval: Duration::from_secs(3600),
        ..Stack::relay_config()
    });
    // The relay's first batch, which runs at start, published `first`: the relay has looked
    // at the table and any later row needs a wake (or an hour).
    eventually(PATIENCE, || async {
        published.includes(first.id).await.unwrap_or(false)
    })
    .await?;

    let second = event(json!({ "n": 2 }));
    stack.commit(&second).await?;
    eventually(PATIENCE, || async {
        published.includes(second.id).await.unwrap_or(false)
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
