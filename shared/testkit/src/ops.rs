//! The operational surface every service must have, checked the same way for all of them.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{BoxError, TestApp};

/// Asserts `/healthz`, `/readyz` (with exactly `expected_probes`), `/metrics`, request ids,
/// problem+json for unknown routes, the gRPC health service and gRPC reflection.
pub async fn assert_operational(app: &TestApp, expected_probes: &[&str]) -> Result<(), BoxError> {
    let health = app.get("/healthz").await?;
    assert_eq!(health.status(), 200, "/healthz");
    assert!(
        health.headers().contains_key("x-request-id"),
        "responses carry a request id"
    );

    app.wait_ready(Duration::from_secs(15)).await?;
    let ready: serde_json::Value = app.get("/readyz").await?.json().await?;
    let mut probes: Vec<&str> = ready["checks"]
        .as_object()
        .ok_or("readyz lists its checks")?
        .keys()
        .map(String::as_str)
        .collect();
    probes.sort_unstable();
    let mut expected = expected_probes.to_vec();
    expected.sort_unstable();
    assert_eq!(probes, expected, "readiness probes");

    let missing = app.get("/no/such/route").await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );

    let metrics = app.get("/metrics").await?.text().await?;
    assert!(
        metrics
            .contains(r#"http_server_requests_total{method="GET",route="/healthz",status="200"}"#),
        "request metrics are exported:\n{metrics}"
    );
    assert!(
        metrics.contains("http_server_request_duration_seconds_bucket"),
        "latency histogram"
    );

    let mut health = HealthClient::new(channel(app).await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health never SERVING: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics = app.get("/metrics").await?.text().await?;
    assert!(
        metrics.contains(
            r#"grpc_server_requests_total{method="/grpc.health.v1.Health/Check",code="0"}"#
        ),
        "gRPC metrics are exported:\n{metrics}"
    );

    let services = reflected_services(app).await?;
    assert!(
        services.iter().any(|name| name == "grpc.health.v1.Health"),
        "reflection lists the health service: {services:?}"
    );
    Ok(())
}

/// The service names listed by gRPC server reflection.
pub async fn reflected_services(app: &TestApp) -> Result<Vec<String>, BoxError> {
    let mut client = ServerReflectionClient::new(channel(app).await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = responses.message().await?.ok_or("no reflection response")?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => Err(format!("unexpected reflection response: {other:?}").into()),
    }
}

/// A gRPC channel to the app.
pub async fn channel(app: &TestApp) -> Result<tonic::transport::Channel, BoxError> {
    Ok(tonic::transport::Channel::from_shared(app.grpc_url())?
        .connect()
        .await?)
}
