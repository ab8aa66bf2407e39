//! SIGTERM while a request is in flight: the request completes, new work is refused, the
//! service stops within its grace period.
//!
//! This file is its own test binary with a single test, because it sends SIGTERM to its own
//! process; the runtime's handler catches it, exactly as in a deployed service.

use std::time::Duration;

use axum::{Router, routing::get};
use shop_runtime::{BootError, Context, Endpoints, Needs, Service, ServiceSpec, shutdown};

/// A service with one slow endpoint, standing in for any long request.
struct SlowService;

impl Service for SlowService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "slow-test-service",
            http_port: 0,
            grpc_port: 0,
            needs: Needs::default(),
            migrations: None,
        }
    }

    async fn build(_: &Context, _: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "finished"
            }),
        )))
    }
}

#[tokio::test]
async fn a_request_in_flight_when_sigterm_arrives_still_completes() {
    let mut app = shop_testkit::spawn::<SlowService>().await.unwrap();
    app.wait_ready(Duration::from_secs(5)).await.unwrap();
    let running = app.begin_shutdown_on_signal();
    shutdown::cancel_on_signal(running.shutdown_token()).unwrap();

    let in_flight = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/slow");
        async move {
            let response = client.get(url).send().await.map_err(|e| e.to_string())?;
            response.text().await.map_err(|e| e.to_string())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Shutdown has begun: a new connection is no longer served.
    let fresh = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(
        fresh.is_err(),
        "new connections are refused after SIGTERM: {fresh:?}"
    );

    // The request that was already running gets its full answer.
    assert_eq!(in_flight.await.unwrap().unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(10), running.stopped())
        .await
        .expect("stops within the grace period")
        .expect("stops cleanly");
}
