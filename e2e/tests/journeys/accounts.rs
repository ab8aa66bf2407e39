//! Accounts and who may see what: refresh-token rotation, the login rate limit, one customer's
//! data hidden from another, admin routes closed to customers.

use e2e::{APPROVING_CARD, PASSWORD, Target, client, json};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_rotated_refresh_token_is_refused_and_ends_the_whole_sign_in() {
    let shop = client().await;
    let eve = shop.customer("Eve").await;
    let refresh = |token: String| {
        let shop = shop.clone();
        async move {
            let response = shop
                .send_patiently(|| {
                    shop.post("/api/v1/auth/refresh")
                        .json(&json!({ "refresh_token": token }))
                })
                .await;
            let no_store = response
                .headers()
                .get("cache-control")
                .is_some_and(|value| value == "no-store");
            let (status, body) = json(response).await;
            (status, body, no_store)
        }
    };

    // A refresh rotates: a new pair, the old refresh token spent.
    let (status, rotated, no_store) = refresh(eve.refresh_token.clone()).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert!(no_store, "token answers are never cached");
    assert_eq!(rotated["token_type"], "Bearer");
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, eve.refresh_token);
    let (status, me) = json(
        shop.get("/api/v1/users/me")
            .bearer_auth(rotated["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, me["email"].as_str()),
        (StatusCode::OK, Some(eve.email.as_str()))
    );

    // Someone replays the spent token (stolen, say): refused ...
    let (status, problem, _) = refresh(eve.refresh_token.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    // ... and the whole family is revoked, so the thief's or the customer's newer token is
    // worthless too: whoever holds it must sign in again.
    let (status, problem, _) = refresh(second).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_passwords_meets_429_with_retry_after_whatever_the_guess() {
    let shop = client().await;
    let fay = shop.customer("Fay").await;
    // The attacker is a client of its own (its own address for the in-process gateway).
    let attacker = client().await;
    let attempt = |password: &'static str| {
        attacker
            .post("/api/v1/auth/login")
            .json(&json!({ "email": fay.email, "password": password }))
            .send()
    };

    // The policy is announced on every answer: `"auth";q=<limit>;w=<window>`.
    let first = attempt("not-the-password").await.unwrap();
    let policy = first.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with("\"auth\""), "{policy}");
    let limit: u32 = policy
        .split(';')
        .find_map(|part| part.trim().strip_prefix("q="))
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("a quota in {policy}"));

    // Within `limit` attempts the limit is reached (twice that if a window ends midway). The
    // first is already refused when other journeys spent the budget (`make run`: one client).
    let mut refused = None;
    let mut next = Some(first);
    for _ in 0..2 * limit {
        let response = match next.take() {
            Some(response) => response,
            None => attempt("still-not-the-password").await.unwrap(),
        };
        match response.status() {
            StatusCode::UNAUTHORIZED => continue,
            StatusCode::TOO_MANY_REQUESTS => {
                refused = Some(response);
                break;
            }
            other => panic!("a wrong password is 401 or 429, got {other}"),
        }
    }
    let refused = refused.expect("the login limit is reached");
    let headers = refused.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    assert!(headers.contains_key("ratelimit"), "{headers:?}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let (_, problem) = json(refused).await;
    assert_eq!(problem["status"], 429, "{problem}");

    // The right password does not get through either: the limit is on the client, not on the
    // guess. (Unless the window ended in between, which Retry-After says it would not.)
    if retry_after >= 2 {
        let right = attempt(PASSWORD).await.unwrap();
        assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    // Another client is not punished for the attacker's guesses. Only the in-process gateway
    // tells clients apart by their X-Forwarded-For; behind `make run` every journey is
    // 127.0.0.1, the same client.
    if shop.system.target == Target::InProcess {
        let tokens = shop.sign_in(&fay.email, PASSWORD).await;
        assert!(tokens["access_token"].is_string(), "{tokens}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_cannot_see_another_customers_orders_or_payments() {
    let shop = client().await;
    let product = shop.product(1500, 4).await;
    let gus = shop.customer("Gus").await;
    let hal = shop.customer("Hal").await;
    let placed = shop.place_order(&gus, &product, 1, APPROVING_CARD).await;
    let id = placed["id"].as_str().unwrap();
    assert_eq!(shop.settled(&gus, id).await["status"], "CONFIRMED");
    assert_eq!(
        shop.payments(&gus, Some(id)).await.len(),
        1,
        "Gus sees his payment"
    );

    // To Hal, Gus's order does not exist: the same 404 as for an order nobody placed.
    let (status, problem) = shop.order(&hal, id).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(!problem.to_string().contains(&gus.id), "{problem}");
    let (status, problem) = json(
        shop.post(&format!("/api/v1/orders/{id}/cancel"))
            .bearer_auth(&hal.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    // And none of Gus's payments or orders appear in Hal's lists.
    assert_eq!(shop.payments(&hal, Some(id)).await, Vec::<Value>::new());
    assert_eq!(shop.payments(&hal, None).await, Vec::<Value>::new());
    let (status, orders) = json(
        shop.get("/api/v1/orders")
            .bearer_auth(&hal.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{orders}");
    assert_eq!(orders["items"], json!([]), "{orders}");
    // Hal's attempt to cancel changed nothing.
    assert_eq!(shop.order(&gus, id).await.1["status"], "CONFIRMED");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_is_refused_every_admin_route_and_changes_nothing() {
    let shop = client().await;
    let product = shop.product(999, 7).await;
    let ivy = shop.customer("Ivy").await;
    let product_path = format!("/api/v1/products/{}", product.id);
    let stock_path = format!("/api/v1/inventory/{}", product.sku);

    let attempts = [
        shop.post("/api/v1/products").json(&json!({
            "sku": format!("{}-X", product.sku), "name": "Free lunch", "category": product.category,
            "price": { "amount": 1, "currency": "EUR" },
        })),
        shop.patch(&product_path)
            .json(&json!({ "price": { "amount": 1, "currency": "EUR" } })),
        shop.get(&stock_path),
        shop.put(&stock_path).json(&json!({ "available": 1000 })),
    ];
    for attempt in attempts {
        let (status, problem) =
            json(attempt.bearer_auth(&ivy.access_token).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
        assert_eq!(problem["status"], 403, "{problem}");
    }
    // Without a token it is 401: sign in first (not: you may never).
    let (status, problem) = json(
        shop.put(&stock_path)
            .json(&json!({ "available": 1000 }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");

    // Nothing changed: the stock, the price, and no second product in the category.
    assert_eq!(shop.stock(&product.sku).await, (7, 0));
    let (_, page) = json(
        shop.get(&format!("/api/v1/products?category={}", product.category))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["price"]["amount"], 999, "{page}");
}
