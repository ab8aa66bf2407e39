//! order-service's contracts.
//!
//! * As a **consumer**: what the saga relies on from catalog, inventory and payment, written
//!   as Pact contracts into `contracts/` (`order-service-<provider>.json`). Each example is
//!   run through the code order-service really uses to build the request and to decide what
//!   the answer means for the saga (`api::price`, `participants::*_outcome`); the providers'
//!   tests replay the contracts against the real services, with the provider states named
//!   here.
//! * As a **provider**: every contract naming order-service is replayed against the real
//!   service — today notification-service's `order.confirmed` and `order.cancelled` events,
//!   each produced by a real order (approved, declined) through the saga with its real
//!   participants, and taken from the broker as the relay published it — and the gateway's
//!   HTTP contract (place, read, list), replayed on the real HTTP listener with the access
//!   token of a customer this test registers first ("the signed-in customer"). Its states:
//!   `products exist` (`ids`, `price`: stored in the world's catalog, which prices the order)
//!   and `an order exists` (`id`, `productIds`: a confirmed order of the signed-in customer,
//!   stored in order-service's database).

mod support;

use std::sync::Arc;

use shop_contract::{Message, State};
use shop_events::order::{OrderCancelled, OrderConfirmed};
use shop_messaging::Event;
use shop_messaging::testing::Tap;
use shop_testkit::TestApp;
use support::{APPROVES, DECLINES, PATIENCE, World, order_body, place, uuid_like};

use order_service::{
    api::price,
    participants::{
        CallError, Voided, authorize_outcome, capture_outcome, commit_outcome, refund_outcome,
        release_outcome, reserve_outcome, reserve_request, void_outcome,
    },
    saga::{Outcome, Reason},
    validate::Item,
};
use serde_json::json;
use shop_contract::prelude::*;
use shop_proto::{
    catalog::v1::{GetProductsRequest, GetProductsResponse},
    inventory::v1::{CommitRequest, ReleaseRequest, ReserveResponse},
    payment::v1::{
        AuthorizeRequest, AuthorizeResponse, CaptureRequest, CaptureResponse, Card, RefundRequest,
        RefundResponse, VoidRequest, VoidResponse,
    },
};
use tonic::Code;
use uuid::Uuid;

/// One order id per interaction: every participant is idempotent per order, so a provider
/// replaying two interactions with the same order would answer the second like the first.
const ORDER: [&str; 15] = [
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c50",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c51",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c52",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c53",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c54",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c55",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c56",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c57",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c58",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c59",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c5a",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c5b",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c5c",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c5d",
    "0192f0c8-7a6e-7cc3-9d2b-5a1f2e3d4c5e",
];

fn order_id(n: usize) -> Uuid {
    Uuid::parse_str(ORDER[n]).expect("a UUID")
}

fn status<T>(result: Result<T, tonic::Status>) -> Result<T, CallError> {
    result.map_err(CallError::Status)
}

fn expect<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Result<(), String> {
    (got == want)
        .then_some(())
        .ok_or_else(|| format!("expected {want:?}, got {got:?}"))
}

#[tokio::test]
async fn catalog_prices_a_cart_in_one_call() {
    let call = GrpcInteraction::new(
        "prices of two products, one of them unknown",
        "/shop.catalog.v1.CatalogService/GetProducts",
    )
    .given_with_params(
        "products exist",
        json!({ "ids": ["p-1"], "sku": "SKU-1", "price": 1999, "currency": "EUR" }),
    )
    .request(&GetProductsRequest {
        ids: vec!["p-1".into(), "p-unknown".into()],
    })
    .response(json_pattern!({
        "products": [{
            "id": "p-1",
            "sku": like!("SKU-1"),
            "name": like!("Coffee"),
            "price": { "amount": like!("1999"), "currency": like!("EUR") },
        }],
        "missingIds": ["p-unknown"],
    }));
    Contract::new("order-service", "catalog-service")
        .grpc(call, |example| async move {
            let response: GetProductsResponse = example.response_as().map_err(|e| e.to_string())?;
            let items = [
                Item {
                    product_id: "p-1".into(),
                    quantity: 2,
                },
                Item {
                    product_id: "p-unknown".into(),
                    quantity: 1,
                },
            ];
            let errors = price(&items, &response.products, &response.missing_ids)
                .expect_err("an unknown product is refused");
            expect(errors[0].field.as_str(), "items[1].product_id")?;
            let priced = price(&items[..1], &response.products, &response.missing_ids)
                .map_err(|e| format!("{e:?}"))?;
            expect(
                priced.total,
                2 * response.products[0].price.as_ref().map_or(0, |p| p.amount),
            )
        })
        .await
        .expect("the consumer accepts the example");
}

