#!/usr/bin/env bash
# `make k8s-test`: the Helm chart installed for real on a one-node Kubernetes built here
# (scripts/k8s-cluster.sh), with its in-chart stores, then in order:
#
#   1. images     the stand-in infrastructure images (deploy/podman/compose-test.sh standin), the
#                 thin service images from the host's release binaries (deploy/k8s/images), all
#                 imported into the cluster's containerd (no registry)
#   2. install    helm install --wait with deploy/k8s/values-k8s-test.yaml into a namespace
#                 enforcing Pod Security "restricted"; helm waits for the seed hook to succeed;
#                 every pod Ready
#   3. policies   kube-router enforces the chart's NetworkPolicies: a flow the chart forbids
#                 (gateway -> PostgreSQL) is refused, an allowed one (gateway -> Redis) connects
#   4. journeys   the e2e journeys (e2e/tests/journeys.rs) against the gateway through a
#                 NodePort on 127.0.0.1, Mailpit through kubectl port-forward on 127.0.0.1
#   5. balancing  each of the two payment pods served Authorize calls from order-service
#                 (headless Service + client-side balancing), read from each pod's /metrics
#   6. helm test  the chart's smoke test pod
#   7. upgrade    helm upgrade to a new image tag while a light load runs against the gateway:
#                 every request must succeed (rolling update, preStop, readiness)
#   8. uninstall  helm uninstall; nothing of the release is left (scripts/helm-test-checks.py)
#   9. down       the cluster stopped; nothing of it left on the host (k8s-cluster.sh check)
#
# K8S_TEST_KEEP=1 leaves the cluster and the release running for inspection
# (`eval "$(scripts/k8s-cluster.sh env)"`, then kubectl/helm; `scripts/k8s-cluster.sh down`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/deploy/helm/shop
VALUES=$ROOT/deploy/k8s/values-k8s-test.yaml
NAMESPACE=shop
RELEASE=shop
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BASE_IMAGE=localhost/shop-standin/debian:bookworm
GATEWAY_NODE_PORT=30080
LOAD_RATE=${K8S_TEST_LOAD_RATE:-10} # requests per second during the upgrade

STARTED=$SECONDS
say() { printf 'k8s-test [%4ds]: %s\n' "$((SECONDS - STARTED))" "$*"; }
die() {
  printf 'k8s-test: FAILED: %s\n' "$*" >&2
  if [[ -n ${KUBECONFIG:-} ]] && [[ -x ${KUBECTL:-} ]]; then
    "$KUBECTL" get pods -A -o wide >&2 2>/dev/null || true
    "$KUBECTL" -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 25 >&2 || true
  fi
  exit 1
}

PIDS=()
cleanup() {
  local status=$? pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ ${K8S_TEST_KEEP:-} == 1 ]]; then
    say "kept running (K8S_TEST_KEEP=1): eval \"\$(scripts/k8s-cluster.sh env)\"; scripts/k8s-cluster.sh down"
  else
    "$ROOT/scripts/k8s-cluster.sh" down || status=1
  fi
  exit "$status"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ images
standin() { "$ROOT/deploy/podman/compose-test.sh" standin "$@" >"$LOGS/standin-$1.log" 2>&1 || die "stand-in $1: $(tail -n 20 "$LOGS/standin-$1.log")"; }

SERVICES=(user-service catalog-service inventory-service order-service payment-service notification-service gateway)

