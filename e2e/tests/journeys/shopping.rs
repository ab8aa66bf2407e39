//! Buying things: the saga seen from the outside. Each journey ends by checking every place the
//! order left a trace a customer or an administrator can see — the order, the stock, the
//! payment and the email.

use e2e::{APPROVING_CARD, DECLINING_CARD, client, json, unique};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_registers_browses_and_orders_and_the_order_is_confirmed_paid_and_mailed() {
    let shop = client().await;
    let product = shop.product(1999, 5).await;
    let ada = shop.customer("Ada").await;

    // Signed in: the access token names the customer.
    let (status, me) = json(
        shop.get("/api/v1/users/me")
            .bearer_auth(&ada.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        (me["id"].as_str(), me["email"].as_str()),
        (Some(ada.id.as_str()), Some(ada.email.as_str()))
    );
    assert_eq!(me["roles"], serde_json::json!(["customer"]));

    // Browse: search finds the product by a word of its name, its category lists it, and its
    // page has the documented shape.
    let word = product.name.split(' ').nth(1).unwrap();
    for query in [
        format!("q={word}"),
        format!("category={}", product.category),
    ] {
        let (status, page) = json(
            shop.get(&format!("/api/v1/products?{query}&limit=10"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item["id"].as_str())
            .collect();
        assert_eq!(ids, [product.id.as_str()], "{query}: {page}");
        assert!(page.get("next_cursor").is_some(), "{page}");
    }
    let (status, shown) = json(
        shop.get(&format!("/api/v1/products/{}", product.id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["sku"], product.sku.as_str());
    assert_eq!(shown["name"], product.name.as_str());
    assert_eq!(shown["category"], product.category.as_str());
    assert_eq!(
        shown["price"],
        serde_json::json!({ "amount": 1999, "currency": "EUR" })
    );
    assert!(
        shown["description"].is_string() && shown["attributes"].is_object(),
        "{shown}"
    );
    assert!(shown["in_stock"].is_boolean(), "{shown}");

    // Order two with an approving card: accepted at once, confirmed by the saga.
    let placed = shop.place_order(&ada, &product, 2, APPROVING_CARD).await;
    let id = placed["id"].as_str().unwrap();
    let order = shop.settled(&ada, id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(
        order["total"],
        serde_json::json!({ "amount": 3998, "currency": "EUR" })
    );
    let line = &order["items"][0];
    assert_eq!(
        (line["product_id"].as_str(), line["quantity"].as_u64()),
        (Some(product.id.as_str()), Some(2))
    );
    assert_eq!(line["name"], product.name.as_str());
    assert!(
        order.get("cancellation_reason").is_none_or(Value::is_null),
        "{order}"
    );

    // The confirmation email, with the lines and the total.
    let mail = shop
        .mail(&ada.email, &format!("Your order {id} is confirmed"))
        .await;
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("2 x {}", product.name)), "{text}");
    assert!(text.contains("Total: 39.98 EUR"), "{text}");

    // Two fewer in stock, nothing left reserved: the stock was committed.
    assert_eq!(shop.stock(&product.sku).await, (3, 0));

    // The payment: captured in full, only the last four digits of the card shown.
    let payments = shop.payments(&ada, Some(id)).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    let payment = &payments[0];
    assert_eq!(payment["state"], "CAPTURED", "{payment}");
    assert_eq!(payment["captured"], order["total"], "{payment}");
    assert_eq!(payment["card"]["last4"], "4242", "{payment}");
    assert!(!payment.to_string().contains(APPROVING_CARD), "{payment}");

    // The order is in the customer's list, and so is the email in their notifications.
    let (status, orders) = json(
        shop.get("/api/v1/orders")
            .bearer_auth(&ada.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{orders}");
    assert_eq!(orders["items"][0]["id"], id, "{orders}");
    let (status, notifications) = json(
        shop.get("/api/v1/notifications")
            .bearer_auth(&ada.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{notifications}");
    assert!(
        notifications["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item["template"] == "order_confirmed"),
        "{notifications}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_card_cancels_the_order_restores_the_stock_and_the_email_says_why() {
    let shop = client().await;
    let product = shop.product(1250, 3).await;
    let bob = shop.customer("Bob").await;

    let placed = shop.place_order(&bob, &product, 1, DECLINING_CARD).await;
    let id = placed["id"].as_str().unwrap();
    let order = shop.settled(&bob, id).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellation_reason"], "payment_declined", "{order}");

    // The reservation was released: all three back, nothing held.
    assert_eq!(shop.stock(&product.sku).await, (3, 0));

    // Nothing was taken: the payment is listed as declined, with nothing captured.
    let payments = shop.payments(&bob, Some(id)).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["state"], "DECLINED", "{payments:?}");
    assert_eq!(payments[0]["captured"]["amount"], 0, "{payments:?}");

    let mail = shop
        .mail(&bob.email, &format!("Your order {id} was cancelled"))
        .await;
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains("because your payment was declined"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_unit_is_sold_once_and_the_next_order_is_cancelled_as_out_of_stock() {
    let shop = client().await;
    let product = shop.product(4900, 1).await;
    let cleo = shop.customer("Cleo").await;

    let first = shop.place_order(&cleo, &product, 1, APPROVING_CARD).await;
    let first = shop.settled(&cleo, first["id"].as_str().unwrap()).await;
    assert_eq!(first["status"], "CONFIRMED", "{first}");
    assert_eq!(shop.stock(&product.sku).await, (0, 0));

    // The API accepts the order (stock is the saga's business, not the request's) and the
    // saga cancels it before any payment is attempted.
    let second = shop.place_order(&cleo, &product, 1, APPROVING_CARD).await;
    let id = second["id"].as_str().unwrap();
    let second = shop.settled(&cleo, id).await;
    assert_eq!(second["status"], "CANCELLED", "{second}");
    assert_eq!(second["cancellation_reason"], "out_of_stock", "{second}");
    assert_eq!(shop.stock(&product.sku).await, (0, 0));
    assert_eq!(shop.payments(&cleo, Some(id)).await, Vec::<Value>::new());

    let mail = shop
        .mail(&cleo.email, &format!("Your order {id} was cancelled"))
        .await;
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains("no longer in stock"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_retried_with_its_idempotency_key_is_the_same_order_placed_and_charged_once() {
    let shop = client().await;
    let product = shop.product(800, 5).await;
    let dan = shop.customer("Dan").await;
    let key = unique();

    // The client did not see the first answer (say, a dropped connection) and sends again.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, order) = json(
            shop.order_request(&dan, &product, 1, APPROVING_CARD, &key)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{order}");
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "the retry answers with the first order");

    // The same key for a different order is a client bug: refused, not guessed at.
    let (status, problem) = json(
        shop.order_request(&dan, &product, 3, APPROVING_CARD, &key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    let order = shop.settled(&dan, &ids[0]).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let (status, orders) = json(
        shop.get("/api/v1/orders")
            .bearer_auth(&dan.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{orders}");
    let listed: Vec<&str> = orders["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|order| order["id"].as_str())
        .collect();
    assert_eq!(listed, [ids[0].as_str()], "one order, not two");
    // One unit reserved and committed, one payment.
    assert_eq!(shop.stock(&product.sku).await, (4, 0));
    assert_eq!(shop.payments(&dan, None).await.len(), 1);
}
