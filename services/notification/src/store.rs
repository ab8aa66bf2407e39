//! Where notifications are kept, and how each path reaches them on two very different servers.
//!
//! # Two servers, two layouts
//!
//! The store speaks the MongoDB protocol to two very different servers:
//!
//! * **MongoDB** (compose, Helm, production): secondary indexes, atomic single-document
//!   updates, TTL indexes. Its best path is the plain one: one `notifications` collection that
//!   is at the same time the history and the send queue, with an index per query
//!   ([`Layout::Indexed`]); every path is an index lookup, so its cost does not grow with the
//!   number stored.
//! * **FerretDB v1** (the native stack, the tests, CI): only a filter that is exactly
//!   `{_id: <value>}` is pushed down to its backend; every other filter or sort reads and
//!   decodes every document of the collection, whatever indexes exist. Even the `_id` lookup
//!   is an index lookup only where the stack makes it one: on PostgreSQL FerretDB queries
//!   `_jsonb->$1 @> $2`, which the btree index it creates cannot serve, so the native stack
//!   adds a GIN index on `_id` to every FerretDB table (ADR 0018); on SQLite, or on a FerretDB
//!   set up without it, each lookup scans its collection. Its `findAndModify` and `update` are
//!   also read-then-overwrite, not atomic between two clients; only an insert (unique `_id`)
//!   and a delete (which counts what it deleted) are. [`Layout::Keyed`] is built from those:
//!   every access to the history is by `_id`, and what must be found without knowing an
//!   `_id` lives in small collections (the pending sends, the claims), so searching for due
//!   work never reads the history. The history is also **partitioned by day**
//!   ([`history_collection`]): an event id is a UUIDv7, whose timestamp names the day's
//!   collection, so retention drops whole days, and where no index serves `_id` a lookup
//!   scans one day, not the whole history. Measured with 100,000 stored (ADR 0012, ADR 0018):
//!   a claim 268 ms with one scanned collection, 33 ms with day partitions, and an index
//!   lookup with the `_id` index.
//!
//! [`Layout::detect`] picks the layout from `buildInfo` (FerretDB v1 reports
//! `ferretdbVersion: "v1..."`). Both layouts keep the same history documents, so the API and
//! the record of what was sent are the same either way.
//!
//! # The guarantees (both layouts)
//!
//! * **One notification per event id.** The history document's `_id` **is the event id**;
//!   inserting it is the consumer's effect, a single-document write that a redelivery hits as
//!   a duplicate key ("already recorded"), on any server.
//! * **One send per claim, under a lease.** A claim reserves an email for `lease` (longer than
//!   one SMTP conversation) and counts the attempt; an instance that dies mid-send leaves an
//!   email that becomes due again when the lease runs out (see [`crate::sender`] for the one
//!   duplicate this allows).
//!
//! # `Layout::Keyed` (FerretDB v1)
//!
//! ```text
//! notifications_<yyyymmdd> {_id: event id, ...}   the history, one collection per day of the id; by _id only
//! notifications      {_id: other id, ...}                          the history of ids that are not UUIDv7
//! notification_outbox {_id: event id, attempts, next_attempt_at}   pending sends only: deleted when done
//! notification_claims {_id: "<event id>#<attempt>", at}            one insert per attempt = the claim
//! notification_by_user {_id: "<user>:<yyyy-mm>", entries: [{id, at}]}  a user's ids per month
//! ```
//!
//! * **Record**: insert the history document (the uniqueness above), then its outbox entry and
//!   its id in the user's month bucket. A crash between them is repaired when the event is
//!   handled again (the consumer redelivers it: the handler did not return): a duplicate
//!   finds the history `pending` and re-adds what may be missing ([`Store::recorded`]).
//! * **The first attempt** of a new email is usually claimed by its recording: the handler
//!   records it with `attempts: 1` and `next_attempt_at` a lease ahead (the history insert on
//!   the unique event id is the atomic step) and hands it to its sender in memory
//!   ([`crate::sender::Wake`]), so sending it costs no claim and no read here.
//! * **Claim** ([`Store::claim`]): for every other attempt, and an email recorded unclaimed
//!   (its sender too far behind), the sender mostly knows *which* email to claim — the handler
//!   hands it the id it just recorded — so no search is needed: read the outbox entry by `_id`;
//!   if it is due, insert the claim `<id>#<attempts + 1>`. That insert is atomic on every
//!   server: of two instances claiming the same attempt, one gets a duplicate key and backs
//!   off. The winner pushes the entry's `next_attempt_at` past the lease and reads the message
//!   from the history by `_id`. Retries (and ids nobody handed over) are found by
//!   [`Store::due`]: a scan of the outbox, which holds the pending emails only, never the
//!   history.
//! * **Outcome**: the history document by `_id`; the outbox entry deleted (sent, failed) or
//!   rescheduled (retry); the claim deleted.
//! * **Listing** ([`Store::list_for_user`]): the user's month buckets newest first, by `_id`,
//!   back to the retention horizon (so at most `retention / 30 + 1` reads), until a page is
//!   full; then each listed notification by `_id`.
//!
//! # Retention
//!
//! Rendered emails hold personal data: they are kept `NOTIFICATION_RETENTION_DAYS`. On MongoDB a
//! TTL index on `created_at` deletes them; FerretDB v1 does not implement TTL indexes
//! (`expireAfterSeconds` is refused), so [`Store::install`] reports [`Expiry::Sweep`] and the
//! service deletes expired documents itself every hour ([`Store::expire`]).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Datelike, Utc};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Bson, Document, doc},
    error::ErrorKind,
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};
use shop_runtime::stores::mongo::Server;
use uuid::Uuid;

