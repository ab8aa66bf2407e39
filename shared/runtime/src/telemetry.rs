//! Structured logs and distributed traces.
//!
//! * Logs are JSON lines (or human-readable with `LOG_FORMAT=pretty`), one object per event,
//!   with the `trace_id` and `span_id` of the span they happened in, so a log search for a
//!   trace id finds every line of one request across services.
//! * Spans are OpenTelemetry spans. They are always *created* (so every request has a trace id
//!   to log and to return in error documents) and *exported* over OTLP/HTTP only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! * Trace context crosses process boundaries as W3C `traceparent` headers: [`http_span`]
//!   continues an incoming trace on HTTP and gRPC servers, [`inject_context`] adds the header to
//!   outgoing requests and messages.

mod logs;

use std::sync::OnceLock;

use http::HeaderMap;
use opentelemetry::{
    global,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt, registry::LookupSpan};

pub use logs::JsonLogs;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: for machines (the default).
    Json,
    /// Coloured, multi-field lines: for a developer's terminal.
    Pretty,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            other => Err(format!("unknown log format '{other}'")),
        }
    }
}

/// Telemetry settings (part of [`crate::RuntimeConfig`]).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info,sqlx=warn` (from `RUST_LOG`).
    pub log_filter: String,
    /// Base URL of an OTLP/HTTP collector, e.g. `http://otel-collector:4318`.
    pub otlp_endpoint: Option<url::Url>,
}

/// Flushes buffered spans when dropped at the end of `main`.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(Err(err)) = self.provider.take().map(|provider| provider.shutdown()) {
            eprintln!("failed to flush traces: {err}");
        }
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// What becomes part of a trace: spans and events at INFO and above, from every crate.
/// (`RUST_LOG` chooses what is logged; a trace needs its request and message spans whatever
/// the log level, so a service logging only warnings still returns trace ids.)
const TRACE_FILTER: &str = "info";

/// Installs the global subscriber, tracer provider and propagator.
///
/// Only the first call in a process installs anything; later calls (several services started
/// in one test process) return an inert guard.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, Box<dyn std::error::Error>> {
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard { provider: None });
    }
    global::set_text_map_propagator(TraceContextPropagator::new());

    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    if let Some(endpoint) = &config.otlp_endpoint {
        let traces_url = endpoint.join("v1/traces")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url.as_str())
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("shop");

    let filter = EnvFilter::try_new(&config.log_filter)?
        // lapin logs every message the broker returns (unroutable events) at WARN *with its
        // body*, which would put personal data from event payloads into the logs. The
        // messaging crate counts returned messages itself, so this target stays silent
        // whatever RUST_LOG says.
        .add_directive("lapin::returned_messages=off".parse()?);
    let logs = match config.log_format {
        LogFormat::Json => json_layer(std::io::stdout, &config.service_name).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    // The trace layer has its own filter, fixed at INFO: request and message spans are INFO,
    // and an unfiltered layer would raise the process's maximum level to TRACE, so that every
    // `trace!` and `debug!` in hyper, h2, tower and tokio would be evaluated, formatted and
    // attached to the current span as an event on every request. Measured with `make bench`:
    // a large share of the gateway's CPU per forwarded request (bench/findings.md).
    let spans = EnvFilter::try_new(TRACE_FILTER)?;
    let subscriber = Registry::default()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans),
        )
        .with(logs.with_filter(filter));
    tracing::subscriber::set_global_default(subscriber)?;
    let _ = INSTALLED.set(());
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The JSON log layer: flat event fields, the fields of the spans around the event, and the
/// name and trace and span ids of the innermost one (see [`JsonLogs`] and ADR 0020 for why it
/// is more than a `json-subscriber` layer).
pub fn json_layer<S, W>(writer: W, service: &str) -> JsonLogs<S, W>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    JsonLogs::new(writer, service)
}

