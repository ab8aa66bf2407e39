//! The Helm chart's behaviour, read from what it renders (`helm template`), one test per claim
//! of its README: headless Services for the gRPC servers, migrations as a subcommand, MongoDB
//! ready only after its init, the seed hook bounded within the documented `--timeout`, spread
//! per component, per-store toggles, `global` allowed, checksums that roll pods, HPA behavior,
//! the alert rules and dashboards shipped, and NetworkPolicies that allow exactly the documented
//! flows (production's https path to user-service included).
//!
//! They need helm (`#[ignore]`d in a plain `cargo test`; `make deploy-check` installs helm and
//! runs them, after kubeconform has validated the same renders against the Kubernetes schemas).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_yaml_ng::Value;
use support::{
    SERVICES, container_env, copy_dir, flows::documented_flows, helm_render, helm_template, object,
    read, root,
};

const PRODUCTION: [&str; 2] = ["-f", "deploy/helm/shop/ci/production-values.yaml"];
const STORES: [&str; 5] = ["postgres", "mongodb", "redis", "rabbitmq", "mailpit"];

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects
        .iter()
        .filter(move |o| o["kind"].as_str() == Some(kind))
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn component(labels: &Value) -> &str {
    labels["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or_default()
}

fn deployment<'a>(objects: &'a [Value], service: &str) -> &'a Value {
    object(objects, "Deployment", &format!("shop-{service}"))
        .unwrap_or_else(|| panic!("no Deployment shop-{service}"))
}

fn pod(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn main_container<'a>(objects: &'a [Value], service: &str) -> &'a Value {
    pod(deployment(objects, service))["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(service))
        .unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .map(support::scalar)
        .collect()
}

fn annotations(workload: &Value) -> BTreeMap<String, String> {
    workload["spec"]["template"]["metadata"]["annotations"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (support::scalar(k), support::scalar(v)))
        .collect()
}

/// A scratch directory under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("deploy-check-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chart_dir() -> PathBuf {
    root().join("deploy/helm/shop")
}

/// A copy of the chart with `edit` applied to one of its files.
fn edited_chart(scratch: &Path, file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let copy = scratch.join(format!("chart-{}", uuid::Uuid::new_v4()));
    copy_dir(&chart_dir(), &copy);
    let path = copy.join(file);
    let before = std::fs::read_to_string(&path).unwrap();
    let after = edit(&before);
    assert_ne!(before, after, "the edit of {file} changed nothing");
    std::fs::write(&path, after).unwrap();
    copy
}

// ------------------------------------------------------------------------------------ 1. gRPC

