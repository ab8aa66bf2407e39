//! gateway: The edge: the public REST API `/api/v1/*`, authentication, rate limits and the response cache
//! in front of the other services. It owns Redis (rate-limit counters, cached responses) and
//! consumes catalog events to invalidate that cache.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<Gateway>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Needs, Service, ServiceSpec};

/// The gateway service.
#[derive(Debug)]
pub struct Gateway;

impl Service for Gateway {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "gateway",
            http_port: 8080,
            grpc_port: 50050,
            needs: Needs {
                redis: true,
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
