//! Prometheus metrics: one process-wide recorder, RED middleware for HTTP and gRPC.
//!
//! Services record their own business figures with the `metrics` macros
//! (`metrics::counter!("orders_total", "outcome" => "confirmed").increment(1)`); they all end
//! up on `/metrics` next to the request metrics recorded here.
//!
//! **Every label value a caller can influence comes from a closed set.** The recorder keeps a
//! series for each distinct label set it ever sees, and the request metrics are recorded for
//! every request, before any rate limit: a label copied from the request (`curl -X RANDOM123`)
//! lets anyone add series, and with them memory and scrape size, without bound (300 random
//! methods took the gateway's `/metrics` from 26 to 5,143 series). So the HTTP method is one of
//! the methods the services serve or `other` ([`method_label`]), the route is the matched
//! template or `unmatched`, and a gRPC method is a method of a service this server runs or
//! `other` ([`GrpcMetricsLayer`]). For labels a service adds itself, [`IDLE_TIMEOUT`] is the
//! backstop: a counter or histogram nobody updated for that long leaves `/metrics`.

use std::{
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{extract::MatchedPath, middleware::Next, response::Response};
use futures::future::BoxFuture;
use http::Method;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Latency buckets in seconds, from 1 ms to 10 s: fine-grained where our targets are (< 50 ms).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A counter or histogram series not updated for this long is dropped from `/metrics` (it comes
/// back, from zero, the next time it is recorded; Prometheus reads that as a counter reset).
///
/// The backstop for label values that are not from a closed set, so that no series lives
/// forever just because some value was seen once. Long against the scrape interval (15 s), so a
/// series that is merely quiet for a while is not churned. Gauges are exempt: they are set when
/// something changes (a circuit opens, a consumer attaches) and would vanish while the state
/// they report still holds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
///
/// A process has one global `metrics` recorder, so several services started in one test
/// process share it; that is harmless because every test reads only the series it made.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .expect("the bucket list is a non-empty constant")
                .idle_timeout(
                    MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM,
                    Some(IDLE_TIMEOUT),
                );
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just renders nothing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "http_server_requests_total",
        "HTTP requests handled, by method, route and status."
    );
    metrics::describe_histogram!(
        "http_server_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by method, route and status."
    );
    metrics::describe_counter!(
        "grpc_server_requests_total",
        "gRPC calls handled, by method and status code."
    );
    metrics::describe_histogram!(
        "grpc_server_request_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC call latency, by method and status code."
    );
}

/// axum middleware recording rate, errors (by status) and latency per route.
///
/// Every label is from a closed set whatever callers send (see the module docs): the method
/// through [`method_label`], the route as its *template* (`/orders/{id}`, never the raw path)
/// or `unmatched` for a path no route serves.
pub async fn track_http(request: axum::extract::Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `route` label of a request no route matched (a 404 from the fallback).
pub const UNMATCHED: &str = "unmatched";

/// The `method` label: the standard methods a REST API is called with, or `other` for anything
/// else. HTTP lets a client send any token as its method, so the raw method is not a label.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Tower layer recording rate, errors and latency of gRPC calls.
///
/// The `method` label is the call's path (`/shop.order.v1.OrderService/PlaceOrder`) only for a
/// service this server runs and a call that did not end `UNIMPLEMENTED` (which is what a
/// method the service does not have ends with); anything else is `other`, so a caller inventing
/// paths cannot add series (see the module docs).
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    services: Arc<[&'static str]>,
}

impl GrpcMetricsLayer {
    /// A layer for a server running `services` (full names, e.g. `shop.order.v1.OrderService`).
    pub fn new(services: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            services: services.into_iter().collect(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            services: self.services.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    services: Arc<[&'static str]>,
}

/// gRPC's `UNIMPLEMENTED`, as it appears in `grpc-status`.
const UNIMPLEMENTED: &str = "12";

/// The `method` label of a gRPC call to `path` that ended with `code` (see [`GrpcMetricsLayer`]).
fn grpc_method_label(services: &[&str], path: String, code: &str) -> String {
    let known = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            !method.is_empty() && !method.contains('/') && services.contains(&service)
        });
    if known && code != UNIMPLEMENTED {
        path
    } else {
        "other".to_owned()
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let services = self.services.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // Unary errors are "trailers-only" responses, so the code is in the headers; a
            // successful call carries it in trailers we do not wait for, and is OK (0).
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("0")
                    .to_owned(),
                Err(_) => "transport_error".to_owned(),
            };
            let method = grpc_method_label(&services, path, &code);
            let labels = [("method", method), ("code", code)];
            metrics::counter!("grpc_server_requests_total", &labels).increment(1);
            metrics::histogram!("grpc_server_request_duration_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_closed_set_are_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::TRACE), "other");
        let invented = Method::from_bytes(b"RANDOM123").unwrap();
        assert_eq!(method_label(&invented), "other");
    }

    #[test]
    fn grpc_paths_outside_the_served_services_are_other() {
        let served = ["shop.order.v1.OrderService"];
        let label = |path: &str, code: &str| grpc_method_label(&served, path.to_owned(), code);
        assert_eq!(
            label("/shop.order.v1.OrderService/GetOrder", "0"),
            "/shop.order.v1.OrderService/GetOrder"
        );
        assert_eq!(label("/shop.order.v1.OrderService/Invented", "12"), "other");
        assert_eq!(label("/invented.Service/GetOrder", "5"), "other");
        assert_eq!(label("/shop.order.v1.OrderService/a/b", "0"), "other");
        assert_eq!(label("nonsense", "0"), "other");
    }
}
