//! The sender: a background loop that takes due notifications from the store and sends them.
//!
//! # Why the email is not sent inside the event handler
//!
//! The consumer's effect must be idempotent for the event id, and an email cannot be: once the
//! mail server has it, it cannot be taken back. So the handler only *records* the notification
//! (one insert keyed by the event id, see [`crate::store`]) and this loop does the sending,
//! like an outbox relay does for events. An SMTP outage then never touches the broker: the
//! event was acknowledged long ago, and the notification waits in the store, retried with
//! exponential backoff (jittered, capped at `NOTIFY_SEND_BACKOFF_MAX_MS`) until the server is
//! back — nothing is lost however long the outage lasts (up to `NOTIFY_SEND_MAX_ATTEMPTS`).
//!
//! # The window between "sent" and "recorded", and what is guaranteed
//!
//! For one notification, in order:
//!
//! 1. The claim: `pending` and due → reserved for a lease, `attempts + 1` (one atomic update).
//! 2. SMTP: the message, with a Message-ID derived from the event id, until the server's 250.
//! 3. `status: sent`.
//!
//! Between 2 and 3 the mail exists and the record does not say so. That window is narrowed to
//! one database round trip: the message is fully rendered and stored *before* the attempt
//! (nothing is computed between the 250 and the update), step 3 is retried at once if the
//! database hiccups, and the claim's lease keeps other instances away meanwhile. It cannot be
//! closed: SMTP has no way to ask "did you already get message X?". If the process dies in the
//! window, or the server's 250 is lost on the way back, the lease expires and the message is
//! sent **again, once, with the same Message-ID** (mail providers commonly drop a second copy
//! of a Message-ID they delivered; a catcher shows both).
//!
//! So: **every recorded notification is sent at least once; a second copy only after a crash
//! or a lost reply inside that window; never a second copy because an event was delivered
//! twice** (that is the store's unique event id).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    config::DeliveryConfig,
    mailer::{Mailer, SendError},
    store::{Notification, Store},
};

/// The sending loop and what it needs.
#[derive(Debug, Clone)]
pub struct Sender {
    pub store: Store,
    pub mailer: Mailer,
    pub config: DeliveryConfig,
    /// Woken by the handler after each new notification, so a new email does not wait for
    /// the next poll.
    pub wake: Arc<Notify>,
}

/// The wait before attempt `attempts + 1`: 100 ms, 200 ms, ... up to `max`, jittered — the
/// runtime's one retry schedule, indexed by the attempts made so far.
fn backoff(attempts: i32, max: Duration) -> Duration {
    let index = usize::try_from(attempts.max(1) - 1).unwrap_or(0);
    shop_runtime::backoff::forever(max)
        .nth(index)
        .unwrap_or(max)
}

impl Sender {
    /// Sends due notifications one after the other until shutdown. An email being sent when
    /// shutdown begins is finished (bounded by the SMTP timeout) and recorded.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut store_errors = shop_runtime::backoff::forever(Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            match self.store.claim_due(self.config.lease).await {
                Ok(Some(notification)) => {
                    store_errors = shop_runtime::backoff::forever(Duration::from_secs(5));
                    self.deliver(notification).await;
                }
                Ok(None) => {
                    self.report_pending().await;
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll) => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read due notifications; retrying");
                    let delay = store_errors.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn report_pending(&self) {
        if let Ok(pending) = self.store.pending().await {
            #[allow(clippy::cast_precision_loss)] // a gauge; counts far below 2^52
            metrics::gauge!("notification_pending").set(pending as f64);
        }
    }

    /// One attempt for one claimed notification, and its outcome recorded.
    pub async fn deliver(&self, notification: Notification) {
        let id = notification.event_id.as_str();
        let template = notification.template.clone();
        let outcome = self.mailer.send(&notification).await;
        let recorded = match &outcome {
            Ok(()) => self.mark_sent(id).await,
            Err(SendError::Permanent(reason)) => self.store.mark_failed(id, reason).await,
            Err(SendError::Transient(reason))
                if notification.attempts
                    >= i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX) =>
            {
                let reason = format!("gave up after {} attempts: {reason}", notification.attempts);
                self.store.mark_failed(id, &reason).await
            }
            Err(SendError::Transient(reason)) => {
                let wait = backoff(notification.attempts, self.config.backoff_max);
                let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                self.store.mark_retry(id, reason, next).await
            }
        };
        let label = match &outcome {
            Ok(()) => "sent",
            Err(SendError::Permanent(_)) => "refused",
            Err(SendError::Transient(_)) => "retry",
        };
        metrics::counter!("notification_send_attempts_total", "template" => template, "outcome" => label)
            .increment(1);
        match (&outcome, recorded) {
            (Ok(()), Ok(())) => tracing::info!(event_id = id, "email sent"),
            (Err(err), Ok(())) => {
                tracing::warn!(event_id = id, attempts = notification.attempts, error = %err, "email not sent");
            }
            // Not recorded: the lease runs out and the notification is due again. After a
            // successful send this is the duplicate the module docs describe.
            (_, Err(err)) => {
                tracing::error!(event_id = id, error = %err, "cannot record the outcome of an email");
            }
        }
    }

    /// Marks a sent notification, retrying briefly: every failure here is a resend later.
    async fn mark_sent(&self, id: &str) -> mongodb::error::Result<()> {
        let mut delays = [50, 200, 1000].map(Duration::from_millis).into_iter();
        loop {
            match self.store.mark_sent(id).await {
                Ok(()) => return Ok(()),
                Err(err) => match delays.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(err),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_attempt_up_to_its_ceiling() {
        let max = Duration::from_secs(300);
        assert!(backoff(1, max) <= Duration::from_millis(200));
        assert!(backoff(8, max) >= Duration::from_millis(12_800));
        assert!(backoff(40, max) >= max && backoff(40, max) <= max * 2);
    }
}
