//! Money under uncertainty: every way a provider's answer can be unknown, refused or late, and
//! how each hold still settles. Against the real PostgreSQL and RabbitMQ, with the simulated
//! provider's fault cards; "what the provider says" is read from its own record (schema
//! `simulated_provider`), as an operator would look at the provider's dashboard.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use crate::common;

use std::time::Duration;

use common::{
    ANSWER_LOST, APPROVE, CAPTURE_REFUSED, DECLINE, EventTap, Issuer, SLOW, TIMEOUT_BEFORE_ACTING,
    VOID_REFUSED_ONCE, authorize, card, client, completed, data, database, eventually, payment_of,
    provider_holds, provider_record, spawn_payments_with, with_token,
};
use shop_proto::payment::v1::{CaptureRequest, PaymentStatus, VoidRequest};
use tonic::Code;
use uuid::Uuid;

const ORDER_SERVICE: &str = "order-service";
const RECONCILER: &str = "payment-service/reconciler";
/// How long a test waits for the reconciler (its interval is 50 ms in these tests).
const SETTLED_WITHIN: Duration = Duration::from_secs(10);

fn void(order_id: Uuid) -> VoidRequest {
    VoidRequest {
        order_id: order_id.to_string(),
    }
}

fn capture(order_id: Uuid) -> CaptureRequest {
    CaptureRequest {
        order_id: order_id.to_string(),
    }
}

