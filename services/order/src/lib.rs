//! order-service: Orders and the order saga that orchestrates catalog, inventory and payment. Owns the
//! PostgreSQL database `orders`; publishes `OrderPlaced`, `OrderConfirmed`, `OrderCancelled`.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<OrderService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The order-service service.
#[derive(Debug)]
pub struct OrderService;

impl Service for OrderService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("order-service", 8084, 50054)
            .postgres_without_migrations()
            .amqp()
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
