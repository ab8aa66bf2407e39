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
//! 1. The claim: `pending` and due → reserved for a lease, `attempts + 1`. A new email's first
//!    attempt is claimed by its recording: the handler inserts it already leased to this
//!    instance (the insert on the unique event id is the atomic step) and hands it over in
//!    memory ([`Wake`]). Every later attempt, and an email not handed over, is claimed in the
//!    store: one atomic update on MongoDB; on FerretDB v1 the insert of a claim document keyed
//!    by the attempt (see [`crate::store`]).
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

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::DeliveryConfig,
    mailer::{Mailer, SendError},
    store::{DUE_BATCH, Notification, Store},
};

/// What the handlers hand the sender: the emails they just recorded, and a wake-up.
///
/// Mostly the email itself, **already claimed by its recording** ([`Wake::reserve`]): the
/// handler records a new notification with its first attempt taken (`attempts: 1`, due again
/// only after a lease), so no other sender may take that attempt, and hands it over in memory.
/// Sending it then costs no claim and no read of the store — a new email's store work is its
/// recording and its outcome, however many are stored. When the sender is too far behind
/// ([`Wake::CLAIMED_CAPACITY`] waiting) the handler records the email unclaimed and hands over
/// only its id ([`Wake::recorded`]), which the sender claims by `_id` ([`Store::claim`]). An
/// email the sender reaches after half of its recording's lease is left to the store: the
/// lease runs out, and the periodic look at the due ones ([`Store::due`],
/// [`Store::claim_due`]) claims its next attempt, as it does for retries, for ids beyond
/// [`Wake::CAPACITY`] and for what other instances recorded. The same holds for what is
/// waiting here when the process stops: sent one lease later, not lost.
#[derive(Debug, Default)]
pub struct Wake {
    ids: Mutex<VecDeque<String>>,
    claimed: Mutex<VecDeque<Claimed>>,
    /// Places in `claimed` taken by a [`Reservation`], filled or not yet.
    reserved: AtomicUsize,
    /// How long a recording's claim lasts (the sender's lease). Zero: recordings claim
    /// nothing and hand over ids only.
    lease: Duration,
    notify: Notify,
}

/// An email claimed by its recording, and until when the sender may still send it.
#[derive(Debug)]
struct Claimed {
    notification: Notification,
    until: Instant,
}

/// A place among the sender's claimed emails, taken before recording one
/// ([`Wake::reserve`]). Dropped unfilled (the recording failed, or found the event already
/// recorded), it frees its place.
#[derive(Debug)]
pub struct Reservation {
    wake: Arc<Wake>,
    taken: Instant,
    filled: bool,
}

impl Reservation {
    /// Marks `notification`, about to be recorded, as claimed by its recording: attempt 1
    /// taken, due again (for another sender) only once the lease has run out.
    pub fn claim(&self, notification: &mut Notification) {
        let lease = chrono::Duration::from_std(self.wake.lease).unwrap_or_default();
        notification.attempts = 1;
        notification.next_attempt_at = crate::store::millis(Utc::now() + lease);
    }

