//! The events payment-service publishes, one per completed payment operation. Each is written to
//! the outbox in the transaction that records the operation, so it exists if and only if the
//! operation happened, and a retried operation (answered from its first result) writes none.
//!
//! Card data never appears here beyond the brand and the last four digits.

use serde::{Deserialize, Serialize};
use shop_messaging::Event;
use uuid::Uuid;

use crate::Money;

/// The provider approved the authorization: the amount is held on the card until it is
/// captured or voided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAuthorized {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    /// `visa`, `mastercard`, `amex`, `discover` or `unknown`.
    pub card_brand: String,
    pub card_last4: String,
}

impl Event for PaymentAuthorized {
    const SOURCE: &'static str = "payment-service";
    const ROUTING_KEY: &'static str = "payment.payment.authorized";
}

/// The provider declined the authorization. Carries what notification-service needs to tell the
/// customer, so it never has to call back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    /// A reason code: `card_declined`, `insufficient_funds`, `unknown_card`. Consumers treat an
    /// unknown code like `card_declined` (tolerant reader).
    pub reason: String,
    pub card_brand: String,
    pub card_last4: String,
}

impl Event for PaymentFailed {
    const SOURCE: &'static str = "payment-service";
    const ROUTING_KEY: &'static str = "payment.payment.failed";
}

/// The authorized amount was captured: the customer is charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCaptured {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
}

impl Event for PaymentCaptured {
    const SOURCE: &'static str = "payment-service";
    const ROUTING_KEY: &'static str = "payment.payment.captured";
}

/// The authorization was released without charging (saga compensation before capture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentVoided {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// The amount that was held and is now released.
    pub amount: Money,
}

impl Event for PaymentVoided {
    const SOURCE: &'static str = "payment-service";
    const ROUTING_KEY: &'static str = "payment.payment.voided";
}

/// Money was given back after a capture (all of it, or part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// What this refund gave back.
    pub amount: Money,
    /// Everything refunded for the order so far, this refund included.
    pub total_refunded: Money,
    /// Why, as the caller said (`order_cancelled`, ...); may be empty.
    #[serde(default)]
    pub reason: String,
}

impl Event for PaymentRefunded {
    const SOURCE: &'static str = "payment-service";
    const ROUTING_KEY: &'static str = "payment.payment.refunded";
}
