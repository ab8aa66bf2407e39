//! Deduplication by event id, in the same atomic write as the consumer's effect.
//!
//! The broker delivers at least once: after a lost connection, a crash before the ack, or a
//! relay that published twice, the same event arrives again. A consumer makes its *effect*
//! happen once by recording the event id in the same transaction as the effect: the record
//! and the effect commit together or not at all, and a second delivery finds the record.
//! Recording it in a separate step (before or after) reopens exactly the window it closes.

/// The inbox on PostgreSQL: the `messaging.inbox` table (see [`crate::outbox::postgres::install`]).
pub mod postgres {
    use std::time::Duration;

    use sqlx::{PgConnection, PgPool};

    use uuid::Uuid;

    use crate::Error;

    /// Records, in the caller's transaction, that `consumer` is handling `event_id`. `true` the
    /// first time; `false` when it was already handled, and the caller should skip its effect.
    /// [`crate::Consumer::postgres`] calls this for every event; call it yourself only for
    /// events that reach you another way.
    ///
    /// Two instances handling the same event at once: the second insert waits for the first
    /// transaction on the primary key, then finds the row, so only one effect commits.
    pub async fn claim(
        conn: &mut PgConnection,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, Error> {
        let inserted = sqlx::query(
            "INSERT INTO messaging.inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(event_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Deletes `consumer`'s inbox records older than `age` (the consumer does this on a
    /// schedule). Keep them longer than any event can be redelivered (retries, parked messages
    /// moved back): days, not minutes.
    pub async fn prune(pool: &PgPool, consumer: &str, age: Duration) -> Result<u64, Error> {
        let seconds = age.as_secs_f64();
        Ok(sqlx::query(
            "DELETE FROM messaging.inbox
             WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)",
        )
        .bind(consumer)
        .bind(seconds)
        .execute(pool)
        .await?
        .rows_affected())
    }
}

/// Helpers for a MongoDB handler's own idempotency (see [`crate::consumer::mongo`] for why it
/// needs one): the effect's document carries the event id, so the effect and its dedupe record
/// are one single-document write.
///
/// * The effect *creates* a document (a notification, a ledger entry): give it the event id in
///   a field with a unique index ([`mongo::ensure_unique`]); a redelivery's insert fails with a
///   duplicate-key error ([`mongo::is_duplicate`]), which means "already done".
/// * The effect *updates* an existing document: put the event id in the update's filter
///   (`"applied": { "$ne": id }`) and add it in the same update (`"$push": { "applied": id }`);
///   `matched_count == 0` then means "already done" (or no such document).
pub mod mongo {
    use mongodb::{Collection, IndexModel, bson::doc, error::ErrorKind, options::IndexOptions};

    use crate::Error;

    /// Creates a unique index on `field` of `collection` (idempotent).
    pub async fn ensure_unique<T: Send + Sync>(
        collection: &Collection<T>,
        field: &str,
    ) -> Result<(), Error> {
        let index = IndexModel::builder()
            .keys(doc! { field: 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name(format!("{field}_unique"))
                    .build(),
            )
            .build();
        collection.create_index(index).await?;
        Ok(())
    }

    /// True when `err` is a unique-index violation (code 11000): the effect already happened.
    pub fn is_duplicate(err: &mongodb::error::Error) -> bool {
        const DUPLICATE_KEY: i32 = 11000;
        match err.kind.as_ref() {
            ErrorKind::Write(mongodb::error::WriteFailure::WriteError(write)) => {
                write.code == DUPLICATE_KEY
            }
            ErrorKind::InsertMany(failure) => failure
                .write_errors
                .iter()
                .flatten()
                .any(|write| write.code == DUPLICATE_KEY),
            ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
            _ => false,
        }
    }
}
