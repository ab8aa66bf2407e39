//! payment-service: Payments and refunds against a simulated card provider. Owns the PostgreSQL database
//! `payments`; serves `payment.v1.PaymentService` (Authorize, Capture, Void, Refund).
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<PaymentService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The payment-service service.
#[derive(Debug)]
pub struct PaymentService;

impl Service for PaymentService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("payment-service", 8085, 50055)
            .postgres_without_migrations()
            .amqp()
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
