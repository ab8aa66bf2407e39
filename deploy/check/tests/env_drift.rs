//! The deployment files against the code: every variable a deployment gives a service is one
//! the service reads, every variable it requires is given, and the development values load.
//! One list of variables — what each service's configuration reads — checked against
//! deploy/local/stack.sh (`make run`), docker-compose.yml, the Dockerfile and the Helm chart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod support;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_yaml_ng::Value;
use support::{
    SERVICES, Values, Vars, compose, compose_depends_on, compose_env, container_env, drift,
    helm_template, image_env, native_env, object, read, scalar,
};

fn assert_no_drift(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "the deployment and the code disagree:\n  {}",
        problems.join("\n  ")
    );
}

// ----------------------------------------------------------------------- native and compose

#[test]
fn the_native_stack_gives_each_service_what_it_reads_and_needs() {
    let native = native_env();
    let names: Vec<&str> = native.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names, SERVICES,
        "stack.sh's service table changed: update SERVICES"
    );
    let problems = native
        .iter()
        .flat_map(|(service, vars)| drift("deploy/local/stack.sh", service, vars, Values::Known))
        .collect();
    assert_no_drift(problems);
}

#[test]
fn compose_gives_each_service_what_it_reads_and_needs() {
    let file = compose(&read("docker-compose.yml"));
    let problems = SERVICES
        .iter()
        .flat_map(|service| {
            let vars = compose_env(&file, service);
            assert!(
                !vars.is_empty(),
                "docker-compose.yml has no environment for {service}"
            );
            drift("docker-compose.yml", service, &vars, Values::Known)
        })
        .collect();
    assert_no_drift(problems);
}

/// The image's `ENV` lines are defaults under whatever compose or the chart set, so only one
/// thing can be wrong with them: a name the service does not read.
#[test]
fn the_images_default_only_variables_their_service_reads() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let mut problems = Vec::new();
    for service in SERVICES {
        let vars = image_env(&dockerfile, service);
        assert!(
            vars.contains_key("HTTP_ADDR"),
            "the Dockerfile has no target {service} setting HTTP_ADDR"
        );
        let (read, _) = support::load(service, &vars);
        problems.extend(
            vars.keys()
                .filter(|name| !read.contains(*name))
                .map(|name| {
                    format!("deploy/docker/Dockerfile: sets {name}, which {service} does not read")
                }),
        );
    }
    assert_no_drift(problems);
}

