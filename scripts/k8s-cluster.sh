#!/usr/bin/env bash
# A real one-node Kubernetes on this machine, for `make k8s-test`: every component built from
# source by scripts/deploy-tools.sh (cached by version), the container runtime from Debian.
#
#   scripts/k8s-cluster.sh up       install what is missing, start the cluster, wait for the node
#                                   and CoreDNS Ready
#   scripts/k8s-cluster.sh import IMAGE...   podman images into the cluster's containerd
#   scripts/k8s-cluster.sh env      KUBECONFIG and tool paths, as shell assignments
#   scripts/k8s-cluster.sh down     stop everything, remove what the cluster put on the host,
#                                   restore the kernel settings, check that nothing is left
#   scripts/k8s-cluster.sh status   what runs
#
# The pieces, and why these:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#                  Kubernetes v1.35.4 from the k8s.io/kubernetes Go module (deploy-tools.sh):
#                  the last minor release that supports containerd 1.x
#   containerd 1.6.20, runc 1.1.5, containernetworking-plugins 1.1.1, ipset, iptables
#                  Debian bookworm's packages. containerd runs with a config and directories of
#                  its own (.local/k8s), SystemdCgroup = false (no systemd here) and
#                  restrict_oom_score_adj = true (processes here lack CAP_SYS_RESOURCE; without
#                  it every sandbox fails "can't get final child's PID from pipe: EOF")
#   kubelet        failCgroupV1: false, cgroupDriver: cgroupfs (this machine has cgroup v1 only)
#   networking     the bridge CNI plugin on a bridge of our own (shopk8s0, 10.244.0.1/24, also the
#                  node's address); kube-proxy in iptables mode, NodePorts on loopback only
#   NetworkPolicy  kube-router v2.1.0, its firewall controller only (a host process); that
#                  version has published security advisories: fine for this throwaway cluster
#   DNS            CoreDNS v1.14.7 as a Deployment in kube-system (k8s-app: kube-dns, as the
#                  chart's NetworkPolicies expect)
#   images         no registry: `podman save` -> `ctr images import`; the pause image is the
#                  module's build/pause compiled with gcc -static
#
# Ports: the API server on 10.244.0.1:16443, everything else on the bridge address or 127.0.0.1
# and outside the native stack's ports. The kubelet and kube-proxy change kernel settings
# (vm.overcommit_memory, kernel.panic*, route_localnet, ...): `up` records them, `down` restores
# them. Run state lives in <repo>/.local/k8s; images stay in containerd's store there between
# runs (`down --purge` removes it too).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${K8S_STATE_DIR:-$ROOT/.local/k8s}
RUN=$STATE/run
LOGS=$STATE/logs
PKI=$STATE/pki

NODE=shop-node
BRIDGE=shopk8s0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_IP=10.96.0.10
API_PORT=16443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
API=https://$NODE_IP:$API_PORT
CONTAINERD_SOCK=$RUN/containerd.sock
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig
PAUSE_IMAGE=localhost/shop-k8s/pause
COREDNS_IMAGE=localhost/shop-k8s/coredns

# Kernel settings the kubelet, kube-proxy or this script may change; `up` records, `down` restores.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.forwarding
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait net.ipv4.conf.all.rp_filter)

say() { printf 'k8s-cluster: %s\n' "$*" >&2; }
die() {
  printf 'k8s-cluster: %s\n' "$*" >&2
  exit 1
}

tools() { eval "$("$ROOT/scripts/deploy-tools.sh" env)"; }

# ------------------------------------------------------------------------------ installation
# The Debian packages (as deploy/podman/compose-test.sh installs podman): containerd, runc, the
# CNI plugins, iptables and ipset (kube-proxy, kube-router), conntrack, podman for the images.
install_packages() {
  local missing=() p
  for p in containerd runc containernetworking-plugins ipset iptables conntrack podman debootstrap jq openssl gcc; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing Debian packages: ${missing[*]}"
  # No service is started by the packages (there is no init system to start them anyway).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$LOGS/apt.log" 2>&1 || {
    rm -f /usr/sbin/policy-rc.d
    die "apt-get install failed: $(tail -5 "$LOGS/apt.log")"
  }
  rm -f /usr/sbin/policy-rc.d
}

