//! Transactional outboxes: an event is stored by the same atomic write as the state change
//! that it announces, and a relay publishes it afterwards.
//!
//! Publishing straight to the broker from a request handler loses events (the broker is down,
//! the process dies between commit and publish) or invents them (the publish succeeds, the
//! commit fails). Writing the event next to the state change and relaying it with publisher
//! confirms turns both into "published at least once, eventually".
//!
//! * [`postgres`]: a table written in the caller's transaction; several relays share it.
//! * [`mongo`]: pending events inside the changed document itself, because a standalone
//!   MongoDB-compatible server (FerretDB) has no multi-document transactions.

pub mod mongo;
pub mod postgres;

use std::time::Duration;

use tokio::sync::Notify;

/// Wakes the relays of this process; signalled after a producer's write ([`postgres::commit`],
/// [`mongo::written`]), awaited by both relays between batches.
///
/// One for the whole process rather than one per database or store: a producer does not know
/// which relay serves its database, and a relay woken for another store's write only runs one
/// empty query.
static WAKE: Notify = Notify::const_new();

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows (PostgreSQL) or documents (MongoDB) taken per round.
    pub batch_size: i64,
    /// How often to look for pending events: the fallback behind the wake of
    /// [`postgres::commit`] and [`mongo::written`]. It bounds the delay of events written any
    /// other way or by another process (the only trigger of a relay running in a process of
    /// its own), and, for MongoDB, of entries deferred after a refusal.
    pub poll_interval: Duration,
    /// The longest wait between attempts while the broker or the database is down, and
    /// between two attempts of one message the broker refused.
    pub max_backoff: Duration,
    /// How many times the broker may refuse one message before the relay parks it (moves it
    /// aside with the reason) so that it stops holding anything up.
    pub max_attempts: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            max_attempts: 10,
        }
    }
}
