//! The `notifications` collection: one document per notification, which is at the same time
//! the consumer's idempotency record and the sender's work queue (an outbox for email).
//!
//! ```text
//! consumer ─ insert {_id: event id, status: pending, next_attempt_at: now} ─┐  (duplicate key = already recorded)
//!                                                                           ▼
//! sender ── claim: pending and due → next_attempt_at = now + lease, attempts + 1
//!        ── SMTP ── accepted → status: sent │ 4xx/unreachable → next_attempt_at = now + backoff
//!                                           │ 5xx or attempts used up → status: failed
//! ```
//!
//! The document's `_id` **is the event id**. Inserting it is the consumer's whole effect, one
//! single-document write, so a redelivered event cannot create a second notification even on
//! a server without multi-document transactions (FerretDB, a standalone MongoDB): the second
//! insert fails with a duplicate key, which means "already recorded".
//!
//! A claim moves `next_attempt_at` past the lease in the same `findAndModify` that selects the
//! document: two sender instances never claim the same email at once, and an instance that
//! dies mid-send leaves an email that becomes due again when its lease runs out.

use chrono::{DateTime, Utc};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Bson, doc},
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

/// BSON dates from chrono ones, without the bson crate's chrono feature.
pub fn millis(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

/// Chrono dates from BSON ones.
pub fn chrono(at: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or_default()
}

/// The collection, in the service's own database.
pub const COLLECTION: &str = "notifications";

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, not yet accepted by the mail server (or accepted but not yet marked: see
    /// [`crate::sender`]).
    Pending,
    /// The mail server accepted it.
    Sent,
    /// Refused for good (5xx), or given up after the configured number of attempts.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

/// One notification, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The id of the event that caused it: unique, so one event makes at most one notification.
    #[serde(rename = "_id")]
    pub event_id: String,
    /// The event's CloudEvents type, e.g. `user.registered`.
    pub event_type: String,
    /// The user it is for; `None` for mail to the administrators (stock alerts).
    pub user_id: Option<String>,
    /// `email` (the only channel so far).
    pub channel: String,
    pub template: String,
    /// The recipients, as `Name <address>`.
    pub to: Vec<String>,
    pub subject: String,
    /// The bodies are rendered once, when the event is recorded: every attempt sends exactly
    /// the same message, even if the templates change in between.
    pub text: String,
    pub html: String,
    /// `<event id@sender domain>`: the same for every attempt, so a resend after a crash is
    /// recognisable as the same message (see [`crate::sender`]).
    pub message_id: String,
    pub status: Status,
    pub attempts: i32,
    #[serde(default)]
    pub last_error: Option<String>,
    pub next_attempt_at: bson::DateTime,
    pub created_at: bson::DateTime,
    pub updated_at: bson::DateTime,
    #[serde(default)]
    pub sent_at: Option<bson::DateTime>,
}

/// A notification as its recipient lists it (no bodies, no internals).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Summary {
    #[serde(rename = "_id")]
    pub event_id: String,
    pub channel: String,
    pub template: String,
    pub to: Vec<String>,
    pub subject: String,
    pub status: Status,
    pub attempts: i32,
    pub created_at: bson::DateTime,
    #[serde(default)]
    pub sent_at: Option<bson::DateTime>,
}

/// Where a page of [`Store::list_for_user`] continues: after this (created_at, _id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub created_at: DateTime<Utc>,
    pub event_id: String,
}

/// The notifications collection.
#[derive(Debug, Clone)]
pub struct Store {
    notifications: Collection<Notification>,
}

impl Store {
    pub fn new(db: &Database) -> Self {
        Self {
            notifications: db.collection(COLLECTION),
        }
    }

    /// Creates the indexes (idempotent). The `_id` index is the uniqueness of the event id.
    pub async fn install(&self) -> mongodb::error::Result<()> {
        let index = |keys, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        self.notifications
            .create_index(index(
                doc! { "user_id": 1, "created_at": -1, "_id": -1 },
                "user_newest_first",
            ))
            .await?;
        self.notifications
            .create_index(index(
                doc! { "status": 1, "next_attempt_at": 1 },
                "due_for_sending",
            ))
            .await?;
        Ok(())
    }