build_images() {
  say "stand-in images (deploy/podman/images; built once, rebuilt when their inputs change)"
  standin postgres localhost/shop-standin/postgres:15
  standin redis localhost/shop-standin/redis:7
  standin rabbitmq localhost/shop-standin/rabbitmq:3.10-management
  standin mongo localhost/shop-standin/mongo:ferretdb-1.24.2
  standin mailpit localhost/shop-standin/mailpit:v1.27.11
  podman build --pull=never -q -t localhost/shop-k8s/mongo-noauth:ferretdb-1.24.2 "$ROOT/deploy/k8s/images/mongo" >/dev/null ||
    die "building the MongoDB no-auth image failed"

  # Every binary of the workspace, as `make build PROFILE=release` does: the same feature set
  # as other release builds, so they share the compiled dependencies.
  say "release binaries (cargo build --release --bins, target $TARGET_DIR)"
  (cd "$ROOT" && cargo build --release --bins --locked --quiet) || die "cargo build --release failed"
  local service
  local context=$STATE/service-images
  rm -rf "$context"
  mkdir -p "$context"
  cp "$ROOT/deploy/k8s/images/services/Containerfile" "$context/"
  for service in "${SERVICES[@]}" shop-probe; do cp "$TARGET_DIR/release/$service" "$context/"; done
  # The tag names the binaries: a new build is a new tag. The upgrade's tag is a second image
  # of the same binaries with another label, so the chart's pod templates change.
  TAG=k8s-$(cd "$context" && sha256sum "${SERVICES[@]}" shop-probe Containerfile | sha256sum | cut -c1-12)
  UPGRADE_TAG=$TAG-upgrade
  say "service images localhost/shop/<service>:$TAG (and :$UPGRADE_TAG for the upgrade)"
  for service in "${SERVICES[@]}"; do
    podman build --pull=never -q --target "$service" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      -t "localhost/shop/$service:$TAG" "$context" >/dev/null || die "building the $service image failed"
    podman build --pull=never -q --target "$service" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      --label "shop.k8s-test.upgrade=$UPGRADE_TAG" -t "localhost/shop/$service:$UPGRADE_TAG" "$context" >/dev/null ||
      die "building the $service upgrade image failed"
  done
  rm -rf "$context"
  local images=(localhost/shop-standin/postgres:15 localhost/shop-standin/redis:7
    localhost/shop-standin/rabbitmq:3.10-management localhost/shop-k8s/mongo-noauth:ferretdb-1.24.2
    localhost/shop-standin/mailpit:v1.27.11)
  for service in "${SERVICES[@]}"; do images+=("localhost/shop/$service:$TAG" "localhost/shop/$service:$UPGRADE_TAG"); done
  "$ROOT/scripts/k8s-cluster.sh" import "${images[@]}"
}

