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
//! ## One order, end to end
//!
//! `POST /api/v1/orders` ([`api`]) validates the request, prices the lines at catalog (the
//! answer the customer needs at once), and then writes the order, its lines, its saga row and
//! `OrderPlaced` in one transaction. From there the [`driver`] runs the saga defined in
//! [`saga`]: reserve stock at inventory, authorize the card at payment, commit the stock (the
//! pivot), capture the money. Each step is written before and after its call, so a crash at
//! any point resumes from the database; the order ends `CONFIRMED` or `CANCELLED` once, with
//! `OrderConfirmed` or `OrderCancelled` in the same transaction (ADR 0009).
//!
//! Why orchestration here rather than choreography through events: the decisions that keep
//! money and stock consistent then live in one file that can be read and unit-tested, instead
//! of being spread over four services' event handlers.
//!
//! ## What survives a crash, and who notices
//!
//! Every fact the saga acts on is a row: the order, its lines, its saga row (step, reason,
//! attempts, lease, deadline), the sealed card, the outbox. An instance that dies mid-step
//! leaves a lease that runs out; the sweeper of any instance then claims the saga and repeats
//! the step persisted last, which the participants answer from their own records because every
//! call is idempotent per order id (patterns BEY-08, BEY-10 and BEY-11 of `docs/patterns.md`).
//! A client that lost the answer to `POST /api/v1/orders` sends the same `Idempotency-Key` and
//! gets the same order (RES-08). `tests/crash.rs` kills the process before and after recording
//! each step and checks that every order still ends exactly once.
//!
//! ## Patterns to look for
//!
//! | pattern (`docs/patterns.md`) | where |
//! |---|---|
//! | DATA-05 orchestration-based saga, DATA-07 compensating transactions | [`saga`] |
//! | BEY-12 a pivot step, and late answers after it | [`saga::before`], [`saga::after`] |
//! | BEY-08 persisted saga state, BEY-11 leases and fencing | [`driver`] |
//! | RES-02 circuit breaker, RES-03 deadlines, RES-04 retries with jitter | [`participants`] |
//! | RES-08 idempotency key on commands, DATA-08 eventual consistency (202 and poll) | [`api`] |
//! | SEC-19 encryption at rest (the card, until it is used) | [`card`] |
//! | SEC-21 input validation, every field at once | [`validate`] |
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<OrderService>()`);
//! `main.rs` only hands it to the shared runtime.

// Every public item says why it exists; the compiler (and so clippy in CI) holds new code to it.
#![deny(missing_docs)]

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

/// The service's schema (orders and their lines, the saga rows, the sealed cards), applied at
/// start.
static MIGRATIONS: Migrator = sqlx::migrate!();

/// The name this service calls others under (its entry in user-service's `SERVICE_CLIENTS`).
///
/// Inventory's and payment's access tables name exactly this caller, so it is a constant
/// shared by the spec and the token requests rather than two strings that could drift apart.
pub const SERVICE_NAME: &str = "order-service";

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The order-service service, as the shared runtime boots it.
///
/// A unit type: connections come through [`Service::build`] and settings through
/// [`OrderConfig`], so `main.rs` and the tests start the very same service.
#[derive(Debug)]
pub struct OrderService;

impl Service for OrderService {
    type Config = OrderConfig;

    /// The same document as [`openapi()`], as JSON, for `shop_testkit`: every answer a test
    /// receives from this service is checked against it. The operator routes of [`admin`] are
    /// not in it: they are not part of the public API the gateway publishes.
    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    /// Name, default ports (8084 HTTP, 50054 gRPC) and stores: PostgreSQL with its
    /// migrations applied before [`Service::build`] runs, and RabbitMQ for the relay. It has
    /// no gRPC API of its own (only the runtime's gRPC health); it calls the others'.
    fn spec() -> ServiceSpec {
        ServiceSpec::new(SERVICE_NAME, 8084, 50054)
            .postgres(&MIGRATIONS)
            .amqp()
    }

    /// Wires the relay, the participants' clients, the card vault, the saga driver with its
    /// sweeper, and the HTTP API.
    ///
    /// Nothing here calls another service: the gRPC channels connect lazily, so order-service
    /// starts (and answers reads) while a participant is still down, and the sagas wait for
    /// it in their rows.
    ///
    /// Two settings that are fine in a test but wrong in a deployment are announced as
    /// warnings at start: the development card key and the fault injection. The relay comes
    /// first because it creates the outbox tables every order writes to. The driver gets the
    /// runtime's task tracker and shutdown token: saga steps in flight finish (up to the grace
    /// period) and the sweeper stops, and whatever was cut short is resumed from its row by
    /// any instance once its lease lapses.
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
