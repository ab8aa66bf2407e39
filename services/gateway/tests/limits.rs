//! Rate limits: shared across instances through Redis (logins counted there first, the rest in
//! batches), and still enforced when Redis is away.

use crate::support;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use shop_auth::testing::TestIssuer;
use shop_testkit::{infra, isolation};
use support::{Echo, gateway};

async fn login(app: &shop_testkit::TestApp) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"email": "a@example.com", "password": "guess"}))
        .send()
        .await
        .expect("the gateway answers")
}

/// Two gateway instances sharing one Redis key prefix, so one set of budgets; `limit` is one
/// `RATE_LIMIT_*` setting. The echo upstream and the issuer live as long as the pair.
struct Pair {
    echo: Echo,
    _issuer: TestIssuer,
    first: shop_testkit::TestApp,
    second: shop_testkit::TestApp,
    redis_url: String,
    prefix: String,
}

async fn two_instances(limit: (&'static str, &str)) -> Pair {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let (redis_url, prefix) = isolation::redis_prefix()
        .await
        .expect("a Redis key prefix of its own");
    let shared = || {
        [
            ("REDIS_URL", redis_url.clone()),
            ("REDIS_KEY_PREFIX", prefix.clone()),
            (limit.0, limit.1.to_owned()),
        ]
    };
    let first = gateway(&echo.url, &issuer, shared()).await;
    let second = gateway(&echo.url, &issuer, shared()).await;
    Pair {
        echo,
        _issuer: issuer,
        first,
        second,
        redis_url,
        prefix,
    }
}

#[tokio::test]
async fn two_gateway_instances_share_one_login_limit() {
    let Pair {
        echo,
        first,
        second,
        ..
    } = two_instances(("RATE_LIMIT_AUTH", "4")).await;

    let mut refused = Vec::new();
    for i in 0..10 {
        let app = if i % 2 == 0 { &first } else { &second };
        let response = login(app).await;
        if response.status() == 429 {
            refused.push(response);
        } else {
            assert_eq!(response.status(), 200);
        }
    }
    assert_eq!(
        refused.len(),
        6,
        "4 of 10 pass, whichever instance they reach"
    );
    assert_eq!(echo.hits(), 4);
    let response = &refused[0];
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(response.headers()["ratelimit-policy"], "\"auth\";q=4;w=60");
    assert!(
        response.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"auth\";r=0;t=")
    );

    // Other routes have their own, larger budget.
    assert_eq!(first.get("/api/v1/products").await.unwrap().status(), 200);
}

/// A cached product read asks for its rate-limit decision and its cache entry in one Redis
/// round trip; the cached answer must still not go to a client that is over its limit.
#[tokio::test]
async fn a_cached_product_read_is_refused_past_the_limit_like_any_other() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, [("RATE_LIMIT_ADDRESS", "3".to_owned())]).await;
    // the echo's answer replayed from the cache carries no stand-in mark
    support::answers_from_partial_stand_ins(&app);

    let mut answers = Vec::new();
    for _ in 0..5 {
        let response = app.get("/api/v1/products/p1").await.unwrap();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|value| value.to_str().unwrap().to_owned());
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        answers.push((response.status().as_u16(), cache, content_type));
    }
    let statuses: Vec<_> = answers
        .iter()
        .map(|(status, cache, _)| (*status, cache.as_deref()))
        .collect();
    assert_eq!(
        statuses,
        [
            (200, None),
            (200, Some("HIT")),
            (200, Some("HIT")),
            (429, None),
            (429, None),
        ],
        "the first read fills the cache, the next two are hits, then the limit holds"
    );
    assert_eq!(answers[3].2, "application/problem+json");
    assert_eq!(echo.hits(), 1, "only the first read reached catalog");
}

