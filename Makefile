# The front door. `make help` lists the targets.
#
# Everything runs natively (no Docker needed): deploy/local/stack.sh installs and starts
# PostgreSQL, Redis, RabbitMQ and FerretDB on loopback, with state in .local/.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

STACK   := deploy/local/stack.sh
PROFILE ?= dev
BIN_DIR := target/$(if $(filter dev test,$(PROFILE)),debug,$(PROFILE))
# The integration tests find the stack through TESTKIT_* variables written by `infra-up`.
WITH_TEST_ENV := set -a && source .local/test.env && set +a &&

.PHONY: help run down status infra-up infra-down build test fmt fmt-check clippy lint test-rust contracts contracts-check proto-check openapi-check fuzz

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

run: infra-up build ## Install what is missing, start infrastructure and all seven services (STACK_GRPC_TLS=1: gRPC between them over TLS, development CA in .local/tls)
	$(STACK) services-up $(BIN_DIR)

down: ## Stop everything `make run` started
	$(STACK) down

status: ## Show what is running
	$(STACK) status

infra-up: ## Start PostgreSQL, Redis, RabbitMQ and FerretDB (idempotent)
	$(STACK) infra-up

infra-down: ## Stop the infrastructure
	$(STACK) infra-down

build: ## Build the seven service binaries
	cargo build --profile $(PROFILE) --bins

test: fmt-check proto-check infra-up clippy test-rust contracts-check openapi-check deploy-check ## fmt, proto lint/breaking check, clippy, every test, committed contracts unchanged, OpenAPI check, the deployment checks

fmt: ## Format the code
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings

lint: fmt-check clippy ## fmt --check and clippy -D warnings

test-rust: infra-up ## Every Rust test (unit, integration, contract, doc)
	$(WITH_TEST_ENV) cargo test --workspace --locked --no-fail-fast

proto-check: ## Lint .proto files and refuse breaking changes (buf against proto/baseline.binpb)
	scripts/proto-check.sh
	scripts/proto-check.sh selftest

# The consumer tests write contracts/ in a canonical form (shop_contract::consumer::canonicalize),
# so after them the folder matches the commit unless a consumer's needs changed: then the
# new contract must be committed (and its providers verified against it) like any other change.
contracts-check: ## Fail when the tests changed a committed contract (run after test-rust)
	@if ! git rev-parse --git-dir >/dev/null 2>&1; then echo "contracts-check: not a git checkout; skipped"; exit 0; fi
	@changed=$$(git status --porcelain -- contracts/); \
	  if [ -n "$$changed" ]; then \
	    echo "The consumer tests changed the committed contracts:"; echo "$$changed"; \
	    git --no-pager diff --stat -- contracts/; \
	    echo "Review with 'git diff contracts/' and commit the new contracts with the change that needs them."; \
	    exit 1; \
	  fi; echo "contracts/: unchanged by the consumer tests"

openapi-check: ## Validate the public OpenAPI document and refuse breaking changes (oasdiff against services/gateway/openapi.json)
	scripts/openapi-check.sh
	scripts/openapi-check.sh selftest

# `make test` runs Schemathesis with a small budget (e2e/tests/api_contract.rs); this is the long
# campaign: FUZZ_SECONDS (default 600) per identity, customer then admin. Report: target/fuzz/.
fuzz: infra-up ## Fuzz the public API with Schemathesis for a long time (FUZZ_SECONDS=600 per identity): target/fuzz/
	$(WITH_TEST_ENV) cargo test -p e2e --locked --test api_contract -- --ignored fuzz_campaign --nocapture

# A crate's contract tests (consumer and provider side) live in its tests/contracts.rs.
contracts: infra-up ## Contract tests of one crate: make contracts SERVICE=order-service
	@test -n "$(SERVICE)" || { echo "usage: make contracts SERVICE=<package>"; exit 2; }
	@dir=$$(cargo pkgid -p $(SERVICE) | sed -E 's|^path\+file://([^#]*)#.*|\1|'); \
	  test -f "$$dir/tests/contracts.rs" || { echo "$(SERVICE) has no contract tests ($$dir/tests/contracts.rs)"; exit 2; }
	$(WITH_TEST_ENV) cargo test -p $(SERVICE) --locked --test contracts