/// The four services another one calls over gRPC have headless Services (DNS answers every
/// ready pod, the client balances), under the names the `*_GRPC_URL`s use and the TLS
/// certificate carries, with each port equal to its container port (headless maps none).
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn grpc_servers_have_headless_services_under_the_names_their_urls_and_certificates_use() {
    let expected: BTreeSet<String> = [
        "shop-catalog-service",
        "shop-inventory-service",
        "shop-payment-service",
        "shop-user-service",
    ]
    .map(str::to_owned)
    .into();
    for (args, scheme) in [
        (vec![], "http"),
        (
            vec!["--set", "grpcTls.existingSecret=shop-grpc-tls"],
            "https",
        ),
    ] {
        let objects = helm_template(&args);
        let mut hosts = BTreeSet::new();
        for config in of_kind(&objects, "ConfigMap") {
            for (key, value) in config["data"].as_mapping().into_iter().flatten() {
                if support::scalar(key).ends_with("_GRPC_URL") {
                    let url = url::Url::parse(&support::scalar(value)).unwrap();
                    assert_eq!(url.scheme(), scheme, "{url}");
                    hosts.insert(url.host_str().unwrap().to_owned());
                }
            }
        }
        assert_eq!(hosts, expected, "the gRPC URLs name other Services");
        for host in &hosts {
            let service = object(&objects, "Service", host)
                .unwrap_or_else(|| panic!("no Service {host} for the gRPC URLs"));
            assert_eq!(
                service["spec"]["clusterIP"].as_str(),
                Some("None"),
                "Service {host} is not headless: one ClusterIP pins each caller pod's HTTP/2 \
                 connection to one server pod"
            );
            let container = main_container(&objects, host.trim_start_matches("shop-"));
            for port in service["spec"]["ports"].as_sequence().unwrap() {
                let target = support::scalar(&port["targetPort"]);
                let container_port = container["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|p| support::scalar(&p["name"]) == target)
                    .unwrap_or_else(|| panic!("{host}: no container port {target}"));
                assert_eq!(
                    port["port"], container_port["containerPort"],
                    "{host}: a headless Service's port must be its container port"
                );
            }
        }
        // The gateway keeps its virtual IP (the Ingress and port-forwards go through it).
        let gateway = object(&objects, "Service", "shop-gateway").unwrap();
        assert!(gateway["spec"].get("clusterIP").is_none());
    }
}

// ------------------------------------------------------------------------------ 2. migrations

/// Each PostgreSQL service's pod runs `<service> migrate` first, with its ConfigMap and
/// DATABASE_URL only (no other secret, no certificate); the others have no init container.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn migrations_run_as_the_migrate_subcommand_with_only_the_database_url() {
    for args in [vec![], PRODUCTION.to_vec()] {
        let objects = helm_template(&args);
        for service in SERVICES {
            let pod = pod(deployment(&objects, service));
            let inits = pod["initContainers"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            let postgres = [
                "user-service",
                "inventory-service",
                "order-service",
                "payment-service",
            ]
            .contains(&service);
            if !postgres {
                assert!(inits.is_empty(), "{service} has init containers: {inits:?}");
                continue;
            }
            assert_eq!(inits.len(), 1, "{service}: one init container, migrate");
            let init = &inits[0];
            assert_eq!(
                strings(&init["command"]),
                [format!("/usr/local/bin/{service}"), "migrate".to_owned()],
                "{service}: the init container runs the migrate subcommand"
            );
            let secrets: Vec<String> = init["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|e| support::scalar(&e["valueFrom"]["secretKeyRef"]["key"]))
                .collect();
            assert_eq!(
                secrets,
                ["DATABASE_URL"],
                "{service}: secrets of the migration"
            );
            assert!(init.get("volumeMounts").is_some_and(|m| {
                !m.as_sequence()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == "grpc-tls")
            }));
            let (vars, _) = container_env(&objects, init);
            let (main, _) = container_env(&objects, main_container(&objects, service));
            assert!(vars.iter().all(|(k, v)| main.get(k) == Some(v)));
        }
    }
}

// ------------------------------------------------------------------------- 3. MongoDB readiness

/// The image runs its init scripts against a mongod bound to 127.0.0.1 only: readiness pings
/// the pod's own address, which only the real server (started after init) listens on.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn mongodb_is_ready_only_once_its_init_server_is_gone() {
    let objects = helm_template(&[]);
    let mongodb = object(&objects, "StatefulSet", "shop-mongodb").unwrap();
    let container = &pod(mongodb)["containers"][0];
    let probe = strings(&container["readinessProbe"]["exec"]["command"]).join(" ");
    assert!(
        probe.contains("--host \"$POD_IP\"") && probe.contains("ping"),
        "readiness must ping the pod's address: {probe}"
    );
    assert!(
        !probe.contains("localhost") && !probe.contains("127.0.0.1"),
        "{probe}"
    );
    let pod_ip = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP in the mongodb container");
    assert_eq!(
        pod_ip["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.podIP")
    );
}

// ------------------------------------------------------------------------------------- 4. seed

/// The minutes of the `--timeout` the README's install command gives helm.
fn documented_timeout_seconds() -> u64 {
    let readme = read("deploy/helm/shop/README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("helm install shop deploy/helm/shop") && l.contains("--timeout"))
        .expect("the README's install command gives --timeout");
    let minutes = line
        .split_once("--timeout ")
        .and_then(|(_, rest)| rest.split_once('m'))
        .map(|(n, _)| n.parse::<u64>().unwrap())
        .expect("--timeout <N>m");
    minutes * 60
}

/// helm waits for a hook up to its `--timeout`: the seed Job ends before the documented one,
/// retries included (activeDeadlineSeconds), and its two waits fit in that bound.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_seed_hook_ends_within_the_documented_helm_timeout() {
    let timeout = documented_timeout_seconds();
    assert!(
        read("deploy/helm/shop/templates/NOTES.txt")
            .contains(&format!("--timeout {}m", timeout / 60)),
        "NOTES.txt gives another --timeout than the README"
    );
    let objects = helm_template(&[]);
    let job = object(&objects, "Job", "shop-catalog-seed").unwrap();
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .expect("a deadline");
    assert!(
        deadline < timeout,
        "the seed may run {deadline} s, helm waits {timeout} s"
    );
    let retries = job["spec"]["backoffLimit"]
        .as_u64()
        .expect("a backoffLimit");
    assert!(retries <= 3);
    let command = strings(&pod(job)["containers"][0]["command"]);
    let at = command.iter().position(|a| a == "--timeout").unwrap();
    let wait: u64 = command[at + 1].parse().unwrap();
    assert!(
        2 * wait <= deadline,
        "shop-probe may wait twice {wait} s, beyond the Job's {deadline} s"
    );
}

