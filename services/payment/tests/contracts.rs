//! Provider verification: every contract in `contracts/` naming `payment-service` is replayed
//! against the real service — order-service's (Authorize, Capture, Void, Refund) and
//! notification-service's `payment.failed` event (a real declined Authorize, taken from the
//! broker as the relay published it).
//!
//! Provider states the consumer may name (`given(...)`), the order id either as the `orderId`
//! parameter or as the last word of the name (order-service's `an order's payment is
//! authorized` / `... is captured` are the first two rows, with `orderId`):
//!
//! | state | what is set up, through the service's own gRPC API |
//! |---|---|
//! | `an authorized payment for order <id>` | Authorize (approving test card) |
//! | `a captured payment for order <id>` | Authorize, Capture |
//! | `a voided payment for order <id>` | Authorize, Void |
//! | `a refunded payment for order <id>` | Authorize, Capture, Refund (all) |
//! | `a declined payment for order <id>` | Authorize (declining test card) |
//! | `an authorized payment whose capture the provider refuses for order <id>` | Authorize (the card whose capture the simulated provider refuses) |
//! | `no payment for order <id>` | nothing |
//!
//! Optional parameters: `amount` (minor units, default 1999), `currency` (default EUR),
//! `userId` (default: the signed-in customer below).
//!
//! The gRPC API takes service tokens only: the kit calls it with order-service's token
//! (`Provider::grpc_metadata`). The HTTP API (the gateway's contract: a customer's own
//! payments) gets the access token of [`CUSTOMER`], "the signed-in customer", whose payments
//! the states create unless they name another user (`Provider::http_header`).

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

mod common;

use common::{
    APPROVE, CAPTURE_REFUSED, DECLINE, EventTap, Issuer, authorize, client, spawn_payments,
    with_token,
};
use serde_json::{Value, json};
use shop_contract::{GrpcInteraction, Message, Provider, State, prelude::*};
use shop_events::payment::PaymentFailed;
use shop_messaging::{Event, envelope::CONTENT_TYPE};
use shop_proto::{
    common::v1::Money,
    payment::v1::{
        AuthorizeRequest, CaptureRequest, CaptureResponse, Card, RefundRequest, VoidRequest,
    },
};
use uuid::Uuid;

/// notification-service's `payment.failed`: a real declined Authorize (order-service's token,
/// the declining test card), and the event the relay then published, as the broker delivered
/// it.
async fn payment_failed(app: &shop_testkit::TestApp, token: &str) -> Result<Message, String> {
    let tap = EventTap::bind(app).await;
    let order_id = Uuid::new_v4();
    let declined = authorize(order_id, Uuid::new_v4(), 1999, DECLINE);
    client(app)
        .await
        .authorize(with_token(declined, token))
        .await
        .map_err(|status| format!("Authorize: {status}"))?;
    let (routing_key, body, content_type) = tap
        .next_raw(PaymentFailed::ROUTING_KEY, order_id)
        .await
        .ok_or_else(|| format!("no {} event within 15 s", PaymentFailed::ROUTING_KEY))?;
    let mut message = Message::json(&Value::Null)
        .with_metadata("routingKey", routing_key)
        .with_metadata("contentType", CONTENT_TYPE);
    message.body = body.into();
    message.content_type = content_type;
    Ok(message)
}

/// The customer the HTTP requests speak for.
const CUSTOMER: &str = "0192f0c8-0000-7000-8000-00000000c0de";

