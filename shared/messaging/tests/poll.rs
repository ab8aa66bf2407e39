//! Without a wake, the PostgreSQL relay still finds what was committed, at its next poll.
//!
//! A test binary of its own: in a process where other tests commit through
//! `outbox::postgres::commit` (or run consumers, which commit that way), their wakes could
//! publish this test's event and hide a relay that no longer polls.

mod support;

use std::time::Duration;

use serde_json::json;
use shop_messaging::outbox::RelayConfig;
use shop_testkit::BoxError;
use support::{Stack, event, eventually};

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_event_committed_with_a_plain_commit_is_published_by_the_poll() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let published = stack.watch().await?;
    let first = event(json!({ "n": 1 }));
    stack.commit_unannounced(&first).await?;
    stack.relay_with(RelayConfig {
        poll_interval: Duration::from_millis(200),
        ..Stack::relay_config()
    });
    // The relay's first batch, which runs at start, published `first`: `second` is committed
    // after the relay looked at the table, and nothing in this process wakes it.
    eventually(PATIENCE, || async {
        published.includes(first.id).await.unwrap_or(false)
    })
    .await?;

    let second = event(json!({ "n": 2 }));
    stack.commit_unannounced(&second).await?;
    eventually(PATIENCE, || async {
        published.includes(second.id).await.unwrap_or(false)
    })
    .await?;
    Ok(())
}