// ----------------------------------------------------------------------------------- 5. spread

/// Every spread constraint and (anti-)affinity term of a service's pods selects that service's
/// pods only: one matching every pod of the release keeps services apart, not replicas.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn spread_and_affinity_select_the_pods_of_one_component() {
    for args in [vec![], PRODUCTION.to_vec()] {
        let objects = helm_template(&args);
        for service in SERVICES {
            let pod = pod(deployment(&objects, service));
            let mut selectors = Vec::new();
            let constraints = pod["topologySpreadConstraints"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            assert!(
                constraints
                    .iter()
                    .any(|c| c["topologyKey"] == "kubernetes.io/hostname"),
                "{service}: no spread over nodes ({args:?})"
            );
            selectors.extend(constraints.iter().map(|c| c["labelSelector"].clone()));
            for kind in ["podAntiAffinity", "podAffinity"] {
                let affinity = &pod["affinity"][kind];
                for term in
                    strings_or_terms(&affinity["requiredDuringSchedulingIgnoredDuringExecution"])
                {
                    selectors.push(term["labelSelector"].clone());
                }
                for term in
                    strings_or_terms(&affinity["preferredDuringSchedulingIgnoredDuringExecution"])
                {
                    selectors.push(term["podAffinityTerm"]["labelSelector"].clone());
                }
            }
            for selector in selectors {
                assert_eq!(
                    component(&selector["matchLabels"]),
                    service,
                    "{service}: a spread or affinity selector that is not its own ({args:?}): {selector:?}"
                );
                assert_eq!(
                    selector["matchLabels"]["app.kubernetes.io/instance"],
                    "shop"
                );
            }
        }
    }
}

fn strings_or_terms(value: &Value) -> Vec<Value> {
    value.as_sequence().cloned().unwrap_or_default()
}

// ------------------------------------------------------------------------------------ 6. stores

/// The host and port of URL-valued variable `key` of the development Secret of `service`.
fn secret_address(objects: &[Value], service: &str, key: &str) -> String {
    let secret = object(objects, "Secret", &format!("shop-{service}")).unwrap();
    let url = url::Url::parse(&support::scalar(&secret["stringData"][key])).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
}

/// Each store switches off alone: its objects go, the others stay, the generated Secrets of its
/// clients name `infrastructure.<store>.external` (or smtp.host for Mailpit), and the clients'
/// NetworkPolicies send that traffic to networkPolicy.externalStores instead of the pod.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn each_in_chart_store_switches_off_alone_and_its_clients_use_the_external_one() {
    let clients: BTreeMap<&str, (Vec<&str>, &str)> = BTreeMap::from([
        (
            "postgres",
            (
                vec![
                    "user-service",
                    "inventory-service",
                    "order-service",
                    "payment-service",
                ],
                "DATABASE_URL",
            ),
        ),
        (
            "mongodb",
            (
                vec!["catalog-service", "notification-service"],
                "MONGODB_URL",
            ),
        ),
        ("redis", (vec!["gateway"], "REDIS_URL")),
        ("rabbitmq", (SERVICES.to_vec(), "AMQP_URL")),
        ("mailpit", (vec!["notification-service"], "")),
    ]);
    for store in STORES {
        let off = format!("infrastructure.{store}.enabled=false");
        let external = if store == "mailpit" {
            "smtp.host=smtp.dev.internal".to_owned()
        } else {
            format!("infrastructure.{store}.external={store}.dev.internal")
        };
        let objects = helm_template(&["--set", &off, "--set", &external]);
        let labelled = |c: &str| {
            objects
                .iter()
                .any(|o| component(&o["metadata"]["labels"]) == c)
        };
        assert!(!labelled(store), "{store} is switched off but rendered");
        for other in STORES.iter().filter(|s| **s != store) {
            assert!(labelled(other), "switching {store} off removed {other}");
        }
        let (users, key) = &clients[store];
        for service in users {
            if !key.is_empty() {
                let port = match store {
                    "postgres" => 5432,
                    "mongodb" => 27017,
                    "redis" => 6379,
                    _ => 5672,
                };
                assert_eq!(
                    secret_address(&objects, service, key),
                    format!("{store}.dev.internal:{port}"),
                    "{service}'s {key}"
                );
            } else {
                let (vars, _) = container_env(&objects, main_container(&objects, service));
                assert_eq!(vars["SMTP_HOST"], "smtp.dev.internal");
            }
            let policy = object(&objects, "NetworkPolicy", &format!("shop-{service}")).unwrap();
            let egress = policy["spec"]["egress"].as_sequence().unwrap();
            assert!(
                !egress.iter().any(|rule| strings_or_terms(&rule["to"])
                    .iter()
                    .any(|peer| component(&peer["podSelector"]["matchLabels"]) == store)),
                "{service} may still reach the in-chart {store}"
            );
            assert!(
                egress.iter().any(|rule| strings_or_terms(&rule["to"])
                    .iter()
                    .any(|peer| peer.get("ipBlock").is_some())),
                "{service} may not reach the external {store} (networkPolicy.externalStores)"
            );
        }
    }
}