# ------------------------------------------------------------------------------ the release
# What the cluster lacks and the test values expect: a StorageClass with one hostPath volume per
# claim of the in-chart stores (statically bound), and the two Secrets with credential-less
# MongoDB URLs (see deploy/k8s/images/mongo).
prepare_namespace() {
  local claim size dir
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: { name: shop-k8s-local }
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  for claim in postgres:2Gi mongodb:2Gi rabbitmq:1Gi; do
    size=${claim#*:}
    claim=data-$RELEASE-${claim%%:*}-0
    dir=$STATE/volumes/$claim
    rm -rf "$dir"
    mkdir -p "$dir"
    # The stores run as uid/gid 999 (the chart's pod security context); hostPath volumes get
    # no fsGroup ownership change, so the directory is theirs from the start.
    chown 999:999 "$dir"
    chmod 0750 "$dir"
    kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: { name: k8s-test-$claim, labels: { shop-k8s-test: volume } }
spec:
  capacity: { storage: $size }
  accessModes: [ReadWriteOnce]
  storageClassName: shop-k8s-local
  persistentVolumeReclaimPolicy: Retain
  claimRef: { namespace: $NAMESPACE, name: $claim }
  hostPath: { path: $dir, type: Directory }
EOF
  done
  local amqp=$RELEASE-rabbitmq:5672/%2f mongo=mongodb://$RELEASE-mongodb:27017
  kubectl_ -n "$NAMESPACE" create secret generic k8s-test-catalog-service \
    --from-literal "MONGODB_URL=$mongo/catalog" \
    --from-literal "AMQP_URL=amqp://catalog_service:catalog_service@$amqp" >/dev/null
  kubectl_ -n "$NAMESPACE" create secret generic k8s-test-notification-service \
    --from-literal "MONGODB_URL=$mongo/notification" \
    --from-literal "AMQP_URL=amqp://notification_service:notification_service@$amqp" \
    --from-literal "SERVICE_SECRET=dev-only-notification-service-secret-00000" >/dev/null
}

kubectl_() { "$KUBECTL" "$@"; }
helm_() { "$HELM" --kube-context shop-k8s "$@"; }

install_release() {
  say "helm install $RELEASE (values deploy/k8s/values-k8s-test.yaml, tag $TAG): --wait, the seed hook included"
  local t0=$SECONDS
  helm_ install "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$VALUES" --set "image.tag=$TAG" \
    --wait --timeout 15m >"$LOGS/helm-install.log" 2>&1 || die "helm install failed: $(tail -n 20 "$LOGS/helm-install.log")"
  say "installed in $((SECONDS - t0)) s; the seed hook succeeded (helm waits for post-install hooks)"
  kubectl_ -n "$NAMESPACE" wait --for=condition=Ready pods -l "app.kubernetes.io/instance=$RELEASE" \
    --field-selector=status.phase=Running --timeout 120s >/dev/null || die "not every pod is Ready"
  local pods
  pods=$(kubectl_ -n "$NAMESPACE" get pods -l "app.kubernetes.io/instance=$RELEASE" --no-headers)
  say "every pod Ready: $(wc -l <<<"$pods") pods"
  sed 's/^/    /' <<<"$pods"
}

# ------------------------------------------------------------------------------ policies
# Runs bash's /dev/tcp in a pod: "open" when the TCP connection is made within 5 s.
tcp_from() { # pod host port
  kubectl_ -n "$NAMESPACE" exec "$1" -- timeout 5 bash -c "exec 3<>/dev/tcp/$2/$3 && echo open" 2>/dev/null || echo refused
}

check_policies() {
  local gateway
  gateway=$(kubectl_ -n "$NAMESPACE" get pods -l app.kubernetes.io/component=gateway -o jsonpath='{.items[0].metadata.name}')
  local allowed forbidden
  allowed=$(tcp_from "$gateway" "$RELEASE-redis" 6379)
  forbidden=$(tcp_from "$gateway" "$RELEASE-postgres" 5432)
  [[ $allowed == open ]] || die "NetworkPolicy check: the allowed flow gateway -> redis:6379 did not connect ($allowed)"
  [[ $forbidden == refused ]] || die "NetworkPolicy check: the forbidden flow gateway -> postgres:5432 connected"
  say "NetworkPolicies enforced (kube-router): gateway -> redis:6379 open, gateway -> postgres:5432 refused"
}

# ------------------------------------------------------------------------------ journeys
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

expose_gateway() {
  # A NodePort Service of the test's own (not the chart's), answering on 127.0.0.1 only
  # (kube-proxy's nodePortAddresses): new connections are balanced over the ready gateway pods,
  # which the upgrade under load needs (a port-forward sticks to one pod).
  kubectl_ -n "$NAMESPACE" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: { name: k8s-test-gateway }
spec:
  type: NodePort
  selector: { app.kubernetes.io/instance: $RELEASE, app.kubernetes.io/component: gateway }
  ports: [{ name: http, port: 8080, targetPort: http, nodePort: $GATEWAY_NODE_PORT }]
EOF
  GATEWAY=http://127.0.0.1:$GATEWAY_NODE_PORT
  local deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null "$GATEWAY/api/v1/products"; do
    ((SECONDS < deadline)) || die "the gateway does not answer at $GATEWAY"
    sleep 1
  done
}

# port_forward TARGET PORT: kubectl port-forward on a free 127.0.0.1 port, in FORWARDED. Not in
# a $(...) subshell: the pid must reach PIDS, which the exit trap stops.
port_forward() {
  FORWARDED=$(free_port)
  kubectl_ -n "$NAMESPACE" port-forward --address 127.0.0.1 "$1" "$FORWARDED:$2" >"$LOGS/port-forward-${1//\//-}.log" 2>&1 &
  PIDS+=($!)
  local deadline=$((SECONDS + 30))
  until curl -s -o /dev/null "http://127.0.0.1:$FORWARDED/"; do
    ((SECONDS < deadline)) || die "kubectl port-forward $1 did not start"
    sleep 0.5
  done
}

run_journeys() {
  local mailpit ops
  # The chart's NetworkPolicies admit no client to Mailpit's UI or the gateway's operational
  # port from outside; a port-forward enters the pod's own network namespace.
  port_forward "svc/$RELEASE-mailpit" 8025
  mailpit=$FORWARDED
  port_forward "deploy/$RELEASE-gateway" 9080
  ops=$FORWARDED
  say "e2e journeys against $GATEWAY (Mailpit 127.0.0.1:$mailpit, gateway ops 127.0.0.1:$ops)"
  local t0=$SECONDS statuses
  set +e +o pipefail
  (cd "$ROOT" && E2E_BASE_URL=$GATEWAY E2E_OPS_URL=http://127.0.0.1:$ops E2E_MAILPIT_URL=http://127.0.0.1:$mailpit \
    cargo test -p e2e --locked --test journeys) 2>&1 | tee "$LOGS/e2e.log" | grep -E '^(test |test result|error|failures:)'
  statuses=("${PIPESTATUS[@]}")
  set -e -o pipefail
  [[ ${statuses[0]} == 0 ]] || die "e2e journeys failed through the cluster (log: $LOGS/e2e.log)"
  say "journeys passed in $((SECONDS - t0)) s"
}

# ------------------------------------------------------------------------------ balancing
# The values run two payment pods. gRPC keeps one HTTP/2 connection per peer, so a ClusterIP
# Service would pin every order pod to one of them; the chart's headless Service and
# order-service's balanced channel (shop_runtime::grpc::Peers) spread the calls. After the
# journeys, each payment pod's own /metrics (its operational port, through a port-forward into
# that pod) must count served gRPC requests.
check_balancing() {
  local pods pod served counts=()
  pods=$(kubectl_ -n "$NAMESPACE" get pods -l app.kubernetes.io/component=payment-service \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  (($(wc -l <<<"$pods") == 2)) || die "expected two payment pods, found: $pods"
  for pod in $pods; do
    port_forward "pod/$pod" 9085
    served=$(curl -fsS "http://127.0.0.1:$FORWARDED/metrics" |
      awk '/^grpc_server_requests_total\{/ && /Authorize/ { n += $NF } END { printf "%d", n }') ||
      die "reading $pod's metrics failed"
    counts+=("$pod: $served")
    ((served > 0)) || die "payment pod $pod served no Authorize call: order-service's calls are not balanced (${counts[*]})"
  done
  say "gRPC balanced over two payment pods: ${counts[*]} (Authorize calls served)"
}

# ------------------------------------------------------------------------------ upgrade under load
upgrade_under_load() {
  local report=$LOGS/load.json
  say "helm upgrade to tag $UPGRADE_TAG under load ($LOAD_RATE requests/s to $GATEWAY)"
  # Listing products (gateway -> catalog, or the gateway's cache), one product (catalog), the
  # key set (gateway -> user-service).
  local product
  product=$(curl -fsS "$GATEWAY/api/v1/products" | python3 -c 'import json, sys; d = json.load(sys.stdin); items = d.get("items", d) if isinstance(d, dict) else d; print(items[0]["id"])') ||
    die "no product to load (is the catalog seeded?)"
  python3 "$ROOT/scripts/k8s-load.py" --url "$GATEWAY/api/v1/products" --url "$GATEWAY/api/v1/products/$product" \
    --url "$GATEWAY/.well-known/jwks.json" --rate "$LOAD_RATE" \
    --stop-file "$STATE/load.stop" --report "$report" &
  local load=$!
  PIDS+=("$load")
  rm -f "$STATE/load.stop"
  sleep 3
  local t0=$SECONDS
  helm_ upgrade "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$VALUES" --set "image.tag=$UPGRADE_TAG" \
    --wait --timeout 15m >"$LOGS/helm-upgrade.log" 2>&1 || die "helm upgrade failed: $(tail -n 20 "$LOGS/helm-upgrade.log")"
  local rolled=$((SECONDS - t0))
  sleep 5
  touch "$STATE/load.stop"
  wait "$load" || true
  local images
  images=$(kubectl_ -n "$NAMESPACE" get deploy -l "app.kubernetes.io/instance=$RELEASE" \
    -o jsonpath='{range .items[*]}{.spec.template.spec.containers[0].image}{"\n"}{end}' | grep -c ":$UPGRADE_TAG$" || true)
  ((images == ${#SERVICES[@]})) || die "after the upgrade only $images of ${#SERVICES[@]} Deployments run tag $UPGRADE_TAG"
  python3 - "$report" "$rolled" <<'EOF' || die "requests failed during the upgrade (report: $LOGS/load.json)"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"k8s-test: upgrade rolled in {sys.argv[2]} s: {r['sent']} requests during it, {r['failed']} failed"
      + (f" (first failures: {r['failures'][:3]})" if r["failed"] else ""))
sys.exit(1 if r["failed"] or not r["sent"] else 0)
EOF
}

# ------------------------------------------------------------------------------ uninstall
uninstall_release() {
  kubectl_ -n "$NAMESPACE" delete service k8s-test-gateway >/dev/null
  say "helm uninstall"
  helm_ uninstall "$RELEASE" -n "$NAMESPACE" --wait --timeout 3m >"$LOGS/helm-uninstall.log" 2>&1 ||
    die "helm uninstall failed: $(tail -n 20 "$LOGS/helm-uninstall.log")"
  local token
  token=$(awk -F, '$2 == "shop-admin" { print $1 }' "$STATE/pki/tokens.csv")
  "$PYTHON" "$ROOT/scripts/helm-test-checks.py" check "$NAMESPACE" "$RELEASE" uninstalled \
    --api "https://$K8S_NODE_IP:16443" --token "$token" --ca "$STATE/pki/ca.crt" --hooks /dev/null
  # What is the test's own: the claims the StatefulSets kept on purpose, the volumes, the
  # namespace.
  kubectl_ delete namespace "$NAMESPACE" --wait --timeout 120s >/dev/null
  kubectl_ delete pv -l shop-k8s-test=volume --wait --timeout 60s >/dev/null
  kubectl_ delete storageclass shop-k8s-local >/dev/null
  rm -rf "$STATE/volumes"
  local left
  left=$(kubectl_ get pods -A --no-headers 2>/dev/null | grep -v '^kube-system ' || true)
  [[ -z $left ]] || die "pods left after the uninstall: $left"
  say "uninstalled: no object of the release, no pod outside kube-system"
}

# ------------------------------------------------------------------------------ main
main() {
  "$ROOT/scripts/k8s-cluster.sh" up
  eval "$("$ROOT/scripts/k8s-cluster.sh" env)"
  export KUBECONFIG
  STATE=$K8S_STATE_DIR
  LOGS=$STATE/logs
  eval "$("$ROOT/scripts/deploy-tools.sh" env)"
  PYTHON=$(dirname "$HADOLINT")/python
  "$ROOT/scripts/deploy-tools.sh" install # the Python tools (PyYAML) of helm-test-checks.py
  say "cluster up"
  build_images
  prepare_namespace
  install_release
  check_policies
  expose_gateway
  run_journeys
  check_balancing
  say "helm test"
  helm_ test "$RELEASE" -n "$NAMESPACE" --timeout 5m >"$LOGS/helm-test.log" 2>&1 || die "helm test failed: $(tail -n 20 "$LOGS/helm-test.log")"
  say "helm test passed"
  upgrade_under_load
  uninstall_release
  say "all steps passed in $((SECONDS - STARTED)) s; tearing the cluster down"
}

main "$@"