#[tokio::test]
async fn limits_hold_locally_while_redis_is_unreachable() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let line = support::redis_line().await;
    let app = gateway(
        &echo.url,
        &issuer,
        [
            ("REDIS_URL", format!("redis://{}", line.addr())),
            (
                "REDIS_KEY_PREFIX",
                isolation::redis_prefix().await.unwrap().1,
            ),
            ("RATE_LIMIT_AUTH", "3".to_owned()),
        ],
    )
    .await;
    assert_eq!(login(&app).await.status(), 200, "counted in Redis");

    line.cut();
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(login(&app).await.status().as_u16());
        }
        statuses
    };
    // Fail open, but not unlimited: the instance goes on from what it knows — the one login
    // Redis counted and its own since — so 3 in all pass.
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "served without Redis, still limited"
    );

    line.restore();
    // Decisions go back to Redis by themselves, with the counts it missed: its counter (1
    // before the cut) moves again.
    let direct = redis::Client::open(infra::redis_url().await.unwrap()).unwrap();
    let mut conn = direct.get_multiplexed_async_connection().await.unwrap();
    // The one login counter of this test's prefix (its suffix is the client's address).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}rl:auth:*", app.env["REDIS_KEY_PREFIX"]))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys[0].clone();
    shop_testkit::eventually(Duration::from_secs(15), || {
        let mut conn = conn.clone();
        let key = key.clone();
        let app = &app;
        async move {
            login(app).await;
            let count: Option<u64> = redis::AsyncCommands::get(&mut conn, &key).await.unwrap();
            count.unwrap_or(0) >= 2
        }
    })
    .await
    .unwrap();
    let count: u64 = redis::AsyncCommands::get(&mut conn, &key).await.unwrap();
    assert!(count >= 2);
}

/// The address is charged before the token is checked. Charged after, a request whose token
/// fails would cost a signature check and never be counted: forged tokens would be free.
#[tokio::test]
async fn a_flood_of_requests_with_bad_tokens_meets_429() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let app = gateway(&echo.url, &issuer, [("RATE_LIMIT_ADDRESS", "5".to_owned())]).await;
    // Signed by a key the gateway does not trust: a well-formed token whose check fails.
    let forged = TestIssuer::start()
        .await
        .user_token(uuid::Uuid::new_v4(), &[shop_auth::Role::Customer]);

    let mut statuses = Vec::new();
    for i in 0..12 {
        let token = if i % 2 == 0 { "garbage" } else { &forged };
        let response = app
            .client
            .get(app.url("/api/v1/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(
                response.headers()["ratelimit-policy"],
                "\"address\";q=5;w=60"
            );
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [[401; 5].as_slice(), [429; 7].as_slice()].concat(),
        "5 refused tokens, then the address is over its limit"
    );
    assert_eq!(echo.hits(), 0);
}

/// A signed-in request spends the address's budget and the user's: neither a user calling from
/// many addresses nor many users behind one address escapes a limit.
#[tokio::test]
async fn signed_in_requests_count_against_both_the_address_and_the_user() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let customer = |_| issuer.user_token(uuid::Uuid::new_v4(), &[shop_auth::Role::Customer]);
    let orders = |app: &shop_testkit::TestApp, token: &str, from: &str| {
        app.client
            .get(app.url("/api/v1/orders"))
            .bearer_auth(token)
            .header("x-forwarded-for", from)
            .send()
    };

    // One address, a new user each time: the address's limit (3) holds.
    let app = gateway(
        &echo.url,
        &issuer,
        [
            ("RATE_LIMIT_ADDRESS", "3".to_owned()),
            ("RATE_LIMIT_USER", "100".to_owned()),
            ("TRUST_FORWARDED_FOR", "true".to_owned()),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let response = orders(&app, &customer(i), "10.0.0.1").await.unwrap();
        if i == 0 {
            assert_eq!(
                response.headers()["ratelimit-policy"],
                "\"address\";q=3;w=60, \"user\";q=100;w=60",
                "both budgets are announced"
            );
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "per address");

    // One user, a new address each time: the user's limit (2) holds.
    let app = gateway(
        &echo.url,
        &issuer,
        [
            ("RATE_LIMIT_ADDRESS", "100".to_owned()),
            ("RATE_LIMIT_USER", "2".to_owned()),
            ("TRUST_FORWARDED_FOR", "true".to_owned()),
        ],
    )
    .await;
    let token = customer(0);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let response = orders(&app, &token, &format!("10.0.1.{i}")).await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429], "per user");
}

/// Sends one request through `app` (a forwarded, never cached route), counts it in `sent`; the address's `r=` (remaining).
async fn remaining(app: &shop_testkit::TestApp, sent: &AtomicU64) -> u64 {
    let response = app
        .get("/.well-known/jwks.json")
        .await
        .expect("the gateway answers");
    sent.fetch_add(1, Ordering::SeqCst);
    assert_eq!(response.status(), 200);
    let state = response.headers()["ratelimit"]
        .to_str()
        .expect("a header of ASCII")
        .to_owned();
    state
        .split(';')
        .find_map(|part| part.strip_prefix("r="))
        .and_then(|r| r.parse().ok())
        .expect("RateLimit says what remains: r=<n>")
}

