//! gRPC round trip against the real standard health service (`grpc.health.v1.Health`), served
//! by tonic in this test: the consumer's contract is written as protobuf-JSON synchronous
//! messages, and verified by calling the real server over HTTP/2 through the kit's shim.

use std::net::SocketAddr;

use serde_json::json;
use shop_contract::{ContractError, prelude::*};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic_health::{
    ServingStatus,
    pb::{FILE_DESCRIPTOR_SET, HealthCheckRequest, HealthCheckResponse, health_check_response},
    server::HealthReporter,
};

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Serves the health service on a random port; the reporter sets what it answers.
async fn serve_health() -> (SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

fn contract(dir: &std::path::Path) -> Contract {
    Contract::new("probe", "health")
        .in_dir(dir)
        .with_descriptors(FILE_DESCRIPTOR_SET)
        .expect("the health descriptors decode")
}

/// The consumer's code under test: is the checked service usable?
fn is_serving(response: &HealthCheckResponse) -> bool {
    response.status() == health_check_response::ServingStatus::Serving
}

async fn write_contract(dir: &std::path::Path) {
    let contract = contract(dir);
    let serving = GrpcInteraction::new("a check of a serving service", CHECK)
        .given_with_params("a service is serving", json!({ "service": "shop.Demo" }))
        .request(&HealthCheckRequest {
            service: "shop.Demo".into(),
        })
        .response(json_pattern!({ "status": "SERVING" }));
    contract
        .grpc(serving, |example| async move {
            let request: HealthCheckRequest =
                example.request_as().map_err(|err| err.to_string())?;
            assert_eq!(request.service, "shop.Demo");
            let response: HealthCheckResponse =
                example.response_as().map_err(|err| err.to_string())?;
            is_serving(&response)
                .then_some(())
                .ok_or("not serving".to_owned())
        })
        .await
        .expect("the consumer accepts the example");

    let unknown = GrpcInteraction::new("a check of an unknown service", CHECK)
        .request_json(json!({ "service": "shop.Nope" }))
        .error(Code::NotFound);
    contract
        .grpc(unknown, |example| async move {
            match example.response_as::<HealthCheckResponse>() {
                Err(status) if status.code() == Code::NotFound => Ok(()),
                other => Err(format!("expected NOT_FOUND, got {other:?}")),
            }
        })
        .await
        .expect("the consumer accepts the example");
}

fn with_states(provider: Provider, reporter: HealthReporter) -> Provider {
    provider.state(move |state| {
        let reporter = reporter.clone();
        async move {
            let service = state.params["service"]
                .as_str()
                .ok_or("the state needs a service")?;
            reporter
                .set_service_status(service, ServingStatus::Serving)
                .await;
            Ok::<_, &str>(())
        }
    })
}

#[tokio::test]
async fn grpc_contract_is_verified_against_the_real_tonic_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;

    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("probe-health.json"))
            .expect("the contract was written"),
    )
    .expect("JSON");
    let interaction = &written["interactions"][0];
    assert_eq!(interaction["type"], "Synchronous/Messages");
    assert_eq!(interaction["request"]["metadata"]["grpcMethod"], CHECK);
    assert_eq!(
        interaction["request"]["contents"]["content"],
        json!({ "service": "shop.Demo" })
    );

    let (addr, reporter) = serve_health().await;
    let provider = Provider::new("health")
        .pacts_in(dir.path())
        .grpc(addr)
        .with_descriptors(FILE_DESCRIPTOR_SET)
        .expect("descriptors");
    let verification = with_states(provider, reporter)
        .run()
        .await
        .expect("verification ran");
    assert!(verification.passed, "{}", verification.report);
}