#[tokio::test]
async fn inventory_reserves_commits_and_releases_per_order() {
    let contract = Contract::new("order-service", "inventory-service");
    let reserve = GrpcInteraction::new(
        "a reservation for an order",
        "/shop.inventory.v1.InventoryService/Reserve",
    )
    .given_with_params("stock exists", json!({ "sku": "SKU-1", "available": 5 }))
    .request(&reserve_request(order_id(0), vec![("SKU-1".into(), 2)]))
    .response(json_pattern!({ "reservationId": like!("r-1") }));
    contract
        .grpc(reserve, |example| async move {
            let response = example.response_as::<ReserveResponse>().map(drop);
            expect(reserve_outcome(status(response)), Outcome::Done)
        })
        .await
        .expect("reserve");

    let short = GrpcInteraction::new(
        "a reservation beyond the stock",
        "/shop.inventory.v1.InventoryService/Reserve",
    )
    .given_with_params("stock exists", json!({ "sku": "SKU-1", "available": 1 }))
    .request(&reserve_request(order_id(1), vec![("SKU-1".into(), 2)]))
    // The message is how inventory tells a shortage from an ended reservation (its proto).
    .error_with_message(
        Code::FailedPrecondition,
        term!("^Not enough stock for: .+$", "Not enough stock for: SKU-1"),
    );
    contract
        .grpc(short, |example| async move {
            let response = example.response_as::<ReserveResponse>().map(drop);
            expect(
                reserve_outcome(status(response)),
                Outcome::Refused(Reason::OutOfStock),
            )
        })
        .await
        .expect("out of stock");

    // A retry of a Reserve whose first attempt did reserve, but so long ago that the
    // reservation expired meanwhile: the saga was too slow, and the customer is told so,
    // not that the goods ran out.
    let lapsed = GrpcInteraction::new(
        "a reservation for an order whose reservation expired",
        "/shop.inventory.v1.InventoryService/Reserve",
    )
    .given_with_params(
        "an order's reservation expired",
        json!({ "orderId": ORDER[14], "sku": "SKU-1", "quantity": 2 }),
    )
    .request(&reserve_request(order_id(14), vec![("SKU-1".into(), 2)]))
    .error(Code::FailedPrecondition);
    contract
        .grpc(lapsed, |example| async move {
            let response = example.response_as::<ReserveResponse>().map(drop);
            expect(
                reserve_outcome(status(response)),
                Outcome::Refused(Reason::Timeout),
            )
        })
        .await
        .expect("expired reservation");

    let commit = GrpcInteraction::new(
        "a commit of an order's reservation",
        "/shop.inventory.v1.InventoryService/Commit",
    )
    .given_with_params(
        "an order has reserved stock",
        json!({ "orderId": ORDER[2], "sku": "SKU-1", "quantity": 2 }),
    )
    .request(&CommitRequest {
        order_id: ORDER[2].into(),
    })
    .response(json_pattern!({}));
    contract
        .grpc(commit, |example| async move {
            let response = example.response_as::<shop_proto::inventory::v1::CommitResponse>();
            expect(commit_outcome(status(response.map(drop))), Outcome::Done)
        })
        .await
        .expect("commit");

    let release = GrpcInteraction::new(
        "a release of an order's reservation",
        "/shop.inventory.v1.InventoryService/Release",
    )
    .given_with_params(
        "an order has reserved stock",
        json!({ "orderId": ORDER[3], "sku": "SKU-1", "quantity": 2 }),
    )
    .request(&ReleaseRequest {
        order_id: ORDER[3].into(),
        reason: "payment_declined".into(),
    })
    .response(json_pattern!({}));
    contract
        .grpc(release, |example| async move {
            let response = example.response_as::<shop_proto::inventory::v1::ReleaseResponse>();
            expect(release_outcome(status(response.map(drop))), Outcome::Done)
        })
        .await
        .expect("release");
}