    /// Records a notification. `false`: one for this event id already exists (a redelivery),
    /// and nothing was written.
    pub async fn insert(&self, notification: &Notification) -> mongodb::error::Result<bool> {
        match self.notifications.insert_one(notification).await {
            Ok(_) => Ok(true),
            Err(err) if shop_messaging::inbox::mongo::is_duplicate(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub async fn get(&self, event_id: &str) -> mongodb::error::Result<Option<Notification>> {
        self.notifications.find_one(doc! { "_id": event_id }).await
    }

    /// Claims the pending notification that has been due longest: reserves it for `lease`
    /// and counts the attempt, in one atomic single-document update.
    pub async fn claim_due(
        &self,
        lease: std::time::Duration,
    ) -> mongodb::error::Result<Option<Notification>> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        self.notifications
            .find_one_and_update(
                doc! {
                    "status": Status::Pending.as_str(),
                    "next_attempt_at": { "$lte": millis(now) },
                },
                doc! {
                    "$set": {
                        "next_attempt_at": millis(until),
                        "updated_at": millis(now),
                    },
                    "$inc": { "attempts": 1 },
                },
            )
            .sort(doc! { "next_attempt_at": 1 })
            .return_document(ReturnDocument::After)
            .await
    }

    /// The mail server accepted it.
    pub async fn mark_sent(&self, event_id: &str) -> mongodb::error::Result<()> {
        let now = bson::DateTime::now();
        self.notifications
            .update_one(
                doc! { "_id": event_id },
                doc! {
                    "$set": { "status": Status::Sent.as_str(), "sent_at": now, "updated_at": now, "last_error": Bson::Null },
                },
            )
            .await?;
        Ok(())
    }

    /// A failed attempt that is worth repeating at `next`.
    pub async fn mark_retry(
        &self,
        event_id: &str,
        error: &str,
        next: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        self.notifications
            .update_one(
                doc! { "_id": event_id, "status": Status::Pending.as_str() },
                doc! {
                    "$set": {
                        "next_attempt_at": millis(next),
                        "last_error": error,
                        "updated_at": bson::DateTime::now(),
                    },
                },
            )
            .await?;
        Ok(())
    }

    /// Given up: refused for good, or out of attempts.
    pub async fn mark_failed(&self, event_id: &str, error: &str) -> mongodb::error::Result<()> {
        self.notifications
            .update_one(
                doc! { "_id": event_id, "status": Status::Pending.as_str() },
                doc! {
                    "$set": { "status": Status::Failed.as_str(), "last_error": error, "updated_at": bson::DateTime::now() },
                },
            )
            .await?;
        Ok(())
    }

    /// Notifications waiting to be sent (a gauge for the metrics).
    pub async fn pending(&self) -> mongodb::error::Result<u64> {
        self.notifications
            .count_documents(doc! { "status": Status::Pending.as_str() })
            .await
    }

    /// `user_id`'s notifications, newest first, `limit` of them after `after`.
    pub async fn list_for_user(
        &self,
        user_id: &str,
        limit: u32,
        after: Option<&After>,
    ) -> mongodb::error::Result<Vec<Summary>> {
        use futures::TryStreamExt;

        let mut filter = doc! { "user_id": user_id };
        if let Some(after) = after {
            let at = millis(after.created_at);
            filter.insert(
                "$or",
                vec![
                    doc! { "created_at": { "$lt": at } },
                    doc! { "created_at": at, "_id": { "$lt": &after.event_id } },
                ],
            );
        }
        self.notifications
            .clone_with_type::<Summary>()
            .find(filter)
            .sort(doc! { "created_at": -1, "_id": -1 })
            .projection(doc! { "text": 0, "html": 0 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await
    }
}