    /// Hands the recorded, claimed notification to the sender. It is sent from memory if the
    /// sender reaches it within half the lease (the other half is for the SMTP conversation).
    pub fn fill(mut self, notification: Notification) {
        let until = self.taken + self.wake.lease / 2;
        if let Ok(mut claimed) = self.wake.claimed.lock() {
            claimed.push_back(Claimed {
                notification,
                until,
            });
            self.filled = true;
        }
        self.wake.notify.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.filled {
            self.wake.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Wake {
    /// Ids waiting beyond this are dropped (the look at the due ones finds them).
    pub const CAPACITY: usize = 10_000;
    /// Claimed emails (rendered, a few kilobytes each) waiting in memory at most.
    pub const CLAIMED_CAPACITY: usize = 1_000;

    /// A wake whose recordings claim the first attempt for `lease` (the sender's).
    pub fn with_lease(lease: Duration) -> Self {
        Self {
            lease,
            ..Self::default()
        }
    }

    /// A place for one email claimed by its recording, unless the sender is too far behind
    /// (or this wake claims nothing): then record the email unclaimed and call
    /// [`Wake::recorded`].
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        if self.lease.is_zero() {
            return None;
        }
        self.reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |taken| {
                (taken < Self::CLAIMED_CAPACITY).then_some(taken + 1)
            })
            .ok()?;
        Some(Reservation {
            wake: self.clone(),
            taken: Instant::now(),
            filled: false,
        })
    }

    /// `event_id` was recorded unclaimed and is due now.
    pub fn recorded(&self, event_id: &str) {
        if let Ok(mut ids) = self.ids.lock()
            && ids.len() < Self::CAPACITY
        {
            ids.push_back(event_id.to_owned());
        }
        self.notify.notify_one();
    }

    fn next(&self) -> Option<String> {
        self.ids.lock().ok()?.pop_front()
    }

    /// The next email claimed by its recording that may still be sent from memory.
    fn next_claimed(&self) -> Option<Notification> {
        loop {
            let claimed = self.claimed.lock().ok()?.pop_front()?;
            self.reserved.fetch_sub(1, Ordering::SeqCst);
            if claimed.until > Instant::now() {
                return Some(claimed.notification);
            }
            // Too late to be sure the lease outlasts the conversation: the store hands out
            // its next attempt once the lease has run out.
            tracing::debug!(event_id = %claimed.notification.event_id, "claimed email left to its lease");
        }
    }
}

/// The sending loop and what it needs.
#[derive(Debug, Clone)]
pub struct Sender {
    pub store: Store,
    pub mailer: Mailer,
    pub config: DeliveryConfig,
    /// Woken by the handler after each new notification, with its id, so a new email neither
    /// waits for the next poll nor needs a search.
    pub wake: Arc<Wake>,
}

/// The wait before attempt `attempts + 1`: 100 ms, 200 ms, ... up to `max`, jittered — the
/// runtime's one retry schedule, indexed by the attempts made so far.
fn backoff(attempts: i32, max: Duration) -> Duration {
    let index = usize::try_from(attempts.max(1) - 1).unwrap_or(0);
    shop_runtime::backoff::forever(max)
        .nth(index)
        .unwrap_or(max)
}

/// Where the sender takes its next email from.
#[derive(Debug)]
struct Queue {
    /// Due ids from the last look at the outbox ([`crate::store::Layout::Keyed`]).
    due: VecDeque<String>,
    /// When due work was last looked for: once every poll interval, so retries are not
    /// starved by a steady stream of new emails — and not more often, so a sender that keeps
    /// up with them (its memory runs dry after every email) does not search the store each
    /// time it does.
    looked: Option<Instant>,
    /// When the pending gauge was last set: once a poll interval at most, for the same reason.
    reported: Option<Instant>,
}

impl Sender {
    /// Sends due notifications until shutdown, up to `concurrency` at once: the loop claims
    /// the next email as soon as a slot is free, and each claimed email is delivered in a task
    /// of its own. Claims stay safe with many in flight (each attempt's claim is one atomic
    /// write, see [`crate::store`]). Emails being sent when shutdown begins are finished
    /// (bounded by the SMTP timeout) and recorded.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut store_errors = shop_runtime::backoff::forever(Duration::from_secs(5));
        let mut queue = Queue {
            due: VecDeque::new(),
            looked: None,
            reported: None,
        };
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut sending = JoinSet::new();
        while !shutdown.is_cancelled() {
            while sending.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            match self.next(&mut queue).await {
                Ok(Some(notification)) => {
                    store_errors = shop_runtime::backoff::forever(Duration::from_secs(5));
                    let sender = self.clone();
                    sending.spawn(async move {
                        sender.deliver(notification).await;
                        drop(slot);
                    });
                }
                Ok(None) => {
                    drop(slot);
                    if queue
                        .reported
                        .is_none_or(|reported| reported.elapsed() >= self.config.poll)
                    {
                        queue.reported = Some(Instant::now());
                        self.report_pending().await;
                    }
                    // Until woken, or until the next look at the store is due.
                    let look_in = queue.looked.map_or(self.config.poll, |looked| {
                        self.config.poll.saturating_sub(looked.elapsed())
                    });
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = self.wake.notify.notified() => {}
                        () = tokio::time::sleep(look_in) => {}
                    }
                }
                Err(err) => {
                    drop(slot);
                    tracing::warn!(error = %err, "cannot read due notifications; retrying");
                    let delay = store_errors.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        while sending.join_next().await.is_some() {}
    }

    /// The next email to send, claimed: one just recorded (claimed by its recording, or by its
    /// id), else one that is due. The store is searched for due emails once a poll interval
    /// (and first, then, so retries are not starved by new emails); in between only the ids
    /// left from the last search are tried.
    async fn next(&self, queue: &mut Queue) -> mongodb::error::Result<Option<Notification>> {
        let lease = self.config.lease;
        let overdue = queue
            .looked
            .is_none_or(|looked| looked.elapsed() >= self.config.poll);
        if !overdue {
            if let Some(claimed) = self.wake.next_claimed() {
                return Ok(Some(claimed));
            }
            while let Some(id) = self.wake.next() {
                if let Some(claimed) = self.store.claim(&id, lease).await? {
                    return Ok(Some(claimed));
                }
            }
        }
        if let Some(claimed) = self.next_due(queue, overdue).await? {
            return Ok(Some(claimed));
        }
        if let Some(claimed) = self.wake.next_claimed() {
            return Ok(Some(claimed));
        }
        while let Some(id) = self.wake.next() {
            if let Some(claimed) = self.store.claim(&id, lease).await? {
                return Ok(Some(claimed));
            }
        }
        Ok(None)
    }

    /// One due email: the longest due one on an indexed store, else the next id of the last
    /// look at the outbox that can still be claimed (looking again when they are used up).
    /// Without `look`, the store is not searched: only the ids left from the last look.
    async fn next_due(
        &self,
        queue: &mut Queue,
        look: bool,
    ) -> mongodb::error::Result<Option<Notification>> {
        let lease = self.config.lease;
        if !look {
            while let Some(id) = queue.due.pop_front() {
                if let Some(claimed) = self.store.claim(&id, lease).await? {
                    return Ok(Some(claimed));
                }
            }
            return Ok(None);
        }
        if let Some(claimed) = self.store.claim_due(lease).await? {
            queue.looked = Some(Instant::now());
            return Ok(Some(claimed));
        }
        if self.store.layout() == crate::store::Layout::Indexed {
            queue.looked = Some(Instant::now());
            return Ok(None);
        }
        let mut looked_now = false;
        loop {
            if queue.due.is_empty() {
                if looked_now {
                    return Ok(None);
                }
                queue.due = self.store.due(DUE_BATCH).await?.into();
                queue.looked = Some(Instant::now());
                looked_now = true;
            }
            let Some(id) = queue.due.pop_front() else {
                return Ok(None);
            };
            if let Some(claimed) = self.store.claim(&id, lease).await? {
                return Ok(Some(claimed));
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
            Ok(()) => self.mark_sent(&notification).await,
            Err(SendError::Permanent(reason)) => {
                self.store.mark_failed(&notification, reason).await
            }
            Err(SendError::Transient(reason))
                if notification.attempts
                    >= i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX) =>
            {
                let reason = format!("gave up after {} attempts: {reason}", notification.attempts);
                self.store.mark_failed(&notification, &reason).await
            }
            Err(SendError::Transient(reason)) => {
                let wait = backoff(notification.attempts, self.config.backoff_max);
                let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                self.store.mark_retry(&notification, reason, next).await
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
    async fn mark_sent(&self, notification: &Notification) -> mongodb::error::Result<()> {
        let mut delays = [50, 200, 1000].map(Duration::from_millis).into_iter();
        loop {
            match self.store.mark_sent(notification).await {
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
