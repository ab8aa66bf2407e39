//! One order, one trace: the seven services run as separate processes (the debug binaries
//! `cargo test` has built, on free ports and the test's own databases and vhost, as the smoke
//! test runs them), each exporting its spans over OTLP to a Jaeger of the test's own (the
//! binary `deploy/local/stack.sh install` built and cached, on free loopback ports). One order
//! placed through the gateway must come back from Jaeger's query API as a single trace with
//! spans of the gateway, order, catalog, inventory, payment and notification: trace context
//! crossed HTTP (gateway → order), gRPC (order → catalog, inventory, payment) and AMQP (order's
//! outbox → notification's consumer).
//!
//! Separate processes, because in one process the services would share one tracer provider
//! and so one `service.name`: the trace could not say which service a span belongs to.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use shop_bench::{
    infra::{Infra, Slice},
    scenarios::orders,
    stack::{SERVICES, Stack, Via, Wiring, built_services, free_port},
};

/// The services one order's trace must reach, as their `service.name`.
const IN_THE_TRACE: [&str; 6] = [
    "gateway",
    "order-service",
    "catalog-service",
    "inventory-service",
    "payment-service",
    "notification-service",
];

/// A Jaeger all-in-one of the test's own; killed when dropped.
struct Jaeger {
    child: Child,
    otlp: String,
    query: String,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jaeger {
    fn start(binary: &Path, log: &Path) -> Self {
        let port = || free_port().unwrap();
        let (otlp_http, otlp_grpc, query_http) = (port(), port(), port());
        let flags = [
            ("collector.otlp.http.host-port", otlp_http),
            ("collector.otlp.grpc.host-port", otlp_grpc),
            ("collector.http-server.host-port", port()),
            ("collector.grpc-server.host-port", port()),
            ("query.http-server.host-port", query_http),
            ("query.grpc-server.host-port", port()),
            ("admin.http.host-port", port()),
        ];
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(binary)
            .env("SPAN_STORAGE_TYPE", "memory")
            // Jaeger traces itself to OTLP on localhost:4317 by default, where a `make run`
            // Jaeger may listen: aim it at itself, sampling nothing (as stack.sh does).
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_grpc}"),
            )
            .env("OTEL_TRACES_SAMPLER", "always_off")
            .args(
                flags
                    .iter()
                    .map(|(flag, port)| format!("--{flag}=127.0.0.1:{port}")),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
        Self {
            child,
            otlp: format!("http://127.0.0.1:{otlp_http}"),
            query: format!("http://127.0.0.1:{query_http}"),
        }
    }

    /// Every trace Jaeger holds with a span of `service` (the test's Jaeger holds this test's
    /// traces only).
    async fn traces(&self, http: &reqwest::Client, service: &str) -> Option<Vec<Value>> {
        let response = http
            .get(format!(
                "{}/api/traces?service={service}&limit=1000&lookback=1h",
                self.query
            ))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        body["data"].as_array().cloned()
    }
}

/// The service names of a trace's spans (Jaeger keeps them in the trace's `processes`).
fn services_of(trace: &Value) -> BTreeSet<String> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|span| {
            let process = span["processID"].as_str()?;
            Some(processes[process]["serviceName"].as_str()?.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_http_grpc_and_amqp_through_six_services() {
    let jaeger_binary = PathBuf::from(std::env::var("TESTKIT_JAEGER_BIN").expect(
        "TESTKIT_JAEGER_BIN names the cached Jaeger binary: run `make infra-up` \
         (deploy/local/stack.sh builds it) and source .local/test.env",
    ));
    assert!(
        jaeger_binary.is_file(),
        "{} is missing: `deploy/local/stack.sh install` builds it",
        jaeger_binary.display()
    );
    let bin_dir = built_services(Path::new(env!("CARGO_BIN_EXE_shop-bench")))
        .unwrap_or_else(|missing| panic!("{missing}"));

    let work = tempfile::tempdir().unwrap();
    let jaeger = Jaeger::start(&jaeger_binary, &work.path().join("jaeger.log"));
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp_port = smtp.local_addr().unwrap().port();
    tokio::spawn(shop_bench::smtp::serve(smtp, Arc::new(AtomicU64::new(0))));

    let mut slice = Slice::new(Infra::from_env().unwrap());
    let outcome = async {
        let amqp = slice.vhost("stack").await?;
        // Every service exports to the test's Jaeger, flushing often so the test waits little.
        let env = SERVICES
            .into_iter()
            .flat_map(|service| {
                [
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str()),
                    ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ]
                .map(|(key, value)| (service.to_owned(), key.to_owned(), value.to_owned()))
            })
            .collect();
        let stack = Stack::start(
            &mut slice,
            &Wiring {
                bin_dir: bin_dir.to_owned(),
                log_dir: work.path().to_owned(),
                amqp: amqp.to_string(),
                smtp_port,
                unlimited: true,
                via: Via {
                    env,
                    ..Via::default()
                },
            },
        )
        .await?;
        let result = place_one_order_and_read_its_trace(&stack, &jaeger).await;
        stack.stop().await;
        result
    }
    .await;
    slice.drop_all().await.unwrap();
    let (order_id, reached) = outcome.unwrap();
    let expected: BTreeSet<String> = IN_THE_TRACE.map(str::to_owned).into();
    assert!(
        reached.is_superset(&expected),
        "the trace of order {order_id} reached only {reached:?}; expected {expected:?}"
    );
}

/// Places one order and returns the services its one trace reached, waiting up to a minute for
/// the saga to end, the confirmation to be consumed and the last spans to be exported.
async fn place_one_order_and_read_its_trace(
    stack: &Stack,
    jaeger: &Jaeger,
) -> anyhow::Result<(String, BTreeSet<String>)> {
    let base = stack.gateway().url("");
    let base = base.trim_end_matches('/');
    let shop = orders::prepare(base, 1, 10).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(&shop.tokens[0])
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "items": [{ "product_id": shop.products[0].0, "quantity": 1 }],
            "payment": { "card_number": "4242424242424242", "expiry": "12/39", "cvc": "123" },
            "shipping_address": { "name": "Trace Test", "line1": "1 Main St", "city": "Berlin",
                                  "postal_code": "10115", "country": "DE" },
        }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "placing the order: {}",
        response.status()
    );
    let order: Value = response.json().await?;
    let order_id = order["id"].as_str().unwrap_or_default().to_owned();

    // The saga ends, the confirmation is published and consumed; the spans arrive in batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let traces = jaeger
            .traces(&http, "order-service")
            .await
            .unwrap_or_default();
        // The traces of the placing request: the gateway's and order-service's spans. (The
        // setup's calls never reach order-service; its background loops start traces of their
        // own, without the gateway.)
        let reached: Vec<BTreeSet<String>> = traces
            .iter()
            .map(services_of)
            .filter(|services| services.contains("gateway"))
            .collect();
        anyhow::ensure!(
            reached.len() <= 1,
            "one order became {} traces: {reached:?}",
            reached.len()
        );
        match reached.into_iter().next() {
            Some(reached)
                if IN_THE_TRACE.iter().all(|s| reached.contains(*s))
                    || Instant::now() > deadline =>
            {
                return Ok((order_id, reached));
            }
            None if Instant::now() > deadline => {
                anyhow::bail!("Jaeger holds no trace from the gateway to order-service after 60 s");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
