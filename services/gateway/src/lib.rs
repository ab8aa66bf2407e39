//! gateway: The edge: the public REST API `/api/v1/*`, authentication, rate limits and the response cache
//! in front of the other services. It owns Redis (rate-limit counters, cached responses) and
//! consumes catalog events to invalidate that cache.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<Gateway>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The gateway service.
#[derive(Debug)]
pub struct Gateway;

impl Service for Gateway {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("gateway", 8080, 50050).redis().amqp()
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
