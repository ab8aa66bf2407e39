//! Events declared once: the payload struct carries its routing key and schema version, so the
//! CloudEvents `type`, the routing key a producer publishes with and the binding a consumer
//! subscribes to cannot disagree.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use shop_messaging::Event;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(rename_all = "camelCase")]
//! struct UserRegistered { user_id: String }
//!
//! impl Event for UserRegistered {
//!     const SOURCE: &'static str = "user-service";
//!     const ROUTING_KEY: &'static str = "user.user.registered";
//! }
//!
//! assert_eq!(UserRegistered::kind(), "user.registered");
//! ```

use serde::{Serialize, de::DeserializeOwned};

use crate::{Envelope, Error};

/// A domain event's payload, with everything needed to route and recognise it.
///
/// The event schemas of the whole system live in the `shop-events` crate, one module per
/// producing service (the "published language" of ADR 0004): a consumer reads the producer's
/// struct, and the contract tests check that both sides still agree on the wire.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The producing service, the CloudEvents `source`: `user-service`.
    const SOURCE: &'static str;
    /// `<service>.<aggregate>.<event>`: `user.user.registered`. The CloudEvents `type` is the
    /// part after the service: `user.registered`.
    const ROUTING_KEY: &'static str;
    /// The version of the payload schema (`dataversion`). A change that would break a
    /// consumer gets a new version, published beside the old one.
    const VERSION: u32 = 1;

    /// The CloudEvents `type`: the routing key without its service word.
    fn kind() -> &'static str {
        Self::ROUTING_KEY
            .split_once('.')
            .map_or(Self::ROUTING_KEY, |(_, kind)| kind)
    }

    /// This event in a fresh envelope (new id, now, current trace context).
    fn envelope(&self) -> Result<Envelope, Error> {
        crate::check_routing_key(Self::ROUTING_KEY)?;
        Ok(Envelope::new(Self::SOURCE, Self::kind(), self)?.version(Self::VERSION))
    }

    /// Whether `envelope` carries this event (same type and version).
    fn matches(envelope: &Envelope) -> bool {
        envelope.kind == Self::kind() && envelope.dataversion == Self::VERSION
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct StockLow {
        sku: String,
    }

    impl Event for StockLow {
        const SOURCE: &'static str = "inventory-service";
        const ROUTING_KEY: &'static str = "inventory.stock.low";
        const VERSION: u32 = 2;
    }

    #[test]
    fn the_envelope_carries_type_source_and_version_from_the_declaration() {
        let event = StockLow { sku: "A".into() }.envelope().unwrap();
        assert_eq!(event.kind, "stock.low");
        assert_eq!(event.source, "inventory-service");
        assert_eq!(event.dataversion, 2);
        assert!(StockLow::matches(&event));
        assert_eq!(
            event.data_as::<StockLow>().unwrap(),
            StockLow { sku: "A".into() }
        );
    }
}