/// A store switched off with neither an address nor the services' own Secrets is refused by
/// name; with the Secrets it renders; Mailpit off needs a relay.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn a_store_switched_off_without_an_address_or_secrets_is_refused() {
    let refused = helm_render(
        &chart_dir(),
        &["--set", "infrastructure.postgres.enabled=false"],
    )
    .expect_err("postgres off, no address, no secrets");
    assert!(
        refused.contains("infrastructure.postgres.external is required"),
        "{refused}"
    );
    let mut args = vec![
        "--set".to_owned(),
        "infrastructure.postgres.enabled=false".to_owned(),
    ];
    for service in [
        "user-service",
        "inventory-service",
        "order-service",
        "payment-service",
    ] {
        args.push("--set".to_owned());
        args.push(format!("services.{service}.existingSecret=my-{service}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let objects = helm_template(&args);
    assert!(object(&objects, "StatefulSet", "shop-postgres").is_none());

    let refused = helm_render(
        &chart_dir(),
        &["--set", "infrastructure.mailpit.enabled=false"],
    )
    .expect_err("mailpit off, no relay");
    assert!(refused.contains("/smtp"), "{refused}");
}

/// Production refuses each in-chart store (values.schema.json).
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn production_refuses_every_in_chart_store() {
    for store in STORES {
        let on = format!("infrastructure.{store}.enabled=true");
        let mut args = PRODUCTION.to_vec();
        args.extend(["--set", &on]);
        let refused =
            helm_render(&chart_dir(), &args).expect_err("production with an in-chart store");
        assert!(
            refused.contains(&format!("/infrastructure/{store}/enabled")),
            "{store}: {refused}"
        );
    }
}

// ------------------------------------------------------------------------------------ 7. global

/// As a subchart: a parent chart with `global` values renders it (the schema allows `global`).
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_chart_renders_as_a_subchart_with_global_values() {
    helm_template(&["--set", "global.imageRegistry=registry.example.com"]);
    let scratch = Scratch::new();
    let parent = scratch.0.join("platform");
    copy_dir(&chart_dir(), &parent.join("charts/shop"));
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: registry.example.com\nshop:\n  logLevel: debug\n",
    )
    .unwrap();
    let objects = helm_render(&parent, &[]).unwrap_or_else(|err| panic!("as a subchart: {err}"));
    let config = object(&objects, "ConfigMap", "shop-order-service").unwrap();
    assert_eq!(config["data"]["RUST_LOG"], "debug");
}

// ---------------------------------------------------------------------------------- 8. checksums

/// Pods roll when what they read changes: the ConfigMap and the generated Secret (hashed as
/// rendered), an existingSecret and the gRPC TLS Secret (hashed as the cluster holds them,
/// through `lookup`). `helm template` has no cluster, so the lookup is replaced in a copy of the
/// chart by a Secret whose data the test chooses; the real chart under `helm template` omits
/// those two annotations (README).
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn pods_roll_when_their_config_an_existing_secret_or_the_grpc_certificate_changes() {
    let annotations_of = |objects: &[Value]| -> BTreeMap<String, BTreeMap<String, String>> {
        SERVICES
            .iter()
            .map(|s| ((*s).to_owned(), annotations(deployment(objects, s))))
            .collect()
    };
    // Development: config and generated Secret.
    let base = annotations_of(&helm_template(&[]));
    let debug = annotations_of(&helm_template(&["--set", "logLevel=debug"]));
    let moved = annotations_of(&helm_template(&[
        "--set",
        "infrastructure.rabbitmq.enabled=false",
        "--set",
        "infrastructure.rabbitmq.external=mq.dev.internal",
    ]));
    for service in SERVICES {
        assert_ne!(
            base[service]["checksum/config"],
            debug[service]["checksum/config"]
        );
        assert_ne!(
            base[service]["checksum/secret"],
            moved[service]["checksum/secret"]
        );
    }
    // Production under helm template: the existing Secrets are not visible.
    let unseen = annotations_of(&helm_template(&PRODUCTION));
    assert!(unseen.values().all(|a| !a.contains_key("checksum/secret")));

    // Production with the cluster's Secrets: a copy whose lookup answers `data`.
    let scratch = Scratch::new();
    let lookup = "lookup \"v1\" \"Secret\" .root.Release.Namespace .name";
    let with_data = |version: &str| {
        let chart = edited_chart(&scratch.0, "templates/_helpers.tpl", |text| {
            text.replace(
                lookup,
                &format!("dict \"data\" (dict \"key\" (printf \"%s-{version}\" .name))"),
            )
        });
        let objects = helm_render(&chart, &PRODUCTION).unwrap();
        annotations_of(&objects)
    };
    let first = with_data("v1");
    let second = with_data("v2");
    for service in SERVICES {
        for key in ["checksum/secret", "checksum/grpc-tls"] {
            let (a, b) = (first[service].get(key), second[service].get(key));
            assert!(a.is_some(), "{service}: no {key} annotation");
            assert_ne!(
                a, b,
                "{service}: {key} does not change with the Secret's data"
            );
        }
        assert_eq!(
            first[service]["checksum/config"],
            second[service]["checksum/config"]
        );
    }
}

// -------------------------------------------------------------------------------------- 9. HPA

/// Every HPA scales down slowly (a stabilization window, one pod at a time) and up in bounded
/// steps, instead of Kubernetes' defaults for an HPA without `behavior`.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn autoscalers_scale_up_in_bounded_steps_and_down_slowly() {
    let objects = helm_template(&PRODUCTION);
    let hpas: Vec<&Value> = of_kind(&objects, "HorizontalPodAutoscaler").collect();
    assert_eq!(hpas.len(), SERVICES.len());
    for hpa in hpas {
        let behavior = &hpa["spec"]["behavior"];
        let down = &behavior["scaleDown"];
        assert!(
            down["stabilizationWindowSeconds"].as_u64().unwrap_or(0) >= 60,
            "{}: no scale-down stabilization",
            name(hpa)
        );
        let policies = down["policies"].as_sequence().expect("scale-down policies");
        assert!(
            policies
                .iter()
                .all(|p| p["type"] == "Pods" && p["value"].as_u64() == Some(1)),
            "{}: scale down one pod at a time",
            name(hpa)
        );
        assert!(
            !behavior["scaleUp"]["policies"]
                .as_sequence()
                .expect("scale-up policies")
                .is_empty()
        );
    }
}

