//! payment-service: payments and refunds against a simulated card provider. Owns the PostgreSQL
//! database `payments`; serves `shop.payment.v1.PaymentService` (Authorize, Capture, Void,
//! Refund) to other services and `GET /api/v1/payments` to customers; publishes
//! `PaymentAuthorized`, `PaymentFailed`, `PaymentCaptured`, `PaymentVoided` and
//! `PaymentRefunded` (declared in `shop_events::payment`) through its outbox.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | its settings (provider timeout, the simulated provider's faults, the reconciler's pace) |
//! | [`card`] | card validation (Luhn, expiry, CVC) and the types that never reveal a card |
//! | [`provider`] | the provider trait and the simulated provider with the test cards and its own record |
//! | [`ledger`] | the state machine, derived from the completed operations |
//! | [`payments`] | the operations: idempotent, serialised per payment, audited, evented |
//! | [`reconciler`] | the background task that settles every authorization whose outcome is unknown |
//! | [`grpc`] | `PaymentService`, for service callers only |
//! | [`api`] | `GET /api/v1/payments`, a customer's own payments |
//!
//! ## Its place in the order saga
//!
//! order-service calls Authorize once the stock is reserved, Capture only after the stock is
//! committed (so money is never taken for an order that cannot ship), and Void or Refund when
//! the saga compensates (ADR 0009). Every one of those calls may arrive twice, concurrently, or
//! after the caller gave up waiting, and the provider behind this service may act on a request
//! whose answer never came back. The design answers both facts (ADR 0008):
//!
//! * the payment's state is a fold over an append-only operation log ([`ledger`]), so a retry
//!   is answered from what was recorded and an auditor can read every request;
//! * the provider is called with no database transaction open, under a lease, in a task the
//!   caller cannot cancel ([`payments`]);
//! * whatever is left uncertain (a timeout, a lost answer, a crash) is written ahead on a
//!   queue that the [`reconciler`] works through until the money is settled.
//!
//! Card numbers stop at this service: only brand and last four digits are stored, logged,
//! published or returned ([`card`]).
//!
//! ## Reading order
//!
//! Start with [`ledger`]: the rules, as pure functions, with the state diagram. Then
//! [`payments`], which runs those rules around the provider call without holding a
//! transaction open; then [`reconciler`], which settles what [`payments`] could not; then
//! [`provider`] for the failures the simulation produces on purpose.
//!
//! ## What happens on a crash or a repeated call
//!
//! | what happened | what the next call finds | what it gets |
//! |---|---|---|
//! | the same request twice, one after the other | a completed row | the first result, replayed; no provider call |
//! | the same request twice, at once | a `started` row with a live lease | it polls until the first records, then the same result |
//! | the process died during the provider call | a `started` row whose lease ran out | a new attempt, same provider key: the provider deduplicates |
//! | the answer was lost or came too late | an abandoned attempt (for an authorization, also a queue row) | a new attempt, same provider key; meanwhile the [`reconciler`] asks the provider |
//! | the saga gave up before its Authorize landed | a tombstone or a VOIDED payment | the Authorize is refused; any hold is voided |
//!
//! ## Patterns to look for
//!
//! | pattern (`docs/patterns.md`) | where |
//! |---|---|
//! | DATA-09 event sourcing (partly: the state is a fold over the operation log) | [`ledger`] |
//! | BEY-10 idempotency keys, BEY-11 leases and fencing, BEY-01 transactional outbox | [`payments`] |
//! | SEC-24 audit logging (append-only, naming the caller) | [`payments::OperationRow`] |
//! | SEC-20 data minimization (brand and last four only) | [`card`] |
//! | DEC-09 anti-corruption layer (the provider behind a trait) | [`provider`] |
//! | SEC-10 policy-based access (a table of callers and methods) | [`GRPC_ACCESS`] |
//! | SEC-11 ownership (a customer sees only their own payments) | [`api`] |
//! | BEY-18 money as integer minor units and a currency | [`payments::Payment`] |
//!
//! The service is a library so tests boot it in-process
//! (`shop_testkit::spawn::<PaymentService>()`); `main.rs` only hands it to the shared runtime.

// Every public item says why it exists; the compiler (and so clippy in CI) holds new code to it.
#![deny(missing_docs)]

