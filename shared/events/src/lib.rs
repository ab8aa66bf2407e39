//! Every domain event of the system, declared once: the payload struct and, through
//! [`shop_messaging::Event`], its routing key, CloudEvents type and schema version.
//!
//! One module per producing service, owned by that service: the producer writes its events
//! here and publishes them through its outbox; consumers read the same structs. This is the
//! asynchronous counterpart of `proto/` (ADR 0004). Rules for changing an event:
//!
//! * Adding a field is always allowed; consumers are tolerant readers. Give a new field a
//!   `#[serde(default)]` so events written before it still read.
//! * Renaming, removing or changing the meaning of a field is a new `VERSION` of the event,
//!   published beside the old one until no consumer reads the old one.
//! * The message contracts in `contracts/` (written by consumers, verified by producers) catch
//!   the changes these rules miss.
//!
//! Payloads use camelCase field names on the wire, money as `{amount, currency}` in minor units.

pub mod catalog;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod user;

use serde::{Deserialize, Serialize};

/// An amount of money in integer minor units (cents for EUR), never a float.
///
/// Also a schema of the public API (`utoipa::ToSchema`): every service that shows money shows
/// this type, so the OpenAPI document has one `Money`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"amount": 1999, "currency": "EUR"}))]
pub struct Money {
    /// Minor units (cents for EUR).
    pub amount: i64,
    /// ISO 4217 alphabetic code, upper case.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
}

#[cfg(test)]
mod tests {
    use shop_messaging::{Event, check_routing_key};

    fn declared<E: Event>() {
        check_routing_key(E::ROUTING_KEY).unwrap();
        let service = E::ROUTING_KEY.split('.').next().unwrap_or_default();
        assert_eq!(
            E::SOURCE,
            format!("{service}-service"),
            "{} is published by the service its routing key names",
            E::ROUTING_KEY
        );
    }

    #[test]
    fn every_event_names_its_producer_in_its_routing_key() {
        declared::<crate::user::UserRegistered>();
        declared::<crate::catalog::ProductCreated>();
        declared::<crate::catalog::ProductUpdated>();
        declared::<crate::catalog::PriceChanged>();
        declared::<crate::inventory::StockReserved>();
        declared::<crate::inventory::StockReleased>();
        declared::<crate::inventory::StockLow>();
        declared::<crate::inventory::OutOfStock>();
        declared::<crate::inventory::StockReplenished>();
        declared::<crate::order::OrderPlaced>();
        declared::<crate::order::OrderConfirmed>();
        declared::<crate::order::OrderCancelled>();
        declared::<crate::payment::PaymentAuthorized>();
        declared::<crate::payment::PaymentFailed>();
        declared::<crate::payment::PaymentCaptured>();
        declared::<crate::payment::PaymentVoided>();
        declared::<crate::payment::PaymentRefunded>();
    }
}