// ---------------------------------------------------------------------- 10. alerts and dashboards

/// One copy of the alert rules and dashboards: the chart's files, which compose mounts and the
/// chart ships (PrometheusRule; ConfigMaps for the Grafana sidecar) unchanged, when enabled.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_prometheus_rule_and_the_dashboard_config_maps_ship_the_files_compose_mounts() {
    let compose = read("docker-compose.yml");
    for mount in [
        "./deploy/helm/shop/files/prometheus/alerts.yml:/etc/prometheus/alerts.yml",
        "./deploy/helm/shop/files/grafana/dashboards:/var/lib/grafana/dashboards",
    ] {
        assert!(compose.contains(mount), "compose does not mount {mount}");
    }
    let defaults = helm_template(&[]);
    assert!(of_kind(&defaults, "PrometheusRule").next().is_none());

    let objects = helm_template(&PRODUCTION);
    let rules: Vec<&Value> = of_kind(&objects, "PrometheusRule").collect();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["metadata"]["labels"]["release"], "prometheus");
    let file: Value =
        serde_yaml_ng::from_str(&read("deploy/helm/shop/files/prometheus/alerts.yml")).unwrap();
    assert_eq!(
        rules[0]["spec"]["groups"], file["groups"],
        "the shipped rules differ"
    );
    let shipped = serde_yaml_ng::to_string(&rules[0]["spec"]).unwrap();
    for alert in [
        "PaymentsUnsettled",
        "OutboxLagging",
        "MessagesDeadLettered",
        "CircuitBreakerOpen",
        "HighErrorRate",
    ] {
        assert!(shipped.contains(&format!("alert: {alert}")), "no {alert}");
    }

    let dir = chart_dir().join("files/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let maps: Vec<&Value> = of_kind(&objects, "ConfigMap")
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(maps.len(), files.len(), "one ConfigMap per dashboard");
    for path in files {
        let file_name = path.file_name().unwrap().to_str().unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert!(
            maps.iter()
                .any(|m| m["data"][file_name].as_str() == Some(content.as_str())),
            "no labelled ConfigMap holds {file_name} unchanged"
        );
    }
}

