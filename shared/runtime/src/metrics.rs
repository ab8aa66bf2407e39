//! Prometheus metrics: one process-wide recorder, RED middleware for HTTP and gRPC.
//!
//! Services record their own business figures with the `metrics` macros
//! (`metrics::counter!("orders_total", "outcome" => "confirmed").increment(1)`); they all end
//! up on `/metrics` next to the request metrics recorded here.

use std::{
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use axum::{extract::MatchedPath, middleware::Next, response::Response};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, from 1 ms to 10 s: fine-grained where our targets are (< 50 ms).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
                .expect("the bucket list is a non-empty constant");
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
/// The route label is the *template* (`/orders/{id}`), never the raw path, so the number of
/// series stays bounded whatever callers send.
pub async fn track_http(request: axum::extract::Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Tower layer recording rate, errors and latency of gRPC calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
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
        let method = request.uri().path().to_owned();
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
            let labels = [("method", method), ("code", code)];
            metrics::counter!("grpc_server_requests_total", &labels).increment(1);
            metrics::histogram!("grpc_server_request_duration_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}