/// The health service behind a check of the `authorization` metadata, as a provider's
/// access layer does: calls without `Bearer <token>` are UNAUTHENTICATED.
async fn serve_health_requiring(token: &'static str) -> (SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let check = move |request: tonic::Request<()>| {
        let expected = format!("Bearer {token}");
        match request.metadata().get("authorization") {
            Some(value) if value == expected.as_str() => Ok(request),
            _ => Err(tonic::Status::unauthenticated("no valid credentials")),
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(
                service, check,
            ))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

#[tokio::test]
async fn grpc_metadata_reaches_a_provider_that_requires_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;
    let (addr, reporter) = serve_health_requiring("s3cret").await;
    let provider = |metadata: Option<&str>| {
        let mut provider = Provider::new("health")
            .pacts_in(dir.path())
            .grpc(addr)
            .with_descriptors(FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        if let Some(value) = metadata {
            provider = provider.grpc_metadata("authorization", value);
        }
        with_states(provider, reporter.clone())
    };

    let without = provider(None).run().await.expect("verification ran");
    assert!(!without.passed, "{}", without.report);
    assert!(
        without.report.contains("UNAUTHENTICATED"),
        "{}",
        without.report
    );

    let with = provider(Some("Bearer s3cret"))
        .run()
        .await
        .expect("verification ran");
    assert!(with.passed, "{}", with.report);
}

#[tokio::test]
async fn invalid_grpc_metadata_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;
    let result = Provider::new("health")
        .pacts_in(dir.path())
        .with_descriptors(FILE_DESCRIPTOR_SET)
        .expect("descriptors")
        .grpc_metadata("authorization", "Bearer \n")
        .run()
        .await;
    assert!(
        matches!(&result, Err(ContractError::Config(problem)) if problem.contains("authorization")),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_grpc_provider_that_answers_differently_fails_verification() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;

    // The state handler does nothing, so the health server does not know the service and
    // answers NOT_FOUND where the consumer relies on SERVING.
    let (addr, _reporter) = serve_health().await;
    let verification = Provider::new("health")
        .pacts_in(dir.path())
        .grpc(addr)
        .with_descriptors(FILE_DESCRIPTOR_SET)
        .expect("descriptors")
        .state(|_state| async { Ok::<_, String>(()) })
        .run()
        .await
        .expect("verification ran");
    assert!(!verification.passed, "{}", verification.report);
    assert!(
        verification.report.contains("grpcStatus") && verification.report.contains("NOT_FOUND"),
        "{}",
        verification.report
    );
}

#[tokio::test]
async fn requests_and_responses_must_fit_the_method_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let contract = contract(dir.path());
    // Declares `interaction` with a consumer that accepts anything: only the schema can refuse.
    let rejected = async |interaction: GrpcInteraction, why: &str| -> ContractError {
        contract
            .grpc(interaction, |_example| async { Ok::<_, String>(()) })
            .await
            .expect_err(why)
    };
    let check = |request: serde_json::Value, response| {
        GrpcInteraction::new("a check", CHECK)
            .request_json(request)
            .response(response)
    };

    let err = rejected(
        check(
            json!({ "service": "shop.Demo", "verbose": true }),
            json_pattern!({ "status": "SERVING" }),
        ),
        "unknown request field",
    )
    .await;
    assert!(
        matches!(
            err,
            ContractError::InvalidMessage {
                part: "request",
                ..
            }
        ),
        "{err}"
    );

    let err = rejected(
        check(
            json!({ "service": "shop.Demo" }),
            json_pattern!({ "status": "HEALTHY" }),
        ),
        "no such enum value",
    )
    .await;
    assert!(
        matches!(
            err,
            ContractError::InvalidMessage {
                part: "response",
                ..
            }
        ),
        "{err}"
    );

    let err = rejected(
        check(
            json!({ "service": "shop.Demo" }),
            json_pattern!({ "status": 1 }),
        ),
        "not canonical",
    )
    .await;
    assert!(err.to_string().contains("\"SERVING\""), "{err}");

    let no_such_method = GrpcInteraction::new("a check", "/grpc.health.v1.Health/Ping")
        .request_json(json!({}))
        .response(json_pattern!({}));
    let err = rejected(no_such_method, "unknown method").await;
    assert!(matches!(err, ContractError::UnknownMethod(_)), "{err}");

    // Nothing invalid was recorded.
    assert!(!dir.path().join("probe-health.json").exists());
}

#[tokio::test]
async fn a_rejected_example_is_not_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let interaction = GrpcInteraction::new("a check", CHECK)
        .request_json(json!({ "service": "shop.Demo" }))
        .response(json_pattern!({ "status": "NOT_SERVING" }));
    let err = contract(dir.path())
        .grpc(interaction, |example| async move {
            let response: HealthCheckResponse =
                example.response_as().map_err(|err| err.to_string())?;
            is_serving(&response)
                .then_some(())
                .ok_or("not serving".to_owned())
        })
        .await
        .expect_err("the consumer's code rejects NOT_SERVING");
    assert!(matches!(err, ContractError::Handler { .. }), "{err}");
    assert!(!dir.path().join("probe-health.json").exists());
}

#[tokio::test]
async fn our_own_protos_are_known_without_extra_descriptors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let interaction = GrpcInteraction::new("prices of p-1", "/shop.catalog.v1.CatalogService/GetProducts")
        .given("product p-1 exists")
        .request(&shop_proto::catalog::v1::GetProductsRequest { ids: vec!["p-1".into()] })
        .response(json_pattern!({
            "products": each_like!({ "id": "p-1", "price": { "amount": like!("1999"), "currency": "EUR" } }),
        }));
    Contract::new("order", "catalog")
        .in_dir(dir.path())
        .grpc(interaction, |example| async move {
            let response: shop_proto::catalog::v1::GetProductsResponse = example.response_as()?;
            let price = response
                .products
                .first()
                .and_then(|p| p.price.as_ref())
                .map(|m| m.amount);
            (price == Some(1999))
                .then_some(())
                .ok_or(tonic::Status::internal("wrong price"))
        })
        .await
        .expect("valid catalog contract");
    assert!(dir.path().join("order-catalog.json").exists());
}