// -------------------------------------------------------------------------- 11. network policies

/// A pod of the render: its labels and container ports (name -> number).
struct Pod {
    labels: Value,
    ports: BTreeMap<String, u64>,
}

fn pods(objects: &[Value]) -> BTreeMap<String, Pod> {
    let mut pods = BTreeMap::new();
    for o in objects {
        let (labels, spec) = match o["kind"].as_str() {
            Some("Deployment" | "StatefulSet" | "Job") => {
                (o["spec"]["template"]["metadata"]["labels"].clone(), pod(o))
            }
            Some("Pod") => (o["metadata"]["labels"].clone(), &o["spec"]),
            _ => continue,
        };
        let mut ports = BTreeMap::new();
        for container in spec["containers"].as_sequence().into_iter().flatten() {
            for port in container["ports"].as_sequence().into_iter().flatten() {
                ports.insert(
                    support::scalar(&port["name"]),
                    port["containerPort"].as_u64().unwrap(),
                );
            }
        }
        pods.insert(component(&labels).to_owned(), Pod { labels, ports });
    }
    pods
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_mapping()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a NetworkPolicy peer may be pod `labels` of this release (namespace "default" under
/// `helm template`). An ipBlock counts as matching: some implementations apply it to pod IPs.
fn peer_matches(peer: &Value, labels: &Value) -> bool {
    if peer.get("ipBlock").is_some() {
        return true;
    }
    if let Some(namespaces) = peer.get("namespaceSelector") {
        let release_namespace =
            serde_yaml_ng::from_str::<Value>("{ kubernetes.io/metadata.name: default }").unwrap();
        if !selects(namespaces, &release_namespace) {
            return false;
        }
    }
    peer.get("podSelector")
        .is_none_or(|pods| selects(pods, labels))
}

fn port_matches(rule: &Value, name: &str, number: u64) -> bool {
    let Some(ports) = rule["ports"].as_sequence() else {
        return true;
    };
    ports.iter().any(|p| match &p["port"] {
        Value::Number(n) => n.as_u64() == Some(number),
        Value::String(s) => s == name,
        _ => true,
    })
}

/// Whether the policies selecting `pod` let it send (Egress) or receive (Ingress) traffic on
/// port `name`/`number` to or from `other`.
fn allows(
    objects: &[Value],
    direction: &str,
    pod: &Pod,
    other: &Pod,
    name: &str,
    number: u64,
) -> bool {
    let (rules_key, peers_key) = if direction == "Egress" {
        ("egress", "to")
    } else {
        ("ingress", "from")
    };
    let policies: Vec<&Value> = of_kind(objects, "NetworkPolicy")
        .filter(|p| selects(&p["spec"]["podSelector"], &pod.labels))
        .filter(|p| {
            strings(&p["spec"]["policyTypes"])
                .iter()
                .any(|t| t == direction)
        })
        .collect();
    if policies.is_empty() {
        return true;
    }
    policies.iter().any(|policy| {
        policy["spec"][rules_key]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|rule| {
                let peers_ok = match rule[peers_key].as_sequence() {
                    None => true,
                    Some(peers) => peers.iter().any(|peer| peer_matches(peer, &other.labels)),
                };
                peers_ok && port_matches(rule, name, number)
            })
    })
}

/// Every connection between two pods of the release the policies allow: "from -> to:port".
/// `sides` are the policies consulted: the sender's (Egress), the receiver's (Ingress), or both
/// (what a cluster enforces); each side on its own should already be as narrow as the flows.
fn allowed_flows(objects: &[Value], sides: &[&str]) -> BTreeSet<String> {
    let pods = pods(objects);
    let mut flows = BTreeSet::new();
    for (from, source) in &pods {
        for (to, target) in &pods {
            for (name, number) in &target.ports {
                if (!sides.contains(&"Egress")
                    || allows(objects, "Egress", source, target, name, *number))
                    && (!sides.contains(&"Ingress")
                        || allows(objects, "Ingress", target, source, name, *number))
                {
                    flows.insert(format!("{from} -> {to}:{name}"));
                }
            }
        }
    }
    flows
}

fn assert_flows(objects: &[Value], development: bool, what: &str) {
    let documented = documented_flows(development);
    // The default networkPolicy.gatewayFrom (development) lets anyone send to the gateway's
    // HTTP port; no pod of the release is allowed to send there (Egress).
    let mut anyone_to_gateway = documented.clone();
    if development {
        for from in pods(objects).keys() {
            anyone_to_gateway.insert(format!("{from} -> gateway:http"));
        }
    }
    for (sides, expected) in [
        (vec!["Egress", "Ingress"], &documented),
        (vec!["Egress"], &documented),
        (vec!["Ingress"], &anyone_to_gateway),
    ] {
        let allowed = allowed_flows(objects, &sides);
        let extra: Vec<&String> = allowed.difference(expected).collect();
        let missing: Vec<&String> = expected.difference(&allowed).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{what}, policies {sides:?}: allowed but not documented: {extra:?}; documented but \
             refused: {missing:?}"
        );
    }
}