/// BSON dates from chrono ones, without the bson crate's chrono feature.
pub fn millis(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

/// Chrono dates from BSON ones.
pub fn chrono(at: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or_default()
}

/// The history: one document per notification, `_id` = the event id.
pub const COLLECTION: &str = "notifications";
/// [`Layout::Keyed`]: the pending sends.
pub const OUTBOX: &str = "notification_outbox";
/// [`Layout::Keyed`]: one document per claimed attempt.
pub const CLAIMS: &str = "notification_claims";
/// [`Layout::Keyed`]: each user's notification ids, one document per user and month.
pub const BY_USER: &str = "notification_by_user";

/// The TTL index's name (MongoDB).
const RETENTION_INDEX: &str = "retention";
/// How many due ids one scan of the outbox hands the sender.
pub const DUE_BATCH: i64 = 100;

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = NotificationStatus)]
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

/// One notification, as stored in the history.
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
    /// [`Layout::Keyed`]: this attempt was claimed by a document in the claims collection
    /// ([`Store::claim`]), which [`Store::mark_sent`] and the others delete when it is over. An
    /// attempt claimed by its recording (`crate::sender::Reservation::claim`) has none, and
    /// settling it costs no delete. Never stored: it describes this process's claim.
    #[serde(skip)]
    pub claim_document: bool,
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

/// [`Layout::Keyed`]: a pending send. Small on purpose: [`Store::due`] scans these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Queued {
    #[serde(rename = "_id")]
    event_id: String,
    /// Attempts claimed so far.
    attempts: i32,
    next_attempt_at: bson::DateTime,
    created_at: bson::DateTime,
}

/// One id in a user's month bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    id: String,
    at: bson::DateTime,
}

/// [`Layout::Keyed`]: a user's notifications of one month (UTC).
#[derive(Debug, Clone, Deserialize)]
struct Bucket {
    #[serde(default)]
    entries: Vec<Entry>,
}

/// How the notifications are laid out (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One collection, an index per query: MongoDB (and any server that uses its indexes).
    Indexed,
    /// Every history access by `_id`, pending sends and per-user ids in small collections:
    /// FerretDB v1, which pushes nothing else down.
    Keyed,
}

impl Layout {
    /// [`Layout::Keyed`] for FerretDB v1, [`Layout::Indexed`] for anything else
    /// ([`Server::detect`]).
    pub async fn detect(db: &Database) -> mongodb::error::Result<Self> {
        Ok(Self::for_server(Server::detect(db).await?))
    }

    fn for_server(server: Server) -> Self {
        match server {
            Server::FerretDbV1 => Self::Keyed,
            Server::Indexed => Self::Indexed,
        }
    }
}

/// How expired notifications go (see [`Store::install`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The server deletes them (a TTL index): nothing to do.
    Ttl,
    /// The server cannot: the service calls [`Store::expire`] periodically.
    Sweep,
}

/// The notification store.
#[derive(Debug, Clone)]
pub struct Store {
    layout: Layout,
    retention: Duration,
    db: Database,
    /// The history on [`Layout::Indexed`]; on [`Layout::Keyed`] that of event ids that are
    /// not UUIDv7 (see [`history_collection`]).
    notifications: Collection<Notification>,
    outbox: Collection<Queued>,
    claims: Collection<Document>,
    by_user: Collection<Document>,
    /// [`Layout::Keyed`]: FerretDB v1's updates are read-then-overwrite, so two concurrent
    /// `$addToSet`s on one bucket could lose one id; this instance's writes to one bucket take
    /// turns ([`BucketTurns`]).
    buckets: Arc<BucketTurns>,
}