pub mod api;
pub mod card;
pub mod config;
pub mod grpc;
pub mod ledger;
pub mod payments;
pub mod provider;
pub mod reconciler;

use std::sync::Arc;

use shop_auth::grpc::RequireService;
use shop_messaging::outbox::{RelayConfig, postgres::Relay};
use shop_proto::payment::v1::payment_service_server::PaymentServiceServer;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use sqlx::migrate::Migrator;

use crate::{
    config::PaymentConfig, payments::Payments, provider::SimulatedProvider, reconciler::Reconciler,
};

/// The service's schema, applied at start: the payments, their operation log, the
/// reconciliation queue, the void tombstones, and the simulated provider's own record.
///
/// The log's append-only rule is in the schema (a trigger), not only in this code, so a
/// mistaken `UPDATE` from any client fails too.
static MIGRATIONS: Migrator = sqlx::migrate!();

/// Who may call which gRPC method: the saga's orchestrator, and nobody else (a method not named
/// here is refused to every caller).
///
/// Money moves only when the saga says so; a customer reads payments through the HTTP API,
/// and no other service has a reason to authorize or refund.
/// `only_service_callers_may_use_the_grpc_api` in `tests/payments.rs` holds the service to it.
pub const GRPC_ACCESS: &[(&[&str], &[&str])] = &[(
    &["order-service"],
    &["Authorize", "Capture", "Void", "Refund"],
)];

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The payment-service service, as the shared runtime boots it.
///
/// A unit type: connections come through [`Service::build`] and settings through
/// [`PaymentConfig`], so `main.rs` and the tests start the very same service.
#[derive(Debug)]
pub struct PaymentService;

impl Service for PaymentService {
    type Config = PaymentConfig;

    /// The same document as [`openapi()`], as JSON, for `shop_testkit`: every answer a test
    /// receives from this service's HTTP API is checked against it.
    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    /// Name, default ports (8085 HTTP, 50055 gRPC) and stores: PostgreSQL with
    /// `MIGRATIONS` applied before [`Service::build`] runs, and RabbitMQ for the relay.
    /// `/readyz` requires the database (no operation can be decided without its log) and only
    /// reports the broker: results and their events wait in the outbox while it is away.
    fn spec() -> ServiceSpec {
        ServiceSpec::new("payment-service", 8085, 50055)
            .postgres(&MIGRATIONS)
            .amqp()
    }

    /// Wires the outbox relay, the provider, the operations, the reconciler and the endpoints.
    ///
    /// The relay comes first because it creates the outbox tables every recorded operation writes
    /// to. [`Payments`] gets the runtime's task tracker, so provider calls in flight at shutdown
    /// are awaited (up to the grace period) and recorded rather than cut off; the reconciler runs
    /// on the same tracker and stops with the shutdown token. A failure of any step is a
    /// [`BootError`] and the process exits instead of serving without one of its parts.
    async fn build(ctx: &Context, config: PaymentConfig) -> Result<Endpoints, BootError> {
        let pool = ctx.postgres()?.clone();
        // Creates the outbox tables before the first operation can write to them.
        Relay::spawn(ctx, RelayConfig::default()).await?;
        let verifier = config.auth.verifier()?;
        // The one place to plug in a real provider. The simulated one keeps its record in its
        // own schema of this database (a stand-in for the provider's system).
        let provider = Arc::new(SimulatedProvider::new(
            pool.clone(),
            config.slow_card_delay,
            config.faults,
        ));
        if let Some(operation) = config.crash_after {
            tracing::warn!(%operation, "PAYMENT_CRASH_AFTER_PROVIDER is set: this process aborts after the provider answers that operation (tests only)");
        }
        let payments = Payments::new(
            pool.clone(),
            provider,
            config.provider_timeout,
            ctx.tasks.clone(),
        )
        .crash_after(config.crash_after);
        Reconciler::new(
            payments.clone(),
            config.reconcile_interval,
            config.reconcile_alert_after,
        )
        .spawn(ctx);
        let grpc = RequireService::new(
            PaymentServiceServer::new(grpc::PaymentApi { payments }),
            verifier.clone(),
        )
        .allow_table(GRPC_ACCESS);
        let router = api::router(api::AppState { pool, verifier });
        Ok(Endpoints::new(router)
            .grpc(grpc)
            .reflect(shop_proto::FILE_DESCRIPTOR_SET))
    }
}
