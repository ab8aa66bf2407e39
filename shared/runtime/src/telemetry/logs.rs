//! The JSON log layer: one object per line, with the fields of the spans the line was written
//! in, and the name (`span`) and the trace and span ids of the innermost one.
//!
//! Events are formatted by `json-subscriber`. Span fields are not: that crate (like
//! `tracing-subscriber`'s own JSON format) serialises a span's fields into a JSON string when the
//! span opens and serialises them all again at every `Span::record`, whether or not a line is
//! ever written inside the span. A request span is opened for every request and most requests
//! write no line at INFO, so that work was spent for nothing: in the gateway it was a tenth of
//! the CPU per forwarded request (`RUST_LOG=warn`, which hides spans from this layer, cut 10 %;
//! bench/findings.md). No maintained crate keeps span fields lazily, so this module does, in a
//! few lines: [`JsonLogs`] stores a span's fields as plain values when it opens, updates them in
//! place on `record`, and writes them only into the lines that are written.
//!
//! The trace and span ids are taken from OpenTelemetry's context of the line's span when the line
//! is written, so no span needs a `trace_id` field recorded by hand.

use std::sync::{Arc, OnceLock};

use json_subscriber::{FieldWriter, JsonLayer};
use opentelemetry::trace::TraceContextExt;
use tracing::{
    Dispatch, Event, Id, Subscriber,
    dispatcher::WeakDispatch,
    field::{Field, Visit},
    span::{Attributes, Record},
};
use tracing_subscriber::{
    Layer,
    fmt::MakeWriter,
    layer::Context,
    registry::{LookupSpan, SpanRef},
};

/// The JSON log layer: a span's fields are kept as values when it opens and written only into
/// the lines written inside it; events are formatted by `json-subscriber`. Why, with the
/// measurement: ADR 0020 and this file's module comment. Build it with [`super::json_layer`].
pub struct JsonLogs<S: for<'a> LookupSpan<'a>, W> {
    events: JsonLayer<S, W>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S: for<'a> LookupSpan<'a>, W> std::fmt::Debug for JsonLogs<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLogs").finish_non_exhaustive()
    }
}

impl<S, W> JsonLogs<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    pub(super) fn new(writer: W, service: &str) -> Self {
        let dispatch = Arc::new(OnceLock::<WeakDispatch>::new());
        let mut events = JsonLayer::new(writer);
        events.with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime);
        events.with_level("level");
        events.with_target("target");
        events.with_flattened_event();
        events.add_static_field("service", service.into());
        let for_ids = Arc::clone(&dispatch);
        events.add_multiple_dynamic_fields(move |event, ctx, writer| {
            let Some(leaf) = ctx.event_span(event) else {
                return;
            };
            let _ = writer.write_field("span", leaf.name());
            write_span_fields(&leaf, writer);
            if let Some(dispatch) = for_ids.get().and_then(WeakDispatch::upgrade) {
                write_ids(&leaf, &dispatch, writer);
            }
        });
        Self { events, dispatch }
    }
}

/// Writes the fields of `leaf` and of the spans around it, innermost first; a field that an
/// inner span also has is written once, with the inner span's value.
fn write_span_fields<S>(leaf: &SpanRef<'_, S>, writer: &mut FieldWriter<'_>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut written: Vec<&'static str> = Vec::new();
    for span in leaf.scope() {
        let extensions = span.extensions();
        let Some(fields) = extensions.get::<SpanFields>() else {
            continue;
        };
        for (name, value) in &fields.0 {
            if !written.contains(name) {
                written.push(name);
                // A value that cannot be serialised (none of these: they are plain JSON values)
                // is left out of the line rather than failing it.
                let _ = writer.write_field(name, value);
            }
        }
    }
}

/// Writes `trace_id` and `span_id` from the OpenTelemetry context of the innermost span that has
/// one (a span below the trace layer's level has none; its parent's trace is the line's).
fn write_ids<S>(leaf: &SpanRef<'_, S>, dispatch: &Dispatch, writer: &mut FieldWriter<'_>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    for span in leaf.scope() {
        // No extension of the span may be borrowed here: the trace layer takes them mutably.
        let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), dispatch) else {
            continue;
        };
        let otel_span = cx.span();
        let ids = otel_span.span_context();
        if ids.is_valid() {
            let _ = writer.write_field("trace_id", ids.trace_id().to_string());
            let _ = writer.write_field("span_id", ids.span_id().to_string());
            return;
        }
    }
}

impl<S, W> Layer<S> for JsonLogs<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
        self.events.on_register_dispatch(dispatch);
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = SpanFields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.events.on_event(event, ctx);
    }
}

/// A span's fields as plain values, in the order they were declared.
///
/// `otel.*` fields are instructions to the trace layer (the span's name and kind there), not
/// data about the request, and are left out of log lines.
#[derive(Debug, Default)]
struct SpanFields(Vec<(&'static str, serde_json::Value)>);

impl SpanFields {
    fn set(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name.starts_with("otel.") {
            return;
        }
        match self.0.iter_mut().find(|(known, _)| *known == name) {
            Some((_, old)) => *old = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, value.into());
    }
    /// `%value` and `?value` fields arrive here, already formatted by `tracing`'s wrappers.
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, format!("{value:?}").into());
    }
}
