//! The HTTP side of every service: the service's own routes plus the operational endpoints,
//! wrapped in the same middleware stack everywhere.

use std::any::Any;

use axum::{
    Router,
    extract::State,
    http::{HeaderName, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    error::{ApiError, not_found_fallback, problem_for_plain_errors},
    health::{self, Readiness},
    metrics, telemetry,
};

/// The request id header: taken from the caller when present, generated otherwise, echoed in
/// the response and recorded on the request span.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds `/healthz`, `/readyz` and `/metrics` to the service's routes and wraps everything in
/// request ids, tracing, metrics, problem documents for every error and panic recovery.
///
/// Layer order, outermost first: the request id is assigned before the span is created (so the
/// span records it), metrics run inside routing (so they see the route template), and a panic
/// becomes a 500 problem document instead of a dropped connection.
pub fn router(service_routes: Router, readiness: Readiness, metrics: PrometheusHandle) -> Router {
    let operational = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz).with_state(readiness))
        .route("/metrics", get(render_metrics).with_state(metrics));

    service_routes
        .merge(operational)
        .fallback(not_found_fallback)
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
        .layer(axum::middleware::from_fn(metrics::track_http))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(telemetry::http_span)
                        .on_response(record_status),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

fn record_status<B>(
    response: &::http::Response<B>,
    latency: std::time::Duration,
    span: &tracing::Span,
) {
    span.record("http.response.status_code", response.status().as_u16());
    tracing::debug!(status = response.status().as_u16(), ?latency, "response");
}

async fn render_metrics(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// A panicking handler is a bug: log it, answer a generic 500, keep serving.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(std::io::Error::other(format!(
        "handler panicked: {message}"
    )))
    .into_response()
}
