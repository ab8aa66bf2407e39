//! RabbitMQ: one long-lived AMQP connection per process, kept alive by a supervisor task.
//!
//! AMQP connections are expensive (a TCP connection plus a handshake) and meant to be long-lived,
//! with cheap channels opened on them. The supervisor connects with backoff, watches the
//! connection, and replaces it when the broker goes away; users subscribe to
//! [`Amqp::watch`] to (re)declare their channels, consumers and publishers on each new
//! connection. `/readyz` reports `amqp` down while no connection is up, without making the
//! service unready (see [`crate::health`]: an outbox keeps producers working through a broker
//! outage), and the gauge `amqp_connected` says the same to the metrics.

use std::{sync::Arc, time::Duration};

use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::SecretUrl;
use crate::health::Readiness;

/// Settings for the broker.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `AMQP_URL`, e.g. `amqp://order_service:secret@rabbitmq:5672/%2f`.
    pub url: SecretUrl,
}

/// A handle to the process's broker connection.
#[derive(Clone)]
pub struct Amqp {
    current: watch::Receiver<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("connected", &self.connection().is_some())
            .finish()
    }
}

impl Amqp {
    /// The live connection, if there is one right now.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.current
            .borrow()
            .clone()
            .filter(|conn| conn.status().connected())
    }

    /// Waits up to `timeout` for a live connection.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Arc<Connection>> {
        let mut rx = self.current.clone();
        let connected =
            |conn: &Option<Arc<Connection>>| conn.as_ref().is_some_and(|c| c.status().connected());
        tokio::time::timeout(timeout, rx.wait_for(connected))
            .await
            .ok()?
            .ok()?
            .clone()
    }

    /// A receiver that changes every time the supervisor replaces the connection.
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Connection>>> {
        self.current.clone()
    }
}

/// Starts the connection supervisor and registers the `amqp` probe (reported, not required).
pub fn connect(
    config: &AmqpConfig,
    connection_name: &str,
    readiness: &Readiness,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Amqp {
    let (tx, rx) = watch::channel(None);
    tasks.spawn(supervise(
        config.url.clone(),
        connection_name.to_owned(),
        tx,
        shutdown,
    ));
    let handle = Amqp { current: rx };
    let probe = handle.clone();
    readiness.report("amqp", move || {
        let connected = probe.connection().is_some();
        async move {
            if connected {
                Ok(())
            } else {
                Err("no broker connection".to_owned())
            }
        }
    });
    handle
}

/// How often the supervisor checks that the connection is still up. lapin notices a dead
/// peer through heartbeats and I/O errors; this only bounds how soon we react to that.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// How long, at shutdown, the connection stays open for users still holding it (below the
/// default `SHUTDOWN_GRACE_SECONDS` of 25, so the close still happens within the grace period).
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

async fn supervise(
    url: SecretUrl,
    name: String,
    tx: watch::Sender<Option<Arc<Connection>>>,
    shutdown: CancellationToken,
) {
    let new_backoff = || crate::backoff::forever(Duration::from_secs(5));
    let mut backoff = new_backoff();
    while !shutdown.is_cancelled() {
        let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
        let attempt = tokio::select! {
            result = Connection::connect(url.expose(), properties) => result,
            () = shutdown.cancelled() => break,
        };
        match attempt {
            Ok(connection) => {
                tracing::info!(broker = %url, "connected to the broker");
                backoff = new_backoff();
                let connection = Arc::new(connection);
                tx.send_replace(Some(connection.clone()));
                metrics::gauge!("amqp_connected").set(1.0);
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_INTERVAL) => {
                            if !connection.status().connected() {
                                tracing::warn!("broker connection lost; reconnecting");
                                tx.send_replace(None);
                                metrics::gauge!("amqp_connected").set(0.0);
                                break;
                            }
                        }
                        () = shutdown.cancelled() => {
                            // Hand the connection out no more, but close it only once its users
                            // let go: a consumer finishing (and acknowledging) its current
                            // message, or a relay waiting for the confirms of its batch, holds
                            // its `Arc` until done. Closing under them would turn a graceful
                            // shutdown into redeliveries.
                            tx.send_replace(None);
                            let _ = tokio::time::timeout(DRAIN_LIMIT, async {
                                while Arc::strong_count(&connection) > 1 {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            })
                            .await;
                            let _ = connection.close(200, "service shutting down".into()).await;
                            return;
                        }
                    }
                }
            }
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %err, ?delay, "broker not reachable, retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
}
