//! What the drift tests share: loading a service's configuration as its binary does, and
//! reading the environments the deployment files give each service.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod flows;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_yaml_ng::Value;
use shop_runtime::config::Env;

/// The seven services, by binary name, in deploy/local/stack.sh's start order.
pub const SERVICES: [&str; 7] = [
    "user-service",
    "notification-service",
    "inventory-service",
    "catalog-service",
    "payment-service",
    "order-service",
    "gateway",
];

pub type Vars = BTreeMap<String, String>;

/// What a configuration found wrong: (variable, problem), each as `Env` reported it.
pub type Issues = Vec<(String, String)>;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Variables every service's process reads through glibc rather than its configuration
/// (docs/adr/0014-malloc-mmap-threshold.md).
const READ_BY_THE_C_LIBRARY: [&str; 1] = ["GLIBC_TUNABLES"];

/// Loads service `name`'s configuration from `vars` exactly as its binary does
/// (`shop_runtime::load`): the variables it read, and its verdict.
pub fn load(name: &str, vars: &Vars) -> (BTreeSet<String>, Result<(), Issues>) {
    let mut env = Env::from_pairs(vars.clone());
    let result = match name {
        "user-service" => shop_runtime::load::<user_service::UserService>(&mut env).map(drop),
        "catalog-service" => {
            shop_runtime::load::<catalog_service::CatalogService>(&mut env).map(drop)
        }
        "inventory-service" => {
            shop_runtime::load::<inventory_service::InventoryService>(&mut env).map(drop)
        }
        "order-service" => shop_runtime::load::<order_service::OrderService>(&mut env).map(drop),
        "payment-service" => {
            shop_runtime::load::<payment_service::PaymentService>(&mut env).map(drop)
        }
        "notification-service" => {
            shop_runtime::load::<notification_service::NotificationService>(&mut env).map(drop)
        }
        "gateway" => shop_runtime::load::<gateway::Gateway>(&mut env).map(drop),
        other => panic!("no service called {other}"),
    };
    let read = env
        .read_variables()
        .into_iter()
        .chain(READ_BY_THE_C_LIBRARY.map(str::to_owned))
        .collect();
    let result = result.map_err(|err| {
        err.issues
            .into_iter()
            .map(|issue| (issue.variable, issue.problem))
            .collect()
    });
    (read, result)
}

/// How much of an environment is known: all values (compose, the chart's generated development
/// secrets), or only the names of some (an existingSecret the operator creates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    Known,
    /// The named variables' values are placeholders: only "required but not set" counts.
    NamesOnly,
}

/// Everything wrong with giving `vars` to `service`, as sentences naming `source`.
pub fn drift(source: &str, service: &str, vars: &Vars, values: Values) -> Vec<String> {
    let (read, verdict) = load(service, vars);
    let mut problems: Vec<String> = vars
        .keys()
        .filter(|name| !read.contains(*name))
        .map(|name| format!("{source}: sets {name}, which {service} does not read"))
        .collect();
    if let Err(issues) = verdict {
        for (variable, problem) in issues {
            let missing = problem.starts_with("is not set");
            if values == Values::Known || missing {
                problems.push(format!("{source}: {service}: {variable}: {problem}"));
            }
        }
    }
    problems
}

// ------------------------------------------------------------------------------------ compose

/// docker-compose.yml with its YAML merge keys (`<<: *service`) applied.
pub fn compose(text: &str) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(text).expect("docker-compose.yml is YAML");
    value.apply_merge().expect("merge keys apply");
    value
}

/// The environment compose gives `service`: its `environment` map, with `${NAME:-default}`
/// interpolations resolved to their defaults (what a fresh clone gets).
pub fn compose_env(compose: &Value, service: &str) -> Vars {
    let Some(environment) = compose["services"][service]["environment"].as_mapping() else {
        return Vars::new();
    };
    environment
        .iter()
        .map(|(name, value)| {
            let name = name
                .as_str()
                .expect("variable names are strings")
                .to_owned();
            let value = match value {
                Value::String(text) => interpolate(text),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{service}: {name} has a non-scalar value {other:?}"),
            };
            (name, value)
        })
        .collect()
}

/// `${NAME:-default}` -> default, `$$` -> `$` (the only forms docker-compose.yml uses).
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').expect("an interpolation is closed");
            let (_, default) = after[..end]
                .split_once(":-")
                .expect("interpolations give a default (${NAME:-default})");
            out.push_str(default);
            rest = &after[end + 1..];
        } else {
            panic!("a bare $ in {text:?}: write $$ or ${{NAME:-default}}");
        }
    }
    out.push_str(rest);
    out
}