/// `true` for a MongoDB command error with one of `codes`.
fn command_code(err: &mongodb::error::Error, codes: &[i32]) -> bool {
    matches!(err.kind.as_ref(), ErrorKind::Command(command) if codes.contains(&command.code))
}

fn is_duplicate(err: &mongodb::error::Error) -> bool {
    shop_messaging::inbox::mongo::is_duplicate(err)
}

/// A month as a number (`year * 12 + month - 1`), so months compare and count down.
fn month_of(at: DateTime<Utc>) -> i32 {
    at.year() * 12 + i32::try_from(at.month0()).unwrap_or(0)
}

/// Turns for the writes to one bucket, [`Layout::Keyed`]: a fixed set of locks, each bucket id
/// hashed to one. Two writes to one bucket always wait for each other; writes to different
/// buckets only when they share a lock (1 in [`BucketTurns::LOCKS`]). One lock for every bucket
/// would queue every recording of the instance behind the slowest bucket update, whoever it is
/// for; a lock per bucket id would need a map that grows with the customers and is swept. A
/// fixed array of mutexes needs no crate.
#[derive(Debug)]
pub(crate) struct BucketTurns([tokio::sync::Mutex<()>; Self::LOCKS]);

impl BucketTurns {
    const LOCKS: usize = 64;

    /// The lock of bucket `id`.
    fn of(&self, id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(id);
        // The remainder is below LOCKS, so it fits any usize.
        #[allow(clippy::cast_possible_truncation)]
        &self.0[(hash % Self::LOCKS as u64) as usize]
    }
}

impl Default for BucketTurns {
    fn default() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

/// `<user>:<yyyy-mm>`: the `_id` of a user's bucket for `month`.
fn bucket_id(user_id: &str, month: i32) -> String {
    format!(
        "{user_id}:{:04}-{:02}",
        month.div_euclid(12),
        month.rem_euclid(12) + 1
    )
}

/// `<event id>#<attempt>`: the `_id` whose insert is the claim of that attempt.
fn claim_id(event_id: &str, attempt: i32) -> String {
    format!("{event_id}#{attempt}")
}

/// The history collection the notification of `event_id` lives in, on [`Layout::Keyed`]:
/// `notifications_<yyyymmdd>`, the UTC day of a UUIDv7 event id's timestamp (every event this
/// system publishes has one: `Envelope::new`), or `notifications` for any other id.
///
/// Why days: retention drops whole days instead of deleting documents one by one (a delete
/// by date is a scan on FerretDB v1), and where no index serves `_id` (module docs) a read by
/// `_id` scans one day's notifications, whatever the history holds. The id alone says which
/// day, so no lookup is needed to find it.
pub fn history_collection(event_id: &str) -> String {
    match day_of(event_id) {
        Some(day) => format!("{COLLECTION}_{day}"),
        None => COLLECTION.to_owned(),
    }
}

/// A sent order confirmation of some customer, made at `at`, as this store keeps it: what the
/// tests and `make bench` write in bulk to stand for a history that has run for weeks (bodies
/// of a realistic few kilobytes). Its `_id` is the UUIDv7 a producer would have made at `at`;
/// it belongs in the [`history_collection`] of that id.
pub fn past_order_email(i: u64, at: DateTime<Utc>) -> Document {
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap_or_default(),
        at.timestamp_subsec_nanos(),
    ));
    let body = "<tr><td>Blue mug</td><td>2</td><td>12.50 EUR</td></tr>".repeat(40);
    let at = millis(at);
    doc! {
        "_id": id.to_string(),
        "event_type": "order.confirmed",
        "user_id": Uuid::new_v4().to_string(),
        "channel": "email",
        "template": "order_confirmed",
        "to": [format!("someone-{i}@example.com")],
        "subject": format!("Your order {i} is confirmed"),
        "text": &body,
        "html": &body,
        "message_id": format!("<{id}@shop.example>"),
        "status": "sent",
        "attempts": 1,
        "next_attempt_at": at,
        "created_at": at,
        "updated_at": at,
        "sent_at": at,
    }
}

/// Writes `emails` (documents of the history, such as [`past_order_email`]) in bulk, each into
/// the [`history_collection`] of its `_id`: how tests and `make bench` stand up a long history
/// without going through the service.
pub async fn write_history(
    db: &Database,
    emails: impl IntoIterator<Item = Document>,
) -> mongodb::error::Result<()> {
    let mut by_collection: std::collections::BTreeMap<String, Vec<Document>> =
        std::collections::BTreeMap::new();
    for email in emails {
        let collection = history_collection(email.get_str("_id").unwrap_or_default());
        let batch = by_collection.entry(collection.clone()).or_default();
        batch.push(email);
        if batch.len() == 2_000 {
            let full = std::mem::take(batch);
            db.collection::<Document>(&collection)
                .insert_many(full)
                .await?;
        }
    }
    for (collection, batch) in by_collection {
        if !batch.is_empty() {
            db.collection::<Document>(&collection)
                .insert_many(batch)
                .await?;
        }
    }
    Ok(())
}

