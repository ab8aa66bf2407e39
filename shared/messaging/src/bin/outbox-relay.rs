//! The PostgreSQL outbox relay as a process of its own, for a database whose service does not
//! run the relay itself (and the process the delivery tests kill between the broker's confirm
//! and the relay's commit).
//!
//! Reads `DATABASE_URL` and `AMQP_URL` like any service, serves `/healthz`, `/readyz` and
//! `/metrics`, and relays until SIGTERM.
//!
//! It polls every 250 ms instead of the default 5 s: producers wake only the relays of their
//! own process (`outbox::postgres::commit`), so nothing ever wakes this one and the poll is
//! all that bounds an event's delay here. An empty poll is one query on a near-empty table.

use std::time::Duration;

use shop_messaging::outbox::{RelayConfig, postgres::Relay};
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The relay's only trigger (see the module docs).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct OutboxRelay;

impl Service for OutboxRelay {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("outbox-relay", 8099, 50099)
            .postgres_without_migrations()
            .amqp()
    }

    async fn build(ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        let config = RelayConfig {
            poll_interval: POLL_INTERVAL,
            ..RelayConfig::default()
        };
        Relay::spawn(ctx, config).await?;
        Ok(Endpoints::default())
    }
}

fn main() -> std::process::ExitCode {
    shop_runtime::run::<OutboxRelay>()
}