/// ADR 0014: every way of starting a service (the image, hence compose and the chart; `make
/// run`; `make bench`) fixes glibc's mmap threshold, and all three say the same.
#[test]
fn every_launcher_gives_the_services_the_same_glibc_tunables() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let image = image_env(&dockerfile, "runtime")
        .remove("GLIBC_TUNABLES")
        .expect("deploy/docker/Dockerfile: the runtime stage sets GLIBC_TUNABLES");
    let stack = read("deploy/local/stack.sh");
    let native = stack
        .lines()
        .find_map(|line| line.strip_prefix("GLIBC_TUNABLES_FOR_SERVICES="))
        .expect("deploy/local/stack.sh sets GLIBC_TUNABLES_FOR_SERVICES");
    let bench = read("bench/src/stack.rs");
    let benchmark = bench
        .lines()
        .find_map(|line| line.strip_prefix("pub const GLIBC_TUNABLES: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("bench/src/stack.rs declares GLIBC_TUNABLES");
    assert!(
        image.contains("glibc.malloc.mmap_threshold="),
        "the image's GLIBC_TUNABLES fixes no mmap threshold: {image}"
    );
    assert_eq!(
        (native, benchmark),
        (image.as_str(), image.as_str()),
        "make run and make bench start the services with other GLIBC_TUNABLES than the image"
    );
}

/// Compose runs what `make run` runs: the same variables (hosts aside), the same credentials
/// and database names. Start order is its own: every service waits for the broker (and its
/// stores), none for another service, because every service declares the whole broker
/// topology before it publishes (ADR 0016); a chain of services would only hide a service that
/// needs one again.
#[test]
fn compose_mirrors_the_native_stack() {
    assert_no_drift(mirror_problems(&read("docker-compose.yml")));
}

fn mirror_problems(compose_text: &str) -> Vec<String> {
    let file = compose(compose_text);
    let mut problems = Vec::new();
    for (service, native) in native_env() {
        let composed = compose_env(&file, &service);
        for (name, value) in &native {
            match composed.get(name) {
                None => problems.push(format!("{service}: stack.sh sets {name}, compose does not")),
                Some(theirs) if !same_setting(name, value, theirs) => problems.push(format!(
                    "{service}: {name} is {value:?} natively but {theirs:?} in compose"
                )),
                Some(_) => {}
            }
        }
        let waits_for = compose_depends_on(&file, &service);
        if !waits_for.contains("rabbitmq") {
            problems.push(format!("{service} must wait for rabbitmq (depends_on)"));
        }
        for other in SERVICES.iter().filter(|other| waits_for.contains(**other)) {
            problems.push(format!(
                "{service} must not wait for {other} (depends_on): every service declares the \
                 broker topology itself, ADR 0016"
            ));
        }
    }
    problems
}

/// Equal, except what differs between loopback and a compose network: hosts and listen
/// addresses. URLs must keep their user, password, path (database) and port — except that
/// compose's MongoDB has a user per service where the native FerretDB has no authentication:
/// a native URL without credentials may gain them (and their auth database) in compose.
fn same_setting(name: &str, native: &str, composed: &str) -> bool {
    if name.ends_with("_ADDR") {
        return true; // 127.0.0.1:<port> natively, 0.0.0.0:<port> in a container
    }
    match (url::Url::parse(native), url::Url::parse(composed)) {
        (Ok(a), Ok(b)) if a.has_host() && a.username().is_empty() && !b.username().is_empty() => {
            a.scheme() == b.scheme() && a.port() == b.port()
        }
        (Ok(a), Ok(b)) if a.has_host() => {
            a.scheme() == b.scheme()
                && a.username() == b.username()
                && a.password() == b.password()
                && a.path().trim_start_matches('/') == b.path().trim_start_matches('/')
                && a.port() == b.port()
        }
        _ => native == composed,
    }
}

/// The stores' init scripts create exactly the roles, databases and users the URLs name.
#[test]
fn compose_provisions_the_credentials_the_services_use() {
    let file = compose(&read("docker-compose.yml"));
    let init_sql = read("deploy/compose/postgres/init.sql");
    let init_js = read("deploy/compose/mongodb/init.js");
    let definitions: serde_json::Value =
        serde_json::from_str(&read("deploy/compose/rabbitmq/definitions.json")).unwrap();
    let mut problems = Vec::new();
    for service in SERVICES {
        let vars = compose_env(&file, service);
        if let Some(url) = vars.get("DATABASE_URL") {
            let url = url::Url::parse(url).unwrap();
            let (role, database) = (url.username(), url.path().trim_start_matches('/'));
            let password = url.password().unwrap_or_default();
            if !init_sql.contains(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}';"))
                || !init_sql.contains(&format!("CREATE DATABASE {database} OWNER {role};"))
            {
                problems.push(format!(
                    "{service}: init.sql does not create {role}/{database}"
                ));
            }
        }
        if let Some(url) = vars.get("MONGODB_URL") {
            let url = url::Url::parse(url).unwrap();
            let (user, database) = (url.username(), url.path().trim_start_matches('/'));
            // init.js creates each owner with its own name as password.
            if url.password() != Some(user)
                || !init_js.contains(&format!("{database}: \"{user}\""))
                || vars.get("MONGODB_DATABASE").map(String::as_str) != Some(database)
            {
                problems.push(format!(
                    "{service}: init.js does not create {user} on {database}"
                ));
            }
        }
        let amqp = url::Url::parse(&vars["AMQP_URL"]).unwrap();
        if !rabbitmq_accepts(
            &definitions,
            amqp.username(),
            amqp.password().unwrap_or_default(),
        ) {
            problems.push(format!(
                "{service}: definitions.json has no user {} with that password",
                amqp.username()
            ));
        }
    }
    assert_no_drift(problems);
}

/// RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password)).
fn rabbitmq_accepts(definitions: &serde_json::Value, user: &str, password: &str) -> bool {
    definitions["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == user)
        .any(|u| {
            let Ok(stored) = STANDARD.decode(u["password_hash"].as_str().unwrap_or_default())
            else {
                return false;
            };
            let (salt, hash) = stored.split_at(4.min(stored.len()));
            let salted = [salt, password.as_bytes()].concat();
            ring::digest::digest(&ring::digest::SHA256, &salted).as_ref() == hash
        })
}

// ------------------------------------------------------- published secrets, refused in production

/// The variables of `vars` that carry a secret: by name (`*_SECRET`, `*_PASSWORD`, `*_KEY`,
/// `SERVICE_CLIENTS`), or a URL with a password in it.
fn secret_variables(vars: &Vars) -> Vec<String> {
    vars.iter()
        .filter(|(name, value)| {
            ["_SECRET", "_PASSWORD", "_KEY"]
                .iter()
                .any(|end| name.ends_with(end))
                || *name == "SERVICE_CLIENTS"
                || url::Url::parse(value).is_ok_and(|url| url.password().is_some())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Every secret a deployment file publishes, given to its service with `SHOP_ENV=production`:
/// each variable must be refused by name. Whoever copies compose's or the native stack's
/// values into production gets a service that does not start, naming what to replace.
fn published_secret_problems(source: &str, service: &str, vars: &Vars) -> Vec<String> {
    let mut production = vars.clone();
    production.insert("SHOP_ENV".to_owned(), "production".to_owned());
    let (_, verdict) = support::load(service, &production);
    let refused: Vec<String> = verdict
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|(variable, _)| variable)
        .collect();
    secret_variables(vars)
        .into_iter()
        .filter(|name| !refused.contains(name))
        .map(|name| {
            format!("{source}: {service} accepts its published {name} with SHOP_ENV=production")
        })
        .collect()
}

#[test]
fn production_refuses_every_secret_the_native_stack_and_compose_publish() {
    let file = compose(&read("docker-compose.yml"));
    let mut problems = Vec::new();
    let mut checked = 0;
    for (service, vars) in native_env() {
        checked += secret_variables(&vars).len();
        problems.extend(published_secret_problems("stack.sh", &service, &vars));
        let vars = compose_env(&file, &service);
        checked += secret_variables(&vars).len();
        problems.extend(published_secret_problems("compose", &service, &vars));
    }
    // Store URLs of six services in both files, the service secrets, the admin password.
    assert!(
        checked >= 20,
        "only {checked} secrets found: is the check reading the files?"
    );
    assert_no_drift(problems);
}

/// The chart's generated development secrets (and its ConfigMaps) hold the same.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn production_refuses_every_secret_the_charts_development_install_publishes() {
    let objects = helm_template(&[]);
    let mut problems = Vec::new();
    for service in SERVICES {
        let deployment = object(&objects, "Deployment", &format!("shop-{service}")).unwrap();
        let containers = deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap();
        let main = containers
            .iter()
            .find(|c| c["name"].as_str() == Some(service))
            .unwrap();
        let (vars, _) = container_env(&objects, main);
        problems.extend(published_secret_problems("chart", service, &vars));
    }
    assert_no_drift(problems);
}

// ------------------------------------------------------------------ the check's own self-test

/// The check is only worth something if it fails: a misspelt variable, a missing required
/// one and a bad value, each on a copy of compose's real environment, are each reported by name.
#[test]
fn the_check_reports_a_misspelt_a_missing_and_a_bad_variable() {
    let file = compose(&read("docker-compose.yml"));
    let good = compose_env(&file, "order-service");
    assert_no_drift(drift("copy", "order-service", &good, Values::Known));

    let mut misspelt = good.clone();
    let url = misspelt.remove("DATABASE_URL").unwrap();
    misspelt.insert("DATABSE_URL".to_owned(), url);
    let problems = drift("copy", "order-service", &misspelt, Values::Known).join("\n");
    assert!(
        problems.contains("sets DATABSE_URL, which order-service does not read"),
        "{problems}"
    );
    assert!(problems.contains("DATABASE_URL: is not set"), "{problems}");

    let mut missing = good.clone();
    missing.remove("SERVICE_SECRET");
    let problems = drift("copy", "order-service", &missing, Values::NamesOnly).join("\n");
    assert!(
        problems.contains("SERVICE_SECRET: is not set"),
        "{problems}"
    );

    let mut bad = good;
    bad.insert("ORDER_CALL_TIMEOUT_MS".to_owned(), "soon".to_owned());
    let problems = drift("copy", "order-service", &bad, Values::Known).join("\n");
    assert!(
        problems.contains("ORDER_CALL_TIMEOUT_MS: could not be parsed"),
        "{problems}"
    );
}

#[test]
fn the_check_reports_a_compose_copy_that_chains_services_or_loses_a_password() {
    let original = read("docker-compose.yml");
    // catalog-service waiting for inventory-service, as the old start chain had it.
    let chained = original.replacen(
        "    networks: [catalog, catalog-traces, catalog-metrics, catalog-store]\n    depends_on:\n",
        "    networks: [catalog, catalog-traces, catalog-metrics, catalog-store]\n    depends_on:\n      inventory-service: { condition: service_healthy }\n",
        1,
    );
    assert_ne!(chained, original, "the edit must change the copy");
    let problems = mirror_problems(&chained).join("\n");
    assert!(
        problems.contains("catalog-service must not wait for inventory-service"),
        "{problems}"
    );

    let other_password = original.replace(
        "postgres://order_service:order_service@",
        "postgres://order_service:hunter2@",
    );
    assert_ne!(other_password, original, "the edit must change the copy");
    let problems = mirror_problems(&other_password).join("\n");
    assert!(
        problems.contains("order-service: DATABASE_URL is"),
        "{problems}"
    );
}

// ------------------------------------------------------------------------------- the chart

/// Development install (in-chart stores, generated secrets): every Deployment, its migration
/// init container and the seed hook get variables their service reads, and they load.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_chart_in_development_mode_gives_each_service_what_it_reads_and_needs() {
    let objects = helm_template(&[]);
    assert_no_drift(chart_drift(&objects, "chart (default values)"));
}

/// Production-like install (own stores, existing secrets): names only, since the values live in
/// Secrets the operator creates; every required variable is still named, and nothing else.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_chart_in_production_mode_names_each_variable_its_service_needs() {
    let objects = helm_template(&["-f", "deploy/helm/shop/ci/production-values.yaml"]);
    let problems = chart_drift(&objects, "chart (ci/production-values.yaml)");
    assert_no_drift(problems);
}

/// A chart that renders a variable no service reads, or drops one it requires, is caught.
#[test]
#[ignore = "needs helm: run by make deploy-check (scripts/deploy-tools.sh installs it)"]
fn the_check_reports_a_chart_with_an_unread_and_a_missing_variable() {
    let objects = helm_template(&[
        "--set",
        "services.payment-service.env.PROVIDER_TIMEOUT=5000",
    ]);
    let problems = chart_drift(&objects, "chart").join("\n");
    assert!(
        problems.contains("sets PROVIDER_TIMEOUT, which payment-service does not read"),
        "{problems}"
    );

    let mut objects = helm_template(&[]);
    let deployment = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "shop-order-service")
        .unwrap();
    let pod = &mut deployment["spec"]["template"]["spec"];
    for containers in ["containers", "initContainers"] {
        for container in pod[containers].as_sequence_mut().into_iter().flatten() {
            let env = container["env"].as_sequence_mut().unwrap();
            env.retain(|entry| entry["name"] != "SERVICE_SECRET");
        }
    }
    let problems = chart_drift(&objects, "chart").join("\n");
    assert!(
        problems.contains("SERVICE_SECRET: is not set"),
        "{problems}"
    );
}