/// The trace id of the current span, if telemetry is installed and a span is active.
pub fn current_trace_id() -> Option<String> {
    let cx = Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The span for one incoming HTTP or gRPC request, continuing the caller's trace when the
/// request carries a `traceparent` header.
pub fn http_span<B>(request: &http::Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path(), |path| path.as_str());
    let request_id = request
        .headers()
        .get(crate::http::REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let method = request.method().as_str();
    // Fields given as `&str`, not `%value`: a string is copied, a `Display` value goes through
    // the formatting machinery in every layer that records it (a measurable share of the
    // gateway's CPU per request).
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}").as_str(),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        request_id = request_id,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = extract_context(request.headers());
    // An invalid parent (no header) leaves the span a root of a new trace.
    let _ = span.set_parent(parent);
    span
}

/// The trace context carried by these headers (or an empty context).
pub fn extract_context(headers: &HeaderMap) -> opentelemetry::Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's trace context into outgoing headers (`traceparent`, `tracestate`).
pub fn inject_context(headers: &mut HeaderMap) {
    let cx = Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `body` under a subscriber with the trace layer and the JSON log layer, and returns
    /// the lines written, parsed, with their raw text.
    fn json_lines(body: impl FnOnce()) -> Vec<(serde_json::Value, String)> {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = Registry::default()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_layer(move || writer.clone(), "test-service"));
        tracing::subscriber::with_default(subscriber, body);
        let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        output
            .lines()
            .map(|line| (serde_json::from_str(line).unwrap(), line.to_owned()))
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";

    fn request_from_a_traced_caller() -> http::Request<()> {
        http::Request::builder()
            .uri("/things")
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .body(())
            .unwrap()
    }

    #[test]
    fn json_logs_carry_the_trace_id_of_the_current_span() {
        let lines = json_lines(|| {
            let span = http_span(&request_from_a_traced_caller());
            let _entered = span.enter();
            assert_eq!(current_trace_id().as_deref(), Some(TRACE));
            tracing::info!(answer = 42, "inside the request");
        });

        let (line, _) = &lines[0];
        assert_eq!(line["trace_id"], TRACE);
        let span_id = line["span_id"].as_str().expect("a span id");
        assert_eq!(span_id.len(), 16);
        assert_ne!(
            span_id, CALLER_SPAN,
            "the request's own span, not the caller's"
        );
        assert_eq!(line["service"], "test-service");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "inside the request");
        assert_eq!(line["answer"], 42);
        assert_eq!(line["span"], "request");
        assert_eq!(line["http.route"], "/things");
        assert_eq!(line["http.request.method"], "GET");
        assert!(
            line.get("otel.name").is_none() && line.get("otel.kind").is_none(),
            "the trace layer's instructions are not log data: {line}"
        );
    }

    #[test]
    fn a_field_recorded_after_the_span_opens_is_in_the_lines_written_after_it() {
        let lines = json_lines(|| {
            let span = http_span(&request_from_a_traced_caller());
            let _entered = span.enter();
            tracing::info!("before the answer");
            span.record("http.response.status_code", 201);
            tracing::info!("after the answer");
        });

        assert_eq!(lines.len(), 2);
        assert!(lines[0].0.get("http.response.status_code").is_none());
        assert_eq!(lines[1].0["http.response.status_code"], 201);
    }

    #[test]
    fn an_inner_span_s_field_replaces_an_outer_one_of_the_same_name_once() {
        let lines = json_lines(|| {
            let outer = tracing::info_span!("outer", step = "outer", order = 7);
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", step = "inner");
            let _inner = inner.enter();
            tracing::info!("in both");
        });

        let (line, raw) = &lines[0];
        assert_eq!(line["span"], "inner", "the innermost span's name");
        assert_eq!(line["step"], "inner");
        assert_eq!(line["order"], 7, "the outer span's other fields are kept");
        assert_eq!(
            raw.matches("\"step\"").count(),
            1,
            "one key, valid JSON: {raw}"
        );
        assert_eq!(
            line["trace_id"].as_str().map(str::len),
            Some(32),
            "a new trace when no caller sent one"
        );
    }

    #[test]
    fn a_line_outside_any_span_has_no_trace_id() {
        let lines = json_lines(|| tracing::warn!(reason = "none", "on its own"));

        let (line, _) = &lines[0];
        assert_eq!(line["message"], "on its own");
        assert_eq!(line["reason"], "none");
        assert!(line.get("trace_id").is_none() && line.get("span_id").is_none());
    }
}
