//! Payments through the real gRPC and HTTP endpoints, against real PostgreSQL and RabbitMQ:
//! the test cards, validation, idempotency under concurrent duplicates, the state machine,
//! refunds, the audit trail, who may call, what customers see, and the trace an Authorize
//! hands on to its event.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use crate::common;

use common::{
    APPROVE, DECLINE, EventTap, INSUFFICIENT_FUNDS, Issuer, SLOW, authorize, card, client, data,
    database, eur, spawn_payments, with_token,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_proto::payment::v1::{
    AuthorizeRequest, CaptureRequest, PaymentStatus, RefundRequest, VoidRequest,
};
use tonic::Code;
use uuid::Uuid;

const ORDER_SERVICE: &str = "order-service";

fn capture(order_id: Uuid) -> CaptureRequest {
    CaptureRequest {
        order_id: order_id.to_string(),
    }
}

fn void(order_id: Uuid) -> VoidRequest {
    VoidRequest {
        order_id: order_id.to_string(),
    }
}

fn refund(order_id: Uuid, amount: Option<i64>, key: &str) -> RefundRequest {
    RefundRequest {
        order_id: order_id.to_string(),
        reason: "order_cancelled".into(),
        amount: amount.and_then(eur),
        idempotency_key: key.into(),
    }
}

/// (operation, phase) of every audit row, oldest first.
async fn audit(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT operation, phase FROM payment_operations ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_test_card_gives_its_documented_outcome() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let tap = EventTap::bind(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let user = Uuid::new_v4();

    // (card, status, decline reason)
    let cases = [
        (APPROVE, PaymentStatus::Authorized, ""),
        (DECLINE, PaymentStatus::Declined, "card_declined"),
        (
            INSUFFICIENT_FUNDS,
            PaymentStatus::Declined,
            "insufficient_funds",
        ),
        (SLOW, PaymentStatus::Authorized, ""),
        // A valid number that is not a test card is never approved.
        ("5555555555554444", PaymentStatus::Declined, "unknown_card"),
    ];
    let mut expected_events = Vec::new();
    for (number, status, reason) in cases {
        let order = Uuid::new_v4();
        let answer = grpc
            .authorize(with_token(authorize(order, user, 2599, number), &token))
            .await
            .unwrap_or_else(|status| panic!("{number}: {status}"))
            .into_inner();
        assert_eq!(answer.status(), status, "{number}");
        assert_eq!(answer.decline_reason, reason, "{number}");
        assert_eq!(answer.card_last4, number[number.len() - 4..], "{number}");
        assert_eq!(answer.amount, eur(2599));
        let brand = if number.starts_with('4') {
            "visa"
        } else {
            "mastercard"
        };
        assert_eq!(answer.card_brand, brand);
        let mut event = json!({
            "paymentId": answer.payment_id, "orderId": order, "userId": user,
            "amount": {"amount": 2599, "currency": "EUR"},
            "cardBrand": brand, "cardLast4": answer.card_last4,
        });
        if status == PaymentStatus::Authorized {
            expected_events.push(("payment.payment.authorized".to_owned(), event));
        } else {
            event["reason"] = reason.into();
            expected_events.push(("payment.payment.failed".to_owned(), event));
        }
    }

    let events = tap.drain(&database(&app).await).await;
    assert_eq!(data(&events), expected_events);
    for (_, envelope) in &events {
        assert_eq!(envelope.source, "payment-service");
    }
}

#[tokio::test]
async fn bad_card_number_expiry_cvc_or_amount_is_invalid_argument_naming_the_field() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let good = || authorize(Uuid::new_v4(), Uuid::new_v4(), 1000, APPROVE);

    let mut cases: Vec<(AuthorizeRequest, &str)> = Vec::new();
    let mut luhn = good();
    luhn.card = card("4242424242424241");
    cases.push((luhn, "card.number: is not a valid card number"));
    let mut expired = good();
    expired.card.as_mut().unwrap().expiry = "01/20".into();
    cases.push((expired, "card.expiry: is in the past"));
    let mut shape = good();
    shape.card.as_mut().unwrap().expiry = "2039-12".into();
    cases.push((shape, "card.expiry: must be MM/YY"));
    let mut cvc = good();
    cvc.card.as_mut().unwrap().cvc = "12".into();
    cases.push((cvc, "card.cvc: must be 3 digits"));
    let mut zero = good();
    zero.amount = eur(0);
    cases.push((zero, "amount.amount: must be a positive number"));
    let mut currency = good();
    currency.amount.as_mut().unwrap().currency = "euro".into();
    cases.push((currency, "amount.currency: must be an ISO 4217 code"));
    let mut order = good();
    order.order_id = "order-1".into();
    cases.push((order, "order_id: is not a UUID"));
    let mut no_card = good();
    no_card.card = None;
    cases.push((no_card, "card: is required"));

    for (request, expected) in cases {
        let status = grpc
            .authorize(with_token(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}");
        assert!(
            status.message().contains(expected),
            "{expected} in {}",
            status.message()
        );
        assert!(!status.message().contains("4242424242424241"));
    }
    // Several bad fields are reported together.
    let mut many = good();
    many.card = card("1234");
    many.amount = eur(-5);
    let status = grpc.authorize(with_token(many, &token)).await.unwrap_err();
    for field in ["card.number", "amount.amount"] {
        assert!(status.message().contains(field), "{}", status.message());
    }

    let pool = database(&app).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing invalid is stored");
}

#[tokio::test]
async fn concurrent_duplicate_authorize_and_capture_have_one_effect_and_one_answer() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let tap = EventTap::bind(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());
    let (mut first, mut second) = (client(&app).await, client(&app).await);

    // The slow card keeps the first call at the provider while the duplicate arrives.
    let (a, b) = tokio::join!(
        first.authorize(with_token(authorize(order, user, 4200, SLOW), &token)),
        second.authorize(with_token(authorize(order, user, 4200, SLOW), &token)),
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(a, b, "both callers see the same result");
    assert_eq!(a.status(), PaymentStatus::Authorized);

    let (a, b) = tokio::join!(
        first.capture(with_token(capture(order), &token)),
        second.capture(with_token(capture(order), &token)),
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(a, b);
    assert_eq!(a.status(), PaymentStatus::Captured);
    assert_eq!(a.captured, eur(4200));

    // A later retry still gets the first result.
    let again = first
        .capture(with_token(capture(order), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, a);

    // One provider call per operation (one `started` row each), one result each.
    let pool = database(&app).await;
    assert_eq!(
        audit(&pool).await,
        [
            ("authorize".to_owned(), "started".to_owned()),
            ("authorize".into(), "completed".into()),
            ("capture".into(), "started".into()),
            ("capture".into(), "completed".into()),
        ]
    );
    let keys: Vec<String> = tap
        .drain(&pool)
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        keys,
        ["payment.payment.authorized", "payment.payment.captured"]
    );

    // A "retry" that is not the same request is a caller bug, not a replay.
    let different = first
        .authorize(with_token(authorize(order, user, 9999, SLOW), &token))
        .await
        .unwrap_err();
    assert_eq!(different.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn every_forbidden_transition_is_refused_and_changes_nothing() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let tap = EventTap::bind(&app).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let user = Uuid::new_v4();
    macro_rules! t {
        ($message:expr) => {
            with_token($message, &token)
        };
    }

    let orders = grpc.clone();
    let authorized = |number: &'static str| {
        let mut grpc = orders.clone();
        let token = token.clone();
        async move {
            let order = Uuid::new_v4();
            grpc.authorize(with_token(authorize(order, user, 1000, number), &token))
                .await
                .unwrap();
            order
        }
    };
    let voided = authorized(APPROVE).await;
    grpc.void(t!(void(voided))).await.unwrap();
    let captured = authorized(APPROVE).await;
    grpc.capture(t!(capture(captured))).await.unwrap();
    let refunded = authorized(APPROVE).await;
    grpc.capture(t!(capture(refunded))).await.unwrap();
    grpc.refund(t!(refund(refunded, None, ""))).await.unwrap();
    let only_authorized = authorized(APPROVE).await;
    let declined = authorized(DECLINE).await;

    let completed_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_operations WHERE phase = 'completed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let events_before = tap.drain(&pool).await.len();

    let refusals = [
        (
            grpc.capture(t!(capture(voided))).await.map(drop),
            "voided; it can no longer be captured",
        ),
        (
            grpc.refund(t!(refund(voided, None, ""))).await.map(drop),
            "voided; there is nothing to refund",
        ),
        (
            grpc.void(t!(void(captured))).await.map(drop),
            "refund it instead",
        ),
        (
            grpc.refund(t!(refund(captured, Some(1001), "too-much")))
                .await
                .map(drop),
            "exceeds what is left to refund (1000 of 1000 captured)",
        ),
        (
            grpc.capture(t!(capture(refunded))).await.map(drop),
            "has since been refunded",
        ),
        (
            grpc.refund(t!(refund(only_authorized, None, "")))
                .await
                .map(drop),
            "void it instead",
        ),
        (
            grpc.capture(t!(capture(declined))).await.map(drop),
            "declined",
        ),
    ];
    for (result, expected) in refusals {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{expected}");
        assert!(
            status.message().contains(expected),
            "{expected} in {}",
            status.message()
        );
    }
    let missing = grpc.capture(t!(capture(Uuid::new_v4()))).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Voiding a declined payment is not refused: nothing is held, and the answer says so.
    let declined_void = grpc.void(t!(void(declined))).await.unwrap().into_inner();
    assert_eq!(declined_void.status(), PaymentStatus::Declined);
    assert!(!declined_void.payment_id.is_empty());

    // Nothing changed: no new result, no event. Each refusal is in the audit trail.
    let completed_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_operations WHERE phase = 'completed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(completed_after, completed_before);
    assert!(events_before > 0);
    assert_eq!(tap.drain(&pool).await.len(), 0, "no event for a refusal");
    let refused: Vec<(String, String)> = sqlx::query_as(
        "SELECT operation, requested_by FROM payment_operations WHERE phase = 'refused' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let operations: Vec<&str> = refused.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(
        operations,
        [
            "capture", "refund", "void", "refund", "capture", "refund", "capture"
        ]
    );
    let settled: Vec<(String, String)> = sqlx::query_as(
        "SELECT operation, reason FROM payment_operations WHERE phase = 'settled' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].0, "void");
    assert!(settled[0].1.contains("declined"), "{settled:?}");
    assert!(refused.iter().all(|(_, caller)| caller == ORDER_SERVICE));

    // The voided payment still reads as voided, the captured one as captured.
    let customer = issuer.customer(user);
    let states = app
        .client
        .get(app.url("/api/v1/payments"))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let state_of = |order: Uuid| {
        states["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["order_id"] == order.to_string())
            .map(|item| item["state"].clone())
            .unwrap()
    };
    assert_eq!(state_of(voided), "VOIDED");
    assert_eq!(state_of(captured), "CAPTURED");
    assert_eq!(state_of(refunded), "REFUNDED");
    assert_eq!(state_of(declined), "DECLINED");
}

#[tokio::test]
async fn refunds_never_exceed_the_captured_amount_even_concurrently() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let tap = EventTap::bind(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    macro_rules! t {
        ($message:expr) => {
            with_token($message, &token)
        };
    }
    let order = Uuid::new_v4();
    grpc.authorize(t!(authorize(order, Uuid::new_v4(), 1000, APPROVE)))
        .await
        .unwrap();
    grpc.capture(t!(capture(order))).await.unwrap();

    let first = grpc
        .refund(t!(refund(order, Some(600), "a")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status(), PaymentStatus::PartiallyRefunded);
    assert_eq!(
        (first.refunded.clone(), first.total_refunded.clone()),
        (eur(600), eur(600))
    );

    // Two different refunds of 300 race for the 400 left: one of them fits.
    let mut other = grpc.clone();
    let (b, c) = tokio::join!(
        grpc.refund(t!(refund(order, Some(300), "b"))),
        other.refund(t!(refund(order, Some(300), "c"))),
    );
    let outcomes = [b.map(|r| r.into_inner()), c.map(|r| r.into_inner())];
    let granted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(granted, 1, "{outcomes:?}");
    let refused = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // A retry of the first refund is answered with its first result, even now.
    let retried = grpc
        .refund(t!(refund(order, Some(600), "a")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, first);

    let over = grpc
        .refund(t!(refund(order, Some(101), "d")))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    let rest = grpc
        .refund(t!(refund(order, None, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.status(), PaymentStatus::Refunded);
    assert_eq!((rest.refunded, rest.total_refunded), (eur(100), eur(1000)));

    let pool = database(&app).await;
    let refunded: i64 = sqlx::query_scalar(
        "SELECT sum(amount)::bigint FROM payment_operations WHERE operation = 'refund' AND phase = 'completed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(refunded, 1000);
    let totals: Vec<Value> = data(&tap.drain(&pool).await)
        .into_iter()
        .filter(|(key, _)| key == "payment.payment.refunded")
        .map(|(_, data)| data["totalRefunded"]["amount"].clone())
        .collect();
    assert_eq!(totals, [json!(600), json!(900), json!(1000)]);
}

/// (operation, phase, requested_by, outcome, amount)
type AuditRow = (String, String, String, Option<String>, Option<i64>);

#[tokio::test]
async fn the_audit_trail_names_the_caller_and_is_append_only() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let mut grpc = client(&app).await;
    let order = Uuid::new_v4();
    grpc.authorize(with_token(
        authorize(order, Uuid::new_v4(), 700, APPROVE),
        &issuer.service(ORDER_SERVICE),
    ))
    .await
    .unwrap();

    let pool = database(&app).await;
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT operation, phase, requested_by, outcome, amount FROM payment_operations ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "authorize".into(),
                "started".into(),
                ORDER_SERVICE.into(),
                None,
                Some(700)
            ),
            (
                "authorize".into(),
                "completed".into(),
                ORDER_SERVICE.into(),
                Some("approved".into()),
                Some(700)
            ),
        ]
    );
    for statement in [
        "UPDATE payment_operations SET outcome = 'declined' WHERE phase = 'completed'",
        "DELETE FROM payment_operations",
    ] {
        let err = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

#[tokio::test]
async fn only_service_callers_may_use_the_grpc_api() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let mut grpc = client(&app).await;
    let request = || authorize(Uuid::new_v4(), Uuid::new_v4(), 100, APPROVE);

    let anonymous = grpc
        .authorize(tonic::Request::new(request()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let customer = grpc
        .authorize(with_token(request(), &issuer.customer(Uuid::new_v4())))
        .await
        .unwrap_err();
    assert_eq!(customer.code(), Code::Unauthenticated);
    // A service, but not the one the access table names.
    for method in ["authorize", "refund"] {
        let token = issuer.service("notification-service");
        let refused = match method {
            "authorize" => grpc
                .authorize(with_token(request(), &token))
                .await
                .map(drop),
            _ => grpc
                .refund(with_token(
                    RefundRequest {
                        order_id: Uuid::new_v4().to_string(),
                        ..RefundRequest::default()
                    },
                    &token,
                ))
                .await
                .map(drop),
        };
        assert_eq!(
            refused.unwrap_err().code(),
            Code::PermissionDenied,
            "{method}"
        );
    }

    let pool = database(&app).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn customers_see_their_own_payments_only() {
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let order = Uuid::new_v4();
    let authorized = grpc
        .authorize(with_token(authorize(order, ann, 3150, APPROVE), &token))
        .await
        .unwrap()
        .into_inner();
    grpc.capture(with_token(capture(order), &token))
        .await
        .unwrap();

    let list = |user: Uuid, query: String| {
        app.client
            .get(app.url(&format!("/api/v1/payments{query}")))
            .bearer_auth(issuer.customer(user))
            .send()
    };
    let response = list(ann, format!("?order_id={order}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body: Value = response.json().await.unwrap();
    let item = &mut body["items"][0];
    assert!(item["created_at"].is_string() && item["updated_at"].is_string());
    item.as_object_mut().unwrap().remove("created_at");
    item.as_object_mut().unwrap().remove("updated_at");
    assert_eq!(
        body,
        json!({"items": [{
            "id": authorized.payment_id, "order_id": order, "state": "CAPTURED",
            "amount": {"amount": 3150, "currency": "EUR"},
            "captured": {"amount": 3150, "currency": "EUR"},
            "refunded": {"amount": 0, "currency": "EUR"},
            "card": {"brand": "visa", "last4": "4242"},
        }]})
    );
    let all: Value = list(ann, String::new())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);

    // Someone else asking for Ann's order learns nothing.
    let stranger: Value = list(bob, format!("?order_id={order}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stranger, json!({"items": []}));

    let anonymous = app
        .client
        .get(app.url("/api/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let service = app
        .client
        .get(app.url("/api/v1/payments"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(service.status(), StatusCode::UNAUTHORIZED);
    let bad = list(ann, "?order_id=nope".into()).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_event_an_authorize_records_in_its_own_task_continues_the_callers_trace() {
    use shop_messaging::Event as _;

    // The provider call and its recording run in a task of their own (a caller's deadline must
    // not cancel them); the event they write must still carry the trace of the Authorize that
    // caused it, or its consumers start traces of their own. The runtime installs telemetry in
    // this process when the service starts, so spans have OpenTelemetry contexts.
    let issuer = Issuer::start().await;
    let app = spawn_payments(&issuer).await;
    let tap = EventTap::bind(&app).await;
    let mut grpc = client(&app).await;

    // The caller's trace, as order-service's client sends it.
    let trace_id = Uuid::new_v4().simple().to_string();
    let order = Uuid::new_v4();
    let mut request = with_token(
        authorize(order, Uuid::new_v4(), 2599, APPROVE),
        &issuer.service(ORDER_SERVICE),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    grpc.authorize(request).await.unwrap();

    let (_, body, _) = tap
        .next_raw(shop_events::payment::PaymentAuthorized::ROUTING_KEY, order)
        .await
        .expect("PaymentAuthorized is published");
    let envelope = shop_messaging::Envelope::from_slice(&body).unwrap();
    assert!(
        envelope
            .traceparent
            .as_deref()
            .is_some_and(|traceparent| traceparent.contains(&trace_id)),
        "PaymentAuthorized continues trace {trace_id}: {:?}",
        envelope.traceparent
    );
}
