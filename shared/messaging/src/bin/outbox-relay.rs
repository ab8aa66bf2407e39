//! The PostgreSQL outbox relay as a process of its own, for a database whose service does not
//! run the relay itself (and the process the delivery tests kill between the broker's confirm
//! and the relay's commit).
//!
//! Reads `DATABASE_URL` and `AMQP_URL` like any service, serves `/healthz`, `/readyz` and
//! `/metrics`, and relays until SIGTERM.

use shop_messaging::outbox::{RelayConfig, postgres::Relay};
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

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
        Relay::spawn(ctx, RelayConfig::default()).await?;
        Ok(Endpoints::default())
    }
}

fn main() -> std::process::ExitCode {
    shop_runtime::run::<OutboxRelay>()
}