fn authorize(order: &str, card: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order.into(),
        user_id: "0192f0c8-0000-7000-8000-000000000001".into(),
        amount: Some(shop_proto::common::v1::Money {
            amount: 3998,
            currency: "EUR".into(),
        }),
        card: Some(Card {
            number: card.into(),
            expiry: "12/30".into(),
            cvc: "123".into(),
        }),
    }
}

#[tokio::test]
async fn payment_authorizes_captures_voids_and_refunds_per_order() {
    let contract = Contract::new("order-service", "payment-service");
    let approved = GrpcInteraction::new(
        "an authorization with a card that approves",
        "/shop.payment.v1.PaymentService/Authorize",
    )
    .request(&authorize(ORDER[4], "4242424242424242"))
    .response(json_pattern!({
        "paymentId": like!("pay-1"),
        "status": "PAYMENT_STATUS_AUTHORIZED",
        "cardLast4": "4242",
    }));
    contract
        .grpc(approved, |example| async move {
            let response = example.response_as::<AuthorizeResponse>();
            expect(
                authorize_outcome(status(response)),
                (Outcome::Done, Some("4242".to_owned())),
            )
        })
        .await
        .expect("authorize");

    for (order, description, card, reason, outcome) in [
        (
            ORDER[5],
            "an authorization with a card that is declined",
            "4000000000000002",
            "card_declined",
            Reason::PaymentDeclined,
        ),
        (
            ORDER[6],
            "an authorization with a card without funds",
            "4000000000009995",
            "insufficient_funds",
            Reason::InsufficientFunds,
        ),
    ] {
        let declined =
            GrpcInteraction::new(description, "/shop.payment.v1.PaymentService/Authorize")
                .request(&authorize(order, card))
                .response(json_pattern!({
                    "status": "PAYMENT_STATUS_DECLINED",
                    "declineReason": reason,
                }));
        contract
            .grpc(declined, |example| async move {
                let response = example.response_as::<AuthorizeResponse>();
                expect(
                    authorize_outcome(status(response)).0,
                    Outcome::Refused(outcome),
                )
            })
            .await
            .expect("declined");
    }

    let authorized = json!({ "orderId": ORDER[7], "amount": 3998, "currency": "EUR" });
    let captured = |order: &str| json!({ "orderId": order, "amount": 3998, "currency": "EUR" });
    let authorized_too = json!({ "orderId": ORDER[9], "amount": 3998, "currency": "EUR" });
    let capture = GrpcInteraction::new(
        "a capture of an authorized payment",
        "/shop.payment.v1.PaymentService/Capture",
    )
    .given_with_params("an order's payment is authorized", authorized)
    .request(&CaptureRequest {
        order_id: ORDER[7].into(),
    })
    .response(json_pattern!({ "status": "PAYMENT_STATUS_CAPTURED" }));
    contract
        .grpc(capture, |example| async move {
            let response = example.response_as::<CaptureResponse>().map(|r| r.status());
            expect(capture_outcome(status(response)), Outcome::Done)
        })
        .await
        .expect("capture");

    let void = GrpcInteraction::new(
        "a void of an authorized payment",
        "/shop.payment.v1.PaymentService/Void",
    )
    .given_with_params("an order's payment is authorized", authorized_too)
    .request(&VoidRequest {
        order_id: ORDER[9].into(),
    })
    .response(json_pattern!({ "status": "PAYMENT_STATUS_VOIDED" }));
    contract
        .grpc(void, |example| async move {
            let response = example.response_as::<VoidResponse>().map(|r| r.status());
            expect(
                void_outcome(status(response)),
                Voided::Settled(Outcome::Done),
            )
        })
        .await
        .expect("void");

    let void_captured = GrpcInteraction::new(
        "a void of a captured payment",
        "/shop.payment.v1.PaymentService/Void",
    )
    .given_with_params("an order's payment is captured", captured(ORDER[8]))
    .request(&VoidRequest {
        order_id: ORDER[8].into(),
    })
    .error(Code::FailedPrecondition);
    contract
        .grpc(void_captured, |example| async move {
            let response = example.response_as::<VoidResponse>().map(|r| r.status());
            expect(void_outcome(status(response)), Voided::Captured)
        })
        .await
        .expect("void after capture");

    // The void is final on payment's side: for an order it never saw it leaves a tombstone
    // (a later Authorize is refused) and answers VOIDED; for a declined payment, DECLINED.
    // Either settles the money question for the saga.
    for (order, description, given, answer) in [
        (
            ORDER[11],
            "a void for an order payment has never seen",
            "no payment",
            "PAYMENT_STATUS_VOIDED",
        ),
        (
            ORDER[12],
            "a void of a declined payment",
            "a declined payment",
            "PAYMENT_STATUS_DECLINED",
        ),
    ] {
        let void = GrpcInteraction::new(description, "/shop.payment.v1.PaymentService/Void")
            .given_with_params(format!("{given} for order"), json!({ "orderId": order }))
            .request(&VoidRequest {
                order_id: order.into(),
            })
            .response(json_pattern!({ "status": answer }));
        contract
            .grpc(void, |example| async move {
                let response = example.response_as::<VoidResponse>().map(|r| r.status());
                expect(
                    void_outcome(status(response)),
                    Voided::Settled(Outcome::Done),
                )
            })
            .await
            .expect(description);
    }

    // A capture the provider refuses is a refusal, not an unknown outcome: the saga parks.
    let refused_capture = GrpcInteraction::new(
        "a capture the provider refuses",
        "/shop.payment.v1.PaymentService/Capture",
    )
    .given_with_params(
        "an authorized payment whose capture the provider refuses for order",
        json!({ "orderId": ORDER[13], "amount": 3998, "currency": "EUR" }),
    )
    .request(&CaptureRequest {
        order_id: ORDER[13].into(),
    })
    .error(Code::FailedPrecondition);
    contract
        .grpc(refused_capture, |example| async move {
            let response = example.response_as::<CaptureResponse>().map(|r| r.status());
            expect(
                capture_outcome(status(response)),
                Outcome::Refused(Reason::PaymentDeclined),
            )
        })
        .await
        .expect("capture refused");

    let refund = GrpcInteraction::new(
        "a refund of a captured payment",
        "/shop.payment.v1.PaymentService/Refund",
    )
    .given_with_params("an order's payment is captured", captured(ORDER[10]))
    .request(&RefundRequest {
        order_id: ORDER[10].into(),
        reason: "order cancelled".into(),
        ..RefundRequest::default()
    })
    .response(json_pattern!({ "status": "PAYMENT_STATUS_REFUNDED" }));
    contract
        .grpc(refund, |example| async move {
            let response = example.response_as::<RefundResponse>().map(|r| r.status());
            expect(refund_outcome(status(response)), Outcome::AlreadyCaptured)
        })
        .await
        .expect("refund");
}

