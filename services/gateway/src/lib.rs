//! gateway: the edge. Serves the public REST API `/api/v1/*` on port 8080 and forwards each
//! route to the service that owns it, after the checks that belong at the edge:
//! authentication and roles, rate limits, body size, and per-upstream timeouts, bulkheads,
//! retries and circuit breakers. It owns Redis (rate-limit counters, the catalog response
//! cache). ADR 0013 records the decisions.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | upstream URLs, timeouts, limits, CORS origins |
//! | [`routes`] | the public API as a table: path, owner, access rule (the allow-list) |
//! | [`proxy`] | forwarding one request: auth, rate limit, body limit, upstream call (a bulkhead and a `shop_resilience` breaker per upstream), errors |
//! | [`ratelimit`] | per user / per address limits: counted in memory, settled in Redis in batches; logins counted in Redis first |
//! | [`compose`] | API composition: an order with each line's product from catalog, one batched call |
//! | [`cache`] | catalog reads cached in Redis, invalidated by catalog's events, stale-if-error |
//! | [`events`] | the consumer of catalog's events that invalidates the cache |
//! | [`edge`] | security headers and CORS |
//! | [`openapi`] | the OpenAPI 3.1 document: the services' own descriptions merged along the route table |
//! | [`docs`] | the interactive page for that document (Swagger UI, assets in the binary) |
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<Gateway>()`);
//! `main.rs` only hands it to the shared runtime.

pub mod cache;
pub mod compose;
pub mod config;
pub mod docs;
pub mod edge;
pub mod events;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
pub mod routes;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::Request, routing::MethodFilter};
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

use crate::{
    cache::ResponseCache,
    config::GatewayConfig,
    proxy::{Proxy, UpstreamState},
    ratelimit::RateLimiter,
    routes::{Access, Handler, ROUTES, Upstream},
};

/// The gateway service.
#[derive(Debug)]
pub struct Gateway;

impl Service for Gateway {
    type Config = GatewayConfig;

    /// The public document, as served at [`openapi::PATH`].
    fn openapi() -> Option<serde_json::Value> {
        serde_json::from_str(openapi::DOCUMENT).ok()
    }

    fn spec() -> ServiceSpec {
        // Redis is reported in /readyz, not required: without it rate limits go on with the
        // limiter's own counts and the cache is bypassed (ADR 0013), so the gateway still serves.
        ServiceSpec::new("gateway", 8080, 50050)
            .redis_optional()
            .amqp()
    }

    async fn build(ctx: &Context, config: GatewayConfig) -> Result<Endpoints, BootError> {
        let redis = ctx.redis()?.clone();
        let client = proxy::http_client(Duration::from_secs(1).min(config.upstream_timeout));
        let urls = &config.upstreams;
        let upstreams = Upstream::ALL
            .iter()
            .map(|&upstream| {
                let base = match upstream {
                    Upstream::User => &urls.user,
                    Upstream::Catalog => &urls.catalog,
                    Upstream::Inventory => &urls.inventory,
                    Upstream::Order => &urls.order,
                    Upstream::Payment => &urls.payment,
                    Upstream::Notification => &urls.notification,
                };
                UpstreamState::new(upstream, base, config.upstream_concurrency)
            })
            .collect::<Result<_, _>>()
            .map_err(BootError::Other)?;
        let cache = ResponseCache::new(redis.clone(), config.cache_fresh_for);
        events::spawn(ctx, cache.clone()).await?;
        let limiter = RateLimiter::new(redis, config.limits.window);
        ctx.tasks
            .spawn(limiter.clone().settle_every(ctx.shutdown.clone()));
        let proxy = Arc::new(Proxy {
            client,
            upstreams,
            // Keys are fetched on first use and cached; never per request (shop_auth::jwks).
            verifier: config.auth.verifier()?,
            limiter,
            limits: config.limits,
            cache: cache.clone(),
            max_body_bytes: config.max_body_bytes,
            timeout: config.upstream_timeout,
            trust_forwarded_for: config.trust_forwarded_for,
        });
        Ok(Endpoints::new(router(proxy, &config.cors_origins)))
    }
}

/// One axum route per row of [`ROUTES`]; anything else falls through to the runtime's 404.
pub fn router(proxy: Arc<Proxy>, cors_origins: &[String]) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let proxy = proxy.clone();
        let filter = MethodFilter::try_from(route.method.clone())
            .expect("the route table uses standard methods");
        router = router.route(
            route.path,
            axum::routing::on(filter, move |request: Request| {
                let proxy = proxy.clone();
                async move {
                    let mut response = match route.handler {
                        Handler::Forward => proxy.handle(route, request).await,
                        Handler::OrderWithProducts => {
                            proxy.order_with_products(route, request).await
                        }
                    };
                    if route.access != Access::Public {
                        edge::no_store_unless_set(response.headers_mut());
                    }
                    response
                }
            }),
        );
    }
    // Generated ahead of time from the services' own descriptions ([`openapi`]).
    let document = bytes::Bytes::from_static(openapi::DOCUMENT.as_bytes());
    router = router.route(
        openapi::PATH,
        axum::routing::get(move || {
            let document = document.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], document) }
        }),
    );
    router = router.merge(docs::router());
    if let Some(cors) = edge::cors(cors_origins) {
        router = router.layer(cors);
    }
    router.layer(axum::middleware::from_fn(edge::security_headers))
}
