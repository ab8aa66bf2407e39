//! For tests (feature `testing`): watch what a service really publishes.
//!
//! A [`Tap`] is an exclusive queue (gone with its connection) bound to the events exchange for the routing
//! keys a test cares about. Bind it *before* the action that publishes (a queue only receives
//! what is published after it exists), then take messages with a bounded wait.

use std::time::Duration;

use lapin::{
    Channel, Connection, ConnectionProperties, message::Delivery, options::BasicGetOptions,
};

use crate::{Envelope, Error, topology};

/// A private queue on the events exchange (see the module docs).
#[derive(Debug)]
pub struct Tap {
    // Kept open for as long as the tap lives: the queue is deleted with its connection.
    _connection: Connection,
    channel: Channel,
    queue: String,
}

impl Tap {
    /// Binds a fresh private queue to `routing_keys` (patterns allowed) on the broker at
    /// `amqp_url`, declaring the exchange if no service has yet.
    pub async fn bind(
        amqp_url: &str,
        routing_keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let queue = topology::declare_private_queue(&channel, routing_keys).await?;
        Ok(Self {
            _connection: connection,
            channel,
            queue,
        })
    }

    /// The next message, waiting at most `within`; `Ok(None)` when none arrived by then.
    pub async fn next(&self, within: Duration) -> Result<Option<Delivery>, lapin::Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(message) = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
            {
                return Ok(Some(message.delivery));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next message whose envelope `matches`, waiting at most `within` in all; messages
    /// that do not match (another order's, another product's) are taken and dropped. A body
    /// that is not an event envelope is an error: whatever published it broke the contract.
    pub async fn next_where(
        &self,
        within: Duration,
        matches: impl Fn(&Envelope) -> bool,
    ) -> Result<Option<Delivery>, Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(delivery) = self.next(left).await? else {
                return Ok(None);
            };
            if matches(&Envelope::from_slice(&delivery.data)?) {
                return Ok(Some(delivery));
            }
        }
    }
}
