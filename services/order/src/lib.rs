//! order-service: Orders and the order saga that orchestrates catalog, inventory and payment. Owns the
//! PostgreSQL database `orders`; publishes `OrderPlaced`, `OrderConfirmed`, `OrderCancelled`.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<OrderService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Needs, Service, ServiceSpec};

/// The order-service service.
#[derive(Debug)]
pub struct OrderService;

impl Service for OrderService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "order-service",
            http_port: 8084,
            grpc_port: 50054,
            needs: Needs {
                postgres: true,
                amqp: true,
                ..Needs::default()
            },
            migrations: None,
        }
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
