//! order-service: orders and the order saga that orchestrates catalog, inventory and payment.
//! Owns the PostgreSQL database `orders`; publishes `OrderPlaced`, `OrderConfirmed` and
//! `OrderCancelled` (declared in `shop_events::order`, written to the outbox with the change).
//!
//! Start reading at [`saga`]: the state machine, in one place, with its diagram.
//!
//! | module | what lives there |
//! |---|---|
//! | [`saga`] | the steps, the compensations and the decisions, as pure functions |
//! | [`driver`] | running sagas: persist, call, persist; leases, the sweeper, crash resume |
//! | [`participants`] | gRPC clients: service tokens, deadlines, retries with jitter, breakers |
//! | [`card`] | card data kept encrypted until authorization; request fingerprints |
//! | [`validate`] | the placing request, checked field by field |
//! | [`api`] | the HTTP API (`/api/v1/orders`, own orders only) |
//! | [`admin`] | parked sagas for operators: list and resume (admins only) |
//! | [`config`] | its settings |
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<OrderService>()`);
//! `main.rs` only hands it to the shared runtime.

pub mod admin;
pub mod api;
pub mod card;
pub mod config;
pub mod driver;
pub mod participants;
pub mod saga;
pub mod validate;

use std::sync::Arc;

use shop_messaging::outbox::{RelayConfig, postgres::Relay};
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use sqlx::migrate::Migrator;

use crate::{
    api::AppState, card::CardVault, config::OrderConfig, driver::Driver, participants::Participants,
};

static MIGRATIONS: Migrator = sqlx::migrate!();

/// The name this service calls others under (its entry in user-service's `SERVICE_CLIENTS`).
pub const SERVICE_NAME: &str = "order-service";

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The order-service service.
#[derive(Debug)]
pub struct OrderService;

impl Service for OrderService {
    type Config = OrderConfig;

    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::new(SERVICE_NAME, 8084, 50054)
            .postgres(&MIGRATIONS)
            .amqp()
    }

    async fn build(ctx: &Context, config: OrderConfig) -> Result<Endpoints, BootError> {
        let pool = ctx.postgres()?.clone();
        if config.card_key.0 == config::DEV_CARD_KEY {
            tracing::warn!("encrypting card data with the development key; set ORDER_CARD_KEY");
        }
        if config.saga.faults != config::Faults::default() {
            tracing::warn!(faults = ?config.saga.faults, "test-only fault injection is set: this process aborts or stalls on purpose");
        }
        // The outbox tables must exist before the first order writes to them.
        Relay::spawn(ctx, RelayConfig::default()).await?;

        let verifier = config.auth.verifier()?;
        let participants = Participants::new(&config).map_err(BootError::Other)?;
        let vault =
            CardVault::new(&config.card_key.0).map_err(|err| BootError::Other(err.to_string()))?;
        let driver = Arc::new(Driver::new(
            pool.clone(),
            participants.clone(),
            vault,
            config.saga,
            ctx.tasks.clone(),
            ctx.shutdown.clone(),
        ));
        // Resumes what a crash left behind (once the dead instance's leases expired), then
        // keeps retrying and resuming periodically.
        ctx.tasks.spawn(driver.clone().sweep_forever());

        let router = api::router(AppState {
            pool,
            verifier,
            participants,
            driver,
        });
        Ok(Endpoints::new(router))
    }
}
