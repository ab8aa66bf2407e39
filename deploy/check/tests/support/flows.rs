//! The flow table: who may open a connection to whom. The Helm chart's NetworkPolicies
//! (tests/chart.rs) and docker-compose.yml's networks (tests/compose.rs) are both checked
//! against it, pair by pair.

use std::collections::BTreeSet;

use super::SERVICES;

/// The documented flows between the Helm release's pods (deploy/helm/shop/README.md "Network
/// policies"), as "from -> to:port" with the port's name: in development (stores, broker and
/// Mailpit in the chart, keys and tokens straight from user-service) or production (the stores
/// outside, keys and tokens through the https proxy, neither of them a pod of the release).
pub fn documented_flows(development: bool) -> BTreeSet<String> {
    let mut flows = Vec::new();
    for service in SERVICES.iter().filter(|s| **s != "gateway") {
        flows.push(format!("gateway -> {service}:http"));
    }
    for service in ["catalog-service", "inventory-service", "payment-service"] {
        flows.push(format!("order-service -> {service}:grpc"));
    }
    flows.push("notification-service -> user-service:grpc".to_owned());
    for service in SERVICES {
        flows.push(format!("smoke-test -> {service}:ops"));
    }
    if development {
        // Keys and tokens over plain HTTP, pod to pod (production: through the https proxy).
        for service in [
            "catalog-service",
            "inventory-service",
            "order-service",
            "payment-service",
            "notification-service",
        ] {
            flows.push(format!("{service} -> user-service:http"));
        }
        for service in [
            "user-service",
            "inventory-service",
            "order-service",
            "payment-service",
        ] {
            flows.push(format!("{service} -> postgres:postgres"));
        }
        for service in ["catalog-service", "notification-service", "catalog-seed"] {
            flows.push(format!("{service} -> mongodb:mongodb"));
        }
        flows.push("gateway -> redis:redis".to_owned());
        for service in SERVICES.iter().chain(&["catalog-seed"]) {
            flows.push(format!("{service} -> rabbitmq:amqp"));
        }
        flows.push("notification-service -> mailpit:smtp".to_owned());
        flows.push("catalog-seed -> inventory-service:ops".to_owned());
    }
    flows.into_iter().collect()
}

/// The flows compose has on top of the chart's development ones: what the chart leaves to the
/// cluster's own monitoring (`networkPolicy.metricsFrom`, `networkPolicy.extraEgress` for an
/// OTLP collector), compose runs itself. Prometheus scrapes every service's operational port
/// (deploy/prometheus/prometheus.yml), every service sends its traces to Jaeger
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`), Grafana reads both (deploy/grafana/provisioning).
pub fn compose_observability_flows() -> BTreeSet<String> {
    let mut flows = Vec::new();
    for service in SERVICES {
        flows.push(format!("prometheus -> {service}:ops"));
        flows.push(format!("{service} -> jaeger:otlp"));
    }
    flows.push("grafana -> prometheus:http".to_owned());
    flows.push("grafana -> jaeger:query".to_owned());
    flows.into_iter().collect()
}
