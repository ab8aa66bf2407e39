//! Traces leave the process over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, continuing
//! the caller's W3C trace, and are flushed when the service stops.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use shop_testkit::{isolation, process::ChildService};

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");

/// What a fake OTLP collector received: (content type, body) per export request.
type Exports = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn collect(State(exports): State<Exports>, headers: HeaderMap, body: Bytes) {
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    exports
        .lock()
        .expect("collector state")
        .push((content_type, body.to_vec()));
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_continue_the_callers_trace() {
    let exports = Exports::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", collector.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(exports.clone());
    tokio::spawn(async move { axum::serve(collector, app).await });

    let (redis_url, prefix) = isolation::redis_prefix().await.unwrap();
    let mut gateway = ChildService::start(
        BINARY,
        [
            ("REDIS_URL", redis_url),
            ("REDIS_KEY_PREFIX", prefix),
            ("AMQP_URL", isolation::rabbitmq_vhost().await.unwrap()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url),
            // Per-request lines are debug level (an access log at info would cost throughput).
            ("RUST_LOG", "info,shop_runtime=debug".to_owned()),
        ],
    )
    .unwrap();
    gateway.wait_ready(Duration::from_secs(20)).await.unwrap();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .get(gateway.url("/healthz"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let (status, logs) = gateway.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status}");

    let exports = exports.lock().unwrap();
    assert!(
        !exports.is_empty(),
        "spans were exported on shutdown at the latest"
    );
    assert!(
        exports
            .iter()
            .all(|(content_type, _)| content_type == "application/x-protobuf")
    );
    let wanted = hex_to_bytes(trace_id);
    assert!(
        exports
            .iter()
            .any(|(_, body)| body.windows(16).any(|window| window == wanted)),
        "an exported span belongs to the caller's trace"
    );
    assert!(
        logs.lines().any(|line| line.contains(trace_id)),
        "the request's log lines carry the trace id:\n{logs}"
    );
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}
