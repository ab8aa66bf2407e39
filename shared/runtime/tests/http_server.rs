//! The HTTP server every service runs on: a client that does not finish sending its request's
//! headers does not keep its connection.

use std::time::Duration;

use axum::{Router, routing::get};
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
            Router::new().route("/hello", get(|| async { "hello" })),
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

#[test]
fn a_zero_header_deadline_is_refused_at_start() {
    let mut env =
        shop_runtime::config::Env::from_pairs([("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0")]);
    let _ = shop_runtime::RuntimeConfig::from_env(&Hello::spec(), &mut env);
    let err = env.finish().unwrap_err().to_string();
    assert!(err.contains("HTTP_HEADER_READ_TIMEOUT_SECONDS"), "{err}");
}