/// Sets up one provider state through the service's own API.
async fn set_up(app: &shop_testkit::TestApp, token: &str, state: &State) -> Result<(), String> {
    let order = state
        .params
        .get("orderId")
        .and_then(Value::as_str)
        .or_else(|| state.name.rsplit(' ').next())
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| {
            format!(
                "'{}': no order id (orderId parameter or last word)",
                state.name
            )
        })?;
    let amount = state
        .params
        .get("amount")
        .and_then(Value::as_i64)
        .unwrap_or(1999);
    let currency = state
        .params
        .get("currency")
        .and_then(Value::as_str)
        .unwrap_or("EUR");
    let user = state
        .params
        .get("userId")
        .and_then(Value::as_str)
        .unwrap_or(CUSTOMER)
        .to_owned();
    // order-service's contract names its states from the saga's point of view.
    let kind = match state.name.as_str() {
        "an order's payment is authorized" => "an authorized payment",
        "an order's payment is captured" => "a captured payment",
        name => name.split(" for order").next().unwrap_or_default(),
    };
    let mut grpc = client(app).await;
    let authorize = |number: &str| AuthorizeRequest {
        order_id: order.to_string(),
        user_id: user.clone(),
        amount: Some(Money {
            amount,
            currency: currency.into(),
        }),
        card: Some(Card {
            number: number.into(),
            expiry: "12/39".into(),
            cvc: "123".into(),
        }),
    };
    let id = order.to_string();
    let fail = |status: tonic::Status| format!("'{}': {status}", state.name);
    match kind {
        "no payment" => {}
        "a declined payment" => {
            grpc.authorize(with_token(authorize(DECLINE), token))
                .await
                .map_err(fail)?;
        }
        "an authorized payment whose capture the provider refuses" => {
            grpc.authorize(with_token(authorize(CAPTURE_REFUSED), token))
                .await
                .map_err(fail)?;
        }
        "an authorized payment"
        | "a captured payment"
        | "a voided payment"
        | "a refunded payment" => {
            grpc.authorize(with_token(authorize(APPROVE), token))
                .await
                .map_err(fail)?;
            if kind == "a voided payment" {
                grpc.void(with_token(
                    VoidRequest {
                        order_id: id.clone(),
                    },
                    token,
                ))
                .await
                .map_err(fail)?;
            }
            if kind == "a captured payment" || kind == "a refunded payment" {
                grpc.capture(with_token(
                    CaptureRequest {
                        order_id: id.clone(),
                    },
                    token,
                ))
                .await
                .map_err(fail)?;
            }
            if kind == "a refunded payment" {
                let refund = RefundRequest {
                    order_id: id,
                    ..RefundRequest::default()
                };
                grpc.refund(with_token(refund, token)).await.map_err(fail)?;
            }
        }
        other => return Err(format!("unknown provider state '{other} for order <id>'")),
    }
    Ok(())
}

/// The verification, against the contracts in `dir` (`None`: the repository's `contracts/`).
async fn verify(dir: Option<&std::path::Path>) {
    let issuer = Issuer::start().await;
    let app = std::sync::Arc::new(spawn_payments(&issuer).await);
    let token = issuer.service("order-service");
    let mut provider = Provider::new("payment-service")
        .http(app.http_addr)
        .grpc(app.grpc_addr)
        .grpc_metadata("authorization", format!("Bearer {token}"))
        .http_header(
            "Authorization",
            format!(
                "Bearer {}",
                issuer.customer(Uuid::parse_str(CUSTOMER).unwrap())
            ),
        );
    provider = match dir {
        Some(dir) => provider.pacts_in(dir),
        // Every consumer with a contract here; a missing file fails the verification.
        None => provider.consumers(["gateway", "notification-service", "order-service"]),
    };
    let (states, producer) = (app.clone(), app.clone());
    let failed_token = token.clone();
    provider
        .state(move |state| {
            let (app, token) = (states.clone(), token.clone());
            async move { set_up(&app, &token, &state).await }
        })
        .message("a payment.failed event", move || {
            let (app, token) = (producer.clone(), failed_token.clone());
            async move { payment_failed(&app, &token).await }
        })
        .verify()
        .await;
}

#[tokio::test]
async fn honours_every_contract_naming_payment() {
    verify(None).await;
}

/// The harness itself, on a contract written here as order-service's will be: a provider
/// state, a service-token-only method, and a response the real service must match.
#[tokio::test]
async fn the_harness_sets_up_states_and_calls_the_authenticated_api() {
    let dir = tempfile::tempdir().unwrap();
    let order = Uuid::new_v4().to_string();
    let call = GrpcInteraction::new(
        "capture of an authorized payment",
        "/shop.payment.v1.PaymentService/Capture",
    )
    .given_with_params(
        "an authorized payment for order",
        json!({"orderId": order, "amount": 2500}),
    )
    .request(&CaptureRequest {
        order_id: order.clone(),
    })
    .response(json_pattern!({
        "status": "PAYMENT_STATUS_CAPTURED",
        "paymentId": like!("0190b2a4-0000-7000-8000-000000000000"),
        "captured": {"amount": "2500", "currency": "EUR"},
    }));
    Contract::new("order-harness-selftest", "payment-service")
        .in_dir(dir.path())
        .grpc(call, |example| async move {
            let response: CaptureResponse = example.response_as()?;
            assert_eq!(response.captured.map(|m| m.amount), Some(2500));
            Ok::<_, tonic::Status>(())
        })
        .await
        .unwrap();
    verify(Some(dir.path())).await;
}