/// Whether `collection` holds history: one of the day partitions or the collection of other
/// ids (counting what is stored means counting all of them).
pub fn is_history_collection(collection: &str) -> bool {
    collection == COLLECTION || partition_day(collection).is_some()
}

/// `yyyymmdd` of a UUIDv7's timestamp.
fn day_of(event_id: &str) -> Option<String> {
    let id = Uuid::parse_str(event_id).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    let at = DateTime::<Utc>::from_timestamp(i64::try_from(seconds).ok()?, nanos)?;
    Some(at.format("%Y%m%d").to_string())
}

/// The day of a partition's collection name, back as the number `yyyymmdd` (so days compare).
fn partition_day(collection: &str) -> Option<u32> {
    let day = collection.strip_prefix(COLLECTION)?.strip_prefix('_')?;
    (day.len() == 8).then(|| day.parse().ok()).flatten()
}

/// The keyset order of a listing: newest first, then the id descending.
fn newest_first(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    (b.at, &b.id).cmp(&(a.at, &a.id))
}

impl Store {
    /// A store of `layout` in `db` that keeps notifications for `retention`.
    pub fn new(db: &Database, layout: Layout, retention: Duration) -> Self {
        Self {
            layout,
            retention,
            db: db.clone(),
            notifications: db.collection(COLLECTION),
            outbox: db.collection(OUTBOX),
            claims: db.collection(CLAIMS),
            by_user: db.collection(BY_USER),
            buckets: Arc::default(),
        }
    }