/// Places an order paid with `card` through the real HTTP API, and returns the event the
/// service published under `routing_key` for it, as the broker delivered it.
async fn published(
    world: &World,
    order: &TestApp,
    card: &str,
    routing_key: &str,
) -> Result<Message, String> {
    let tap = Tap::bind(&order.env["AMQP_URL"], [routing_key])
        .await
        .map_err(|e| e.to_string())?;

    let customer = world.customer().await;
    let (product, _) = world.product(1250, 5).await;
    let (status, placed) = place(
        &world.http,
        &order.url(""),
        &customer,
        &uuid_like(),
        &order_body(&[(&product, 2)], card),
    )
    .await;
    let id = placed["id"]
        .as_str()
        .ok_or_else(|| format!("placing the order answered {status}: {placed}"))?
        .to_owned();

    let delivery = tap
        .next_where(PATIENCE, |envelope| envelope.data["orderId"] == id.as_str())
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no {routing_key} for order {id} within {PATIENCE:?}"))?;
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(ToString::to_string);
    Ok(Message::published(
        delivery.data,
        delivery.routing_key.as_str(),
        content_type.as_deref(),
    ))
}

/// Sets up a provider state of the gateway's contract (see the module documentation).
async fn set_up(
    world: &World,
    order: &TestApp,
    customer: Uuid,
    state: &State,
) -> Result<(), String> {
    let ids = |key: &str| -> Vec<String> {
        state
            .params
            .get(key)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect()
    };
    match state.name.as_str() {
        "products exist" => {
            // Straight into the world's catalog database, with the ids the contract names (the
            // admin API would choose its own).
            let config = shop_runtime::stores::mongo::MongoConfig {
                url: world.catalog.env["MONGODB_URL"]
                    .parse()
                    .map_err(|e| format!("{e}"))?,
                database: world.catalog.env["MONGODB_DATABASE"].clone(),
            };
            let db = shop_runtime::stores::mongo::connect(
                &config,
                "order-contracts",
                &shop_runtime::health::Readiness::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let products = db.collection::<serde_json::Value>("products");
            let price = state
                .params
                .get("price")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(1250);
            for id in ids("ids") {
                let product = json!({
                    "_id": id, "sku": id.to_uppercase(), "name": "Sencha", "description": "",
                    "category": "tea", "price": { "amount": price, "currency": "EUR" },
                    "attributes": {}, "in_stock": true, "version": 1, "search_terms": ["sencha"],
                });
                match products.insert_one(product).await {
                    Ok(_) => {}
                    // Set up by an earlier interaction: it exists, which is all the state says.
                    Err(err) if err.to_string().contains("E11000") => {}
                    Err(err) => return Err(err.to_string()),
                }
            }
            Ok(())
        }
        "an order exists" => {
            let id = state
                .params
                .get("id")
                .and_then(serde_json::Value::as_str)
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or("'an order exists' needs an `id` (a UUID)")?;
            let lines = ids("productIds");
            let pool = sqlx::PgPool::connect(&order.env["DATABASE_URL"])
                .await
                .map_err(|e| e.to_string())?;
            let total = 1250 * i64::try_from(lines.len()).unwrap_or(0);
            let inserted = sqlx::query(
                "INSERT INTO orders (id, user_id, idempotency_key, request_fingerprint, status,
                     total_amount, currency, shipping_address, card_last4)
                 VALUES ($1, $2, $3, '\\x00', 'CONFIRMED', $4, 'EUR', $5, '4242')
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(customer)
            .bind(format!("contract-{id}"))
            .bind(total)
            .bind(
                json!({ "name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin",
                          "postal_code": "10115", "country": "DE" }),
            )
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
            if inserted.rows_affected() == 1 {
                for (line_no, product) in lines.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO order_lines (order_id, line_no, product_id, sku, name,
                             quantity, unit_price_amount)
                         VALUES ($1, $2, $3, $4, 'Sencha', 1, 1250)",
                    )
                    .bind(id)
                    .bind(i32::try_from(line_no).unwrap_or(i32::MAX))
                    .bind(product)
                    .bind(product.to_uppercase())
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
            pool.close().await;
            Ok(())
        }
        other => Err(format!("unknown provider state '{other}'")),
    }
}

#[tokio::test]
async fn order_honours_the_contracts_of_its_consumers() {
    let world = Arc::new(World::start(&[]).await);
    let order = Arc::new(world.order_service().await);
    // The gateway's signed-in customer: a real account, signed in through user-service.
    let access = world.customer().await;
    let me: serde_json::Value = world
        .http
        .get(world.user.url("/api/v1/users/me"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    let customer = Uuid::parse_str(me["id"].as_str().expect("an id")).expect("a UUID");
    let states = (world.clone(), order.clone());
    let producer = |card: &'static str, routing_key: &'static str| {
        let (world, order) = (world.clone(), order.clone());
        move || {
            let (world, order) = (world.clone(), order.clone());
            async move { published(&world, &order, card, routing_key).await }
        }
    };
    let verification = Provider::new("order-service")
        // Every consumer with a contract here; a missing file fails the verification.
        .consumers(["gateway", "notification-service"])
        .http(order.http_addr)
        .http_header("Authorization", format!("Bearer {access}"))
        .state(move |state| {
            let (world, order) = states.clone();
            async move { set_up(&world, &order, customer, &state).await }
        })
        .message(
            "an order.confirmed event",
            producer(APPROVES, OrderConfirmed::ROUTING_KEY),
        )
        .message(
            "an order.cancelled event",
            producer(DECLINES, OrderCancelled::ROUTING_KEY),
        )
        .run()
        .await
        .expect("verification runs");
    assert!(verification.passed, "{}", verification.report);
    for file in [
        "notification-service-order-service.json",
        "gateway-order-service.json",
    ] {
        assert!(
            verification.pacts.iter().any(|pact| pact.ends_with(file)),
            "{file} not verified: {:?}",
            verification.pacts
        );
    }
}
