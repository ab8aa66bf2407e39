//! `shop.payment.v1.PaymentService` for internal callers (order-service's saga), behind
//! [`shop_auth::grpc::RequireService`]: the request is validated here, the operation runs in
//! [`crate::payments`], and its receipt becomes the response.
//!
//! Declines are answers (`status: DECLINED` with a reason), not errors. Errors are:
//! `INVALID_ARGUMENT` naming each bad field, `NOT_FOUND` (no payment for the order),
//! `FAILED_PRECONDITION` (the state machine or the provider refused; the message says why) and
//! `UNAVAILABLE` (the provider did not answer, or refused a void for now; retry the same
//! request).
//!
//! A Void always settles something: `VOIDED` with an empty `payment_id` for an order without a
//! payment (a tombstone: a later Authorize is refused), `VOIDED` for a payment whose
//! authorization has no known outcome (voided at the provider by its key), `DECLINED` for a
//! declined payment (nothing is held).
//!
//! Why these codes: order-service decides from them alone. `INVALID_ARGUMENT` and
//! `FAILED_PRECONDITION` are final (retrying cannot help), `UNAVAILABLE` means "outcome unknown,
//! send the same request again", which is safe because every operation is idempotent per
//! order. Mixing them up would make the saga either give up on money that is held or retry
//! forever against a refusal.
//!
//! Where it sits: order-service's `participants` module is the only client (the access table
//! in [`crate::GRPC_ACCESS`] names no other), and each method here is one saga step or one
//! compensation. The consumer side of this contract is recorded in
//! `services/order/tests/contracts.rs` and verified against this server by
//! `tests/contracts.rs` (pattern TEST-05), so a changed code or field fails there before it
//! reaches a running saga.

use chrono::Utc;
use shop_proto::{
    common::v1::Money as ProtoMoney,
    payment::v1::{
        AuthorizeRequest, AuthorizeResponse, CaptureRequest, CaptureResponse, PaymentStatus,
        RefundRequest, RefundResponse, VoidRequest, VoidResponse,
        payment_service_server::PaymentService,
    },
};
use shop_runtime::{ApiError, FieldError};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    card::Card,
    ledger::{Outcome, State},
    payments::{Authorize, Payments, Receipt, Refund},
};

/// The gRPC server order-service calls (`shop.payment.v1.PaymentService`): a thin translation
/// between protobuf and [`Payments`], so the rules live in one place for gRPC and any other
/// entry point.
#[derive(Debug, Clone)]
pub struct PaymentApi {
    /// The operations; a clone of the value the reconciler holds, so both record results
    /// through the same code.
    pub payments: Payments,
}

/// The calling service, as its token names it: recorded on every audit row.
///
/// Behind `RequireService`, as [`crate::PaymentService`] serves it, every accepted call
/// carries its caller, so `unknown` never appears there; the fallback only keeps this total.
fn caller<T>(request: &Request<T>) -> String {
    shop_auth::grpc::caller(request).map_or_else(|| "unknown".to_owned(), |c| c.name.clone())
}

/// The order id every operation is keyed by; a bad one joins the field errors instead of
/// returning early, so one answer names every bad field.
///
/// Parsed here rather than trusted: the saga sends the ids it generated, but a malformed
/// one must be a field error, never a query that finds nothing.
fn order_id(raw: &str, errors: &mut Vec<FieldError>) -> Option<Uuid> {
    let parsed = Uuid::parse_str(raw).ok();
    if parsed.is_none() {
        errors.push(FieldError::new("order_id", "is not a UUID"));
    }
    parsed
}

/// `INVALID_ARGUMENT` naming every bad field, counted as an `invalid` outcome.
///
/// Counted here because such a request never reaches [`Payments`], which counts the
/// outcomes of the requests it handles.
fn invalid(operation: &'static str, errors: Vec<FieldError>) -> Status {
    metrics::counter!("payment_operations_total", "operation" => operation, "outcome" => "invalid")
        .increment(1);
    ApiError::validation(errors).into()
}

