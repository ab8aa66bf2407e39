//! The saga's calls — Reserve, Commit, Release — through the real gRPC server, against real
//! PostgreSQL, under concurrency: never oversell, never deadlock, every call idempotent per
//! order, lapsed reservations released by the expiry job of either of two instances.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use crate::support;

use std::time::Duration;

use futures::future::join_all;
use support::{Stack, eventually};
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn fifty_concurrent_reservations_of_ten_units_let_exactly_ten_through_and_repeats_change_nothing()
 {
    let stack = Stack::start(&[]).await;
    stack.set_stock("mug", 10).await;

    let orders: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let results = join_all(
        orders
            .iter()
            .map(|order| stack.reserve(*order, &[("mug", 1)])),
    )
    .await;
    let reserved: Vec<(Uuid, String)> = orders
        .iter()
        .zip(&results)
        .filter_map(|(order, result)| {
            result
                .as_ref()
                .ok()
                .map(|ok| (*order, ok.reservation_id.clone()))
        })
        .collect();
    assert_eq!(reserved.len(), 10, "exactly the stock on hand is reserved");
    for refused in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("mug"), "{refused:?}");
    }
    assert_eq!(
        stack.stock("mug").await,
        (0, 10),
        "available + reserved is conserved"
    );

    // Repeating a successful Reserve returns the same reservation; a refused one stays refused.
    for (order, reservation_id) in &reserved {
        let again = stack.reserve(*order, &[("mug", 1)]).await.unwrap();
        assert_eq!(&again.reservation_id, reservation_id);
    }
    let refused_order = orders
        .iter()
        .find(|order| reserved.iter().all(|(ok, _)| ok != *order))
        .unwrap();
    assert_eq!(
        stack
            .reserve(*refused_order, &[("mug", 1)])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    // The same order asking for other lines is refused, not silently merged.
    assert_eq!(
        stack
            .reserve(reserved[0].0, &[("mug", 2)])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(stack.stock("mug").await, (0, 10));

    // Commit five, release five — twice each: the second round changes nothing.
    let (to_commit, to_release) = reserved.split_at(5);
    for _ in 0..2 {
        for (order, _) in to_commit {
            stack.commit(*order).await.unwrap();
        }
        for (order, _) in to_release {
            stack.release(*order).await.unwrap();
        }
        assert_eq!(stack.stock("mug").await, (5, 0));
    }

    // Commit after Release and Release after Commit are refused, and change nothing.
    let commit_released = stack.commit(to_release[0].0).await.unwrap_err();
    assert_eq!(commit_released.code(), Code::FailedPrecondition);
    assert!(
        commit_released.message().contains("released"),
        "{commit_released:?}"
    );
    let release_committed = stack.release(to_commit[0].0).await.unwrap_err();
    assert_eq!(release_committed.code(), Code::FailedPrecondition);
    assert!(
        release_committed.message().contains("committed"),
        "{release_committed:?}"
    );
    // A released order cannot reserve again (a late retry overtaken by its compensation).
    assert_eq!(
        stack
            .reserve(to_release[0].0, &[("mug", 1)])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(stack.stock("mug").await, (5, 0));

    // Committing an order that never reserved is NOT_FOUND; releasing it is a no-op that also
    // makes a later Reserve of it fail.
    let stranger = Uuid::new_v4();
    assert_eq!(
        stack.commit(stranger).await.unwrap_err().code(),
        Code::NotFound
    );
    stack.release(stranger).await.unwrap();
    assert_eq!(
        stack
            .reserve(stranger, &[("mug", 1)])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(stack.stock("mug").await, (5, 0));
}

#[tokio::test]
async fn orders_reserving_two_skus_in_opposite_order_neither_deadlock_nor_oversell() {
    let stack = Stack::start(&[]).await;
    stack.set_stock("left", 25).await;
    stack.set_stock("right", 25).await;

    // Round one: 60 orders at once, half asking for (left, right), half for (right, left).
    const LEFT_FIRST: &[(&str, u32)] = &[("left", 1), ("right", 1)];
    const RIGHT_FIRST: &[(&str, u32)] = &[("right", 1), ("left", 1)];
    let lines = |i: usize| {
        if i.is_multiple_of(2) {
            LEFT_FIRST
        } else {
            RIGHT_FIRST
        }
    };
    let orders: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    let results = join_all(
        orders
            .iter()
            .enumerate()
            .map(|(i, order)| stack.reserve(*order, lines(i))),
    )
    .await;
    let mut held: Vec<Uuid> = Vec::new();
    for (order, result) in orders.iter().zip(&results) {
        match result {
            Ok(_) => held.push(*order),
            // Anything else (a deadlock would surface as INTERNAL) fails the test.
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(held.len(), 25);
    assert_eq!(stack.stock("left").await, (0, 25));
    assert_eq!(stack.stock("right").await, (0, 25));

    // Round two: release every held order while 40 new ones reserve, in both orders.
    let newcomers: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let releases = join_all(held.iter().map(|order| stack.release(*order)));
    let reserves = join_all(
        newcomers
            .iter()
            .enumerate()
            .map(|(i, order)| stack.reserve(*order, lines(i))),
    );
    let (releases, reserves) = tokio::join!(releases, reserves);
    for release in releases {
        release.unwrap();
    }
    let mut newly_held = 0;
    for result in reserves {
        match result {
            Ok(_) => newly_held += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    for sku in ["left", "right"] {
        let (available, reserved) = stack.stock(sku).await;
        assert_eq!(available + reserved, 25, "{sku}: no unit created or lost");
        assert_eq!(
            reserved, newly_held,
            "{sku}: reserved is what live reservations hold"
        );
    }
}

#[tokio::test]
async fn lapsed_reservations_are_released_once_by_either_of_two_instances() {
    let stack = Stack::start(&[
        ("RESERVATION_TTL_SECONDS", "1"),
        ("EXPIRY_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let (second, mut second_client) = stack.another_instance().await;
    stack.set_stock("lamp", 10).await;

    // Ten reservations through both instances; then the saga "dies": nobody commits.
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for (i, order) in orders.iter().enumerate() {
        let result = if i.is_multiple_of(2) {
            stack.reserve(*order, &[("lamp", 1)]).await
        } else {
            stack
                .reserve_on(&mut second_client, *order, &[("lamp", 1)])
                .await
        };
        result.unwrap();
    }

    eventually(
        Duration::from_secs(20),
        "all stock available again",
        || async { (stack.stock("lamp").await == (10, 0)).then_some(()) },
    )
    .await;
    let db = stack.database().await;
    let expired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reservations WHERE status = 'expired'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(expired, 10);

    // The stock is really free again: a new order can take all of it.
    stack
        .reserve(Uuid::new_v4(), &[("lamp", 10)])
        .await
        .unwrap();
    // A saga coming back too late cannot commit what was given away.
    let late = stack.commit(orders[0]).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("expired"), "{late:?}");

    let metrics = stack
        .inventory
        .get("/metrics")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("inventory_reservations_expired_total"),
        "{metrics}"
    );
    second.stop().await.unwrap();
}

/// A saga that comes back just as its reservation lapses: its Commit and the expiry job race
/// for the same rows. Each reservation must end exactly one way, and the answer the saga got
/// must say which: a Commit that succeeded means committed (the stock is sold), a refused one
/// means expired (the stock is back). Never both, never stock lost or counted twice.
#[tokio::test]
async fn commits_racing_the_expiry_of_their_reservations_each_end_exactly_one_way() {
    let stack = Stack::start(&[
        ("RESERVATION_TTL_SECONDS", "1"),
        ("EXPIRY_INTERVAL_SECONDS", "1"),
    ])
    .await;
    stack.set_stock("kettle", 40).await;
    let orders: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    for order in &orders {
        stack.reserve(*order, &[("kettle", 1)]).await.unwrap();
    }
    // Right at the expiry: the service's own expiry job runs every second, and a second
    // expirer works on the same database at the same time as the commits.
    tokio::time::sleep(Duration::from_millis(950)).await;
    let db = stack.database().await;
    let expirer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut expired = 0;
            for _ in 0..40 {
                expired += inventory_service::stock::expire_due(&db, 2).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            expired
        })
    };
    let stack_ref = &stack;
    let answers = join_all(orders.iter().map(|order| async move {
        tokio::time::sleep(Duration::from_millis(u64::from(order.as_bytes()[0]) % 150)).await;
        (*order, stack_ref.commit(*order).await)
    }))
    .await;
    expirer.await.unwrap();

    let mut committed = 0;
    for (order, answer) in answers {
        let status: String =
            sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
                .bind(order)
                .fetch_one(&db)
                .await
                .unwrap();
        match answer {
            Ok(()) => {
                assert_eq!(status, "committed", "{order}: commit answered OK");
                committed += 1;
            }
            Err(refusal) => {
                assert_eq!(refusal.code(), Code::FailedPrecondition, "{refusal:?}");
                assert_eq!(status, "expired", "{order}: commit refused");
            }
        }
    }
    // Whatever the interleaving, stock is conserved exactly: sold + available = 40, and
    // nothing stays reserved once every reservation ended.
    eventually(Duration::from_secs(10), "nothing left reserved", || async {
        (stack.stock("kettle").await == (40 - committed, 0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_services_may_call_and_bad_requests_name_the_field() {
    let stack = Stack::start(&[]).await;
    let anonymous = stack
        .client()
        .reserve(shop_proto::inventory::v1::ReserveRequest {
            order_id: Uuid::new_v4().to_string(),
            lines: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // A valid service token of a service the access table does not list.
    let mut request = tonic::Request::new(shop_proto::inventory::v1::CommitRequest {
        order_id: Uuid::new_v4().to_string(),
    });
    stack.issuer.authorize_as("gateway", &mut request);
    let stranger = stack.client().commit(request).await.unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);

    let bad = stack.reserve(Uuid::nil(), &[("", 0)]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("lines[0].sku"), "{bad:?}");
    assert!(bad.message().contains("lines[0].quantity"), "{bad:?}");

    let unknown = stack
        .reserve(Uuid::new_v4(), &[("no-such-sku", 1)])
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert!(unknown.message().contains("no-such-sku"), "{unknown:?}");
}