/// The address counters in Redis under `prefix`: how many, and their total.
async fn address_counters(redis_url: &str, prefix: &str) -> (u64, u64) {
    let direct = redis::Client::open(redis_url).expect("a Redis URL");
    let mut conn = direct
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}rl:addr:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut total = 0;
    for key in &keys {
        let count: Option<u64> = redis::AsyncCommands::get(&mut conn, key)
            .await
            .expect("GET");
        total += count.unwrap_or(0);
    }
    (keys.len() as u64, total)
}

/// An address's budget is decided in memory while it is far from its limit, and its counts go
/// to Redis in batches: another instance does not ask Redis before deciding, and learns the
/// shared total from the answer to its own batch. Nothing is lost on the way.
#[tokio::test]
async fn an_address_is_counted_in_memory_and_its_counts_reach_redis_in_batches() {
    let Pair {
        first,
        second,
        redis_url,
        prefix,
        ..
    } = two_instances(("RATE_LIMIT_ADDRESS", "100")).await;
    let sent = AtomicU64::new(0);
    for _ in 0..30 {
        remaining(&first, &sent).await;
    }
    let counted = || address_counters(&redis_url, &prefix);
    shop_testkit::eventually(Duration::from_secs(10), || async {
        counted().await == (1, 30)
    })
    .await
    .unwrap();

    // Redis has the first instance's 30; the second decides its first request without asking
    // (counted exactly, it would say 69 left).
    assert_eq!(remaining(&second, &sent).await, 99, "decided in memory");
    // Its batch's answer brings it the shared total.
    shop_testkit::eventually(Duration::from_secs(10), || async {
        remaining(&second, &sent).await < 69
    })
    .await
    .unwrap();
    // Every request of both is in Redis: none was lost in a batch.
    shop_testkit::eventually(Duration::from_secs(10), || async {
        counted().await == (1, sent.load(Ordering::SeqCst))
    })
    .await
    .unwrap();
}

/// Past half of its allowance an address is counted in Redis first, request by request. Two
/// instances taking turns, each request after the last one's batch had time to go out, let
/// exactly the limit through. (Faster than the batches, a burst spread over N instances gets
/// at most half a limit more per other instance: the module docs of `ratelimit`.)
#[tokio::test]
async fn past_half_its_allowance_an_address_is_counted_exactly_across_instances() {
    let Pair { first, second, .. } = two_instances(("RATE_LIMIT_ADDRESS", "10")).await;
    let mut statuses = Vec::new();
    for i in 0..16 {
        let app = if i % 2 == 0 { &first } else { &second };
        statuses.push(
            app.get("/.well-known/jwks.json")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
        tokio::time::sleep(3 * gateway::ratelimit::SYNC_EVERY).await;
    }
    assert_eq!(
        statuses,
        [[200; 10].as_slice(), [429; 6].as_slice()].concat(),
        "10 of 16 pass, whichever instance they reach"
    );
}

/// Many clients' counts waiting at once (here: sent while Redis was cut off, so all of them
/// wait for one batch) go to Redis in several script calls of a few hundred keys, so that one
/// call never holds Redis long, and every client's count arrives.
#[tokio::test]
async fn the_counts_of_many_clients_reach_redis_in_chunks_and_none_is_lost() {
    let echo = Echo::start().await;
    let issuer = TestIssuer::start().await;
    let (redis_url, prefix) = isolation::redis_prefix().await.unwrap();
    let line = support::redis_line().await;
    let app = gateway(
        &echo.url,
        &issuer,
        [
            ("REDIS_URL", format!("redis://{}", line.addr())),
            ("REDIS_KEY_PREFIX", prefix.clone()),
            ("TRUST_FORWARDED_FOR", "true".to_owned()),
        ],
    )
    .await;
    const CLIENTS: u32 = 1_200;
    line.cut();
    let mut sending = tokio::task::JoinSet::new();
    let app = std::sync::Arc::new(app);
    for batch in 0..CLIENTS / 100 {
        let app = app.clone();
        sending.spawn(async move {
            for i in 0..100 {
                let client = batch * 100 + i;
                let response = app
                    .client
                    .get(app.url("/.well-known/jwks.json"))
                    .header(
                        "x-forwarded-for",
                        format!("10.0.{}.{}", client / 256, client % 256),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        });
    }
    while let Some(sent) = sending.join_next().await {
        sent.unwrap();
    }
    line.restore();
    let counted = || address_counters(&redis_url, &prefix);
    shop_testkit::eventually(Duration::from_secs(15), || async {
        counted().await == (CLIENTS as u64, u64::from(CLIENTS))
    })
    .await
    .unwrap();
}