/// A positive amount in an ISO 4217-shaped currency; errors name `<field>.amount` and
/// `<field>.currency`.
///
/// Only the shape of the code is checked (three capital letters): which currencies the
/// provider accepts is the provider's decision.
fn money(
    money: Option<&ProtoMoney>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<shop_events::Money> {
    let Some(money) = money else {
        errors.push(FieldError::new(field, "is required"));
        return None;
    };
    let mut ok = true;
    if money.amount <= 0 {
        errors.push(FieldError::new(
            format!("{field}.amount"),
            "must be a positive number of minor units",
        ));
        ok = false;
    }
    if !(money.currency.len() == 3 && money.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        errors.push(FieldError::new(
            format!("{field}.currency"),
            "must be an ISO 4217 code such as EUR",
        ));
        ok = false;
    }
    ok.then(|| shop_events::Money {
        amount: money.amount,
        currency: money.currency.clone(),
    })
}

/// A ledger amount back in protobuf form; always present in answers, so a caller never has to
/// tell "zero" from "not sent".
fn proto_money(amount: i64, currency: &str) -> Option<ProtoMoney> {
    Some(ProtoMoney {
        amount,
        currency: currency.to_owned(),
    })
}

/// The proto's status of a ledger state. `PENDING` has no proto value of its own; a receipt
/// always follows a completed operation, which never leaves a payment pending, so that arm
/// only keeps the match total.
fn status(state: State) -> PaymentStatus {
    match state {
        State::Pending => PaymentStatus::Unspecified,
        State::Authorized => PaymentStatus::Authorized,
        State::Declined => PaymentStatus::Declined,
        State::Captured => PaymentStatus::Captured,
        State::Voided => PaymentStatus::Voided,
        State::PartiallyRefunded => PaymentStatus::PartiallyRefunded,
        State::Refunded => PaymentStatus::Refunded,
    }
}

/// The answer to an Authorize, first call or replay alike: the decline reason only for a
/// decline, the card only as brand and last four.
///
/// The amount is the payment's, as recorded: a retry that names another valid amount is
/// refused before it gets here.
fn authorize_response(receipt: &Receipt) -> AuthorizeResponse {
    let payment = &receipt.payment;
    AuthorizeResponse {
        payment_id: payment.id.to_string(),
        status: status(receipt.ledger.state).into(),
        decline_reason: if receipt.outcome == Outcome::Declined {
            receipt.reason.clone().unwrap_or_default()
        } else {
            String::new()
        },
        card_last4: payment.card_last4.clone(),
        card_brand: payment.card_brand.clone(),
        amount: proto_money(payment.amount, &payment.currency),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    /// Validates everything, then holds the amount once per order
    /// ([`Payments::authorize`]). The request body, card included, is dropped as soon as the
    /// validated [`Card`] exists. A retry whose card no longer validates still gets the
    /// recorded result when it is the same order, customer and amount.
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let caller = caller(&request);
        let body = request.into_inner();
        let mut errors = Vec::new();
        let order_id = order_id(&body.order_id, &mut errors);
        let user_id = Uuid::parse_str(&body.user_id).ok();
        if user_id.is_none() {
            errors.push(FieldError::new("user_id", "is not a UUID"));
        }
        let amount = money(body.amount.as_ref(), "amount", &mut errors);
        let card = match &body.card {
            None => {
                errors.push(FieldError::new("card", "is required"));
                None
            }
            Some(card) => Card::parse(
                &card.number,
                &card.expiry,
                &card.cvc,
                Utc::now().date_naive(),
            )
            .map_err(|card_errors| errors.extend(card_errors))
            .ok(),
        };
        // The request (and the card in it) is dropped here; only `Card` goes on.
        drop(body);
        let (Some(order_id), Some(user_id), Some(amount), Some(card)) =
            (order_id, user_id, amount.clone(), card)
        else {
            // A retry of an Authorize that completed is answered with its result even if the
            // card no longer validates (its expiry month passed in between): the saga must
            // learn the money is held, not read "invalid" and walk away from it.
            if let Some(order_id) = order_id
                && let Some(receipt) = self.payments.recorded_authorization(order_id).await?
                && user_id.is_none_or(|user| user == receipt.payment.user_id)
                && amount.as_ref().is_none_or(|amount| {
                    amount.amount == receipt.payment.amount
                        && amount.currency == receipt.payment.currency
                })
            {
                metrics::counter!("payment_operations_total", "operation" => "authorize", "outcome" => "replayed")
                    .increment(1);
                return Ok(Response::new(authorize_response(&receipt)));
            }
            return Err(invalid("authorize", errors));
        };
        let receipt = self
            .payments
            .authorize(
                Authorize {
                    order_id,
                    user_id,
                    amount: amount.amount,
                    currency: amount.currency,
                    card,
                },
                &caller,
            )
            .await?;
        Ok(Response::new(authorize_response(&receipt)))
    }

    /// Takes the whole authorized amount ([`Payments::capture`]); `FAILED_PRECONDITION` when
    /// the state machine or the provider refuses, which order-service treats as a reason to
    /// park the saga rather than retry.
    async fn capture(
        &self,
        request: Request<CaptureRequest>,
    ) -> Result<Response<CaptureResponse>, Status> {
        let caller = caller(&request);
        let mut errors = Vec::new();
        let Some(order_id) = order_id(&request.get_ref().order_id, &mut errors) else {
            return Err(invalid("capture", errors));
        };
        let receipt: Receipt = self.payments.capture(order_id, &caller).await?;
        Ok(Response::new(CaptureResponse {
            status: status(receipt.ledger.state).into(),
            payment_id: receipt.payment.id.to_string(),
            captured: proto_money(receipt.amount, &receipt.payment.currency),
        }))
    }

    /// Settles the order's payment whatever state it is in ([`Payments::void`]); see the
    /// module documentation for the three ways a Void answers.
    async fn void(&self, request: Request<VoidRequest>) -> Result<Response<VoidResponse>, Status> {
        let caller = caller(&request);
        let mut errors = Vec::new();
        let Some(order_id) = order_id(&request.get_ref().order_id, &mut errors) else {
            return Err(invalid("void", errors));
        };
        Ok(Response::new(
            match self.payments.void(order_id, &caller).await? {
                Some(receipt) => VoidResponse {
                    status: status(receipt.ledger.state).into(),
                    payment_id: receipt.payment.id.to_string(),
                },
                // No payment: the tombstone voids whatever Authorize may still arrive.
                None => VoidResponse {
                    status: PaymentStatus::Voided.into(),
                    payment_id: String::new(),
                },
            },
        ))
    }

    /// Gives captured money back ([`Payments::refund`]): everything not yet refunded, or the
    /// requested part under the caller's `idempotency_key` (bounded, like `reason`, so audit
    /// rows stay small).
    async fn refund(
        &self,
        request: Request<RefundRequest>,
    ) -> Result<Response<RefundResponse>, Status> {
        let caller = caller(&request);
        let body = request.into_inner();
        let mut errors = Vec::new();
        let order_id = order_id(&body.order_id, &mut errors);
        let amount = body
            .amount
            .as_ref()
            .map(|amount| money(Some(amount), "amount", &mut errors));
        if body.idempotency_key.chars().count() > 200 {
            errors.push(FieldError::new(
                "idempotency_key",
                "must be at most 200 characters",
            ));
        }
        if body.reason.chars().count() > 500 {
            errors.push(FieldError::new("reason", "must be at most 500 characters"));
        }
        let (Some(order_id), true) = (order_id, errors.is_empty()) else {
            return Err(invalid("refund", errors));
        };
        let receipt = self
            .payments
            .refund(
                Refund {
                    order_id,
                    amount: amount.flatten(),
                    key: body.idempotency_key,
                    reason: body.reason,
                },
                &caller,
            )
            .await?;
        let currency = &receipt.payment.currency;
        Ok(Response::new(RefundResponse {
            status: status(receipt.ledger.state).into(),
            payment_id: receipt.payment.id.to_string(),
            refunded: proto_money(receipt.amount, currency),
            total_refunded: proto_money(receipt.ledger.refunded, currency),
        }))
    }
}