fn chart_drift(objects: &[Value], source: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for service in SERVICES {
        let name = format!("shop-{service}");
        let Some(deployment) = object(objects, "Deployment", &name) else {
            problems.push(format!("{source}: no Deployment {name}"));
            continue;
        };
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = pod["containers"].as_sequence().unwrap();
        let main = containers
            .iter()
            .find(|c| c["name"].as_str() == Some(service))
            .unwrap_or_else(|| panic!("{name} has no container {service}"));
        let (vars, values) = container_env(objects, main);
        problems.extend(drift(&format!("{source} {name}"), service, &vars, values));
        // The migration init container (`<service> migrate`) gets a part of the service's
        // environment (its ConfigMap and DATABASE_URL): nothing the service would not get.
        for init in pod["initContainers"].as_sequence().into_iter().flatten() {
            let (init_vars, _) = container_env(objects, init);
            for (variable, value) in &init_vars {
                if vars.get(variable) != Some(value) {
                    problems.push(format!(
                        "{source} {name}: init container {} sets {variable}, which the \
                         service's container does not set the same way",
                        scalar(&init["name"])
                    ));
                }
            }
        }
    }
    if let Some(job) = object(objects, "Job", "shop-catalog-seed") {
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        let (vars, values) = container_env(objects, container);
        problems.extend(drift(
            &format!("{source} seed hook"),
            "catalog-service",
            &vars,
            values,
        ));
        if vars.get("CATALOG_SEED_DEMO").map(String::as_str) != Some("true") {
            problems.push(format!(
                "{source}: the seed hook does not set CATALOG_SEED_DEMO=true"
            ));
        }
    }
    problems
}
