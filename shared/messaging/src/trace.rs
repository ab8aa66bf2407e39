//! W3C trace context in AMQP message headers: the AMQP twin of
//! [`shop_runtime::telemetry::inject_context`] and [`shop_runtime::telemetry::extract_context`].
//!
//! The publisher writes `traceparent` (and `tracestate`) as AMQP headers, as the CloudEvents
//! AMQP binding and the OpenTelemetry messaging conventions do; the consumer's span takes the
//! context from there as its parent, so one trace runs from the request that caused an event to
//! every consumer's handling of it.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::Envelope;
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
};

/// Writes `cx` into `headers`.
pub fn inject(cx: &opentelemetry::Context, headers: &mut FieldTable) {
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut HeaderInjector(headers))
    });
}

/// The trace context carried by `headers` (an empty context when there is none).
pub fn extract(headers: &FieldTable) -> opentelemetry::Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

/// The trace context recorded in an envelope when it was created (its `traceparent`).
pub fn from_envelope(envelope: &Envelope) -> opentelemetry::Context {
    let mut carrier = FieldTable::default();
    if let Some(traceparent) = &envelope.traceparent {
        carrier.insert(
            "traceparent".into(),
            AMQPValue::LongString(traceparent.as_str().into()),
        );
    }
    if let Some(tracestate) = &envelope.tracestate {
        carrier.insert(
            "tracestate".into(),
            AMQPValue::LongString(tracestate.as_str().into()),
        );
    }
    extract(&carrier)
}

/// A header's value when it is a string.
pub fn header_str<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a str> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_traceparent_header_becomes_the_parent_context() {
        // What `shop_runtime::telemetry::init` installs.
        global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        );
        let cx = extract(&headers);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut out = FieldTable::default();
        inject(&cx, &mut out);
        assert_eq!(
            header_str(&out, "traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
