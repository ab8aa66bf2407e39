//! The HTTP server every service runs on: a client that does not finish sending its request's
//! headers, or its body, in time does not keep its connection.

use std::time::Duration;

use axum::{
    Router,
    routing::{get, post},
};
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use shop_testkit::spawn_with;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Hello;

impl Service for Hello {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("hello-test-service", 0, 0)
    }

    async fn build(_: &Context, (): ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(
            Router::new()
                .route("/hello", get(|| async { "hello" }))
                .route(
                    "/echo",
                    post(|body: axum::body::Bytes| async move { body.len().to_string() }),
                ),
        ))
    }
}

/// Everything the server sends on `stream` until it closes the connection. Bounded so that a
/// server that never closes fails the test instead of hanging it; the bound is far above the
/// deadline under test and says nothing about how fast the server is.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .expect("a clean close or a reset, not a read error");
    received
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_with::<Hello>([("HTTP_HEADER_READ_TIMEOUT_SECONDS", "1")])
        .await
        .unwrap();

    // A slowloris client: the request line and one header, then nothing more.
    let mut slow = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let received = until_closed(&mut slow).await;
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "no answer to an unfinished request: {}",
        String::from_utf8_lossy(&received)
    );

    // A connection that never sends anything is closed too.
    let mut silent = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    assert!(until_closed(&mut silent).await.is_empty());

    // A client that sends its request in time is answered as usual.
    let response = app.get("/hello").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn a_client_that_trickles_its_body_is_answered_400_and_disconnected() {
    let app = spawn_with::<Hello>([("HTTP_BODY_READ_TIMEOUT_SECONDS", "1")])
        .await
        .unwrap();

    // Headers at once, then the 100-byte body one byte every 300 ms: every gap is far below
    // the deadline, the whole body (30 s) far above it.
    let stream = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .ok();
    trickle.abort();
    let received = String::from_utf8_lossy(&received);
    assert!(
        received.starts_with("HTTP/1.1 400") && received.contains("did not arrive within 1 s"),
        "{received}"
    );

    // A body sent at once is read as usual.
    let response = reqwest::Client::new()
        .post(app.url("/echo"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "100");
}

#[test]
fn a_zero_header_deadline_is_refused_at_start() {
    let mut env = shop_runtime::config::Env::from_pairs([
        ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0"),
        ("HTTP_BODY_READ_TIMEOUT_SECONDS", "0"),
    ]);
    let _ = shop_runtime::RuntimeConfig::from_env(&Hello::spec(), &mut env);
    let err = env.finish().unwrap_err().to_string();
    assert!(err.contains("HTTP_HEADER_READ_TIMEOUT_SECONDS"), "{err}");
    assert!(err.contains("HTTP_BODY_READ_TIMEOUT_SECONDS"), "{err}");
}

/// With `OPS_ADDR` (compose, the chart, production) the operational endpoints answer on their
/// own port and only there: the API port, which the internet reaches on the gateway, answers
/// them 404, and the operational port serves nothing of the API.
#[tokio::test]
async fn operational_endpoints_answer_on_their_own_port_and_not_on_the_api_port() {
    let loopback = "127.0.0.1:0";
    let running = shop_runtime::start::<Hello>(shop_runtime::config::Env::from_pairs([
        ("HTTP_ADDR", loopback),
        ("GRPC_ADDR", loopback),
        ("OPS_ADDR", loopback),
    ]))
    .await
    .unwrap();
    assert_ne!(running.ops_addr, running.http_addr);
    let get = |addr: std::net::SocketAddr, path: &str| {
        let url = format!("http://{addr}{path}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(running.ops_addr, path).await, 200, "ops {path}");
        assert_eq!(get(running.http_addr, path).await, 404, "api {path}");
    }
    assert_eq!(get(running.http_addr, "/hello").await, 200);
    assert_eq!(get(running.ops_addr, "/hello").await, 404);
    running.shutdown();
    running.stopped().await.unwrap();

    // Unset (development, tests): one port for both.
    let running = shop_runtime::start::<Hello>(shop_runtime::config::Env::from_pairs([
        ("HTTP_ADDR", loopback),
        ("GRPC_ADDR", loopback),
    ]))
    .await
    .unwrap();
    assert_eq!(running.ops_addr, running.http_addr);
    assert_eq!(get(running.http_addr, "/metrics").await, 200);
    running.shutdown();
    running.stopped().await.unwrap();
}

#[test]
fn production_requires_a_port_of_their_own_for_the_operational_endpoints() {
    let mut env = shop_runtime::config::Env::from_pairs([("SHOP_ENV", "production")]);
    let _ = shop_runtime::RuntimeConfig::from_env(&Hello::spec(), &mut env);
    let err = env.finish().unwrap_err().to_string();
    assert!(err.contains("OPS_ADDR: is not set"), "{err}");

    // With OPS_ADDR set, what production still asks for is the gRPC server's certificate
    // (tests/grpc_tls.rs), nothing about the operational port.
    let mut env = shop_runtime::config::Env::from_pairs([
        ("SHOP_ENV", "production"),
        ("OPS_ADDR", "0.0.0.0:9080"),
    ]);
    let _ = shop_runtime::RuntimeConfig::from_env(&Hello::spec(), &mut env);
    let err = env.finish().unwrap_err();
    let refused: Vec<&str> = err.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(
        refused,
        ["GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE"],
        "{err}"
    );
}