/// The services another service waits for (`depends_on`).
pub fn compose_depends_on(compose: &Value, service: &str) -> BTreeSet<String> {
    compose["services"][service]["depends_on"]
        .as_mapping()
        .map(|deps| {
            deps.keys()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------ native stack

/// deploy/local/stack.sh's service table: per service, the variables `services-up` gives it
/// (the table's columns plus the four it always sets).
pub fn native_env() -> Vec<(String, Vars)> {
    let script = read("deploy/local/stack.sh");
    let table = script
        .split_once("SERVICES_TABLE='")
        .and_then(|(_, rest)| rest.split_once("\n'"))
        .map(|(table, _)| table)
        .expect("stack.sh has SERVICES_TABLE='...'");
    table
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().expect("a name").to_owned();
            let http = words.next().expect("an HTTP port");
            let grpc = words.next().expect("a gRPC port");
            let mut vars = Vars::from([
                ("HTTP_ADDR".to_owned(), format!("127.0.0.1:{http}")),
                ("GRPC_ADDR".to_owned(), format!("127.0.0.1:{grpc}")),
                ("LOG_FORMAT".to_owned(), "json".to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
            ]);
            for word in words {
                let (key, value) = word.split_once('=').expect("KEY=VALUE");
                vars.insert(key.to_owned(), value.to_owned());
            }
            (name, vars)
        })
        .collect()
}

// -------------------------------------------------------------------------------- Dockerfile

/// The `ENV` defaults of the image of `service`: the shared runtime stage's, then its own.
pub fn image_env(dockerfile: &str, service: &str) -> Vars {
    let mut stage = String::new();
    let mut vars = Vars::new();
    for line in dockerfile.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            stage = from.rsplit(' ').next().unwrap_or_default().to_owned();
        } else if let Some(assignments) = line.strip_prefix("ENV ")
            && (stage == "runtime" || stage == service)
        {
            for assignment in assignments.split_whitespace() {
                let (key, value) = assignment.split_once('=').expect("ENV KEY=VALUE");
                vars.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    vars
}

// ---------------------------------------------------------------------------------- the chart

/// The deployment tools `scripts/deploy-tools.sh install` put in place, by name (HELM, ...).
pub fn tools() -> BTreeMap<String, PathBuf> {
    let output = Command::new("bash")
        .arg(root().join("scripts/deploy-tools.sh"))
        .arg("env")
        .output()
        .expect("scripts/deploy-tools.sh env runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, path)| (name.to_owned(), PathBuf::from(path)))
        .collect()
}

/// `helm template` of the chart with the extra arguments `args`: its documents.
pub fn helm_template(args: &[&str]) -> Vec<Value> {
    helm_render(&root().join("deploy/helm/shop"), args)
        .unwrap_or_else(|err| panic!("helm template {args:?} failed:\n{err}"))
}

/// `helm template` of the chart in directory `chart` (the repository's, a copy, or a parent
/// chart) with `args`: its documents, or what helm said when it refused.
pub fn helm_render(chart: &Path, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut tools = tools();
    let helm = tools.remove("HELM").expect("deploy-tools.sh names HELM");
    // The Kubernetes version the schemas and the test clusters are built for (one place:
    // scripts/deploy-tools.sh).
    let kubernetes = tools
        .remove("KUBERNETES_VERSION")
        .expect("deploy-tools.sh names KUBERNETES_VERSION");
    assert!(
        helm.exists(),
        "{} is missing: run scripts/deploy-tools.sh install (make deploy-check does)",
        helm.display()
    );
    let output = Command::new(&helm)
        .current_dir(root())
        .args(["template", "shop"])
        .arg(chart)
        .arg("--kube-version")
        .arg(
            kubernetes
                .as_os_str()
                .to_string_lossy()
                .trim_start_matches('v'),
        )
        .args(args)
        .output()
        .expect("helm runs");
    if output.status.success() {
        Ok(documents(&String::from_utf8_lossy(&output.stdout)))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A copy of directory `from` at `to` (files and directories; the chart has no links).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|err| panic!("{}: {err}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|err| panic!("{}: {err}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|err| panic!("{}: {err}", target.display()));
        }
    }
}

pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("helm renders YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// The object of `kind` called `name`.
pub fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
}

/// The environment a container gets from the rendered chart: its ConfigMaps (envFrom), then its
/// `env` entries (literal values, or keys of Secrets). A key of a Secret the chart does not
/// render (an existingSecret) gets a placeholder, and `Values::NamesOnly` says so.
pub fn container_env(objects: &[Value], container: &Value) -> (Vars, Values) {
    let mut vars = Vars::new();
    let mut values = Values::Known;
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = source["configMapRef"]["name"]
            .as_str()
            .expect("envFrom names ConfigMaps only");
        let config = object(objects, "ConfigMap", name)
            .unwrap_or_else(|| panic!("envFrom names ConfigMap {name}, which is not rendered"));
        for (key, value) in config["data"].as_mapping().into_iter().flatten() {
            vars.insert(scalar(key), scalar(value));
        }
    }
    for entry in container["env"].as_sequence().into_iter().flatten() {
        let name = scalar(&entry["name"]);
        if let Some(value) = entry.get("value") {
            vars.insert(name, scalar(value));
            continue;
        }
        let reference = &entry["valueFrom"]["secretKeyRef"];
        let secret = scalar(&reference["name"]);
        let key = scalar(&reference["key"]);
        let optional = reference["optional"].as_bool().unwrap_or(false);
        match object(objects, "Secret", &secret) {
            Some(rendered) => match rendered["stringData"].get(&key) {
                Some(value) => {
                    vars.insert(name, scalar(value));
                }
                None => assert!(optional, "Secret {secret} has no key {key} for {name}"),
            },
            None => {
                values = Values::NamesOnly;
                vars.insert(name, "placeholder-from-an-existing-secret".to_owned());
            }
        }
    }
    (vars, values)
}

pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}
