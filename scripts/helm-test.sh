#!/usr/bin/env bash
# The Helm chart against a real Kubernetes API server, on loopback, without a cluster:
# etcd + kube-apiserver + kube-controller-manager (built once from their Go modules by
# scripts/deploy-tools.sh cluster, ~10 minutes on 2 cores), then for each install mode
#
#   development  in-chart PostgreSQL/MongoDB/Redis/RabbitMQ/Mailpit, generated dev secrets
#   production   ci/production-values.yaml: the operator's Secrets and the ServiceMonitor and PrometheusRule CRDs
#                created first, HPAs, Ingress, ServiceMonitor, PrometheusRule, dashboard ConfigMaps
#
# helm install, checks of what the server holds (scripts/helm-test-checks.py), helm upgrade
# with changed values and its effect, helm uninstall and that nothing of the release is left.
#
# What this proves: the API server admits every object (its own validation and admission,
# including Pod Security "restricted" enforced on the namespaces: the ReplicaSet and StatefulSet
# controllers can only create the pods if their security context passes), Deployments get
# ReplicaSets and Pods, selectors meet real pods, HPAs and the Ingress point at what exists.
# What it does not: there is no kubelet, so pods stay Pending — no image is pulled, no probe
# runs, no container starts. The hooks (the seed Job, the `helm test` Pod) would wait for a
# kubelet, so installs run with --no-hooks and the hook objects are created with a server-side
# dry run instead (admitted, not run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/deploy/helm/shop
"$ROOT/scripts/deploy-tools.sh" install
"$ROOT/scripts/deploy-tools.sh" cluster
eval "$("$ROOT/scripts/deploy-tools.sh" env)"
PYTHON=$(dirname "$HADOLINT")/python

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shop-helm-test.XXXXXX")
PIDS=()
# Stops what this script started, newest first (the controller manager and the API server
# before etcd, which they need to shut down cleanly); KILL after 20 s each.
cleanup() {
  local i pid deadline
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill "$pid" 2>/dev/null || continue
    deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP_WORKDIR:-} == 1 ]]; then echo "helm-test: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { printf 'helm-test: %s\n' "$*"; }