/// Between the release's pods, the policies allow exactly the documented flows, on the sending
/// and on the receiving side each: each internal port only to the callers that need it (no
/// verifier reaches user-service's HTTP port in production, where keys and tokens come through
/// the https proxy).
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_network_policies_allow_exactly_the_documented_flows() {
    assert_flows(&helm_template(&[]), true, "development");
    assert_flows(&helm_template(&PRODUCTION), false, "production");
}

/// Production's documented path for keys and tokens (https, through the TLS-terminating proxy
/// named in auth.proxy) is allowed: every service that fetches them may reach the proxy on its
/// port, and the proxy may reach user-service's HTTP port.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn production_auth_reaches_user_service_through_the_proxy_the_policies_allow() {
    let objects = helm_template(&PRODUCTION);
    let values: Value =
        serde_yaml_ng::from_str(&read("deploy/helm/shop/ci/production-values.yaml")).unwrap();
    let proxy = &values["auth"]["proxy"]["peers"];
    assert!(!strings_or_terms(proxy).is_empty());
    for service in SERVICES {
        let (vars, _) = container_env(&objects, main_container(&objects, service));
        let urls: Vec<&String> = ["AUTH_JWKS_URL", "SERVICE_TOKEN_URL"]
            .iter()
            .filter_map(|k| vars.get(*k))
            .collect();
        if urls.is_empty() {
            continue;
        }
        assert!(
            urls.iter().all(|u| u.starts_with("https://")),
            "{service}: {urls:?}"
        );
        let policy = object(&objects, "NetworkPolicy", &format!("shop-{service}")).unwrap();
        let reaches_proxy = policy["spec"]["egress"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|rule| &rule["to"] == proxy && port_matches(rule, "https", 443));
        assert!(
            reaches_proxy,
            "{service} may not reach the auth proxy on 443"
        );
    }
    let user = object(&objects, "NetworkPolicy", "shop-user-service").unwrap();
    let from_proxy = user["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|rule| {
            port_matches(rule, "http", 0)
                && strings_or_terms(&rule["from"])
                    .iter()
                    .any(|peer| strings_or_terms(proxy).contains(peer))
        });
    assert!(
        from_proxy,
        "the proxy may not reach user-service's HTTP port"
    );

    let refused = helm_render(
        &chart_dir(),
        &[&PRODUCTION[..], &["--set", "auth.proxy.peers=null"]].concat(),
    )
    .expect_err("production without the proxy");
    assert!(refused.contains("/auth/proxy"), "{refused}");
}
