//! The HTTP side of every service: the service's own routes and the operational endpoints
//! (`/healthz`, `/readyz`, `/metrics`), wrapped in the same middleware stack everywhere.
//!
//! Where the operational endpoints answer is `OPS_ADDR`'s choice ([`crate::RuntimeConfig`]):
//! unset (development, tests), on the service's HTTP port; set (compose, the Helm chart, and
//! required with `SHOP_ENV=production`), on a port of their own, and the HTTP port answers
//! them 404. Whoever reaches a service's API — the whole internet, for the gateway — then
//! cannot read its metrics or probe its readiness, and a network policy can open the
//! operational port to Prometheus alone.

use std::{
    any::Any,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderName, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    BootError,
    error::{ApiError, ErrorKind, not_found_fallback, problem_for_plain_errors},
    health::{self, Readiness},
    metrics, telemetry,
};

/// The request id header: taken from the caller when present, generated otherwise, echoed in
/// the response and recorded on the request span.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `/healthz`, `/readyz` and `/metrics`: what probes and Prometheus ask, never a client.
pub fn operational_routes(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz).with_state(readiness))
        .route("/metrics", get(render_metrics).with_state(metrics))
}

/// The service's routes (plus `operational`, when they share its port: development and tests)
/// wrapped in request ids, tracing, metrics, problem documents for every error and panic
/// recovery.
///
/// Layer order, outermost first: the request id is assigned before the span is created (so the
/// span records it), metrics run inside routing (so they see the route template), and a panic
/// becomes a 500 problem document instead of a dropped connection.
pub fn router(service_routes: Router, operational: Option<Router>) -> Router {
    let routes = match operational {
        Some(operational) => service_routes.merge(operational),
        None => service_routes,
    };
    routes
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

/// The operational port's app (`OPS_ADDR`): the three operational routes and nothing else.
/// Not counted in the request metrics: Prometheus and the kubelet asking every few seconds
/// would only add series about themselves.
pub fn ops_router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    operational_routes(readiness, metrics)
        .fallback(not_found_fallback)
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
        .layer(CatchPanicLayer::custom(panic_response))
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

/// How long a client may take to send a request's headers, unless
/// `HTTP_HEADER_READ_TIMEOUT_SECONDS` says otherwise. Any real client sends them at once; 30 s
/// is hyper's own default, which `axum::serve` never switched on (it sets no timer).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's whole body, counted from when its headers
/// arrived, unless `HTTP_BODY_READ_TIMEOUT_SECONDS` says otherwise. Bodies here are small
/// (the gateway's `MAX_BODY_BYTES` is 64 KiB): 30 s is ~2 KiB/s for the largest.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish.
///
/// Why not `axum::serve`: it gives no access to hyper's connection settings, and left hyper's
/// header read deadline off, so a client sending its headers a byte at a time (or nothing at
/// all) held a connection, a task and a socket for as long as it liked — a few thousand such
/// connections exhaust a service's file descriptors (slowloris). Here every connection is
/// hyper's HTTP/1.1 with `header_read_timeout`: the headers of each request must arrive within
/// it, and since hyper starts that clock whenever it waits for a request, an idle keep-alive
/// connection is also closed after that long. (So a client keeping connections to a service
/// idle in a pool must give them up sooner: the gateway's pool does after 20 s.)
///
/// The body has a deadline of its own, `body_read_timeout` from the moment the headers arrived
/// ([`DeadlineBody`]): hyper has none, and a deadline *between* reads (tower-http's
/// `RequestBodyTimeout`) lets a client trickle a byte just before each one expires, keeping the
/// connection for hours within the body limit. When it passes, the read fails, the client gets
/// a 400 problem document saying so, and the connection is closed (its body was not read to the
/// end, so hyper does not keep it alive).
///
/// HTTP/1.1 only: hyper's deadline is HTTP/1's, an HTTP/2 connection could stay open idle, and
/// nothing calls these ports with HTTP/2 (gRPC has its own server and port). The peer address
/// is put where `ConnectInfo<SocketAddr>` finds it, as `into_make_service_with_connect_info`
/// did: the gateway limits anonymous clients by it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), BootError> {
    let app = app.layer(axum::middleware::from_fn_with_state(
        body_read_timeout,
        body_deadline,
    ));
    // Every connection task holds a receiver; when all are gone, every connection is closed.
    let (open, all_closed) = tokio::sync::watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning, as
                    // axum::serve does; a refused connection is the client's problem.
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    if !is_connection_error(&err) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut request: ::http::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                request
            });
        let shutdown = shutdown.clone();
        let closed = all_closed.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    drop(all_closed);
    open.closed().await;
    Ok(())
}

/// Gives the request's body its deadline, and answers a request whose body missed it with a
/// 400 problem document naming the deadline, whatever the handler made of the failed read.
async fn body_deadline(
    State(timeout): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        axum::body::Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            expired: Arc::clone(&expired),
        })
    });
    let response = next.run(request).await;
    if expired.load(Ordering::Relaxed) {
        tracing::info!(
            ?timeout,
            "a request body did not arrive in time; closing the connection"
        );
        let mut response = ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "The request body did not arrive within {} s.",
                timeout.as_secs()
            ),
        )
        .into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            ::http::HeaderValue::from_static("close"),
        );
        return response;
    }
    response
}

/// A request body that fails once `deadline` has passed, however steadily bytes trickle in.
struct DeadlineBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

/// The error a late body's read ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive before its deadline")]
pub struct BodyDeadlineExceeded;

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyDeadlineExceeded.into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
