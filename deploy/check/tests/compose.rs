//! docker-compose.yml's networks, read the way compose reads them, against the flow table
//! (`support::flows`, the one tests/chart.rs checks the NetworkPolicies against). A compose
//! network isolates by host, not by port: two containers on one network reach each other's every
//! port. So the check is on pairs of containers: two share a network exactly when the table has
//! a flow between them, in either direction, on any port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;
use support::{
    SERVICES, compose, compose_env,
    flows::{compose_observability_flows, documented_flows},
    read,
};

/// The override files the repository starts compose with (deploy/podman/compose-test.sh); each
/// is read on top of docker-compose.yml, as `docker compose -f ... -f ...` merges them.
const OVERRIDES: [&str; 1] = ["deploy/podman/compose.override.yml"];

type Pair = (String, String);

fn pair(a: &str, b: &str) -> Pair {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// The networks each container is attached to: its `networks` (a list or a map), or compose's
/// `default` network when it names none. An override's networks are added to the file's (compose
/// merges the two by network name).
fn networks(files: &[&Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut attached: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        for (name, service) in file["services"].as_mapping().into_iter().flatten() {
            let name = name.as_str().unwrap().to_owned();
            let named: Vec<String> = match &service["networks"] {
                Value::Sequence(list) => list
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
                    .collect(),
                Value::Mapping(map) => map.keys().map(|n| n.as_str().unwrap().to_owned()).collect(),
                _ => Vec::new(),
            };
            attached.entry(name).or_default().extend(named);
        }
    }
    for names in attached.values_mut() {
        if names.is_empty() {
            names.insert("default".to_owned());
        }
    }
    attached
}

/// Every pair of containers that share a network, with the networks they share.
fn shared(attached: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<Pair, Vec<String>> {
    let mut pairs = BTreeMap::new();
    for (a, of_a) in attached {
        for (b, of_b) in attached.iter().filter(|(b, _)| a < *b) {
            let common: Vec<String> = of_a.intersection(of_b).cloned().collect();
            if !common.is_empty() {
                pairs.insert(pair(a, b), common);
            }
        }
    }
    pairs
}

/// The table's flows between compose's containers, as pairs: the chart's development flows
/// (the chart-only pods, its smoke test and seed hook, have no container here) and compose's
/// own observability.
fn documented_pairs(containers: &BTreeSet<String>) -> BTreeSet<Pair> {
    documented_flows(true)
        .iter()
        .chain(&compose_observability_flows())
        .filter_map(|flow| {
            let (from, to) = flow.split_once(" -> ").unwrap();
            let (to, _port) = to.split_once(':').unwrap();
            (containers.contains(from) && containers.contains(to)).then(|| pair(from, to))
        })
        .collect()
}

/// What is wrong with the networks of docker-compose.yml `text` with `overrides` on top: pairs
/// that share a network but have no flow, and flows whose two ends share none.
fn network_problems(text: &str, overrides: &[String]) -> Vec<String> {
    let file = compose(text);
    let overrides: Vec<Value> = overrides.iter().map(|o| compose(o)).collect();
    let files: Vec<&Value> = std::iter::once(&file).chain(&overrides).collect();
    let attached = networks(&files);
    let declared: BTreeSet<String> = files
        .iter()
        .flat_map(|f| f["networks"].as_mapping().into_iter().flatten())
        .map(|(name, _)| name.as_str().unwrap().to_owned())
        .chain(["default".to_owned()])
        .collect();
    let mut problems = Vec::new();
    for (container, names) in &attached {
        for name in names.difference(&declared) {
            problems.push(format!("{container} is on {name}, which no file declares"));
        }
    }
    let shared = shared(&attached);
    let containers: BTreeSet<String> = attached.keys().cloned().collect();
    let documented = documented_pairs(&containers);
    for ((a, b), common) in &shared {
        if !documented.contains(&pair(a, b)) {
            problems.push(format!(
                "{a} and {b} share {common:?} but no flow connects them"
            ));
        }
    }
    for (a, b) in &documented {
        if !shared.contains_key(&pair(a, b)) {
            problems.push(format!("{a} and {b} have a flow but share no network"));
        }
    }
    problems
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Compose's networks connect exactly the documented flows, as docker-compose.yml alone and with
/// each override the repository runs it with: every service reaches its own store, the broker,
/// the peers it calls, user-service when it fetches keys or tokens, Jaeger and Prometheus, and
/// nothing else (no verifier on a store it does not own, no store next to another; user-service's
/// HTTP port only from the gateway and the five services that fetch keys or tokens).
#[test]
fn compose_networks_connect_exactly_the_documented_flows() {
    assert_no_problems(network_problems(&read("docker-compose.yml"), &[]));
    for over in OVERRIDES {
        assert_no_problems(network_problems(&read("docker-compose.yml"), &[read(over)]));
    }
}

/// The flow table holds what compose configures: every compose host a service's environment
/// names in a URL (or `SMTP_HOST`), every target Prometheus scrapes and every Grafana datasource
/// is a documented flow (so a new URL cannot go unnoticed: it needs a flow, and the flow a
/// network).
#[test]
fn every_host_compose_configures_a_container_to_reach_is_a_documented_flow() {
    let file = compose(&read("docker-compose.yml"));
    let containers: BTreeSet<String> = file["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let mut configured = BTreeSet::new();
    for service in SERVICES {
        for (name, value) in compose_env(&file, service) {
            let host = if name == "SMTP_HOST" {
                Some(value)
            } else {
                url::Url::parse(&value)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
            };
            if let Some(host) = host.filter(|h| containers.contains(h)) {
                configured.insert((service.to_owned(), host));
            }
        }
    }
    let prometheus: Value =
        serde_yaml_ng::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        for target in job["static_configs"][0]["targets"].as_sequence().unwrap() {
            let (host, _) = target.as_str().unwrap().split_once(':').unwrap();
            configured.insert(("prometheus".to_owned(), host.to_owned()));
        }
    }
    let grafana: Value = serde_yaml_ng::from_str(&read(
        "deploy/grafana/provisioning/datasources/datasources.yml",
    ))
    .unwrap();
    for source in grafana["datasources"].as_sequence().unwrap() {
        let url = url::Url::parse(source["url"].as_str().unwrap()).unwrap();
        configured.insert(("grafana".to_owned(), url.host_str().unwrap().to_owned()));
    }
    assert!(configured.len() > 30, "too few to be all: {configured:?}");
    let documented = documented_pairs(&containers);
    let undocumented: Vec<&(String, String)> = configured
        .iter()
        .filter(|(from, to)| !documented.contains(&pair(from, to)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "configured but no flow: {undocumented:?}"
    );
}

/// The check catches a container put back on a network it does not belong to, one taken off a
/// network it needs, a network no file declares, and an override that adds a network to a container.
#[test]
fn the_check_reports_an_extra_a_missing_and_an_undeclared_network() {
    let original = read("docker-compose.yml");
    assert_no_problems(network_problems(&original, &[]));

    // payment-service also on inventory's lane: it would reach inventory-service.
    let extra = original.replacen(
        "    networks: [payment, payment-traces, payment-metrics, payment-store]",
        "    networks: [payment, payment-traces, payment-metrics, payment-store, inventory]",
        1,
    );
    assert_ne!(extra, original, "the edit must change the copy");
    let problems = network_problems(&extra, &[]).join("\n");
    assert!(
        problems.contains("inventory-service and payment-service share [\"inventory\"]"),
        "{problems}"
    );

    // notification-service without Mailpit.
    let missing = original.replacen("notification-store, mail]", "notification-store]", 1);
    assert_ne!(missing, original, "the edit must change the copy");
    let problems = network_problems(&missing, &[]).join("\n");
    assert!(
        problems.contains("mailpit and notification-service have a flow but share no network"),
        "{problems}"
    );

    // A network compose would refuse: declared nowhere.
    let undeclared =
        original.replacen("    networks: [cache]", "    networks: [cache, backend]", 1);
    assert_ne!(undeclared, original, "the edit must change the copy");
    let problems = network_problems(&undeclared, &[]).join("\n");
    assert!(
        problems.contains("redis is on backend, which no file declares"),
        "{problems}"
    );

    // An override that joins PostgreSQL to the gateway's cache network.
    let over = format!(
        "{}\nnetworks:\n  cache:\n",
        read(OVERRIDES[0]).replacen("  postgres:\n", "  postgres:\n    networks: [cache]\n", 1)
    );
    let problems = network_problems(&original, &[over]).join("\n");
    assert!(
        problems.contains("gateway and postgres share [\"cache\"]"),
        "{problems}"
    );
}
