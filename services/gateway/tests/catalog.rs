//! Catalog reads: cached in Redis, forgotten when catalog says a product changed, and served
//! from the cache while catalog is down.

use crate::support;

use std::time::Duration;

use shop_auth::{Role, testing::TestIssuer};
use shop_events::{Money, catalog::PriceChanged};
use shop_messaging::{Event, envelope::CONTENT_TYPE, topology};
use shop_testkit::{eventually, proxy::TcpProxy};
use support::{Echo, gateway};

#[tokio::test]
async fn product_reads_are_cached_until_catalog_announces_a_change() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, []).await;
    support::answers_from_partial_stand_ins(&app);
    let read = |path: &'static str| {
        let app = &app;
        async move {
            let response = app.get(path).await.unwrap();
            assert_eq!(response.status(), 200);
            response
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };

    assert_eq!(read("/api/v1/products/p1").await, None);
    assert_eq!(read("/api/v1/products/p1").await.as_deref(), Some("HIT"));
    assert_eq!(read("/api/v1/products?category=lamps").await, None);
    assert_eq!(
        read("/api/v1/products?category=lamps").await.as_deref(),
        Some("HIT")
    );
    assert_eq!(echo.hits(), 2, "the second reads were answered from Redis");

    // catalog announces a new price: the event goes through the broker to the gateway's
    // consumer, twice (a redelivery must change nothing more).
    let changed = PriceChanged {
        product_id: "p1".into(),
        sku: "LAMP-1".into(),
        old_price: Money {
            amount: 1999,
            currency: "EUR".into(),
        },
        new_price: Money {
            amount: 2499,
            currency: "EUR".into(),
        },
        version: 2,
    }
    .envelope()
    .unwrap();
    let broker = lapin::Connection::connect(&app.env["AMQP_URL"], Default::default())
        .await
        .unwrap();
    let channel = broker.create_channel().await.unwrap();
    // The consumer's queue exists once it is attached; an event published before would match
    // no queue.
    eventually(Duration::from_secs(10), || async {
        let Ok(response) = app.get("/readyz").await else {
            return false;
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["checks"]["consumer:gateway.events"] == "up"
    })
    .await
    .expect("the gateway consumes catalog's events");
    for _ in 0..2 {
        channel
            .basic_publish(
                topology::EXCHANGE.into(),
                PriceChanged::ROUTING_KEY.into(),
                Default::default(),
                &changed.to_vec(),
                lapin::BasicProperties::default().with_content_type(CONTENT_TYPE.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(10), || async {
        app.get("/api/v1/products/p1")
            .await
            .is_ok_and(|response| response.headers().get("x-cache").is_none())
    })
    .await
    .expect("the product's cached read is forgotten when PriceChanged arrives");
    assert_eq!(
        read("/api/v1/products?category=lamps").await,
        None,
        "listings too"
    );
    assert_eq!(echo.hits(), 4);
}

#[tokio::test]
async fn while_catalog_is_down_reads_are_served_stale_and_writes_fail_fast() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let line = TcpProxy::start(echo.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut env = support::all_upstreams(&echo.url);
    env.retain(|(key, _)| key != "CATALOG_SERVICE_URL");
    env.push((
        "CATALOG_SERVICE_URL".into(),
        format!("http://{}", line.addr()),
    ));
    env.push(("AUTH_JWKS_URL".into(), issuer.jwks_url().to_owned()));
    // Every cached answer is stale at once, so each read goes to catalog first.
    env.push(("CACHE_FRESH_SECONDS".into(), "0".into()));
    let app = shop_testkit::spawn_with::<gateway::Gateway>(env)
        .await
        .unwrap();
    support::answers_from_partial_stand_ins(&app);
    let admin = issuer.user_token(uuid::Uuid::new_v4(), &[Role::Customer, Role::Admin]);

    assert_eq!(app.get("/api/v1/products/p1").await.unwrap().status(), 200);
    line.cut();

    let response = app.get("/api/v1/products/p1").await.unwrap();
    assert_eq!(response.status(), 200, "stale-if-error");
    assert_eq!(response.headers()["x-cache"], "STALE");

    // Uncached reads fail; after enough failures the circuit opens and calls fail fast.
    let mut statuses = Vec::new();
    for _ in 0..gateway::proxy::BREAKER.failures_to_open + 1 {
        let response = app.get("/api/v1/products/p2").await.unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    let response = app
        .client
        .post(app.url("/api/v1/products"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"sku": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "writes fail fast while the circuit is open"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = app.get("/api/v1/products/p1").await.unwrap();
    assert_eq!(
        response.headers()["x-cache"],
        "STALE",
        "still served while open"
    );

    line.restore();
    eventually(Duration::from_secs(20), || async {
        app.get("/api/v1/products/p2").await.unwrap().status() == 200
    })
    .await
    .expect("the circuit closes by itself once catalog is back");
}

/// The race an invalidating event alone cannot close: a read asks catalog before a change,
/// the change's event arrives and empties the cache, and only then does the old answer come
/// back. Stored now, it would be served as fresh until the entry's freshness ran out, long
/// after the event meant to remove it. The interleaving is played step by step on the cache
/// itself (real Redis), for an item and for a listing.
#[tokio::test]
async fn a_catalog_answer_that_raced_an_invalidation_is_not_cached() {
    let (url, prefix) = shop_testkit::isolation::redis_prefix().await.unwrap();
    let config = shop_runtime::stores::redis::RedisConfig {
        url: url.parse().unwrap(),
        key_prefix: prefix,
    };
    let redis = shop_runtime::stores::redis::connect(
        &config,
        &shop_runtime::health::Readiness::default(),
        true,
    )
    .unwrap();
    let cache = gateway::cache::ResponseCache::new(redis, Duration::from_secs(300));
    let (parts, ()) = http::Response::builder()
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    let old_answer = bytes::Bytes::from_static(br#"{"price":{"amount":1999}}"#);

    for path in ["/api/v1/products/p1", "/api/v1/products?category=lamps"] {
        // A miss: the proxy asks catalog, which answers with the price before the change...
        let lookup = cache.fresh(path).await;
        assert!(lookup.hit.is_none(), "{path}: nothing cached yet");
        // ...but the change's event is handled before that answer is stored.
        cache.invalidate_product("p1").await.unwrap();
        cache
            .store(path, lookup.generation, &parts, &old_answer)
            .await;
        assert!(
            cache.fresh(path).await.hit.is_none(),
            "{path}: an answer that may predate the change is not kept"
        );

        // With no change in between, the next read's answer is kept as usual.
        let lookup = cache.fresh(path).await;
        cache
            .store(path, lookup.generation, &parts, &old_answer)
            .await;
        let hit = cache
            .fresh(path)
            .await
            .hit
            .expect("stored when nothing raced");
        assert_eq!(hit.headers()["x-cache"], "HIT");
    }
}

/// Publishes catalog's `PriceChanged` for `product_id` once the gateway's consumer is attached
/// (an event published before would match no queue).
async fn announce_price_change(app: &shop_testkit::TestApp, product_id: &str) {
    eventually(Duration::from_secs(10), || async {
        let Ok(response) = app.get("/readyz").await else {
            return false;
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["checks"]["consumer:gateway.events"] == "up"
    })
    .await
    .expect("the gateway consumes catalog's events");
    let changed = PriceChanged {
        product_id: product_id.into(),
        sku: "LAMP-1".into(),
        old_price: Money {
            amount: 1999,
            currency: "EUR".into(),
        },
        new_price: Money {
            amount: 2499,
            currency: "EUR".into(),
        },
        version: 2,
    }
    .envelope()
    .expect("an envelope");
    let broker = lapin::Connection::connect(&app.env["AMQP_URL"], Default::default())
        .await
        .expect("the broker");
    let channel = broker.create_channel().await.expect("a channel");
    channel
        .basic_publish(
            topology::EXCHANGE.into(),
            PriceChanged::ROUTING_KEY.into(),
            Default::default(),
            &changed.to_vec(),
            lapin::BasicProperties::default().with_content_type(CONTENT_TYPE.into()),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
}

/// The gateway's Redis keys under its prefix matching `pattern` (e.g. `cache:list:*`).
async fn cache_keys(app: &shop_testkit::TestApp, pattern: &str) -> Vec<String> {
    let redis = redis::Client::open(app.env["REDIS_URL"].as_str()).expect("a Redis URL");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    redis::cmd("KEYS")
        .arg(format!("{}{pattern}", app.env["REDIS_KEY_PREFIX"]))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

/// Keys made from the raw query string let anyone mint cache entries: `?x=<random>` was a new
/// entry per request. Now one listing is one key however it is spelt, a parameter catalog does
/// not take means no entry at all, and even distinct searches stop at `MAX_LISTINGS` entries.
/// (The upstream here answers 200 to anything, so it is the gateway that refuses to store.)
#[tokio::test]
async fn a_flood_of_parameter_variants_creates_a_bounded_number_of_cache_keys() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(
        &echo.url,
        &issuer,
        [("RATE_LIMIT_ADDRESS", "1000000".to_owned())],
    )
    .await;
    support::answers_from_partial_stand_ins(&app);

    for i in 0..400 {
        let path = match i % 4 {
            0 => format!("/api/v1/products?category=lamps&limit=5&x={i}"),
            1 => "/api/v1/products?limit=5&category=lamps".to_owned(),
            2 => "/api/v1/products?category=%6Camps&limit=0005&q=".to_owned(),
            _ => format!("/api/v1/products?limit=5&utm_source={i}&category=lamps"),
        };
        assert_eq!(app.get(&path).await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(
        cache_keys(&app, "cache:list:*").await.len(),
        1,
        "400 spellings of one listing: one entry"
    );
    assert_eq!(
        echo.hits(),
        200 + 1,
        "unknown parameters always went to catalog, the canonical spellings once"
    );

    let searches = gateway::cache::MAX_LISTINGS + 50;
    for i in 0..searches {
        let path = format!("/api/v1/products?q=word{i}");
        assert_eq!(app.get(&path).await.unwrap().status(), 200, "{path}");
    }
    let keys = cache_keys(&app, "cache:list:*").await.len() as u64;
    assert_eq!(
        keys,
        gateway::cache::MAX_LISTINGS,
        "{searches} distinct searches: no more than the bound"
    );
}

/// `/products/%61bc` is product `abc`: catalog's router decodes it. A second cache entry under
/// the encoded spelling would outlive the invalidation of `abc` and keep serving the old price.
#[tokio::test]
async fn an_encoded_id_shares_the_products_entry_and_no_spelling_keeps_the_old_price() {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let price = Arc::new(AtomicU64::new(1999));
    let served = price.clone();
    let catalog = support::serve(axum::Router::new().fallback(move || {
        let price = served.load(Ordering::SeqCst);
        async move { axum::Json(serde_json::json!({"id": "abc", "price": price})) }
    }))
    .await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&catalog, &issuer, []).await;
    support::answers_from_partial_stand_ins(&app);
    let read = |path: &'static str| {
        let app = &app;
        async move {
            let response = app.get(path).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let cache = response
                .headers()
                .get("x-cache")
                .map(|value| value.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap();
            (cache, body["price"].as_u64().unwrap())
        }
    };
    let aliases = [
        "/api/v1/products/%61bc",
        "/api/v1/products/%61%62%63",
        "/api/v1/products/ab%63",
    ];

    assert_eq!(read("/api/v1/products/abc").await, (None, 1999));
    for alias in aliases {
        assert_eq!(
            read(alias).await,
            (Some("HIT".to_owned()), 1999),
            "{alias}: the product's own entry"
        );
    }
    assert_eq!(cache_keys(&app, "cache:item:*").await.len(), 1);

    price.store(2499, Ordering::SeqCst);
    announce_price_change(&app, "abc").await;
    eventually(Duration::from_secs(10), || async {
        read("/api/v1/products/abc").await.1 == 2499
    })
    .await
    .expect("the change reaches the product's entry");
    for alias in aliases {
        assert_eq!(read(alias).await.1, 2499, "{alias} serves the new price");
    }
}
