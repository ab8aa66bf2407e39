//! The gRPC side of every service: the service's own gRPC services plus the standard health
//! service and server reflection, behind tracing and metrics layers.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::{BootError, health::Readiness, metrics::GrpcMetricsLayer, telemetry};

/// Serves `routes` (the services named in `served`) plus `grpc.health.v1.Health` and
/// reflection until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    served: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: CancellationToken,
) -> Result<(), BootError> {
    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in descriptor_sets {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }
    // A descriptor set may describe more services than this server runs (shop-proto holds every
    // package): advertise exactly the ones served, so `grpcurl list` tells the truth.
    let advertised = served.into_iter().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    for name in advertised.clone() {
        reflection_v1 = reflection_v1.with_service_name(name);
        reflection_v1alpha = reflection_v1alpha.with_service_name(name);
    }
    let reflection_v1 = reflection_v1
        .build_v1()
        .map_err(|err| BootError::Other(err.to_string()))?;
    let reflection_v1alpha = reflection_v1alpha
        .build_v1alpha()
        .map_err(|err| BootError::Other(err.to_string()))?;

    // Only these services' methods are metric labels (GrpcMetricsLayer).
    let metrics = GrpcMetricsLayer::new(advertised.clone());
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    Server::builder()
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(telemetry::http_span)
                // A non-OK status is usually the caller's problem (NOT_FOUND, UNAUTHENTICATED);
                // real faults are logged where they happen (`ApiError::internal`), so the
                // transport layer only notes failures at debug level.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(metrics)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
        .map_err(|err| BootError::Other(format!("gRPC server failed: {err}")))
}

/// Keeps the gRPC health status in step with readiness: `SERVING` while every probe is up,
/// `NOT_SERVING` otherwise and from the moment shutdown begins.
pub async fn mirror_readiness(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let status = if readiness.check().await.ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_all(&reporter, &services, status).await;
    }
    set_all(&reporter, &services, ServingStatus::NotServing).await;
}

async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    // "" is the whole server, as defined by the gRPC health protocol.
    reporter.set_service_status("", status).await;
    for name in services {
        reporter.set_service_status(*name, status).await;
    }
}

/// Binds a listener, naming the address in the error.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, BootError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BootError::Bind { addr, source })
}
