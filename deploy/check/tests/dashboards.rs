//! Every metric a Grafana dashboard in deploy/helm/shop/files/grafana/dashboards or an alert
//! rule in deploy/helm/shop/files/prometheus/alerts.yml queries is one the system exports (an
//! alert on a metric nobody exports never fires, silently). Both live in the chart, which ships
//! them (PrometheusRule, dashboard ConfigMaps); compose mounts the same files. The seven services boot in this process (as e2e does), each against its own
//! stores and all on one RabbitMQ vhost so events flow between them; one customer then places
//! an order that is confirmed and one that is declined, through the gateway, so the request,
//! saga, payment, stock, outbox and consumer figures exist; then `/metrics` is scraped and each
//! dashboard query's metric names are looked up in it.
//!
//! Needs the local stores (`deploy/local/stack.sh infra-up`, `.local/test.env`), like every
//! integration test here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod support;

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};
use shop_testkit::{TestApp, eventually, isolation, spawn_with};

/// Series Prometheus makes itself for every target; no service exports them.
const SYNTHESIZED_BY_PROMETHEUS: [&str; 1] = ["up"];

const ORDER_SECRET: &str = "deploy-check-order-service-secret-0123456789";
const NOTIFICATION_SECRET: &str = "deploy-check-notification-service-secret-0123";

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_a_dashboard_or_an_alert_rule_queries_is_exported_by_the_running_system() {
    let mut wanted = dashboard_metrics();
    assert!(wanted.len() >= 20, "the dashboards query only {wanted:?}");
    let alerts = alert_metrics();
    assert!(
        alerts.contains("payment_unsettled_authorizations")
            && alerts.contains("order_sagas_parked"),
        "the money alerts are gone: {alerts:?}"
    );
    wanted.extend(alerts);

    let system = System::boot().await;
    system.place_orders().await;

    // Gauges are refreshed by background loops (outbox backlog, sagas in flight, pending
    // emails): wait, bounded, until every wanted series is there, then report what is not.
    let gateway = system.gateway.clone();
    let _ = eventually(Duration::from_secs(30), || {
        let wanted = wanted.clone();
        let gateway = gateway.clone();
        async move { missing(&wanted, &exported(&gateway).await).is_empty() }
    })
    .await;
    let absent = missing(&wanted, &exported(&system.gateway).await);
    assert!(
        absent.is_empty(),
        "dashboards or alert rules query metrics no service exports: {absent:?}"
    );
}

fn missing(wanted: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    wanted
        .iter()
        .filter(|name| {
            !exported.contains(*name) && !SYNTHESIZED_BY_PROMETHEUS.contains(&name.as_str())
        })
        .cloned()
        .collect()
}

/// The sample names on `/metrics` (one process-wide registry: every service's series).
async fn exported(gateway: &str) -> BTreeSet<String> {
    let text = reqwest::get(format!("{gateway}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

// --------------------------------------------------------------------------- the dashboards

/// Every metric name the dashboards query (panel targets and template variables).
fn dashboard_metrics() -> BTreeSet<String> {
    let dir = support::root().join("deploy/helm/shop/files/grafana/dashboards");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let mut queries = Vec::new();
        collect_queries(&dashboard, &mut queries);
        assert!(!queries.is_empty(), "{} has no queries", path.display());
        for query in queries {
            let found = metric_names(&query);
            assert!(
                !found.is_empty(),
                "no metric in {query:?} ({})",
                path.display()
            );
            names.extend(found);
        }
    }
    names
}

/// Every metric name the alert rules shipped with the deployment use.
fn alert_metrics() -> BTreeSet<String> {
    let path = support::root().join("deploy/helm/shop/files/prometheus/alerts.yml");
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("an expr");
            let found = metric_names(expr);
            assert!(
                !found.is_empty(),
                "no metric in {expr:?} ({})",
                path.display()
            );
            names.extend(found);
        }
    }
    names
}

