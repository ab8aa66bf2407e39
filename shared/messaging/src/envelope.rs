//! The envelope every domain event travels in: a CloudEvents 1.0 event in JSON ("structured
//! mode"), so any CloudEvents-aware tool can read it.
//!
//! ```json
//! {
//!   "specversion": "1.0",
//!   "id": "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a",
//!   "source": "user-service",
//!   "type": "user.registered",
//!   "time": "2026-11-22T04:00:00.123456Z",
//!   "datacontenttype": "application/json",
//!   "dataversion": 1,
//!   "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
//!   "correlationid": "0193e1c2-...",
//!   "causationid": "0193e1c1-...",
//!   "data": { "userId": "u-1", "email": "ada@example.com" }
//! }
//! ```
//!
//! * `id` is a UUIDv7: unique, and roughly time-ordered, which keeps inbox indexes compact.
//! * `dataversion` is the version of the `data` schema for this `type`. A producer adds fields
//!   freely (consumers ignore what they do not know); a change that would break a consumer
//!   gets a new version, published alongside the old one until no consumer needs it.
//! * `correlationid` is the same for every event caused, directly or not, by one original
//!   action; `causationid` is the id of the event that directly caused this one.
//!   [`Envelope::caused_by`] sets both.
//! * `traceparent`/`tracestate` (the CloudEvents distributed-tracing extension) record the
//!   span that created the event, so a relay publishing it later still continues that trace.
//!
//! Reading is tolerant: unknown attributes are ignored and everything but `id`, `source` and
//! `type` may be missing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use opentelemetry::global;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// The CloudEvents version this envelope implements.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of a structured-mode CloudEvent in JSON (what the AMQP message says).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// The content type of `data`.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// A domain event. Build one with [`Envelope::new`]; read one with [`Envelope::from_slice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default = "spec_version")]
    pub specversion: String,
    pub id: Uuid,
    /// The service that produced the event, e.g. `user-service`.
    pub source: String,
    /// What happened, `<aggregate>.<event>` in the past tense, e.g. `user.registered`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The version of the schema of `data` for this `type` (1 when absent).
    #[serde(default = "first_version")]
    pub dataversion: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// The payload. `null` when absent.
    #[serde(default)]
    pub data: serde_json::Value,
}

fn spec_version() -> String {
    SPEC_VERSION.to_owned()
}

fn first_version() -> u32 {
    1
}

impl Envelope {
    /// A new event with a fresh UUIDv7 id, the current time, version 1, and the trace context
    /// of the current span (none when there is no active trace).
    pub fn new(
        source: impl Into<String>,
        kind: impl Into<String>,
        data: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        let mut carrier = HashMap::new();
        let cx = tracing::Span::current().context();
        global::get_text_map_propagator(|propagator| propagator.inject_context(&cx, &mut carrier));
        Ok(Self {
            specversion: spec_version(),
            id: Uuid::now_v7(),
            source: source.into(),
            kind: kind.into(),
            time: Some(Utc::now()),
            datacontenttype: Some(DATA_CONTENT_TYPE.to_owned()),
            dataversion: 1,
            traceparent: carrier.remove("traceparent"),
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
            correlationid: None,
            causationid: None,
            data: serde_json::to_value(data)?,
        })
    }

    /// Sets the version of the `data` schema.
    pub fn version(mut self, version: u32) -> Self {
        self.dataversion = version;
        self
    }

    /// Marks this event as caused by `cause`: same correlation id (the cause's own id when it
    /// had none, since it then started the chain) and `cause`'s id as causation id.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlationid = Some(
            cause
                .correlationid
                .clone()
                .unwrap_or_else(|| cause.id.to_string()),
        );
        self.causationid = Some(cause.id.to_string());
        self
    }

    /// Sets the correlation id, e.g. the request id of the HTTP request that caused the event.
    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlationid = Some(correlation_id.into());
        self
    }

    /// The payload as the consumer's own type (which may declare fewer fields than were sent).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }

    /// Reads an envelope from a message body, tolerantly.
    pub fn from_slice(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// The message body.
    pub fn to_vec(&self) -> Vec<u8> {
        // A struct of strings, numbers and a `Value` always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_with_cloudevents_attribute_names() {
        let event = Envelope::new(
            "user-service",
            "user.registered",
            &json!({ "userId": "u-1" }),
        )
        .unwrap()
        .version(2)
        .correlated("req-1");
        let json: serde_json::Value = serde_json::from_slice(&event.to_vec()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "user.registered");
        assert_eq!(json["source"], "user-service");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["dataversion"], 2);
        assert_eq!(json["correlationid"], "req-1");
        assert_eq!(json["data"]["userId"], "u-1");
        assert_eq!(event.id.get_version_num(), 7);
        assert_eq!(Envelope::from_slice(&event.to_vec()).unwrap(), event);
    }

    #[test]
    fn reads_tolerantly() {
        let event = Envelope::from_slice(
            br#"{"id":"0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a","source":"s","type":"t","future":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(event.specversion, "1.0");
        assert_eq!(event.dataversion, 1);
        assert_eq!(event.time, None);
        assert!(event.data.is_null());
        assert!(
            Envelope::from_slice(br#"{"source":"s","type":"t"}"#).is_err(),
            "id is required"
        );
    }

    #[test]
    fn causation_chains_keep_the_correlation_id() {
        let first = Envelope::new("order-service", "order.placed", &json!({})).unwrap();
        let second = Envelope::new("payment-service", "payment.captured", &json!({}))
            .unwrap()
            .caused_by(&first);
        let third = Envelope::new("notification-service", "mail.sent", &json!({}))
            .unwrap()
            .caused_by(&second);
        assert_eq!(second.correlationid, Some(first.id.to_string()));
        assert_eq!(third.correlationid, Some(first.id.to_string()));
        assert_eq!(third.causationid, Some(second.id.to_string()));
    }
}
