//! The public API as a stranger meets it: only through its OpenAPI document.
//!
//! * **Schemathesis** reads `/api/v1/openapi.json` from the running gateway and sends what the
//!   document allows and what it forbids, in all its phases (examples, coverage, fuzzing,
//!   stateful along the document's `links`) with all its checks, once as a customer and once as
//!   an administrator. Every answer must be one the document lists, in the shape it declares,
//!   and none may be a server error. The budget is small here (`FUZZ_MAX_EXAMPLES`, default 8
//!   cases per operation and phase); `make fuzz` runs the long campaign.
//! * **A generated client**: openapi-python-client turns the document into a Python package
//!   (in a scratch directory, never committed), and `e2e/python/journey.py` shops with it:
//!   register, sign in, browse, order, poll to `CONFIRMED`, read the payment and the email.
//!
//! The tools are pinned and installed into a cached venv by `scripts/openapi-tools.sh`. Rate
//! limits stay on: each run is a client of its own (`X-Forwarded-For`, trusted by the
//! in-process gateway, see the `e2e` crate docs), and a 429 is an answer the document lists.

#![allow(clippy::unwrap_used)] // a failed unwrap here is a failed test

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use e2e::{APPROVING_CARD, client, unique};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cached venv with Schemathesis and openapi-python-client (installed on first use).
fn venv() -> PathBuf {
    let output = Command::new(root().join("scripts/openapi-tools.sh"))
        .arg("venv")
        .output()
        .expect("scripts/openapi-tools.sh runs");
    assert!(
        output.status.success(),
        "scripts/openapi-tools.sh venv: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Where the reports go: `$CARGO_TARGET_DIR/fuzz/<name>` (or `target/fuzz/<name>`).
fn report_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let dir = target.join("fuzz").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs Schemathesis against the system with `token`; panics with its report unless it found
/// nothing.
async fn schemathesis(who: &str, token: &str, max_examples: u32, seconds: Option<u32>) {
    let client = client().await;
    let venv = venv();
    let reports = report_dir(who);
    let mut command = Command::new(venv.join("bin/schemathesis"));
    command
        .arg("--config-file")
        .arg(root().join("e2e/schemathesis.toml"))
        .arg("run")
        .arg(client.url("/api/v1/openapi.json"))
        .args(["--url", &client.system.base_url])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--checks", "all"])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--seed", "20261206"])
        // One worker: Hypothesis parses lambdas with `ast` while describing strategies, which is
        // not thread-safe on Python 3.11 ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--header", &format!("X-Forwarded-For: {}", client.address)])
        .args(["--report", "junit,ndjson"])
        .arg("--report-dir")
        .arg(&reports)
        .args(["--output-truncate", "false"])
        // Its cache (`.schemathesis/`) goes next to the reports, not into the source tree.
        .current_dir(&reports)
        .env("NO_COLOR", "1");
    if let Some(seconds) = seconds {
        command.args(["--max-time", &seconds.to_string()]);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    std::fs::write(reports.join("output.txt"), stdout.as_bytes()).unwrap();
    assert!(
        output.status.success(),
        "Schemathesis ({who}) found problems (report in {}):\n{stdout}\n{}",
        reports.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The documented test setting of the fuzz runs: per-user and per-address budgets high enough
/// for a fuzzer's hundreds of requests a second (at the defaults, 600 and 300 a minute, nearly
/// every answer would be 429 and nothing behind the gateway would be tested). The credential
/// routes keep their production budget of 10 a minute: their 429 is part of what is checked.
fn fuzzing_limits() {
    e2e::with_gateway_settings(vec![
        ("RATE_LIMIT_USER", "1000000".to_owned()),
        ("RATE_LIMIT_ADDRESS", "1000000".to_owned()),
    ]);
}

fn budget() -> u32 {
    std::env::var("FUZZ_MAX_EXAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8)
}

#[tokio::test]
async fn schemathesis_finds_no_failure_and_no_server_error_as_a_customer() {
    fuzzing_limits();
    let client = client().await;
    let customer = client.customer("Fuzz Customer").await;
    // A product in stock, so orders the fuzzer places can be priced.
    client.product(1999, 1_000).await;
    schemathesis("customer", &customer.access_token, budget(), None).await;
}

#[tokio::test]
async fn schemathesis_finds_no_failure_and_no_server_error_as_an_admin() {
    fuzzing_limits();
    let client = client().await;
    let admin = client.admin().await;
    schemathesis("admin", &admin, budget(), None).await;
}

/// `make fuzz`: the long campaign (`FUZZ_SECONDS`, default 600, per identity), report in
/// `target/fuzz/`.
#[tokio::test]
#[ignore = "the long campaign: make fuzz"]
async fn fuzz_campaign() {
    let seconds = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(600);
    fuzzing_limits();
    let client = client().await;
    let customer = client.customer("Fuzz Campaign").await;
    client.product(1999, 1_000_000).await;
    let admin = client.admin().await;
    schemathesis(
        "campaign-customer",
        &customer.access_token,
        1_000,
        Some(seconds),
    )
    .await;
    schemathesis("campaign-admin", &admin, 1_000, Some(seconds)).await;
}

#[tokio::test]
async fn a_client_generated_from_the_document_shops_from_registration_to_the_email() {
    fuzzing_limits();
    let client = client().await;
    let product = client.product(2500, 10).await;
    let venv = venv();
    let scratch = report_dir(&format!("client-{}", unique()));
    let document = client
        .get("/api/v1/openapi.json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(scratch.join("openapi.json"), document).unwrap();
    let generated = Command::new(venv.join("bin/openapi-python-client"))
        .current_dir(&scratch)
        .args(["generate", "--path", "openapi.json", "--meta", "none"])
        .arg("--config")
        .arg(root().join("e2e/python/client-config.yaml"))
        .args(["--output-path", "shop_client", "--overwrite"])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "openapi-python-client: {}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let system = client.system;
    let mail = match &system.mail {
        e2e::MailCatcher::MailDev(url) => url.clone(),
        e2e::MailCatcher::Mailpit(_) => return, // the journey reads MailDev's API
    };
    let journey = Command::new(venv.join("bin/python"))
        .arg(root().join("e2e/python/journey.py"))
        .env("PYTHONPATH", &scratch)
        .env("SHOP_BASE_URL", &system.base_url)
        .env("SHOP_MAILDEV_URL", mail)
        .env("SHOP_FORWARDED_FOR", &client.address)
        .env("SHOP_PRODUCT_CATEGORY", &product.category)
        .env("SHOP_CARD", APPROVING_CARD)
        .output()
        .unwrap();
    assert!(
        journey.status.success(),
        "the generated client's journey failed:\n{}{}",
        String::from_utf8_lossy(&journey.stdout),
        String::from_utf8_lossy(&journey.stderr)
    );
    std::fs::remove_dir_all(&scratch).ok();
}
