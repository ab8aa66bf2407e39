//! The one way a test waits for something to happen: poll a condition until it holds or a
//! deadline passes. Never a bare sleep as synchronisation, never an assert on elapsed time.

use std::{future::Future, time::Duration};

use crate::BoxError;

/// How often [`eventually`] looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `condition` every [`POLL_INTERVAL`] until it holds, or fails after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("condition not met within {timeout:?}").into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