die() {
  printf 'helm-test: %s\n' "$*" >&2
  for log in "$WORK"/*.log; do
    [[ -f $log ]] && { printf '\n--- last lines of %s\n' "$log" >&2; tail -n 15 "$log" >&2; }
  done
  exit 1
}

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- credentials: a CA, the API server's certificate, the service-account key pair, a token
openssl_quiet() { openssl "$@" >/dev/null 2>&1 || die "openssl $1 failed"; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=shop-helm-test-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.crt"
openssl_quiet req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
  -keyout "$WORK/apiserver.key" -out "$WORK/apiserver.csr"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >"$WORK/san.ext"
openssl_quiet x509 -req -in "$WORK/apiserver.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/apiserver.crt"
openssl_quiet genpkey -algorithm RSA -out "$WORK/sa.key"
openssl_quiet pkey -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub"
TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')
printf '%s,shop-admin,shop-admin,system:masters\n' "$TOKEN" >"$WORK/tokens.csv"

ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
API_PORT=$(free_port)
API=https://127.0.0.1:$API_PORT
cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{ name: local, cluster: { server: "$API", certificate-authority: "$WORK/ca.crt" } }]
users: [{ name: admin, user: { token: "$TOKEN" } }]
contexts: [{ name: local, context: { cluster: local, user: admin } }]
current-context: local
EOF
chmod 600 "$WORK/kubeconfig"
export KUBECONFIG=$WORK/kubeconfig

# --- the control plane, on loopback
say "starting etcd, kube-apiserver and kube-controller-manager ($KUBERNETES_VERSION) in $WORK"
"$ETCD" --name helm-test --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "helm-test=http://127.0.0.1:$ETCD_PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
"$KUBE_APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$WORK/apiserver.crt" --tls-private-key-file "$WORK/apiserver.key" \
  --client-ca-file "$WORK/ca.crt" --token-auth-file "$WORK/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$WORK/sa.pub" --service-account-signing-key-file "$WORK/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 >"$WORK/kube-apiserver.log" 2>&1 &
PIDS+=($!)

kube() { # METHOD PATH [JSON-FILE]: the API, as the admin
  local args=(-sS --fail-with-body --cacert "$WORK/ca.crt" -H "Authorization: Bearer $TOKEN" -X "$1")
  [[ -n ${3:-} ]] && args+=(-H 'Content-Type: application/json' --data-binary "@$3")
  curl "${args[@]}" "$API$2"
}

deadline=$((SECONDS + 120))
until kube GET /readyz >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "kube-apiserver did not become ready within 120 s"
  sleep 1
done
"$KUBE_CONTROLLER_MANAGER" --kubeconfig "$WORK/kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0 \
  --controllers deployment,replicaset,statefulset,job,garbagecollector,namespace,serviceaccount,disruption,endpointslice \
  --service-account-private-key-file "$WORK/sa.key" --root-ca-file "$WORK/ca.crt" \
  >"$WORK/kube-controller-manager.log" 2>&1 &
PIDS+=($!)
say "API server ready at $API"

to_json() { "$PYTHON" -c 'import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)'; }

# POSTs every object of a YAML stream (stdin) to namespace $1; with $2 = dry, as a
# server-side dry run (dryRun=All: validated and admitted, not stored).
create_objects() {
  local namespace=$1 dry=${2:-} i=0
  to_json >"$WORK/objects.json"
  while read -r object; do
    printf '%s' "$object" >"$WORK/object.json"
    local path
    path=$("$PYTHON" "$ROOT/scripts/helm-test-checks.py" path "$namespace" <"$WORK/object.json")
    [[ -n $dry ]] && path+="?dryRun=All"
    kube POST "$path" "$WORK/object.json" >"$WORK/response.json" ||
      die "the API server refused $(cat "$WORK/object.json" | cut -c1-200): $(cat "$WORK/response.json")"
    i=$((i + 1))
  done < <("$PYTHON" -c 'import json, sys; [print(json.dumps(o)) for o in json.load(open(sys.argv[1]))]' "$WORK/objects.json")
  printf '%s\n' "$i"
}

# A namespace where Pod Security "restricted" is enforced.
create_namespace() {
  printf '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"%s","labels":{"pod-security.kubernetes.io/enforce":"restricted","pod-security.kubernetes.io/enforce-version":"latest"}}}' "$1" >"$WORK/ns.json"
  kube POST /api/v1/namespaces "$WORK/ns.json" >/dev/null || die "cannot create namespace $1"
}

checks() { # namespace release phase [expectations...]
  local namespace=$1
  shift
  "$PYTHON" "$ROOT/scripts/helm-test-checks.py" check "$namespace" "$@" \
    --api "$API" --token "$TOKEN" --ca "$WORK/ca.crt" --hooks "$WORK/hooks-$namespace.yaml"
}

run_mode() { # mode namespace release helm-args...
  local mode=$1 namespace=$2 release=$3
  shift 3
  say "[$mode] namespace $namespace (Pod Security: restricted)"
  create_namespace "$namespace"
  if [[ $mode == production ]]; then
    say "[$mode] the operator's part: the ServiceMonitor and PrometheusRule CRDs and one Secret per service"
    create_objects "" <"$SCHEMAS/servicemonitor-crd.yaml" >/dev/null
    create_objects "" <"$SCHEMAS/prometheusrule-crd.yaml" >/dev/null
    "$PYTHON" "$ROOT/scripts/helm-test-checks.py" secrets "$namespace" | create_objects "$namespace" >/dev/null
    deadline=$((SECONDS + 60))
    until kube GET /apis/monitoring.coreos.com/v1/namespaces/"$namespace"/servicemonitors >/dev/null 2>&1 &&
      kube GET /apis/monitoring.coreos.com/v1/namespaces/"$namespace"/prometheusrules >/dev/null 2>&1; do
      ((SECONDS < deadline)) || die "the ServiceMonitor and PrometheusRule CRDs were not established"
      sleep 1
    done
  fi
  say "[$mode] helm install"
  "$HELM" install "$release" "$CHART" -n "$namespace" --no-hooks "$@" >"$WORK/install.txt" 2>&1 ||
    die "helm install failed: $(cat "$WORK/install.txt")"
  grep -i 'warning' "$WORK/install.txt" && die "the API server warned about the release (above)"
  say "[$mode] the hook objects (seed Job, helm test Pod), created with dryRun=All"
  "$HELM" get hooks "$release" -n "$namespace" >"$WORK/hooks-$namespace.yaml"
  local admitted
  admitted=$(create_objects "$namespace" dry <"$WORK/hooks-$namespace.yaml")
  say "[$mode] $admitted hook object(s) admitted"
  say "[$mode] what the server holds"
  checks "$namespace" "$release" installed
  say "[$mode] helm upgrade (replicas 3, RUST_LOG debug)"
  "$HELM" upgrade "$release" "$CHART" -n "$namespace" --no-hooks "$@" \
    --set defaults.replicas=3 --set defaults.autoscaling.minReplicas=3 --set logLevel=debug \
    >"$WORK/upgrade.txt" 2>&1 || die "helm upgrade failed: $(cat "$WORK/upgrade.txt")"
  checks "$namespace" "$release" upgraded
  say "[$mode] helm uninstall"
  "$HELM" uninstall "$release" -n "$namespace" --wait --timeout 2m >"$WORK/uninstall.txt" 2>&1 ||
    die "helm uninstall failed: $(cat "$WORK/uninstall.txt")"
  checks "$namespace" "$release" uninstalled
}

started=$SECONDS
run_mode development shop-dev shop
run_mode production shop-prod shop -f "$CHART/ci/production-values.yaml"
say "both modes installed, upgraded and uninstalled in $((SECONDS - started)) s"

# Selftest: the checks are not blind. A copy of the chart whose containers may escalate
# privileges installs (the API server stores Deployments), but Pod Security refuses its pods.
say "[selftest] a chart copy with allowPrivilegeEscalation: true"
cp -R "$CHART" "$WORK/broken-chart"
sed -i 's/^allowPrivilegeEscalation: false$/allowPrivilegeEscalation: true/' "$WORK/broken-chart/templates/_helpers.tpl"
! cmp -s "$CHART/templates/_helpers.tpl" "$WORK/broken-chart/templates/_helpers.tpl" || die "selftest: the edit changed nothing"
create_namespace shop-selftest
"$HELM" install broken "$WORK/broken-chart" -n shop-selftest --no-hooks >"$WORK/selftest.txt" 2>&1 ||
  die "helm install of the selftest copy failed: $(cat "$WORK/selftest.txt")"
checks shop-selftest broken refused