# ---------------------------------------------------------------------------- deployment
.PHONY: deploy-check helm-test k8s-test

# test-rust already ran deploy-check's plain tests; within `make test` only its #[ignore]d
# ones (they need helm, which deploy-check installs) run again here.
test: DEPLOY_CHECK_TESTS := --ignored

deploy-check: infra-up ## Dockerfile, compose, Helm chart and dashboards, checked offline (+ selftest)
	$(WITH_TEST_ENV) DEPLOY_CHECK_TESTS='$(DEPLOY_CHECK_TESTS)' scripts/deploy-check.sh
	scripts/deploy-check.sh selftest

helm-test: ## helm install/upgrade/uninstall of the chart against a real local kube-apiserver (builds it once)
	scripts/helm-test.sh

# A one-node Kubernetes built here (scripts/k8s-cluster.sh), the chart with in-chart stores, every
# pod Ready, NetworkPolicies enforced, the e2e journeys through it, helm test, an upgrade under
# load with 0 failed requests, uninstall, teardown (deploy/helm/shop/README.md). Not part of
# `make test`: cold it builds for ~40 min; K8S_TEST_KEEP=1 leaves it running.
k8s-test: ## The chart on a real one-node Kubernetes: install, journeys, helm test, upgrade under load, uninstall
	scripts/k8s-test.sh

# The full run takes ~10 minutes once the release build exists and writes bench/report.md;
# QUICK=1 runs every scenario for a few seconds and writes target/bench-quick/report.md.
.PHONY: bench
bench: infra-up ## Measure the system against nginx and pgbench: bench/report.md (QUICK=1: a short run; ONLY=1,4: some scenarios)
	$(WITH_TEST_ENV) scripts/bench.sh $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

# ---------------------------------------------------------------------------- compose under podman
.PHONY: compose-test
# docker-compose.yml exercised for real without a Docker engine or registry: podman, stand-in
# infrastructure images, service images from deploy/docker/Dockerfile, every e2e journey, a
# selftest with a broken variable (deploy/podman/README.md). QUICK=1: one journey, no selftest.
compose-test: ## docker compose up --wait under podman, the e2e journeys against it, then down
	deploy/podman/compose-test.sh $(if $(QUICK),quick,all)

# ---------------------------------------------------------------------------- chaos
.PHONY: chaos
# Each scenario starts its own copy of the system from the debug build (faults, not speed, are
# measured), strikes with one fault under load and checks the invariants (docs/chaos.md).
# The whole suite takes about an hour here; FAULT=kill-order,redis-down runs some scenarios,
# QUICK=1 a few seconds of load each. `make test` runs kill-order quickly (bench/tests/chaos.rs).
CHAOS_BIN = $${CARGO_TARGET_DIR:-target}/debug
chaos: infra-up ## Faults under load, invariants afterwards: target/chaos/report.md (FAULT=name[,name]: some; QUICK=1: short; RATE=20: orders/s)
	cargo build --bins --locked
	$(WITH_TEST_ENV) $(CHAOS_BIN)/shop-bench chaos --bin-dir $(CHAOS_BIN) --out target/chaos \
	  $(if $(FAULT),--only $(FAULT)) $(if $(QUICK),--quick) $(if $(RATE),--rate $(RATE))

# ---------------------------------------------------------------------------- the tour
.PHONY: tour
# One order through the running system, written up with the real requests, trace, log lines,
# events, rows and email (scripts/tour.sh). `make run` first brings the system up if it is not.
tour: run ## Place one order through `make run` and write docs/tour.md from what the system did
	scripts/tour.sh docs/tour.md