    /// A store whose layout fits the server ([`Layout::detect`]).
    pub async fn open(db: &Database, retention: Duration) -> mongodb::error::Result<Self> {
        Ok(Self::new(db, Layout::detect(db).await?, retention))
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Where the notification of `event_id` is kept: the one collection on
    /// [`Layout::Indexed`], its day's on [`Layout::Keyed`] ([`history_collection`]).
    fn history(&self, event_id: &str) -> Collection<Notification> {
        match self.layout {
            Layout::Indexed => self.notifications.clone(),
            Layout::Keyed => self.db.collection(&history_collection(event_id)),
        }
    }

    /// Creates the indexes (idempotent) and says how notifications expire. The `_id` index is
    /// the uniqueness of the event id.
    ///
    /// [`Layout::Keyed`] creates no secondary index: FerretDB v1 would maintain it and never
    /// use it. The TTL index is tried on every server: where it is refused as not implemented
    /// (FerretDB v1) the answer is [`Expiry::Sweep`]; where it exists with another period (the
    /// setting changed) `collMod` moves it.
    pub async fn install(&self) -> mongodb::error::Result<Expiry> {
        /// `NotImplemented`, `CommandNotSupported`, `InvalidOptions`.
        const UNSUPPORTED: [i32; 3] = [238, 115, 72];
        /// `IndexOptionsConflict`, `IndexKeySpecsConflict`.
        const CONFLICT: [i32; 2] = [85, 86];

        if self.layout == Layout::Indexed {
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
        }
        match self
            .notifications
            .create_index(retention_index(self.retention))
            .await
        {
            Ok(_) => Ok(Expiry::Ttl),
            Err(err) if command_code(&err, &UNSUPPORTED) => Ok(Expiry::Sweep),
            Err(err) if command_code(&err, &CONFLICT) => {
                let seconds = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
                self.notifications
                    .client()
                    .database(self.notifications.namespace().db.as_str())
                    .run_command(doc! {
                        "collMod": COLLECTION,
                        "index": { "name": RETENTION_INDEX, "expireAfterSeconds": seconds },
                    })
                    .await?;
                Ok(Expiry::Ttl)
            }
            Err(err) => Err(err),
        }
    }

    /// Records a notification. `false`: one for this event id already exists (a redelivery),
    /// and nothing new was recorded.
    pub async fn insert(&self, notification: &Notification) -> mongodb::error::Result<bool> {
        match self
            .history(&notification.event_id)
            .insert_one(notification)
            .await
        {
            Ok(_) => {
                if self.layout == Layout::Keyed {
                    self.enqueue(notification).await?;
                    self.index(notification).await?;
                }
                Ok(true)
            }
            Err(err) if is_duplicate(&err) => {
                if self.layout == Layout::Keyed
                    && let Some(existing) = self.get(&notification.event_id).await?
                {
                    self.repair(&existing).await?;
                }
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Whether the event's notification is recorded. [`Layout::Keyed`]: a recorded one also
    /// gets its outbox entry and bucket entry back, had a crash cut its recording short.
    pub async fn recorded(&self, event_id: &str) -> mongodb::error::Result<bool> {
        let Some(existing) = self.get(event_id).await? else {
            return Ok(false);
        };
        if self.layout == Layout::Keyed {
            self.repair(&existing).await?;
        }
        Ok(true)
    }

    /// [`Layout::Keyed`]: the outbox and bucket entries of a recorded notification, each added
    /// if missing (both writes are idempotent). An outbox entry re-added just after the sender
    /// finished is harmless: [`Store::claim`] reads the history first and drops it.
    async fn repair(&self, existing: &Notification) -> mongodb::error::Result<()> {
        if existing.status == Status::Pending {
            self.enqueue(existing).await?;
        }
        self.index(existing).await
    }

    /// [`Layout::Keyed`]: the notification's outbox entry, unless it has one.
    async fn enqueue(&self, notification: &Notification) -> mongodb::error::Result<()> {
        if notification.status != Status::Pending {
            return Ok(());
        }
        let queued = Queued {
            event_id: notification.event_id.clone(),
            attempts: notification.attempts,
            next_attempt_at: notification.next_attempt_at,
            created_at: notification.created_at,
        };
        match self.outbox.insert_one(&queued).await {
            Err(err) if !is_duplicate(&err) => Err(err),
            _ => Ok(()),
        }
    }

    /// [`Layout::Keyed`]: the notification's id in its user's bucket of its month.
    async fn index(&self, notification: &Notification) -> mongodb::error::Result<()> {
        let Some(user_id) = notification.user_id.as_deref() else {
            return Ok(());
        };
        let id = bucket_id(user_id, month_of(chrono(notification.created_at)));
        let entry = doc! { "id": &notification.event_id, "at": notification.created_at };
        let _turn = self.buckets.of(&id).lock().await;
        // Two instances creating one bucket at once: one upsert loses on the unique `_id`,
        // and its second try updates the bucket the other created.
        for attempt in 0..2 {
            let written = self
                .by_user
                .update_one(
                    doc! { "_id": &id },
                    doc! { "$addToSet": { "entries": &entry } },
                )
                .upsert(true)
                .await;
            match written {
                Err(err) if attempt == 0 && is_duplicate(&err) => {}
                other => return other.map(drop),
            }
        }
        Ok(())
    }

    pub async fn get(&self, event_id: &str) -> mongodb::error::Result<Option<Notification>> {
        self.history(event_id)
            .find_one(doc! { "_id": event_id })
            .await
    }

    /// Claims `event_id`'s notification if it is pending and due: reserves it for `lease` and
    /// counts the attempt. `None`: not pending, not due, or claimed by someone else.
    pub async fn claim(
        &self,
        event_id: &str,
        lease: Duration,
    ) -> mongodb::error::Result<Option<Notification>> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        match self.layout {
            // One atomic update on MongoDB, found through `_id`.
            Layout::Indexed => {
                self.notifications
                    .find_one_and_update(
                        doc! {
                            "_id": event_id,
                            "status": Status::Pending.as_str(),
                            "next_attempt_at": { "$lte": millis(now) },
                        },
                        Self::lease_update(now, until),
                    )
                    .return_document(ReturnDocument::After)
                    .await
            }
            Layout::Keyed => self.claim_keyed(event_id, lease, now, until).await,
        }
    }

    fn lease_update(now: DateTime<Utc>, until: DateTime<Utc>) -> Document {
        doc! {
            "$set": { "next_attempt_at": millis(until), "updated_at": millis(now) },
            "$inc": { "attempts": 1 },
        }
    }

    /// The claim of [`Layout::Keyed`], described in the module docs. Every step is by `_id`.
    async fn claim_keyed(
        &self,
        event_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<Notification>> {
        let Some(queued) = self.outbox.find_one(doc! { "_id": event_id }).await? else {
            return Ok(None);
        };
        if queued.next_attempt_at > millis(now) {
            return Ok(None);
        }
        let attempt = queued.attempts + 1;
        let claim = claim_id(event_id, attempt);
        if let Err(err) = self
            .claims
            .insert_one(doc! { "_id": &claim, "at": millis(now) })
            .await
        {
            if !is_duplicate(&err) {
                return Err(err);
            }
            // Someone claimed this attempt. If that was longer ago than a lease and the entry
            // still shows the attempt unclaimed, the claimer died between its claim and its
            // update: skip the attempt number, so the next claim can take the next one.
            let stale = millis(now - chrono::Duration::from_std(lease).unwrap_or_default());
            if let Some(previous) = self.claims.find_one(doc! { "_id": &claim }).await?
                && previous.get_datetime("at").is_ok_and(|at| *at < stale)
            {
                self.outbox
                    .update_one(
                        doc! { "_id": event_id },
                        doc! { "$max": { "attempts": attempt } },
                    )
                    .await?;
            }
            return Ok(None);
        }
        self.outbox
            .update_one(
                doc! { "_id": event_id },
                doc! { "$set": { "attempts": attempt, "next_attempt_at": millis(until) } },
            )
            .await?;
        match self.get(event_id).await? {
            Some(mut notification) if notification.status == Status::Pending => {
                notification.attempts = attempt;
                notification.claim_document = true;
                Ok(Some(notification))
            }
            // Done already (an entry re-added by a repair), or expired: nothing to send.
            _ => {
                self.outbox.delete_one(doc! { "_id": event_id }).await?;
                self.claims.delete_one(doc! { "_id": &claim }).await?;
                Ok(None)
            }
        }
    }

    /// Claims the pending notification that has been due longest ([`Layout::Indexed`]: one
    /// atomic update on the `due_for_sending` index). [`Layout::Keyed`] answers `None`: its
    /// sender claims the ids of [`Store::due`] one by one instead.
    pub async fn claim_due(&self, lease: Duration) -> mongodb::error::Result<Option<Notification>> {
        if self.layout == Layout::Keyed {
            return Ok(None);
        }
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        self.notifications
            .find_one_and_update(
                doc! {
                    "status": Status::Pending.as_str(),
                    "next_attempt_at": { "$lte": millis(now) },
                },
                Self::lease_update(now, until),
            )
            .sort(doc! { "next_attempt_at": 1 })
            .return_document(ReturnDocument::After)
            .await
    }

    /// [`Layout::Keyed`]: the ids of up to `limit` due notifications, longest due first — a
    /// scan of the outbox, which holds only what is pending.
    pub async fn due(&self, limit: i64) -> mongodb::error::Result<Vec<String>> {
        let queued: Vec<Document> = self
            .outbox
            .clone_with_type::<Document>()
            .find(doc! { "next_attempt_at": { "$lte": bson::DateTime::now() } })
            .sort(doc! { "next_attempt_at": 1 })
            .projection(doc! { "_id": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(queued
            .iter()
            .filter_map(|entry| entry.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// The history document, by `_id` alone on [`Layout::Keyed`] (FerretDB v1 pushes down
    /// nothing more), guarded by its status on [`Layout::Indexed`].
    fn history_filter(&self, event_id: &str) -> Document {
        match self.layout {
            Layout::Indexed => doc! { "_id": event_id, "status": Status::Pending.as_str() },
            Layout::Keyed => doc! { "_id": event_id },
        }
    }

    /// [`Layout::Keyed`]: the claimed attempt is over: its claim goes, and the outbox entry
    /// goes (`next = None`) or waits until `next`.
    async fn settle(
        &self,
        claimed: &Notification,
        next: Option<DateTime<Utc>>,
    ) -> mongodb::error::Result<()> {
        if self.layout == Layout::Indexed {
            return Ok(());
        }
        let id = claimed.event_id.as_str();
        match next {
            None => {
                self.outbox.delete_one(doc! { "_id": id }).await?;
            }
            Some(next) => {
                self.outbox
                    .update_one(
                        doc! { "_id": id },
                        doc! { "$set": { "next_attempt_at": millis(next) } },
                    )
                    .await?;
            }
        }
        if claimed.claim_document {
            self.claims
                .delete_one(doc! { "_id": claim_id(id, claimed.attempts) })
                .await?;
        }
        Ok(())
    }

    /// The mail server accepted it. The history says so before the outbox entry goes, so an
    /// entry found without a pending history is always one that may be dropped.
    pub async fn mark_sent(&self, claimed: &Notification) -> mongodb::error::Result<()> {
        let now = bson::DateTime::now();
        self.history(&claimed.event_id)
            .update_one(
                doc! { "_id": &claimed.event_id },
                doc! {
                    "$set": {
                        "status": Status::Sent.as_str(),
                        "attempts": claimed.attempts,
                        "sent_at": now,
                        "updated_at": now,
                        "last_error": Bson::Null,
                    },
                },
            )
            .await?;
        self.settle(claimed, None).await
    }

    /// A failed attempt that is worth repeating at `next`.
    pub async fn mark_retry(
        &self,
        claimed: &Notification,
        error: &str,
        next: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        self.history(&claimed.event_id)
            .update_one(
                self.history_filter(&claimed.event_id),
                doc! {
                    "$set": {
                        "attempts": claimed.attempts,
                        "next_attempt_at": millis(next),
                        "last_error": error,
                        "updated_at": bson::DateTime::now(),
                    },
                },
            )
            .await?;
        self.settle(claimed, Some(next)).await
    }

    /// Given up: refused for good, or out of attempts.
    pub async fn mark_failed(
        &self,
        claimed: &Notification,
        error: &str,
    ) -> mongodb::error::Result<()> {
        self.history(&claimed.event_id)
            .update_one(
                self.history_filter(&claimed.event_id),
                doc! {
                    "$set": {
                        "status": Status::Failed.as_str(),
                        "attempts": claimed.attempts,
                        "last_error": error,
                        "updated_at": bson::DateTime::now(),
                    },
                },
            )
            .await?;
        self.settle(claimed, None).await
    }

    /// Notifications waiting to be sent (a gauge for the metrics): the outbox's size on
    /// [`Layout::Keyed`], never a count over the history.
    pub async fn pending(&self) -> mongodb::error::Result<u64> {
        match self.layout {
            Layout::Indexed => {
                self.notifications
                    .count_documents(doc! { "status": Status::Pending.as_str() })
                    .await
            }
            Layout::Keyed => self.outbox.count_documents(doc! {}).await,
        }
    }

    /// `user_id`'s notifications, newest first, `limit` of them after `after`.
    pub async fn list_for_user(
        &self,
        user_id: &str,
        limit: u32,
        after: Option<&After>,
    ) -> mongodb::error::Result<Vec<Summary>> {
        match self.layout {
            Layout::Indexed => self.list_indexed(user_id, limit, after).await,
            Layout::Keyed => self.list_keyed(user_id, limit, after).await,
        }
    }

    /// One query on the `user_newest_first` index.
    async fn list_indexed(
        &self,
        user_id: &str,
        limit: u32,
        after: Option<&After>,
    ) -> mongodb::error::Result<Vec<Summary>> {
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

    /// The user's month buckets from the cursor's month back to the retention horizon, until
    /// a page is full (a bucket covers a whole month, so once a page is full no older month
    /// can hold anything newer); then the page's notifications, each by `_id`.
    async fn list_keyed(
        &self,
        user_id: &str,
        limit: u32,
        after: Option<&After>,
    ) -> mongodb::error::Result<Vec<Summary>> {
        let limit = limit as usize;
        let now = Utc::now();
        let horizon = now - chrono::Duration::from_std(self.retention).unwrap_or_default();
        let oldest = month_of(horizon);
        let cursor = after.map(|after| Entry {
            id: after.event_id.clone(),
            at: millis(after.created_at),
        });
        let mut month = after.map_or(month_of(now), |after| {
            month_of(after.created_at).min(month_of(now))
        });
        let mut page: Vec<Entry> = Vec::new();
        while month >= oldest && page.len() < limit {
            let bucket = self
                .by_user
                .clone_with_type::<Bucket>()
                .find_one(doc! { "_id": bucket_id(user_id, month) })
                .await?;
            if let Some(bucket) = bucket {
                page.extend(bucket.entries.into_iter().filter(|entry| {
                    cursor
                        .as_ref()
                        .is_none_or(|cursor| newest_first(cursor, entry).is_lt())
                }));
            }
            month -= 1;
        }
        page.sort_by(newest_first);
        page.dedup_by(|a, b| a.id == b.id);
        page.truncate(limit);

        let reads = page.iter().map(|entry| {
            let summaries = self.history(&entry.id).clone_with_type::<Summary>();
            async move {
                summaries
                    .find_one(doc! { "_id": &entry.id })
                    .projection(doc! { "text": 0, "html": 0 })
                    .await
            }
        });
        // Expired meanwhile (or not yet swept from the bucket): not listed.
        Ok(futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Deletes what is older than the retention period, as of `now`: the history and, on
    /// [`Layout::Keyed`], the outbox entries, claims and month buckets that go with it.
    /// Returns how many notifications went.
    ///
    /// On FerretDB v1 each delete reads its whole collection (no index serves a filter there):
    /// on [`Layout::Keyed`] that is one day's partition and the small collections, once an
    /// hour; older days are dropped whole.
    pub async fn expire(&self, now: DateTime<Utc>) -> mongodb::error::Result<u64> {
        let horizon = now - chrono::Duration::from_std(self.retention).unwrap_or_default();
        let before = doc! { "$lt": millis(horizon) };
        let mut deleted = self
            .notifications
            .delete_many(doc! { "created_at": before.clone() })
            .await?
            .deleted_count;
        if self.layout == Layout::Keyed {
            // Whole days before the horizon's day go at once; the horizon's own day is
            // deleted document by document (a scan of one day); later days are kept, and may
            // be: a notification is recorded after its event was made (`created_at` is never
            // before the day its id names), so nothing in a later day is past the horizon.
            let horizon_day: u32 = horizon.format("%Y%m%d").to_string().parse().unwrap_or(0);
            for name in self.db.list_collection_names().await? {
                let Some(day) = partition_day(&name) else {
                    continue;
                };
                let partition = self.db.collection::<Document>(&name);
                if day < horizon_day {
                    deleted += partition.count_documents(doc! {}).await?;
                    partition.drop().await?;
                } else if day == horizon_day {
                    deleted += partition
                        .delete_many(doc! { "created_at": before.clone() })
                        .await?
                        .deleted_count;
                }
            }
            self.outbox
                .delete_many(doc! { "created_at": before.clone() })
                .await?;
            self.claims.delete_many(doc! { "at": before }).await?;
            let oldest = month_of(horizon);
            let mut stale = Vec::new();
            let mut buckets = self
                .by_user
                .find(doc! {})
                .projection(doc! { "_id": 1 })
                .await?;
            while let Some(bucket) = buckets.try_next().await? {
                if let Ok(id) = bucket.get_str("_id")
                    && bucket_month(id).is_some_and(|month| month < oldest)
                {
                    stale.push(id.to_owned());
                }
            }
            for id in stale {
                self.by_user.delete_one(doc! { "_id": id }).await?;
            }
        }
        Ok(deleted)
    }
}

/// The TTL index: a document goes `retention` after its `created_at`.
fn retention_index(retention: Duration) -> IndexModel {
    IndexModel::builder()
        .keys(doc! { "created_at": 1 })
        .options(
            IndexOptions::builder()
                .name(RETENTION_INDEX.to_owned())
                .expire_after(retention)
                .build(),
        )
        .build()
}

/// The month of a bucket `_id` (`<user>:<yyyy-mm>`).
fn bucket_month(id: &str) -> Option<i32> {
    let (_, month) = id.rsplit_once(':')?;
    let (year, month) = month.split_once('-')?;
    Some(year.parse::<i32>().ok()? * 12 + month.parse::<i32>().ok()? - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferretdb_v1_gets_the_keyed_layout_everything_else_the_indexed_one() {
        assert_eq!(Layout::for_server(Server::FerretDbV1), Layout::Keyed);
        assert_eq!(Layout::for_server(Server::Indexed), Layout::Indexed);
    }

    #[test]
    fn a_uuid_v7_event_id_names_its_days_partition_and_other_ids_the_one_collection() {
        // 2026-12-07T01:02:03Z as a UUIDv7.
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_796_605_323, 0);
        let v7 = Uuid::new_v7(ts).to_string();
        assert_eq!(history_collection(&v7), "notifications_20261207");
        assert_eq!(partition_day("notifications_20261207"), Some(20_261_207));
        assert_eq!(history_collection(&Uuid::new_v4().to_string()), COLLECTION);
        assert_eq!(history_collection("not-a-uuid"), COLLECTION);
        assert_eq!(partition_day(COLLECTION), None);
        assert_eq!(partition_day("notification_outbox"), None);
        assert_eq!(partition_day("notifications_2026"), None);
        assert!(is_history_collection(COLLECTION));
        assert!(is_history_collection("notifications_20261207"));
        assert!(!is_history_collection("notification_outbox"));
    }

    #[test]
    fn bucket_ids_name_the_user_and_the_month_and_read_back() {
        let at = DateTime::parse_from_rfc3339("2025-01-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let month = month_of(at);
        assert_eq!(bucket_id("u1", month), "u1:2025-01");
        assert_eq!(bucket_id("u1", month - 1), "u1:2024-12");
        assert_eq!(bucket_month("u1:2024-12"), Some(month - 1));
        assert_eq!(bucket_month("garbage"), None);
    }

    #[test]
    fn the_ttl_index_expires_after_the_retention_period() {
        let index = retention_index(Duration::from_secs(90 * 86_400));
        assert_eq!(index.keys, doc! { "created_at": 1 });
        let options = index.options.unwrap();
        assert_eq!(options.expire_after, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(options.name.as_deref(), Some(RETENTION_INDEX));
    }
}