# ------------------------------------------------------------------------------ processes
# Each process we start has a pid file in $RUN; `down` stops them by that pid, newest first.
ORDER=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)

pid_of() { # name: the pid if it runs
  local pid
  [[ -f $RUN/$1.pid ]] || return 1
  pid=$(<"$RUN/$1.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

launch() { # name command...
  local name=$1
  shift
  if pid_of "$name" >/dev/null; then return; fi
  # Its own session (no signal from our terminal), without our lock descriptor (fd 8).
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
  printf '%s\n' "$!" >"$RUN/$name.pid"
}

stop() { # name [seconds]
  local pid deadline
  pid=$(pid_of "$1") || { rm -f "$RUN/$1.pid"; return 0; }
  kill "$pid" 2>/dev/null || true
  deadline=$((SECONDS + ${2:-20}))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/$1.pid"
}

wait_for() { # seconds description command...
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
  say "$what"
}

fail_with_log() { # name message
  say "$2; last lines of $LOGS/$1.log:"
  tail -n 25 "$LOGS/$1.log" >&2 || true
  exit 1
}

# ------------------------------------------------------------------------------ credentials
# A CA, the API server's serving certificate, its client certificate for the kubelet, the
# service-account key pair, and one bearer token per component (the token file is the
# simplest authenticator: this cluster lives for one test run).
make_pki() {
  [[ -f $PKI/.complete ]] && return
  rm -rf "$PKI"
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=shop-k8s-ca -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:127.0.0.1,IP:%s,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n' \
    "$NODE_IP" "$KUBERNETES_SERVICE_IP" >"$PKI/san.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 7 \
    -extfile "$PKI/san.ext" -out "$PKI/apiserver.crt" 2>/dev/null
  # The API server's identity towards the kubelet (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$PKI/apiserver-kubelet-client.key" -out "$PKI/apiserver-kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/apiserver-kubelet-client.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 7 -out "$PKI/apiserver-kubelet-client.crt" 2>/dev/null
  openssl genpkey -algorithm RSA -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local name user groups token
  : >"$PKI/tokens.csv"
  # name user groups
  while read -r name user groups; do
    token=$(openssl rand -hex 24)
    printf '%s,%s,%s,"%s"\n' "$token" "$user" "$user" "$groups" >>"$PKI/tokens.csv"
    kubeconfig "$STATE/$name.kubeconfig" "$token"
  done <<EOF
admin shop-admin system:masters
kube-controller-manager system:kube-controller-manager system:masters
kube-scheduler system:kube-scheduler system:masters
kubelet system:node:$NODE system:nodes
kube-proxy system:kube-proxy system:node-proxier
kube-router kube-router system:masters
EOF
  chmod 600 "$PKI"/*.key "$PKI/tokens.csv" "$STATE"/*.kubeconfig
  touch "$PKI/.complete"
}

kubeconfig() { # file token
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{ name: shop-k8s, cluster: { server: "$API", certificate-authority: "$PKI/ca.crt" } }]
users: [{ name: user, user: { token: "$2" } }]
contexts: [{ name: shop-k8s, context: { cluster: shop-k8s, user: user } }]
current-context: shop-k8s
EOF
}

# ------------------------------------------------------------------------------ kernel settings
record_sysctls() {
  [[ -f $STATE/sysctl.saved ]] && return # a previous `up` recorded the originals
  local key
  for key in "${SYSCTLS[@]}"; do
    [[ -e /proc/sys/${key//.//} ]] && printf '%s=%s\n' "$key" "$(sysctl -n "$key")"
  done >"$STATE/sysctl.saved.new"
  mv "$STATE/sysctl.saved.new" "$STATE/sysctl.saved"
}

restore_sysctls() {
  [[ -f $STATE/sysctl.saved ]] || return 0
  local line key value changed=()
  while IFS= read -r line; do
    key=${line%%=*}
    value=${line#*=}
    if [[ $(sysctl -n "$key") != "$value" ]]; then
      changed+=("$key: $(sysctl -n "$key") -> $value")
      sysctl -q -w "$key=$value" >/dev/null || say "could not restore $key=$value"
    fi
  done <"$STATE/sysctl.saved"
  ((${#changed[@]})) && say "kernel settings restored: ${changed[*]}"
  rm -f "$STATE/sysctl.saved"
}

# ------------------------------------------------------------------------------ host paths
# Directories the programs create outside the state directory whatever their configuration:
# the kubelet's /var/log/containers (symlinks to pod logs), containerd's shim sockets under
# /run/containerd, libcni's result cache in /var/lib/cni. Those that did not exist before the
# first `up` are removed by `down`.
HOST_PATHS=(/var/log/containers /var/log/pods /run/containerd /var/lib/cni /usr/libexec/kubernetes)
record_host_paths() {
  [[ -f $STATE/host-paths.new-by-us ]] && return
  local p
  for p in "${HOST_PATHS[@]}"; do [[ -e $p ]] || printf '%s\n' "$p"; done >"$STATE/host-paths.new-by-us"
}
# iptables chains and ipsets: those that did not exist before the first `up` are the
# cluster's (kube-proxy's KUBE-*, the kubelet's KUBE-FIREWALL and canaries, kube-router's
# KUBE-ROUTER-* and KUBE-NWPLCY-*, the bridge plugin's CNI-*), removed by `down`.
chains() { # iptables|ip6tables: "table chain" lines
  "$1-save" 2>/dev/null | awk '/^\*/ { table = substr($0, 2) } /^:/ { print table, substr($1, 2) }' | sort -u
}
record_netfilter() {
  [[ -f $STATE/netfilter.before ]] && return
  { chains iptables | sed 's/^/4 /'; chains ip6tables | sed 's/^/6 /'; ipset list -n 2>/dev/null | sed 's/^/set /'; } \
    >"$STATE/netfilter.before.new"
  mv "$STATE/netfilter.before.new" "$STATE/netfilter.before"
}
remove_new_netfilter() {
  [[ -f $STATE/netfilter.before ]] || return 0
  local family tool table chain rule
  for family in 4 6; do
    tool=iptables
    [[ $family == 6 ]] && tool=ip6tables
    local new
    new=$(chains "$tool" | sed "s/^/$family /" | grep -vxFf "$STATE/netfilter.before" | cut -d' ' -f2- || true)
    [[ -n $new ]] || continue
    # Flush the new chains, remove every jump to them from the old ones, delete them.
    while read -r table chain; do "$tool" -t "$table" -F "$chain" 2>/dev/null || true; done <<<"$new"
    while read -r table chain; do
      { "$tool" -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" || true; } | sed 's/^-A /-D /' |
        while read -r rule; do eval "$tool -t $table $rule" 2>/dev/null || true; done
    done <<<"$new"
    while read -r table chain; do "$tool" -t "$table" -X "$chain" 2>/dev/null || true; done <<<"$new"
  done
  local set
  for set in $(ipset list -n 2>/dev/null | sed 's/^/set /' | grep -vxFf "$STATE/netfilter.before" | cut -d' ' -f2- || true); do
    ipset destroy "$set" 2>/dev/null || say "could not destroy ipset $set"
  done
  rm -f "$STATE/netfilter.before"
}

remove_host_paths() {
  local p
  [[ -f $STATE/host-paths.new-by-us ]] || return 0
  while IFS= read -r p; do [[ -n $p ]] && rm -rf "$p"; done <"$STATE/host-paths.new-by-us"
  rm -f "$STATE/host-paths.new-by-us"
  # Where they existed before: only what points into our state directory.
  local link
  for link in /var/log/containers/*; do
    [[ -L $link && $(readlink "$link") == "$STATE"/* ]] && rm -f "$link"
  done
  rm -rf /var/lib/cni/results/shop-k8s-* 2>/dev/null || true
  return 0
}

# ------------------------------------------------------------------------------ configuration
write_configs() {
  mkdir -p "$STATE/cni/net.d" "$STATE/kubelet" "$STATE/containerd"
  # The bridge plugin: pods on shopk8s0 (created by `up`, with the node's address), addresses
  # from the node's podCIDR, masqueraded when they leave it; portmap for hostPort; loopback.
  cat >"$STATE/cni/net.d/10-shop.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "shop-k8s",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$NODE_IP" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$STATE/cni/ipam" } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = "$RUN/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE:$PAUSE_VERSION"
  # Processes here lack CAP_SYS_RESOURCE: never lower a container's oom_score_adj below ours.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$STATE/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine: cgroup v1 only (deprecated in 1.35, refused unless allowed), no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization: { mode: Webhook }
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
# Images come from \`ctr import\` and cannot be pulled again: never garbage-collect them, and
# evict only when the disk is really full (the machine is shared).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: 100Mi, nodefs.available: 100Mi, imagefs.available: 100Mi, nodefs.inodesFree: 1% }
serializeImagePulls: false
maxPods: 60
# Directories of its own instead of /usr/libexec/kubernetes and /var/log/pods.
volumePluginDir: $STATE/kubelet/volume-plugins
podLogsDir: $STATE/kubelet/pod-logs
EOF
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $NODE
clusterCIDR: $CLUSTER_CIDR
clientConnection: { kubeconfig: $STATE/kube-proxy.kubeconfig }
healthzBindAddress: 127.0.0.1:20256
metricsBindAddress: 127.0.0.1:20249
# NodePorts answer on loopback only (kube-proxy sets route_localnet for that).
nodePortAddresses: [127.0.0.0/8]
# Leave the conntrack table's size and timeouts as they are.
conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
EOF
}

# ------------------------------------------------------------------------------ images
ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# import IMAGE...: podman images into containerd, each once per podman image id.
import_images() {
  local image id marker todo=()
  mkdir -p "$STATE/imported"
  for image in "$@"; do
    id=$(podman image inspect --format '{{.Id}}' "$image") || die "no podman image $image"
    marker=$STATE/imported/$(printf '%s' "$image" | tr '/:' '__')
    if [[ -f $marker && $(<"$marker") == "$id" ]] && ctr_ images ls -q "name==$image" | grep -q .; then continue; fi
    todo+=("$image")
  done
  ((${#todo[@]})) || return 0
  say "importing ${#todo[@]} image(s) into containerd: ${todo[*]}"
  local archive=$STATE/images.tar
  rm -f "$archive"
  podman save --quiet -m --format docker-archive -o "$archive" "${todo[@]}" >/dev/null
  ctr_ images import "$archive" >"$LOGS/import.log" 2>&1 || {
    rm -f "$archive"
    die "ctr images import failed: $(tail -5 "$LOGS/import.log")"
  }
  rm -f "$archive"
  for image in "${todo[@]}"; do
    podman image inspect --format '{{.Id}}' "$image" >"$STATE/imported/$(printf '%s' "$image" | tr '/:' '__')"
  done
}

# The pause and CoreDNS images: one static binary each on an empty file system.
build_binary_image() { # image:tag binary entrypoint-path
  local image=$1 binary=$2 path=$3 have want tmp
  want=$(sha256sum "$binary" | cut -c1-16)
  have=$(podman image inspect --format '{{index .Labels "shop.k8s.inputs"}}' "$image" 2>/dev/null || true)
  [[ $have == "$want" ]] && return
  tmp=$(mktemp -d)
  install -D -m 0755 "$binary" "$tmp/root$path"
  tar -C "$tmp/root" -c . | podman import --quiet --change "ENTRYPOINT [\"$path\"]" --change "LABEL shop.k8s.inputs=$want" \
    - "$image" >/dev/null
  rm -rf "$tmp"
}

# ------------------------------------------------------------------------------ up
cluster_objects() {
  # CoreDNS: its RBAC, Corefile, Deployment and the kube-dns Service at $DNS_IP. It listens on
  # port 53 in its pod (NetworkPolicies match the pod's port: the chart allows egress to 53), as
  # a non-root user thanks to the pod's namespaced sysctl net.ipv4.ip_unprivileged_port_start.
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: { name: coredns, namespace: kube-system }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: shop-k8s:coredns }
rules:
  - { apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch] }
  - { apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: shop-k8s:coredns }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: shop-k8s:coredns }
subjects: [{ kind: ServiceAccount, name: coredns, namespace: kube-system }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: coredns, namespace: kube-system }
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: coredns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  replicas: 1
  selector: { matchLabels: { k8s-app: kube-dns } }
  template:
    metadata: { labels: { k8s-app: kube-dns } }
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile: { type: RuntimeDefault }
        sysctls: [{ name: net.ipv4.ip_unprivileged_port_start, value: "53" }]
      containers:
        - name: coredns
          image: $COREDNS_IMAGE:$COREDNS_VERSION
          imagePullPolicy: Never
          args: ["-conf", "/etc/coredns/Corefile"]
          ports:
            - { name: dns, containerPort: 53, protocol: UDP }
            - { name: dns-tcp, containerPort: 53, protocol: TCP }
          readinessProbe: { httpGet: { path: /ready, port: 8181 }, periodSeconds: 2 }
          livenessProbe: { httpGet: { path: /health, port: 8080 }, periodSeconds: 10 }
          resources: { requests: { cpu: 50m, memory: 32Mi }, limits: { memory: 128Mi } }
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: { drop: [ALL] }
          volumeMounts: [{ name: config, mountPath: /etc/coredns, readOnly: true }]
      volumes: [{ name: config, configMap: { name: coredns } }]
---
apiVersion: v1
kind: Service
metadata: { name: kube-dns, namespace: kube-system, labels: { k8s-app: kube-dns } }
spec:
  clusterIP: $DNS_IP
  selector: { k8s-app: kube-dns }
  ports:
    - { name: dns, port: 53, targetPort: 53, protocol: UDP }
    - { name: dns-tcp, port: 53, targetPort: 53, protocol: TCP }
EOF
}

cmd_up() {
  local started=$SECONDS
  mkdir -p "$RUN" "$LOGS"
  install_packages
  "$ROOT/scripts/deploy-tools.sh" node
  tools
  make_pki
  write_configs
  record_sysctls
  record_host_paths
  record_netfilter

  # The bridge, before the API server binds its address (the bridge plugin adopts it).
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # Pod-to-Service traffic between pods on the same bridge must pass iptables (kube-proxy's
  # DNAT), and the node forwards for its pods. Both restored by `down`.
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1 >/dev/null

  say "starting containerd (Debian $(containerd --version | awk '{print $3}'))"
  launch containerd containerd --config "$STATE/containerd/config.toml"
  wait_for 30 "containerd ready" ctr_ version || fail_with_log containerd "containerd did not start"
  build_binary_image "$PAUSE_IMAGE:$PAUSE_VERSION" "$PAUSE" /pause
  build_binary_image "$COREDNS_IMAGE:$COREDNS_VERSION" "$COREDNS" /coredns
  import_images "$PAUSE_IMAGE:$PAUSE_VERSION" "$COREDNS_IMAGE:$COREDNS_VERSION"

  say "starting etcd and the control plane (Kubernetes $KUBERNETES_VERSION)"
  mkdir -p "$STATE/etcd"
  launch etcd "$ETCD" --name shop-k8s --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "shop-k8s=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls ""
  launch kube-apiserver "$KUBE_APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR"
  export KUBECONFIG=$KUBECONFIG_ADMIN
  wait_for 120 "kube-apiserver ready at $API" "$KUBECTL" get --raw /readyz ||
    fail_with_log kube-apiserver "kube-apiserver did not become ready"
  launch kube-controller-manager "$KUBE_CONTROLLER_MANAGER" --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
    --allocate-node-cidrs --cluster-cidr "$CLUSTER_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt"
  launch kube-scheduler "$KUBE_SCHEDULER" --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 20259

  say "starting kubelet, kube-proxy and kube-router"
  launch kubelet "$KUBELET" --config "$STATE/kubelet/config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE" --node-ip "$NODE_IP"
  launch kube-proxy "$KUBE_PROXY" --config "$STATE/kube-proxy.yaml"
  wait_for 120 "node $NODE Ready" "$KUBECTL" wait --for=condition=Ready "node/$NODE" --timeout 5s ||
    fail_with_log kubelet "the node did not become Ready"
  launch kube-router "$KUBE_ROUTER" --kubeconfig "$STATE/kube-router.kubeconfig" --hostname-override "$NODE" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --service-cluster-ip-range "$SERVICE_CIDR" --health-port 0 --metrics-port 0

  "$KUBECTL" apply -f - >/dev/null <<<"$(cluster_objects)"
  wait_for 180 "CoreDNS ready" "$KUBECTL" -n kube-system wait --for=condition=Available deployment/coredns --timeout 5s ||
    fail_with_log kubelet "CoreDNS did not become ready ($("$KUBECTL" -n kube-system get pods -o wide 2>&1 | tail -3))"
  pid_of kube-router >/dev/null || fail_with_log kube-router "kube-router exited"
  say "cluster up in $((SECONDS - started)) s: export KUBECONFIG=$KUBECONFIG_ADMIN (kubectl: $KUBECTL)"
}

# ------------------------------------------------------------------------------ down
# Every process containerd started for us: the shims, found by our containerd's address in
# their command line (unique to this state directory), stopped by pid.
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-address $CONTAINERD_SOCK " && printf '%s\n' "${p#/proc/}"
  done
  return 0
}

cmd_down() {
  local started=$SECONDS
  [[ -d $STATE ]] || { say "nothing to stop"; return; }
  tools
  export KUBECONFIG=$KUBECONFIG_ADMIN
  # 1. Pods first, while the kubelet runs: their sandboxes are torn down through CNI (veths,
  #    addresses, masquerade rules removed by the plugin).
  if pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null; then
    say "deleting every workload"
    "$KUBECTL" delete namespace --wait=false $("$KUBECTL" get ns -o name | grep -vE '/(default|kube-system|kube-public|kube-node-lease)$' | sed 's|namespace/||') >/dev/null 2>&1 || true
    "$KUBECTL" delete deployments,statefulsets,daemonsets,jobs,pods --all --all-namespaces --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
      [[ -z $(ctr_ tasks ls -q 2>/dev/null) ]] && break
      sleep 1
    done
    [[ -z $(ctr_ tasks ls -q 2>/dev/null) ]] || say "containers still running after 120 s: $(ctr_ tasks ls -q | wc -l)"
  fi
  # 2. Our processes, newest first.
  local i
  for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do stop "${ORDER[i]}"; done
  local pid
  for pid in $(our_shims); do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in $(our_shims); do kill -9 "$pid" 2>/dev/null || true; done
  # 3. What the network programs leave in iptables and ipset: kube-proxy's own cleanup mode,
  #    then every chain and set that did not exist before `up` (kube-router's --cleanup-config
  #    panics here: it also cleans IPVS, which this kernel lacks; the kubelet has no cleanup).
  "$KUBE_PROXY" --cleanup >"$LOGS/kube-proxy-cleanup.log" 2>&1 || say "kube-proxy --cleanup failed (see $LOGS/kube-proxy-cleanup.log)"
  remove_new_netfilter
  remove_cni_leftovers
  # 4. Mounts under the state directory (kubelet volumes, container root file systems, shm).
  local m
  for m in $(awk -v s="$STATE/" 'index($2, s) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  restore_sysctls
  remove_host_paths
  rm -rf "$STATE/cni/ipam" "$STATE/etcd" "$STATE/kubelet/root" "$STATE/pki" "$STATE"/*.kubeconfig
  [[ ${1:-} == --purge ]] && { rm -rf "$STATE"; say "state purged (images too)"; }
  say "down in $((SECONDS - started)) s"
  cmd_check
}

# The veths of pods whose CNI DEL never ran (a kubelet killed mid-way).
remove_cni_leftovers() {
  local link
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link delete "$link" 2>/dev/null || true
  done
}

# Nothing of the cluster may be left on the host: processes, mounts, interfaces, iptables chains,
# ipsets, changed kernel settings.
cmd_check() {
  local problems=() name
  for name in "${ORDER[@]}"; do pid_of "$name" >/dev/null && problems+=("process $name still runs"); done
  [[ -z $(our_shims) ]] || problems+=("containerd shims still run: $(our_shims | tr '\n' ' ')")
  grep -qF " $STATE/" /proc/self/mounts && problems+=("mounts left: $(grep -F " $STATE/" /proc/self/mounts | awk '{print $2}' | head -3 | tr '\n' ' ')")
  ip link show "$BRIDGE" >/dev/null 2>&1 && problems+=("bridge $BRIDGE still exists")
  local chains
  chains=$( { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -oE '^:(KUBE-[A-Z0-9-]+|CNI-[A-Za-z0-9-]+)' | sort -u | tr '\n' ' ' || true)
  [[ -z $chains ]] || problems+=("iptables chains left: $chains")
  local sets
  sets=$(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' | tr '\n' ' ' || true)
  [[ -z $sets ]] || problems+=("ipsets left: $sets")
  [[ -f $STATE/sysctl.saved ]] && problems+=("kernel settings not restored ($STATE/sysctl.saved)")
  [[ -f $STATE/host-paths.new-by-us ]] && problems+=("host directories not removed ($STATE/host-paths.new-by-us)")
  [[ -f $STATE/netfilter.before ]] && problems+=("iptables chains and ipsets not removed ($STATE/netfilter.before)")
  if ((${#problems[@]})); then
    printf 'k8s-cluster: LEFT BEHIND: %s\n' "${problems[@]}" >&2
    return 1
  fi
  say "nothing left behind: no process, mount, bridge, iptables chain, ipset or kernel setting of the cluster"
}

cmd_status() {
  local name pid
  for name in "${ORDER[@]}"; do
    if pid=$(pid_of "$name"); then printf '%-24s pid %s\n' "$name" "$pid"; else printf '%-24s -\n' "$name"; fi
  done
}

cmd_env() {
  tools
  cat <<EOF
KUBECONFIG=$KUBECONFIG_ADMIN
KUBECTL=$KUBECTL
HELM=$HELM
K8S_NODE_IP=$NODE_IP
K8S_STATE_DIR=$STATE
EOF
}

[[ $EUID == 0 ]] || die "run as root (containerd, kubelet and kube-proxy change the host's network)"
mkdir -p "$STATE"
case "${1:-}" in
  up)
    exec 8>"$STATE/.lock"
    flock -n 8 || die "another k8s-cluster.sh holds $STATE/.lock"
    cmd_up
    ;;
  down)
    exec 8>"$STATE/.lock"
    flock -n 8 || die "another k8s-cluster.sh holds $STATE/.lock"
    shift
    cmd_down "$@"
    ;;
  import)
    shift
    tools
    import_images "$@"
    ;;
  check) cmd_check ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) die "usage: scripts/k8s-cluster.sh up|down [--purge]|import IMAGE...|env|status|check" ;;
esac
