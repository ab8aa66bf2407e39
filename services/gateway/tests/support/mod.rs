//! Shared pieces of the gateway's tests: a tiny upstream that echoes what it received, and a
//! gateway pointed at it.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::IntoResponse,
    routing::any,
};
use gateway::Gateway;
use shop_auth::testing::TestIssuer;
use shop_testkit::{TestApp, infra, proxy::TcpProxy, spawn_with};

/// An upstream standing in for a service: answers every request with a JSON echo of it
/// (method, path and query, headers, body length) and counts the requests it saw. Its answers
/// are marked [`shop_testkit::contract::STAND_IN`]: relayed by the gateway, they are not the
/// public API's answers and are not checked against its document (the gateway's own are).
#[derive(Debug, Clone)]
pub struct Echo {
    pub url: String,
    pub hits: Arc<AtomicU64>,
}

impl Echo {
    pub async fn start() -> Self {
        Self::start_with(Duration::ZERO).await
    }

    /// An echo that waits `delay` before answering (for timeouts).
    pub async fn start_with(delay: Duration) -> Self {
        let hits = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .fallback(any(echo))
            .with_state((hits.clone(), delay));
        let url = serve(app).await;
        Self { url, hits }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(
    State((hits, delay)): State<(Arc<AtomicU64>, Duration)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(delay).await;
    // A test asks for a `Cache-Control` of the upstream's own with `x-echo-cache-control`.
    let cache_control = headers
        .get("x-echo-cache-control")
        .map(|value| [(axum::http::header::CACHE_CONTROL, value.clone())]);
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into(),
            )
        })
        .collect();
    (
        StatusCode::OK,
        [
            ("etag", "\"v1\""),
            ("connection", "keep-alive"),
            // made here, not by the gateway's services: not checked against the public document
            (shop_testkit::contract::STAND_IN, "echo"),
        ],
        cache_control,
        Json(serde_json::json!({
            "method": method.as_str(),
            "uri": uri.to_string(),
            "headers": headers,
            "body_len": body.len(),
        })),
    )
}

/// Stops checking `app`'s answers against the public document: for tests whose stand-in
/// upstreams answer partial bodies (Pact's mock servers, a catalog reduced to the fields under
/// test) and whose answers the gateway then replays from its cache, which keeps no
/// [`shop_testkit::contract::STAND_IN`] mark.
pub fn answers_from_partial_stand_ins(app: &TestApp) {
    shop_testkit::contract::unregister(app.http_addr);
}

/// Every upstream variable pointed at `url`.
pub fn all_upstreams(url: &str) -> Vec<(String, String)> {
    [
        "USER_SERVICE_URL",
        "CATALOG_SERVICE_URL",
        "INVENTORY_SERVICE_URL",
        "ORDER_SERVICE_URL",
        "PAYMENT_SERVICE_URL",
        "NOTIFICATION_SERVICE_URL",
    ]
    .into_iter()
    .map(|key| (key.to_owned(), url.to_owned()))
    .collect()
}

/// A gateway whose upstreams are all `upstream`, verifying tokens of `issuer`, plus `extra`.
pub async fn gateway(
    upstream: &str,
    issuer: &TestIssuer,
    extra: impl IntoIterator<Item = (&'static str, String)>,
) -> TestApp {
    let mut env = all_upstreams(upstream);
    env.push(("AUTH_JWKS_URL".into(), issuer.jwks_url().to_owned()));
    env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
    spawn_with::<Gateway>(env)
        .await
        .expect("the gateway starts")
}

/// An HTTP forwarder in front of a real service that records every request it passes on
/// (`METHOD /path?query`): how a test counts the calls the gateway makes to that service.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub url: String,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    pub async fn start(upstream: &str) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = (upstream.trim_end_matches('/').to_owned(), seen.clone());
        let app = Router::new().fallback(any(forward)).with_state(state);
        let url = serve(app).await;
        Self { url, seen }
    }

    /// The requests seen so far, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}

type RecorderState = (String, Arc<std::sync::Mutex<Vec<String>>>);

async fn forward(
    State((upstream, seen)): State<RecorderState>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    seen.lock()
        .expect("not poisoned")
        .push(format!("{method} {path}"));
    headers.remove(axum::http::header::HOST);
    let answer = reqwest::Client::new()
        .request(method, format!("{upstream}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = answer.headers().clone();
            headers.remove(axum::http::header::CONTENT_LENGTH);
            headers.remove(axum::http::header::TRANSFER_ENCODING);
            let body = answer.bytes().await.unwrap_or_default();
            (status, headers, body).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Serves `app` on a free loopback port for the rest of the test; returns its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("a bound listener")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A TCP line to the test Redis that the test can cut and restore: point the gateway's
/// `REDIS_URL` at `redis://<line.addr()>`.
pub async fn redis_line() -> TcpProxy {
    let redis =
        url::Url::parse(&infra::redis_url().await.expect("the test Redis")).expect("a Redis URL");
    TcpProxy::start(&format!(
        "{}:{}",
        redis.host_str().expect("a Redis host"),
        redis.port().unwrap_or(6379)
    ))
    .await
    .expect("a line to Redis")
}