/// Reasons of the audit trail's `refused` rows of `operation`, oldest first.
async fn refusals(pool: &sqlx::PgPool, operation: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT reason FROM payment_operations WHERE operation = $1 AND phase = 'refused' ORDER BY seq",
    )
    .bind(operation)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_provider_that_never_answers_is_unavailable_and_a_void_settles_the_order_for_good() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(
        &issuer,
        &[
            ("PROVIDER_TIMEOUT_MS", "300"),
            ("RECONCILE_INTERVAL_MS", "50"),
        ],
    )
    .await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());

    let timed_out = grpc
        .authorize(with_token(
            authorize(order, user, 1200, TIMEOUT_BEFORE_ACTING),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(timed_out.code(), Code::Unavailable, "{timed_out:?}");
    let payment = payment_of(&pool, order).await.unwrap();
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconciliation_queue WHERE payment_id = $1")
            .bind(payment)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(queued, 1, "an unknown outcome is queued for reconciliation");

    // The order gives up: the void does not need to know what the provider did.
    let voided = grpc
        .void(with_token(void(order), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voided.status(), PaymentStatus::Voided);
    assert_eq!(voided.payment_id, payment.to_string());
    assert_eq!(completed(&pool, payment, "void").await.len(), 1);

    // VOIDED is final: a late retry of the Authorize is refused, and never reaches the provider
    // (this card would make it time out again, UNAVAILABLE).
    let late = grpc
        .authorize(with_token(
            authorize(order, user, 1200, TIMEOUT_BEFORE_ACTING),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("voided"), "{}", late.message());

    // The provider holds nothing: it only knows the key was voided, so the authorization,
    // should it still arrive, would be declined.
    assert_eq!(
        provider_record(&pool, payment).await,
        Some(("voided".to_owned(), None))
    );
    assert_eq!(provider_holds(&pool).await, 0);
}

#[tokio::test]
async fn a_lost_approval_is_recorded_by_the_reconciler_from_the_providers_record() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(&issuer, &[("RECONCILE_INTERVAL_MS", "50")]).await;
    let tap = EventTap::bind(&app).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());

    let lost = grpc
        .authorize(with_token(
            authorize(order, user, 3300, ANSWER_LOST),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    let payment = payment_of(&pool, order).await.unwrap();

    // No retry: the reconciler finds the hold by the authorization's key and records it, long
    // before the attempt's lease (20 s at the default provider timeout) would have run out.
    eventually(
        "the reconciler records the authorization",
        SETTLED_WITHIN,
        || async { !completed(&pool, payment, "authorize").await.is_empty() },
    )
    .await;
    let (status, reference) = provider_record(&pool, payment).await.unwrap();
    assert_eq!(status, "held");
    assert_eq!(
        completed(&pool, payment, "authorize").await,
        [("approved".to_owned(), RECONCILER.to_owned(), reference)]
    );
    let events = data(&tap.drain(&pool).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "payment.payment.authorized");
    assert_eq!(events[0].1["paymentId"], payment.to_string());
    assert_eq!(events[0].1["amount"]["amount"], 3300);

    // The saga's retry now reads the provider's truth.
    let retried = grpc
        .authorize(with_token(
            authorize(order, user, 3300, ANSWER_LOST),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.status(), PaymentStatus::Authorized);
    assert_eq!(retried.payment_id, payment.to_string());
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciliation_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "a recorded authorization is settled");
}

#[tokio::test]
async fn a_void_after_a_lost_approval_releases_the_hold_at_the_provider() {
    let issuer = Issuer::start().await;
    // The reconciler stays out of the way: the void alone must release the hold.
    let app = spawn_payments_with(&issuer, &[("RECONCILE_INTERVAL_MS", "600000")]).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());

    let lost = grpc
        .authorize(with_token(authorize(order, user, 900, ANSWER_LOST), &token))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    let payment = payment_of(&pool, order).await.unwrap();
    assert_eq!(provider_record(&pool, payment).await.unwrap().0, "held");

    let voided = grpc
        .void(with_token(void(order), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voided.status(), PaymentStatus::Voided);
    assert_eq!(provider_record(&pool, payment).await.unwrap().0, "voided");
    assert_eq!(provider_holds(&pool).await, 0);
    let again = grpc
        .authorize(with_token(authorize(order, user, 900, ANSWER_LOST), &token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_capture_the_provider_refuses_is_failed_precondition_with_the_providers_reason() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(&issuer, &[]).await;
    let tap = EventTap::bind(&app).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let order = Uuid::new_v4();
    let authorized = grpc
        .authorize(with_token(
            authorize(order, Uuid::new_v4(), 5000, CAPTURE_REFUSED),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authorized.status(), PaymentStatus::Authorized);
    let payment = Uuid::parse_str(&authorized.payment_id).unwrap();

    for _ in 0..2 {
        let refused = grpc
            .capture(with_token(capture(order), &token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused
                .message()
                .starts_with("The provider refused the capture: authorization_expired"),
            "{}",
            refused.message()
        );
    }
    let audit = refusals(&pool, "capture").await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|reason| reason.contains("authorization_expired"))
    );
    assert!(completed(&pool, payment, "capture").await.is_empty());
    assert_eq!(provider_record(&pool, payment).await.unwrap().0, "expired");
    let keys: Vec<String> = data(&tap.drain(&pool).await)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys, ["payment.payment.authorized"], "nothing captured");

    // The hold lapsed: voiding it is what is left, and it succeeds.
    let voided = grpc
        .void(with_token(void(order), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voided.status(), PaymentStatus::Voided);
}

#[tokio::test]
async fn a_void_the_provider_refuses_once_is_unavailable_then_voided_on_retry() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(&issuer, &[]).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let order = Uuid::new_v4();
    let authorized = grpc
        .authorize(with_token(
            authorize(order, Uuid::new_v4(), 700, VOID_REFUSED_ONCE),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let payment = Uuid::parse_str(&authorized.payment_id).unwrap();

    let refused = grpc
        .void(with_token(void(order), &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("try_again_later"),
        "{}",
        refused.message()
    );
    assert_eq!(provider_record(&pool, payment).await.unwrap().0, "held");
    let audit = refusals(&pool, "void").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0].contains("try_again_later"), "{audit:?}");

    // The refused attempt is over: the retry is not kept waiting for its lease.
    let retried = tokio::time::timeout(
        Duration::from_secs(5),
        grpc.void(with_token(void(order), &token)),
    )
    .await
    .expect("the retry is answered at once")
    .unwrap()
    .into_inner();
    assert_eq!(retried.status(), PaymentStatus::Voided);
    assert_eq!(provider_record(&pool, payment).await.unwrap().0, "voided");
    assert_eq!(completed(&pool, payment, "void").await.len(), 1);
}

#[tokio::test]
async fn a_void_without_a_payment_leaves_a_tombstone_that_refuses_a_later_authorize() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(&issuer, &[]).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let order = Uuid::new_v4();

    for _ in 0..2 {
        let voided = grpc
            .void(with_token(void(order), &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(voided.status(), PaymentStatus::Voided);
        assert_eq!(voided.payment_id, "", "there is no payment");
    }
    let refused = grpc
        .authorize(with_token(
            authorize(order, Uuid::new_v4(), 1000, APPROVE),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .starts_with("This order's payment was voided;"),
        "{}",
        refused.message()
    );
    let tombstones: i64 = sqlx::query_scalar("SELECT count(*) FROM voided_orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tombstones, 1);
    assert_eq!(payment_of(&pool, order).await, None);
    let asked: i64 = sqlx::query_scalar("SELECT count(*) FROM simulated_provider.authorizations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(asked, 0, "nothing was sent to the provider");
}

#[tokio::test]
async fn racing_authorize_and_void_never_leave_a_hold_on_a_voided_order() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(&issuer, &[("RECONCILE_INTERVAL_MS", "600000")]).await;
    let pool = database(&app).await;
    let grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);

    let mut pairs = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (mut first, mut second, token) = (grpc.clone(), grpc.clone(), token.clone());
        pairs.spawn(async move {
            let order = Uuid::new_v4();
            let (authorized, voided) = tokio::join!(
                first.authorize(with_token(
                    authorize(order, Uuid::new_v4(), 100, APPROVE),
                    &token
                )),
                second.void(with_token(void(order), &token)),
            );
            (order, authorized, voided.map(|v| v.into_inner()))
        });
    }
    let (mut tombstoned, mut voided_after) = (0, 0);
    while let Some(pair) = pairs.join_next().await {
        let (order, authorized, voided) = pair.unwrap();
        let voided = voided.unwrap();
        assert_eq!(voided.status(), PaymentStatus::Voided, "{order}");
        match authorized {
            // The Authorize came first: the void waited for it and voided the payment.
            Ok(answer) => {
                assert_eq!(answer.into_inner().status(), PaymentStatus::Authorized);
                assert!(!voided.payment_id.is_empty(), "{order}");
                voided_after += 1;
            }
            // The void came first: the tombstone refused the Authorize.
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{order}: {status}");
                assert_eq!(voided.payment_id, "", "{order}");
                tombstoned += 1;
            }
        }
    }
    assert_eq!(tombstoned + voided_after, 60);
    // Never both a tombstone and a payment, and nothing held at the provider.
    let both: i64 =
        sqlx::query_scalar("SELECT count(*) FROM voided_orders JOIN payments USING (order_id)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(both, 0);
    assert_eq!(provider_holds(&pool).await, 0);
}

#[tokio::test]
async fn a_late_approval_is_settled_by_the_reconciler_and_released_by_the_void() {
    let issuer = Issuer::start().await;
    // The provider decides on the slow card after 600 ms; payment-service waits 100 ms.
    let app = spawn_payments_with(
        &issuer,
        &[
            ("PROVIDER_TIMEOUT_MS", "100"),
            ("SIMULATED_SLOW_CARD_DELAY_MS", "600"),
            ("RECONCILE_INTERVAL_MS", "50"),
        ],
    )
    .await;
    let tap = EventTap::bind(&app).await;
    let pool = database(&app).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());

    let gave_up = grpc
        .authorize(with_token(authorize(order, user, 2100, SLOW), &token))
        .await
        .unwrap_err();
    assert_eq!(gave_up.code(), Code::Unavailable);
    let payment = payment_of(&pool, order).await.unwrap();

    // The approval lands at the provider after the attempt gave up; the reconciler, which
    // keeps looking while the provider may still act, records it.
    eventually("the late approval is recorded", SETTLED_WITHIN, || async {
        !completed(&pool, payment, "authorize").await.is_empty()
    })
    .await;
    let (status, reference) = provider_record(&pool, payment).await.unwrap();
    assert_eq!(status, "held");
    assert_eq!(
        completed(&pool, payment, "authorize").await,
        [("approved".to_owned(), RECONCILER.to_owned(), reference)]
    );

    // The order gave up meanwhile: its void releases the hold.
    let voided = grpc
        .void(with_token(void(order), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voided.status(), PaymentStatus::Voided);
    assert_eq!(provider_record(&pool, payment).await.unwrap().0, "voided");
    assert_eq!(provider_holds(&pool).await, 0);
    let keys: Vec<String> = data(&tap.drain(&pool).await)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        keys,
        ["payment.payment.authorized", "payment.payment.voided"]
    );
}

#[tokio::test]
async fn a_completed_authorize_is_replayed_even_when_its_card_no_longer_validates() {
    let issuer = Issuer::start().await;
    let app = spawn_payments_with(&issuer, &[]).await;
    let mut grpc = client(&app).await;
    let token = issuer.service(ORDER_SERVICE);
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());
    let first = grpc
        .authorize(with_token(authorize(order, user, 1500, APPROVE), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status(), PaymentStatus::Authorized);

    // The same request after the card's expiry month passed.
    let expired = |order: Uuid, amount: i64| {
        let mut request = authorize(order, user, amount, APPROVE);
        request.card = card(APPROVE).map(|mut card| {
            card.expiry = "01/20".into();
            card
        });
        request
    };
    let replayed = grpc
        .authorize(with_token(expired(order, 1500), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed, first);

    // Not a way around validation: another amount, or an order without a result, is invalid.
    for (order, amount) in [(order, 1501), (Uuid::new_v4(), 1500)] {
        let invalid = grpc
            .authorize(with_token(expired(order, amount), &token))
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(invalid.message().contains("card.expiry"), "{invalid:?}");
    }
    // A declined result is replayed the same way.
    let declined_order = Uuid::new_v4();
    grpc.authorize(with_token(
        authorize(declined_order, user, 1500, DECLINE),
        &token,
    ))
    .await
    .unwrap();
    let mut request = authorize(declined_order, user, 1500, DECLINE);
    request.card.as_mut().unwrap().expiry = "01/20".into();
    let replayed = grpc
        .authorize(with_token(request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.status(), PaymentStatus::Declined);
    assert_eq!(replayed.decline_reason, "card_declined");
}