/// `expr` of every target and `query` of every template variable, anywhere in the document.
fn collect_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    ("query", Value::String(query)) => out.push(query.clone()),
                    _ => collect_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_queries(item, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression (or a Grafana `label_values(metric, label)`).
///
/// Not a PromQL parser, but enough for what dashboards write: strings, label matchers
/// `{...}`, ranges `[...]` and grouping clauses `by (...)` are removed; what remains is
/// function names (followed by `(`), keywords, numbers and metric names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    if let Some(args) = expr.trim().strip_prefix("label_values(") {
        let first = args.split([',', ')']).next().unwrap_or_default();
        return metric_names(first);
    }
    let text = strip_grouping(&strip_enclosed(&strip_strings(expr)));
    let bytes: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let preceded_by_digit = start > 0 && bytes[start - 1].is_ascii_digit();
            let called = bytes[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            const KEYWORDS: [&str; 8] =
                ["and", "or", "unless", "bool", "offset", "inf", "nan", "e"];
            if !called && !preceded_by_digit && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn strip_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            let quote = c;
            while let Some(next) = chars.next() {
                if next == '\\' {
                    chars.next();
                } else if next == quote {
                    break;
                }
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

fn strip_enclosed(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Removes `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_left (...)`,
/// `group_right (...)`: label lists, not metrics.
fn strip_grouping(text: &str) -> String {
    let mut out = text.to_owned();
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        while let Some(at) = find_word(&out, keyword) {
            let after = &out[at + keyword.len()..];
            let Some(open) = after
                .find('(')
                .filter(|open| after[..*open].trim().is_empty())
            else {
                out.replace_range(at..at + keyword.len(), " ");
                continue;
            };
            let close = after[open..]
                .find(')')
                .map_or(after.len(), |c| open + c + 1);
            out.replace_range(at..at + keyword.len() + close, " ");
        }
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn metric_names_are_found_in_the_promql_dashboards_write() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(http_server_request_duration_seconds_bucket{job="$job",status=~"5.."}[$__rate_interval])))"#
        ),
        ["http_server_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names(r#"sum(rate(orders_total{outcome="confirmed"}[5m])) / sum(rate(orders_total[5m]))"#),
        ["orders_total"]
    );
    assert_eq!(
        names(
            "max by (operation) (payment_provider_call_seconds{quantile=\"0.99\"}) and on (job) up"
        ),
        ["payment_provider_call_seconds", "up"]
    );
    assert_eq!(
        names("label_values(http_server_requests_total, job)"),
        ["http_server_requests_total"]
    );
    assert_eq!(
        names("1e3 * sum(messaging_outbox_backlog)"),
        ["messaging_outbox_backlog"]
    );
}

#[test]
fn a_dashboard_metric_that_nothing_exports_is_reported() {
    let wanted: BTreeSet<String> = metric_names("sum(rate(orders_totl[5m])) + sum(up)");
    let exported: BTreeSet<String> = ["orders_total".to_owned()].into();
    assert_eq!(missing(&wanted, &exported), ["orders_totl"]);
}

// ------------------------------------------------------------------------------- the system

struct System {
    gateway: String,
    /// catalog-service itself, to tell a slow seed from a stale gateway cache on failure.
    catalog: String,
    _apps: Vec<TestApp>,
}

impl System {
    /// The seven services on one vhost, started in deploy/local/stack.sh's order, each ready
    /// with its consumers attached before the next (catalog's demo seed publishes
    /// ProductCreated, which inventory must already consume).
    async fn boot() -> Self {
        let broker = isolation::rabbitmq_vhost().await.unwrap();
        let amqp = ("AMQP_URL", broker);
        let user = spawn_with::<user_service::UserService>([
            amqp.clone(),
            (
                "SERVICE_CLIENTS",
                format!("order-service={ORDER_SECRET},notification-service={NOTIFICATION_SECRET}"),
            ),
        ])
        .await
        .unwrap();
        let jwks = ("AUTH_JWKS_URL", user.url("/.well-known/jwks.json"));
        let token_url = ("SERVICE_TOKEN_URL", user.url("/internal/v1/service-token"));
        let notification = spawn_with::<notification_service::NotificationService>([
            amqp.clone(),
            jwks.clone(),
            token_url.clone(),
            ("SERVICE_SECRET", NOTIFICATION_SECRET.to_owned()),
            ("USER_GRPC_URL", user.grpc_url()),
        ])
        .await
        .unwrap();
        consuming(&notification).await;
        let inventory =
            spawn_with::<inventory_service::InventoryService>([amqp.clone(), jwks.clone()])
                .await
                .unwrap();
        consuming(&inventory).await;
        let catalog = spawn_with::<catalog_service::CatalogService>([
            amqp.clone(),
            jwks.clone(),
            ("CATALOG_SEED_DEMO", "true".to_owned()),
        ])
        .await
        .unwrap();
        consuming(&catalog).await;
        let payment = spawn_with::<payment_service::PaymentService>([amqp.clone(), jwks.clone()])
            .await
            .unwrap();
        let order = spawn_with::<order_service::OrderService>([
            amqp.clone(),
            jwks.clone(),
            token_url,
            ("SERVICE_SECRET", ORDER_SECRET.to_owned()),
            ("CATALOG_GRPC_URL", catalog.grpc_url()),
            ("INVENTORY_GRPC_URL", inventory.grpc_url()),
            ("PAYMENT_GRPC_URL", payment.grpc_url()),
        ])
        .await
        .unwrap();
        let base = |app: &TestApp| format!("http://{}", app.http_addr);
        let gateway = spawn_with::<gateway::Gateway>([
            amqp,
            jwks,
            ("USER_SERVICE_URL", base(&user)),
            ("CATALOG_SERVICE_URL", base(&catalog)),
            ("INVENTORY_SERVICE_URL", base(&inventory)),
            ("ORDER_SERVICE_URL", base(&order)),
            ("PAYMENT_SERVICE_URL", base(&payment)),
            ("NOTIFICATION_SERVICE_URL", base(&notification)),
        ])
        .await
        .unwrap();
        consuming(&gateway).await;
        Self {
            gateway: base(&gateway),
            catalog: base(&catalog),
            _apps: vec![
                gateway,
                order,
                payment,
                catalog,
                inventory,
                notification,
                user,
            ],
        }
    }

