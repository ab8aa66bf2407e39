//! What the installed subscriber lets through. One test in its own binary: the subscriber is
//! global and installed once per process.

use shop_runtime::telemetry::{self, LogFormat, TelemetryConfig};

#[test]
fn library_debug_events_are_off_yet_request_spans_get_trace_ids_when_logging_only_warnings() {
    let _guard = telemetry::init(&TelemetryConfig {
        service_name: "telemetry-levels".into(),
        log_format: LogFormat::Json,
        log_filter: "warn".into(),
        otlp_endpoint: None,
    })
    .expect("telemetry installs");

    // Neither the logs nor the traces want hyper's or tokio's chatter: a layer without a
    // filter would switch these on for the whole process and pay for them on every request.
    assert!(!tracing::enabled!(target: "hyper::proto", tracing::Level::TRACE));
    assert!(!tracing::enabled!(target: "gateway", tracing::Level::DEBUG));

    // A request span is INFO: below the log level here, still part of the trace, so error
    // documents and log lines can name the trace.
    let request = http::Request::get("/api/v1/orders")
        .body(())
        .expect("a request");
    let span = telemetry::http_span(&request);
    assert!(!span.is_disabled(), "the request span is created");
    let trace_id = span.in_scope(telemetry::current_trace_id);
    assert!(
        trace_id.is_some_and(|id| id.len() == 32),
        "the request span has a trace id"
    );
}
