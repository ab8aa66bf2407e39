//! Without a wake, the PostgreSQL relay still finds what was committed, at its next poll.
//!
//! A test binary of its own: in a process where other tests commit through
//! `outbox::postgres::commit` (or run consumers, which commit that way), their wakes could
//! publish this test's event and hide a relay that no longer polls.

mod support;

use std::time::Duration;

use serde_json::json;
use shop_testkit::BoxError;
use support::{Stack, event};

#[tokio::test]
async fn an_event_committed_with_a_plain_commit_is_published_by_the_poll() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let published = stack.watch().await?;
    stack
        .relay_past_its_first_batch(Duration::from_millis(200), &published)
        .await?;
    // Committed after the relay looked at the table, and nothing in this process wakes it.
    let second = event(json!({ "n": 2 }));
    stack.commit_unannounced(&second).await?;
    published.wait_for(second.id).await?;
    Ok(())
}