    /// One customer, one confirmed order and one declined one, through the gateway.
    async fn place_orders(&self) {
        let http = reqwest::Client::new();
        let api = |path: &str| format!("{}/api/v1{path}", self.gateway);

        // A demo product inventory has stock for (its stock row comes from ProductCreated,
        // and `in_stock` from inventory's answer: catalog → broker → inventory → broker →
        // catalog, on FerretDB, while the whole suite shares two cores; hence the patience).
        let in_stock = |base: String| {
            let http = http.clone();
            async move {
                let url = format!("{base}/api/v1/products?limit=50");
                let page: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                page["items"]
                    .as_array()?
                    .iter()
                    .find(|p| p["in_stock"] == true)
                    .and_then(|p| p["id"].as_str())
                    .map(str::to_owned)
            }
        };
        let seeded = eventually(Duration::from_secs(90), || async {
            in_stock(self.gateway.clone()).await.is_some()
        })
        .await;
        if seeded.is_err() {
            // Say which link failed: catalog itself, or the gateway's (cached) view of it.
            let direct = in_stock(self.catalog.clone()).await;
            panic!(
                "no demo product in stock through the gateway within 90 s; catalog itself says {}",
                direct.map_or("none is in stock either".into(), |id| format!("{id} is"))
            );
        }
        let product = in_stock(self.gateway.clone()).await.unwrap();
        // Read twice: the second read is served from the gateway's cache.
        for _ in 0..2 {
            http.get(api(&format!("/products/{product}")))
                .send()
                .await
                .unwrap();
        }

        let email = format!("metrics-{}@example.com", uuid::Uuid::new_v4());
        let registered = http
            .post(api("/auth/register"))
            .json(
                &json!({ "email": email, "password": "a long enough password", "name": "Metrics" }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201, "{:?}", registered.text().await);
        let login: Value = http
            .post(api("/auth/login"))
            .json(&json!({ "email": email, "password": "a long enough password" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"].as_str().expect("a token").to_owned();

        for (card, expected) in [
            ("4242424242424242", "CONFIRMED"),
            ("4000000000000002", "CANCELLED"),
        ] {
            let placed = http
                .post(api("/orders"))
                .bearer_auth(&token)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&json!({
                    "items": [{ "product_id": product, "quantity": 1 }],
                    "payment": { "card_number": card, "expiry": "12/39", "cvc": "123" },
                    "shipping_address": { "name": "Metrics", "line1": "1 Main St", "city": "Berlin",
                                          "postal_code": "10115", "country": "DE" },
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(placed.status(), 202, "{:?}", placed.text().await);
            let id = placed.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            eventually(Duration::from_secs(30), || {
                let (http, url, token) =
                    (http.clone(), api(&format!("/orders/{id}")), token.clone());
                async move {
                    let Ok(response) = http.get(url).bearer_auth(token).send().await else {
                        return false;
                    };
                    response.json::<Value>().await.unwrap_or_default()["status"] == expected
                }
            })
            .await
            .unwrap_or_else(|err| {
                panic!("the order paid with {card} did not end {expected}: {err}")
            });
        }
    }
}

/// Waits until every consumer `app` reports is attached to its queue.
async fn consuming(app: &TestApp) {
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), || async {
        let Ok(response) = http.get(app.url("/readyz")).send().await else {
            return false;
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["checks"].as_object().is_some_and(|checks| {
            checks
                .iter()
                .filter(|(name, _)| name.starts_with("consumer:"))
                .all(|(_, state)| state == "up")
        })
    })
    .await
    .unwrap_or_else(|err| panic!("{} has detached consumers: {err}", app.http_addr));
}
