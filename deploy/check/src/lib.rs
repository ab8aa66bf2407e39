//! The deployment's own tests: the files under `deploy/` and `docker-compose.yml` describe the
//! system the code is, not the one it was when they were written. `make deploy-check` runs them
//! (after `helm lint`, `kubeconform`, the compose loader and hadolint, `scripts/deploy-check.sh`).
//!
//! | test | what it holds |
//! |---|---|
//! | `tests/env_drift.rs` | every variable docker-compose.yml, the Helm chart (both install modes, its hooks and init containers), the Dockerfile and `deploy/local/stack.sh` give a service is one that service's configuration reads (`shop_runtime::config::Env::read_variables`), every variable it requires is given, and the development values load; compose mirrors the native stack's variables and credentials, and no service waits for another to start (ADR 0016); the databases, users and broker accounts the init scripts create are the ones the URLs name |
//! | `tests/chart.rs` | what the Helm chart renders holds its README's claims: headless Services for the gRPC servers, migrations by `<service> migrate`, MongoDB ready only after its init, the seed hook within the documented `--timeout`, spread per component, per-store toggles (and production refusing each), `global` accepted as a subchart, checksums that roll pods (an existing Secret's through `lookup`), HPA behavior, the alert rules and dashboards shipped unchanged, and NetworkPolicies allowing exactly the documented flows (`tests/support/flows.rs`) |
//! | `tests/compose.rs` | docker-compose.yml's networks (with the podman override on top) connect exactly the pairs of containers the flow table (`tests/support/flows.rs`, shared with `tests/chart.rs`) connects, and every host compose configures a container to reach (URLs, Prometheus targets, Grafana datasources) is in that table |
//! | `tests/dashboards.rs` | every metric a Grafana dashboard in `deploy/helm/shop/files/grafana/dashboards` or an alert rule in `deploy/helm/shop/files/prometheus/alerts.yml` queries is exported on `/metrics` by the running system (booted in-process, driven through one order that is confirmed and one that is declined) |
//!
//! The tests that render the chart need helm; they are `#[ignore]`d in a plain `cargo test` and
//! run by `make deploy-check`, which installs the tools first (`scripts/deploy-tools.sh`). Each
//! drift test also proves on deliberately broken copies that the check catches what it claims.
